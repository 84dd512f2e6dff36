import { and, desc, eq, isNull, sql } from "drizzle-orm";
import type { Database, DatabaseOrTransaction } from "../../db/client";
import { agents, sandboxes, sessions, turns } from "../../db/schema";
import { MAX_OUTPUT_BYTES_LIMIT, runExec } from "../sandbox/daemon-client";
import { DaemonRequestError, SandboxUnavailableError, type DaemonClient, type FileEntry } from "../sandbox/port";
import { recordAudit } from "./audit";
import { conflict, DomainError, invalid, notFound, postgresErrorOf } from "./errors";
import { readEvents, type StoredEvent } from "./event-log";
import { TURN_ABORT_CHANNEL, type EventBus } from "./event-bus";
import { enqueueJob } from "./job-queue";
import { before, cursorAt, toPage, type Page } from "./pagination";
import type { Principal } from "./principal";
import type { SandboxLifecycle, SessionStatus } from "./sandbox-lifecycle";

export type SandboxView = {
  generation: number;
  status: string;
  backend: string;
  name: string;
  hostPid: number | null;
  fromWarmPool: boolean;
  createdAt: Date;
  readyAt: Date | null;
  endedAt: Date | null;
  endReason: string | null;
};

export type SessionView = {
  id: string;
  agentId: string;
  agentVersion: number;
  title: string;
  status: SessionStatus;
  statusReason: string | null;
  lastSeq: number;
  promptTokens: number;
  completionTokens: number;
  costUsd: string;
  createdAt: Date;
  lastActivityAt: Date;
};

const view = (row: typeof sessions.$inferSelect): SessionView => ({
  id: row.id,
  agentId: row.agentId,
  agentVersion: row.agentVersion,
  title: row.title,
  status: row.status,
  statusReason: row.statusReason,
  lastSeq: row.lastSeq,
  promptTokens: row.promptTokens,
  completionTokens: row.completionTokens,
  costUsd: row.costUsd,
  createdAt: row.createdAt,
  lastActivityAt: row.lastActivityAt,
});

/** Largest per-stream output cap `exec` accepts (16 MiB). */
export const MAX_EXEC_OUTPUT_BYTES = MAX_OUTPUT_BYTES_LIMIT;

/** Sessions of the caller's team, and what runs in their sandboxes. */
export class SessionService {
  constructor(
    private readonly db: Database,
    private readonly principal: Principal,
    private readonly lifecycle: SandboxLifecycle,
    private readonly bus: EventBus,
  ) {}

  private async own(sessionId: string) {
    const [row] = await this.db.select().from(sessions).where(and(eq(sessions.teamId, this.principal.teamId), eq(sessions.id, sessionId)));
    if (!row) throw notFound("session");
    return row;
  }

  /**
   * Persists the session and enqueues its provisioning in one transaction. On a host that cannot
   * start sandboxes it is refused with the reason (PRECONDITION_FAILED), and nothing is written.
   */
  async create(input: { agentId: string; title?: string }): Promise<SessionView> {
    return this.db.transaction((tx) => this.createIn(tx, input));
  }

  /** `create` inside the caller's transaction (the demo session also sends its first message in it). */
  async createIn(tx: DatabaseOrTransaction, input: { agentId: string; title?: string }): Promise<SessionView> {
    const [agent] = await tx.select().from(agents).where(and(eq(agents.teamId, this.principal.teamId), eq(agents.id, input.agentId), isNull(agents.deletedAt)));
    if (!agent) throw notFound("agent");
    this.lifecycle.assertSandboxesAvailable();
    const [row] = await tx.insert(sessions).values({ teamId: this.principal.teamId, agentId: agent.id, agentVersion: agent.currentVersion, title: input.title ?? "" }).returning();
    await enqueueJob(tx, "sandbox:provision", { sessionId: row!.id, reason: "create" }, { jobKey: `provision:${row!.id}`, maxAttempts: 3 });
    await recordAudit(tx, { teamId: this.principal.teamId, actor: this.principal.actor, action: "session.create", targetType: "session", targetId: row!.id, metadata: { agentId: agent.id, agentVersion: agent.currentVersion } });
    return view(row!);
  }

