import { randomUUID } from "node:crypto";
import readline from "node:readline";
import { connect, positiveInt, sessionId, sleep, type GlobalOptions } from "./common";
import { CliError, EXIT, isTransient, toCliError } from "./errors";
import { followSession, TurnTracker } from "./follow";
import { EventPrinter, type SessionEvent } from "./render";

/**
 * `berth attach SESSION`: prints the session's recent events and then everything live (assistant text
 * as it streams), and sends each line read from stdin as a message. A dropped connection or a
 * restarted server is waited out; the stream resumes after the last seq printed, so nothing is
 * missed or printed twice. At the end of stdin it waits for the turns of the messages it sent, then
 * exits 0. Ctrl-C exits at once (130).
 */
export async function attach(id: string, options: GlobalOptions & { history?: string }): Promise<number> {
  const session = sessionId(id);
  const context = connect(options);
  const { out, client } = context;
  const history = options.history === undefined ? 20 : options.history === "all" ? Infinity : positiveInt("--history", options.history, { min: 0 });
  let initial;
  try {
    initial = await client.sessions.get.query({ sessionId: session });
  } catch (error) {
    throw toCliError(error, context.credentials.url);
  }
  const printFrom = Number.isFinite(history) ? Math.max(0, initial.lastSeq - history) : 0;
  out.notice(
    `Attached to session ${session} (${initial.status}).` +
      (process.stdin.isTTY ? " Type a message and press Enter; Ctrl-D leaves once your turns finish, Ctrl-C quits." : ""),
  );

  const printer = new EventPrinter(out);
  // Fed from seq 1 so that it knows how many turns are ahead of each message sent from here.
  const tracker = new TurnTracker();
  const controller = new AbortController();
  const sent: number[] = [];
  const queue: string[] = [];
  let lastSeen = 0;
  let sending = false;
  let inputClosed = false;
  let leaving = false;

  let finish!: (code: number) => void;
  let fail!: (error: unknown) => void;
  const finished = new Promise<number>((resolve, reject) => {
    finish = resolve;
    fail = reject;
  });

  const maybeLeave = async () => {
    if (leaving || !inputClosed || sending || queue.length > 0) return;
    if (sent.some((seq) => tracker.isOpen(seq))) return;
    leaving = true;
    // Print what was committed with the last turn's end (its status change, a trailing error).
    try {
      const { lastSeq } = await client.sessions.get.query({ sessionId: session });
      const deadline = Date.now() + 5_000;
      while (lastSeen < lastSeq && Date.now() < deadline) await sleep(50);
    } catch {
      // Leaving anyway.
    }
    finish(EXIT.ok);
  };

  const pump = async () => {
    if (sending) return;
    sending = true;
    try {
      while (queue.length > 0 && !controller.signal.aborted) {
        const text = queue[0]!;
        const idempotencyKey = randomUUID();
        for (let attempt = 0; ; attempt++) {
          try {
            const accepted = await client.sessions.send.mutate({ sessionId: session, text, idempotencyKey });
            sent.push(accepted.seq);
            break;
          } catch (error) {
            if (controller.signal.aborted) return;
            if (isTransient(error)) {
              if (attempt === 0) out.notice("cannot send now; retrying until the server answers…");
              await sleep(Math.min(5_000, 250 * 2 ** attempt));
              continue;
            }
            const problem = toCliError(error);
            if (problem.exitCode === EXIT.unauthorized || problem.exitCode === EXIT.notFound) throw problem;
            printer.interrupt();
            out.notice(`berth: not sent: ${problem.message}`);
            break;
          }
        }
        queue.shift();
      }
    } catch (error) {
      fail(error);
    } finally {
      sending = false;
    }
    void maybeLeave();
  };

  const input = readline.createInterface({ input: process.stdin, terminal: false });
  input.on("line", (line) => {
    if (!line.trim()) return;
    queue.push(line);
    void pump();
  });
  input.on("close", () => {
    inputClosed = true;
    void maybeLeave();
  });
  const onSigint = () => finish(130);
  process.once("SIGINT", onSigint);

  const onEvent = (event: SessionEvent) => {
    lastSeen = event.seq;
    tracker.push(event);
    if (event.seq > printFrom) printer.event(event);
    const payload = event.payload as { to?: string };
    if (event.type === "status" && payload.to === "terminated") {
      out.notice("The session was terminated.");
      finish(EXIT.ok);
      return;
    }
    void maybeLeave();
  };

  followSession(
    client,
    session,
    0,
    {
      onEvent,
      onDelta: (afterSeq, text) => {
        if (afterSeq >= printFrom) printer.delta(afterSeq, text);
      },
      onConnection: (state, seq) => {
        printer.interrupt();
        out.notice(state === "lost" ? "connection lost; reconnecting…" : `reconnected; resuming after #${seq}`);
      },
    },
    controller.signal,
  ).catch(fail);
  // A session already terminated has nothing to wait for once its log is printed.
  if (initial.status === "terminated") inputClosed = true;

  try {
    return await finished;
  } catch (error) {
    throw error instanceof CliError ? error : toCliError(error, context.credentials.url);
  } finally {
    controller.abort();
    printer.interrupt();
    process.off("SIGINT", onSigint);
    input.close();
  }
}
