import { randomUUID } from "node:crypto";
import { text as readStream } from "node:stream/consumers";
import type { BerthClient } from "../../server/client";
import { agentNames, collectPages, connect, positiveInt, resolveAgent, run, sessionId, sleep, type GlobalOptions } from "./common";
import { CliError, EXIT, isTransient } from "./errors";
import { followSession, TurnTracker, type TurnOutcome } from "./follow";
import { formatTime, table } from "./output";
import { EventPrinter, type SessionEvent } from "./render";

const STATUSES = ["pending", "provisioning", "ready", "running", "idle", "suspended", "reconnecting", "failed", "terminated"] as const;
type Status = (typeof STATUSES)[number];

type ListOptions = GlobalOptions & { limit?: string; cursor?: string; all?: boolean; status?: string; agent?: string };

export async function listSessions(options: ListOptions): Promise<void> {
  const context = connect(options);
  const { out, client } = context;
  const limit = options.limit ? positiveInt("--limit", options.limit, { max: 100 }) : 20;
  if (options.status !== undefined && !(STATUSES as readonly string[]).includes(options.status)) {
    throw new CliError(EXIT.usage, `--status must be one of ${STATUSES.join(", ")} (got ${JSON.stringify(options.status)})`);
  }
  await run(context, async () => {
    const agentId = options.agent ? await resolveAgent(client, options.agent) : undefined;
    const { items, nextCursor } = await collectPages(options, limit, (page) => client.sessions.list.query({ ...page, status: options.status as Status | undefined, agentId }));
    if (out.json) return out.document({ items, nextCursor });
    if (items.length === 0) return out.notice("No sessions: `berth sessions new --agent AGENT`.");
    const names = await agentNames(client);
    out.line(
      table(
        items.map((session) => [session.id, session.status, names.get(session.agentId) ?? session.agentId, session.title || "-", String(session.lastSeq), formatTime(session.lastActivityAt)]),
        ["ID", "STATUS", "AGENT", "TITLE", "EVENTS", "LAST ACTIVITY"],
        out.style,
      ),
    );
    if (nextCursor) out.notice(`More: --cursor ${nextCursor} (or --all).`);
  });
}

const SETTLED: Status[] = ["ready", "running", "idle", "failed", "terminated"];

export async function newSession(options: GlobalOptions & { agent: string; title?: string; wait?: boolean }): Promise<void> {
  const context = connect(options);
  const { out, client } = context;
  await run(context, async () => {
    const agentId = await resolveAgent(client, options.agent);
    let session = await client.sessions.create.mutate({ agentId, ...(options.title ? { title: options.title } : {}) });
    if (options.wait) {
      session = await out.spin("starting the sandbox", async () => {
        for (;;) {
          const current = await client.sessions.get.query({ sessionId: session.id }).catch((error: unknown) => {
            if (isTransient(error)) return null;
            throw error;
          });
          if (current && SETTLED.includes(current.status)) return current;
          await sleep(200);
        }
      });
      if (session.status === "failed") throw new CliError(EXIT.error, `the session ${session.id} failed to start${session.statusReason ? `: ${session.statusReason}` : ""}`);
    }
    if (out.json) return out.document(session);
    out.line(session.id);
    out.notice(`Session ${session.status}. Talk to it: berth attach ${session.id}`);
  });
}

export async function showSession(id: string, options: GlobalOptions): Promise<void> {
  const context = connect(options);
  const { out, client } = context;
  const session = await run(context, () => client.sessions.get.query({ sessionId: sessionId(id) }));
  if (out.json) return out.document(session);
  const rows: [string, string][] = [
    ["id", session.id],
    ["status", session.statusReason ? `${session.status} (${session.statusReason})` : session.status],
    ["agent", `${session.agentId} v${session.agentVersion}`],
    ["title", session.title || "-"],
    ["events", String(session.lastSeq)],
    ["tokens", `${session.promptTokens} prompt + ${session.completionTokens} completion${Number(session.costUsd) > 0 ? `, $${session.costUsd}` : ""}`],
    ["created", formatTime(session.createdAt)],
    ["last activity", formatTime(session.lastActivityAt)],
    ["sandbox", session.sandbox ? `generation ${session.sandbox.generation}, ${session.sandbox.status}, ${session.sandbox.backend} ${session.sandbox.name}${session.sandbox.hostPid ? ` (pid ${session.sandbox.hostPid})` : ""}` : "-"],
  ];
  for (const [key, value] of rows) out.line(`${out.style.dim(key.padEnd(14))}${value}`);
}