  async get(input: { sessionId: string }): Promise<SessionView & { sandbox: SandboxView | null }> {
    const row = await this.own(input.sessionId);
    const [sandbox] = await this.db.select().from(sandboxes).where(eq(sandboxes.sessionId, row.id)).orderBy(desc(sandboxes.generation)).limit(1);
    return {
      ...view(row),
      sandbox: sandbox
        ? { generation: sandbox.generation, status: sandbox.status, backend: sandbox.backend, name: sandbox.name, hostPid: sandbox.hostPid, fromWarmPool: sandbox.fromWarmPool, createdAt: sandbox.createdAt, readyAt: sandbox.readyAt, endedAt: sandbox.endedAt, endReason: sandbox.endReason }
        : null,
    };
  }

  /** A page of sessions; rows carry no history, so the cost does not grow with session length. */
  async list(input: { cursor?: string; limit: number; status?: SessionStatus; agentId?: string }): Promise<Page<SessionView>> {
    const rows = await this.db
      .select({ row: sessions, at: cursorAt(sessions.createdAt) })
      .from(sessions)
      .where(
        and(
          eq(sessions.teamId, this.principal.teamId),
          input.status ? eq(sessions.status, input.status) : undefined,
          input.agentId ? eq(sessions.agentId, input.agentId) : undefined,
          before(sessions.createdAt, sessions.id, input.cursor),
        ),
      )
      .orderBy(desc(sessions.createdAt), desc(sessions.id))
      .limit(input.limit + 1);
    return toPage(rows, input.limit, ({ row, at }) => ({ at, id: row.id }), ({ row }) => view(row));
  }

  async events(input: { sessionId: string; afterSeq: number; limit: number }) {
    await this.own(input.sessionId);
    return readEvents(this.db, { teamId: this.principal.teamId, sessionId: input.sessionId, afterSeq: input.afterSeq, limit: input.limit });
  }

  /**
   * Stores the user message and queues its turn, in one transaction: once this returns, the message
   * is durable and will be answered. A retry with the same idempotencyKey returns the first result.
   */
  async send(input: { sessionId: string; text: string; idempotencyKey?: string }): Promise<{ seq: number; turnId: string; queued: boolean; duplicate: boolean }> {
    return this.sendIn(this.db, input);
  }

  /** `send` inside the caller's transaction. */
  async sendIn(db: DatabaseOrTransaction, input: { sessionId: string; text: string; idempotencyKey?: string }): Promise<{ seq: number; turnId: string; queued: boolean; duplicate: boolean }> {
    // One statement (db/migrations/0002_accept_message.sql): the session row is locked for one round trip.
    try {
      const rows = await db.execute<{ accepted_seq: string; accepted_turn_id: string; was_queued: boolean; was_duplicate: boolean }>(
        sql`select * from berth_accept_message(${this.principal.teamId}::uuid, ${input.sessionId}::uuid, ${input.text}, ${input.idempotencyKey ?? null}::text)`,
      );
      const row = rows[0]!;
      return { seq: Number(row.accepted_seq), turnId: row.accepted_turn_id, queued: row.was_queued, duplicate: row.was_duplicate };
    } catch (error) {
      const cause = postgresErrorOf(error);
      if (cause.code === "P0002") throw notFound("session");
      if (cause.code === "BT409") throw conflict(cause.message ?? "conflict");
      throw error;
    }
  }

  /** Stops the running turn (its current model call or command is cancelled). Queued messages stay queued. */
  async abort(input: { sessionId: string }): Promise<{ aborted: boolean }> {
    await this.own(input.sessionId);
    const rows = await this.db
      .update(turns)
      .set({ abortRequestedAt: sql`now()` })
      .where(and(eq(turns.teamId, this.principal.teamId), eq(turns.sessionId, input.sessionId), eq(turns.status, "running")))
      .returning({ id: turns.id });
    for (const row of rows) await this.db.execute(sql`select pg_notify(${TURN_ABORT_CHANNEL}, ${row.id})`);
    if (rows.length > 0) await recordAudit(this.db, { teamId: this.principal.teamId, actor: this.principal.actor, action: "session.abort", targetType: "session", targetId: input.sessionId });
    return { aborted: rows.length > 0 };
  }

