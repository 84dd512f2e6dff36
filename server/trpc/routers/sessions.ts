import { tracked } from "@trpc/server";
import { z } from "zod";
import { router, teamProcedure } from "../init";
import { id, pageInput } from "../inputs";
import { MAX_EXEC_OUTPUT_BYTES } from "../../services/sessions";

const sessionStatus = z.enum(["pending", "provisioning", "ready", "running", "idle", "suspended", "reconnecting", "failed", "terminated"]);
const workspacePath = z.string().min(1).max(4096);

export const sessionsRouter = router({
  create: teamProcedure
    .input(z.strictObject({ agentId: id, title: z.string().trim().max(200).optional() }))
    .mutation(({ ctx, input }) => ctx.team.sessions.create(input)),
  /** A session of the team's demo agent (made on first use, admins only) with a command already sent: the dashboard's "Start a demo session". */
  startDemo: teamProcedure.mutation(({ ctx }) => ctx.team.demo.start()),
  get: teamProcedure.input(z.strictObject({ sessionId: id })).query(({ ctx, input }) => ctx.team.sessions.get(input)),
  list: teamProcedure
    .input(z.strictObject({ ...pageInput, status: sessionStatus.optional(), agentId: id.optional() }))
    .query(({ ctx, input }) => ctx.team.sessions.list(input)),
  events: teamProcedure
    .input(z.strictObject({ sessionId: id, afterSeq: z.number().int().min(0).default(0), limit: z.number().int().min(1).max(1000).default(100) }))
    .query(({ ctx, input }) => ctx.team.sessions.events(input)),
  send: teamProcedure
    .input(
      z.strictObject({
        sessionId: id,
        text: z.string().trim().min(1, "must not be empty").max(100_000),
        idempotencyKey: z.string().min(1).max(200).optional(),
      }),
    )
    .mutation(({ ctx, input }) => ctx.team.sessions.send(input)),
  abort: teamProcedure.input(z.strictObject({ sessionId: id })).mutation(({ ctx, input }) => ctx.team.sessions.abort(input)),
  /**
   * Server-sent events: every stored event after `lastEventId` (a seq), then live ones, each tracked
   * by its seq so a reconnecting client resumes exactly after the last one it received. Live text
   * deltas are tracked by the seq they follow.
   */
  follow: teamProcedure
    .input(z.strictObject({ sessionId: id, lastEventId: z.string().regex(/^\d{1,15}$/, "must be an event seq").nullish() }))
    .subscription(async function* ({ ctx, input, signal }) {
      const stream = ctx.team.sessions.follow({ sessionId: input.sessionId, afterSeq: input.lastEventId ? Number(input.lastEventId) : 0 }, signal ?? new AbortController().signal);
      for await (const item of stream) {
        yield item.kind === "event" ? tracked(String(item.event.seq), item) : tracked(String(item.afterSeq), item);
      }
    }),
  exec: teamProcedure
    .input(
      z.strictObject({
        sessionId: id,
        command: z.string().min(1).max(100_000),
        timeoutMs: z.number().int().min(1).max(3_600_000).optional(),
        /** Per stream (stdout, stderr), default 1 MiB: the rest is dropped and the result says `truncated`. */
        maxOutputBytes: z
          .number()
          .int()
          .min(1)
          .max(MAX_EXEC_OUTPUT_BYTES, `must be at most ${MAX_EXEC_OUTPUT_BYTES} (16 MiB); the output past the cap is dropped and the result says truncated`)
          .optional(),
      }),
    )
    .mutation(({ ctx, input }) => ctx.team.sessions.exec(input)),
  readFile: teamProcedure.input(z.strictObject({ sessionId: id, path: workspacePath })).query(({ ctx, input }) => ctx.team.sessions.readFile(input)),
  writeFile: teamProcedure
    .meta({ nulAllowedIn: ["content"] })
    .input(z.strictObject({ sessionId: id, path: workspacePath, content: z.string().max(14_000_000), encoding: z.enum(["utf8", "base64"]).default("utf8") }))
    .mutation(({ ctx, input }) => ctx.team.sessions.writeFile(input)),
  listFiles: teamProcedure.input(z.strictObject({ sessionId: id, path: workspacePath.default(".") })).query(({ ctx, input }) => ctx.team.sessions.listFiles(input)),
  terminate: teamProcedure.input(z.strictObject({ sessionId: id })).mutation(({ ctx, input }) => ctx.team.sessions.terminate(input)),
  restart: teamProcedure.input(z.strictObject({ sessionId: id })).mutation(({ ctx, input }) => ctx.team.sessions.restart(input)),
});