type SendOptions = GlobalOptions & { wait?: boolean; idempotencyKey?: string };

export async function sendMessage(id: string, words: string[], options: SendOptions): Promise<void> {
  const session = sessionId(id);
  const text = words.length === 1 && words[0] === "-" ? await readStream(process.stdin) : words.join(" ");
  if (!text.trim()) throw new CliError(EXIT.usage, "the message is empty (give TEXT, or - to read it from stdin)");
  const context = connect(options);
  const { out, client } = context;
  await run(context, async () => {
    // A retry after a lost answer is answered with the first result, never a second message.
    const idempotencyKey = options.idempotencyKey ?? randomUUID();
    const accepted = await withRetries(() => client.sessions.send.mutate({ sessionId: session, text, idempotencyKey }));
    if (!options.wait) {
      if (out.json) return out.document(accepted);
      out.line(`Sent as #${accepted.seq}${accepted.queued ? " (queued behind a running turn)" : ""}${accepted.duplicate ? " (already sent before with this idempotency key)" : ""}.`);
      return;
    }
    const outcome = await out.spin(accepted.queued ? "queued behind a running turn" : "waiting for the answer", () => waitForTurn(client, session, accepted));
    const answer = outcome.events.filter((event) => event.type === "assistant_message").map((event) => String((event.payload as { text?: string }).text ?? ""));
    const error = outcome.events.find((event) => event.type === "error");
    const errorMessage = error ? String((error.payload as { message?: string }).message) : outcome.status === "failed" ? "the session stopped before the turn finished" : undefined;
    if (out.json) {
      out.document({ ...accepted, status: outcome.status, answer: answer.join("\n\n"), error: errorMessage ?? null, events: outcome.events });
    } else if (answer.length > 0) {
      out.line(answer.map((text) => text.replace(/\s+$/, "")).join("\n\n"));
    }
    if (outcome.status === "failed") throw new CliError(EXIT.error, `the turn failed: ${errorMessage}`);
  });
}

/** Retries a call while the server cannot be reached or says it is unavailable (a few seconds). */
async function withRetries<T>(call: () => Promise<T>, attempts = 8): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (error) {
      if (!isTransient(error) || attempt >= attempts) throw error;
      await sleep(Math.min(3_000, 200 * 2 ** attempt));
    }
  }
}

/**
 * Follows the session until the turn of the accepted message ends. When nothing was running at
 * acceptance, that turn is the next to end after the message; otherwise the log is read from the
 * start to know how many turns are ahead of it.
 */
async function waitForTurn(client: BerthClient, session: string, accepted: { seq: number; queued: boolean; duplicate: boolean }): Promise<TurnOutcome> {
  const from = accepted.queued || accepted.duplicate ? 0 : accepted.seq - 1;
  const controller = new AbortController();
  const tracker = new TurnTracker();
  let settled: TurnOutcome | null = null;
  let checking = false;
  const done = new Promise<TurnOutcome>((resolve, reject) => {
    const check = () => {
      const outcome = tracker.ended.get(accepted.seq);
      if (!outcome || settled) return;
      if (outcome.status === "failed" || outcome.events.at(-1)?.type !== "usage") {
        settled = outcome;
        return resolve(outcome);
      }
      // A failed turn that used tokens writes `usage` then `error` in one commit: look at the next event.
      if (checking) return;
      checking = true;
      client.sessions.events
        .query({ sessionId: session, afterSeq: outcome.endSeq, limit: 1 })
        .then((page) => {
          checking = false;
          if (page.items[0]?.type !== "error") {
            settled = outcome;
            resolve(outcome);
          }
        })
        .catch(reject);
    };
    followSession(client, session, from, { onEvent: (event) => (tracker.push(event), check()) }, controller.signal).then(() => {}, reject);
  });
  try {
    return await done;
  } finally {
    controller.abort();
  }
}