  /**
   * The session's events from `afterSeq` on, then live: stored events are always read from the log by
   * seq (notifications only wake the reader), so a follower never sees a gap or a duplicate. Live
   * text deltas (not stored) are interleaved as they arrive.
   */
  async *follow(input: { sessionId: string; afterSeq: number }, signal: AbortSignal): AsyncGenerator<{ kind: "event"; event: StoredEvent } | { kind: "delta"; afterSeq: number; text: string }> {
    await this.own(input.sessionId);
    let after = input.afterSeq;
    let wake: (() => void) | null = null;
    let dirty = true;
    const deltas: string[] = [];
    const poke = () => {
      dirty = true;
      wake?.();
    };
    const unsubscribe = this.bus.subscribe(input.sessionId, {
      onEvents: (lastSeq) => {
        if (lastSeq > after) poke();
      },
      onDelta: (text) => {
        deltas.push(text);
        poke();
      },
    });
    const onAbort = () => wake?.();
    signal.addEventListener("abort", onAbort);
    try {
      while (!signal.aborted) {
        if (dirty) {
          dirty = false;
          for (;;) {
            const page = await readEvents(this.db, { teamId: this.principal.teamId, sessionId: input.sessionId, afterSeq: after, limit: 500 });
            for (const event of page.items) {
              after = event.seq;
              yield { kind: "event", event };
            }
            if (page.nextCursor === null) break;
          }
          while (deltas.length > 0) yield { kind: "delta", afterSeq: after, text: deltas.shift()! };
        }
        // Re-read now and then even without a notification (a LISTEN connection can drop).
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            dirty = true;
            resolve();
          }, 10_000);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
          if (dirty || signal.aborted) wake();
        });
        wake = null;
      }
    } finally {
      unsubscribe();
      signal.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Runs a command in the session's sandbox (resuming it if suspended). Each stream keeps its first
   * `maxOutputBytes` (default 1 MiB, cut on a UTF-8 boundary); `truncated` says one was cut. When
   * it returns, every process the command started is gone.
   */
  async exec(input: { sessionId: string; command: string; timeoutMs?: number; maxOutputBytes?: number }) {
    await this.own(input.sessionId);
    return this.inSandbox(input.sessionId, async (client) => {
      const result = await runExec(client, { command: input.command, timeoutMs: input.timeoutMs }, { maxOutputBytes: input.maxOutputBytes });
      return {
        exitCode: result.exitCode,
        stdout: result.stdout,
        stderr: result.stderr,
        timedOut: result.timedOut,
        durationMs: result.durationMs,
        truncated: result.truncated,
        stdoutTruncated: result.stdoutTruncated,
        stderrTruncated: result.stderrTruncated,
        stdoutBytes: result.stdoutBytes,
        stderrBytes: result.stderrBytes,
      };
    });
  }

  async readFile(input: { sessionId: string; path: string }) {
    await this.own(input.sessionId);
    return this.inSandbox(input.sessionId, (client) => client.readFile(input.path));
  }

  async writeFile(input: { sessionId: string; path: string; content: string; encoding: "utf8" | "base64" }) {
    await this.own(input.sessionId);
    return this.inSandbox(input.sessionId, (client) => client.writeFile(input.path, input.content, input.encoding));
  }

  async listFiles(input: { sessionId: string; path: string }): Promise<FileEntry[]> {
    await this.own(input.sessionId);
    return this.inSandbox(input.sessionId, (client) => client.listFiles(input.path));
  }

  async terminate(input: { sessionId: string }) {
    await this.own(input.sessionId);
    await this.lifecycle.terminate(input.sessionId);
    await recordAudit(this.db, { teamId: this.principal.teamId, actor: this.principal.actor, action: "session.terminate", targetType: "session", targetId: input.sessionId });
    return this.get(input);
  }

  async restart(input: { sessionId: string }) {
    await this.own(input.sessionId);
    await this.lifecycle.restart(input.sessionId);
    await recordAudit(this.db, { teamId: this.principal.teamId, actor: this.principal.actor, action: "session.restart", targetType: "session", targetId: input.sessionId });
    return this.get(input);
  }

  private async inSandbox<T>(sessionId: string, work: (client: DaemonClient) => Promise<T>): Promise<T> {
    try {
      return await this.lifecycle.withSandbox(sessionId, work);
    } catch (error) {
      if (error instanceof DaemonRequestError) throw invalid(error.message);
      if (error instanceof SandboxUnavailableError) throw new DomainError("unavailable", "the session's sandbox is not reachable; it is being reconnected, try again shortly");
      throw error;
    }
  }
}