export async function sessionLogs(id: string, options: GlobalOptions & { follow?: boolean; after?: string }): Promise<void> {
  const session = sessionId(id);
  const after = options.after === undefined ? 0 : positiveInt("--after", options.after, { min: 0 });
  const context = connect(options);
  const { out, client } = context;
  const printer = new EventPrinter(out);
  await run(context, async () => {
    if (!options.follow) {
      let cursor = after;
      for (;;) {
        const page = await client.sessions.events.query({ sessionId: session, afterSeq: cursor, limit: 1000 });
        for (const event of page.items) printer.event(event);
        if (page.items.length === 0 || page.nextCursor === null) return;
        cursor = page.items.at(-1)!.seq;
      }
    }
    await client.sessions.get.query({ sessionId: session });
    const controller = new AbortController();
    process.once("SIGINT", () => controller.abort());
    await followSession(
      client,
      session,
      after,
      {
        onEvent: (event: SessionEvent) => printer.event(event),
        onDelta: (afterSeq, text) => printer.delta(afterSeq, text),
        onConnection: (state, seq) => {
          printer.interrupt();
          out.notice(state === "lost" ? "connection lost; reconnecting…" : `reconnected; resuming after #${seq}`);
        },
      },
      controller.signal,
    );
    printer.interrupt();
  });
}

export async function execCommand(id: string, argv: string[], options: GlobalOptions & { timeout?: string }): Promise<number> {
  const session = sessionId(id);
  if (argv.length === 0) throw new CliError(EXIT.usage, "missing command: berth sessions exec SESSION -- COMMAND [ARGS...]");
  const timeoutMs = options.timeout === undefined ? undefined : positiveInt("--timeout", options.timeout, { max: 3600 }) * 1000;
  // One argument is a shell command line; several are an argv, each word quoted for the shell.
  const command = argv.length === 1 ? argv[0]! : argv.map(shellQuote).join(" ");
  const context = connect(options);
  const { out, client } = context;
  // Not retried: a command may have run even when its answer was lost.
  const result = await run(context, () => out.spin(`running ${command}`, () => client.sessions.exec.mutate({ sessionId: session, command, ...(timeoutMs ? { timeoutMs } : {}) })));
  const exitCode = result.exitCode ?? (result.timedOut ? 124 : 1);
  if (out.json) {
    out.document(result);
  } else {
    process.stdout.write(result.stdout);
    process.stderr.write(result.stderr);
    if (result.truncated) {
      const cut = [result.stdoutTruncated ? `stdout (${result.stdoutBytes} bytes)` : null, result.stderrTruncated ? `stderr (${result.stderrBytes} bytes)` : null].filter(Boolean);
      out.notice(`berth: output truncated: only the first MiB of ${cut.join(" and ")} was kept`);
    }
    if (result.timedOut) out.notice(`berth: the command timed out after ${result.durationMs} ms`);
  }
  return exitCode;
}

function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

export async function terminateSession(id: string, options: GlobalOptions): Promise<void> {
  const context = connect(options);
  const { out, client } = context;
  const session = await run(context, () => client.sessions.terminate.mutate({ sessionId: sessionId(id) }));
  if (out.json) return out.document(session);
  out.line(`Session ${session.id} is ${session.status}.`);
}

export async function abortTurn(id: string, options: GlobalOptions): Promise<void> {
  const context = connect(options);
  const { out, client } = context;
  const result = await run(context, () => client.sessions.abort.mutate({ sessionId: sessionId(id) }));
  if (out.json) return out.document(result);
  out.line(result.aborted ? "Aborting the running turn." : "No turn was running.");
}
