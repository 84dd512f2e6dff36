import type { z } from "zod";
import type { ChatMessage } from "../gateway/client";
import type { Logger } from "../logger";
import type { SandboxLifecycle } from "../services/sandbox-lifecycle";
import { DaemonRequestError, SandboxUnavailableError, type DaemonClient, type ExecChunk } from "../sandbox/port";
import { TurnSupersededError, type TurnRow, type TurnStore, type TurnUsage } from "../services/turns";
import { buildConversation } from "./history";
import { MAX_TOOL_OUTPUT_CHARS, truncateToolOutput } from "./tools";

/**
 * What the external harnesses (coding-agent CLIs run inside the sandbox: opencode, codex, …) share:
 * the start of a turn (including a message that was under way when the platform died), the check
 * that the sandbox can run the CLI, reading its output line by line, and the replay of the
 * conversation into a CLI session that does not have it.
 */

/** Where the local backend binds harness binaries, and where Kubernetes sandbox images must put them. */
export const HARNESS_BIN_DIR = "/opt/berth/bin";
export const ABORTED = "the turn was aborted by request";
/** Replayed tool output is cut to this many characters each: the replay is context, not an archive. */
const REPLAY_OUTPUT_CHARS = 2_000;

/** What every external harness is built with (by the composition root). */
export type ExternalHarnessDeps = {
  store: TurnStore;
  lifecycle: SandboxLifecycle;
  logger: Logger;
  /** Why the harness cannot run on this installation (no gateway), or null. */
  unavailable: string | null;
  /** Longest one message may take before the CLI is stopped. */
  turnTimeoutMs: number;
};

/** One line of a CLI's JSON output checked against `schema`; null for anything else (blank, not JSON, a shape Berth does not read). */
export function parseJsonLine<T>(schema: z.ZodType<T>, text: string): T | null {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return null;
  }
  const parsed = schema.safeParse(json);
  return parsed.success ? parsed.data : null;
}

/** The sandbox cannot run this harness (binary or model relay missing): the turn fails with this message. */
export class HarnessSetupError extends Error {}

export type ExternalTurn = {
  turn: TurnRow;
  /** The user message this turn answers. */
  message: string;
  /** The conversation before this turn, for a replay. */
  earlier: ChatMessage[];
};

/**
 * The common start of an external harness's turn. Returns null when the turn was ended here: not
 * running any more, unavailable, aborted before it began, or under way when the platform stopped
 * (a CLI cannot continue a run halfway, and running the message again would repeat its commands).
 */
export async function beginExternalTurn(
  store: TurnStore,
  input: { turn: TurnRow; harness: string; label: string; unavailable: string | null; abortRequested: boolean; shuttingDown: boolean },
): Promise<ExternalTurn | null> {
  const turn = await store.get(input.turn.id);
  if (turn.run !== input.turn.run) throw new TurnSupersededError(input.turn, `run ${turn.run} resumed the turn`);
  if (turn.status !== "running") return null;
  if (input.unavailable) {
    await store.finish(turn, { status: "failed", error: input.unavailable });
    return null;
  }
  if (input.abortRequested || turn.abortRequestedAt) {
    await store.finish(turn, { status: "aborted", error: ABORTED });
    return null;
  }
  if (input.shuttingDown) throw new Error("shutting down");
  const state = await store.harnessState(turn.sessionId, input.harness);
  if (state.runningTurn === turn.id || (await store.turnEvents(turn)).length > 0) {
    await store.clearRunningTurn(turn, input.harness);
    await store.finish(turn, {
      status: "failed",
      error: `the platform stopped while ${input.label} worked on this message; what it did is recorded above. Send a message to continue (${input.label} keeps its session).`,
    });
    return null;
  }
  await store.markSessionRunning(turn.sessionId);
  const history = await store.history(turn.sessionId);
  const userEvent = history.events.find((event) => event.seq === turn.userSeq && event.type === "user_message");
  return {
    turn,
    message: userEvent?.type === "user_message" ? userEvent.payload.text : "",
    earlier: buildConversation(history.events, history.turns.filter((other) => other.userSeq !== turn.userSeq), ""),
  };
}

/** Marks the turn as under way before the CLI starts, so the next process knows after a crash. */
export async function markRunning(store: TurnStore, turn: TurnRow, harness: string): Promise<void> {
  await store.setHarnessState(turn, harness, { runningTurn: turn.id });
}

export async function clearRunning(store: TurnStore, turn: TurnRow, harness: string): Promise<void> {
  await store.clearRunningTurn(turn, harness);
}

/**
 * Checks the sandbox has the CLI at `binary` and a model relay (BERTH_MODEL_BASE_URL, which the daemon
 * sets on both backends: it is the egress gateway's model route); a HarnessSetupError says what is missing.
 */
export async function checkSandbox(client: DaemonClient, input: { binary: string; label: string; packageName: string }): Promise<void> {
  let output = "";
  let exitCode: number | null = null;
  for await (const chunk of client.exec({ command: `test -x ${input.binary} || echo missing-binary; test -n "$BERTH_MODEL_BASE_URL" || echo missing-relay`, timeoutMs: 10_000 })) {
    if (chunk.type === "stdout") output += chunk.data;
    else if (chunk.type === "exit") exitCode = chunk.exitCode;
  }
  if (exitCode !== 0) throw new SandboxUnavailableError("the sandbox could not run a check command");
  if (output.includes("missing-binary")) {
    throw new HarnessSetupError(`${input.label} is not installed in this sandbox (${input.binary}); the local backend binds the binary of the ${input.packageName} package, Kubernetes sandbox images must carry it there`);
  }
  if (output.includes("missing-relay")) {
    throw new HarnessSetupError(
      `this sandbox has no model relay (BERTH_MODEL_BASE_URL), which ${input.label} needs to reach the LiteLLM Gateway: the sandbox daemon sets it when it has the platform's egress gateway (BERTH_DAEMON_GATEWAY); check that the sandbox's image runs this Berth's sandboxd`,
    );
  }
}

/** Whether a workspace path exists (relative to the workspace). */
export async function fileExists(client: DaemonClient, file: string): Promise<boolean> {
  const slash = file.lastIndexOf("/");
  try {
    const entries = await client.listFiles(slash >= 0 ? file.slice(0, slash) : ".");
    return entries.some((entry) => entry.name === file.slice(slash + 1));
  } catch (error) {
    if (error instanceof DaemonRequestError) return false;
    throw error;
  }
}

/**
 * Longest stdout line of a CLI that is read (its JSON events: a tool result with a large output is
 * a few hundred KB). A longer line is dropped as it arrives, never held whole, and noted in the
 * stderr tail.
 */
export const MAX_CLI_LINE_CHARS = 4 * 1024 * 1024;

/**
 * Reads a command's output: each complete stdout line goes to `onLine` (awaited, in order), the
 * last 4 KB of stderr are kept; returns the exit chunk. Memory stays bounded: a line longer than
 * MAX_CLI_LINE_CHARS is skipped (with a note in `stderr`).
 */
export async function followLines(chunks: AsyncIterable<ExecChunk>, onLine: (line: string) => Promise<unknown>, stderr: { text: string }): Promise<ExecChunk & { type: "exit" }> {
  let pending = "";
  let skipping = false;
  let skipped = 0;
  const note = (text: string) => {
    stderr.text = (stderr.text + text).slice(-4_000);
  };
  const skip = () => {
    skipped += 1;
    note(`\n[berth: skipped a stdout line longer than ${MAX_CLI_LINE_CHARS} characters (${skipped} so far)]\n`);
  };
  for await (const chunk of chunks) {
    if (chunk.type === "stderr") note(chunk.data);
    else if (chunk.type === "stdout") {
      let data = chunk.data;
      let newline = data.indexOf("\n");
      if (skipping) {
        if (newline === -1) continue;
        skipping = false;
        data = data.slice(newline + 1);
        newline = data.indexOf("\n");
      }
      while (newline !== -1) {
        const line = pending + data.slice(0, newline);
        pending = "";
        data = data.slice(newline + 1);
        if (line.length > MAX_CLI_LINE_CHARS) skip();
        else if (line.trim()) await onLine(line);
        newline = data.indexOf("\n");
      }
      pending += data;
      if (pending.length > MAX_CLI_LINE_CHARS) {
        pending = "";
        skipping = true;
        skip();
      }
    } else {
      if (!skipping && pending.trim()) await onLine(pending);
      return chunk;
    }
  }
  throw new SandboxUnavailableError("the sandbox daemon ended the command without its exit status");
}

/**
 * A CLI's events as stored: a tool result's output is cut like the builtin harness's
 * (MAX_TOOL_OUTPUT_CHARS, head and tail), so the log stays bounded whatever a CLI reports.
 */
export function boundEvents<T extends { type: string; payload: unknown }>(events: T[]): T[] {
  return events.map((event) => {
    if (event.type !== "tool_result") return event;
    const payload = event.payload as { output?: unknown };
    if (typeof payload.output !== "string" || payload.output.length <= MAX_TOOL_OUTPUT_CHARS) return event;
    return { ...event, payload: { ...payload, output: truncateToolOutput(payload.output) } };
  });
}

export type TurnOutcome = { status: "completed" | "failed" | "aborted"; error?: string };
type RunSignals = { abort: AbortSignal; shutdown: AbortSignal };

/**
 * How the turn ends when running the CLI threw. Rethrows what is not the turn's to record: a
 * shutdown (the job runs again) and errors the harness does not know.
 */
export function outcomeOfError(label: string, error: unknown, signals: RunSignals): TurnOutcome {
  if (signals.shutdown.aborted || error instanceof TurnSupersededError) throw error;
  if (signals.abort.reason instanceof TurnSupersededError) throw signals.abort.reason;
  if (signals.abort.aborted) return { status: "aborted", error: ABORTED };
  if (error instanceof HarnessSetupError) return { status: "failed", error: error.message };
  // No sandbox can start on this host (decision 024): running the turn again would not help.
  if (typeof error === "object" && error !== null && (error as { kind?: string }).kind === "precondition") return { status: "failed", error: (error as Error).message };
  if (isSandboxGone(error)) {
    const reason = (error as Error).message;
    return { status: "failed", error: `the sandbox stopped while ${label} ran (${reason}); it is being reconnected. Send a message to continue: ${label} resumes its session on the same workspace.` };
  }
  throw error;
}

/**
 * How the turn ends once the CLI exited. `failure` is an error the CLI reported (the turn fails even
 * on exit 0); `detail` says why it failed when it did not report one.
 */
export function outcomeOfExit(
  label: string,
  exit: ExecChunk & { type: "exit" },
  signals: RunSignals,
  input: { timeoutMs: number; failure: string | null; detail: string | null; stderrTail: string },
): TurnOutcome {
  if (signals.shutdown.aborted) throw new Error(`the process is shutting down; ${label} was stopped`);
  if (signals.abort.reason instanceof TurnSupersededError) throw signals.abort.reason;
  if (signals.abort.aborted) return { status: "aborted", error: ABORTED };
  if (exit.timedOut) return { status: "failed", error: `${label} did not finish within ${Math.round(input.timeoutMs / 1000)} s and was stopped` };
  if (exit.exitCode === 0 && !input.failure) return { status: "completed" };
  const detail = input.failure ?? input.detail ?? `exit ${exit.signal ?? exit.exitCode}${input.stderrTail ? `: ${input.stderrTail}` : ""}`;
  return { status: "failed", error: `${label} failed: ${detail}` };
}

/** A sandbox or a domain service reported it is unavailable (the session is being reconnected). */
export function isSandboxGone(error: unknown): boolean {
  return error instanceof SandboxUnavailableError || (typeof error === "object" && error !== null && (error as { kind?: string }).kind === "unavailable");
}

export function addUsage(a: TurnUsage, b: TurnUsage): TurnUsage {
  const cost = (a.cost ?? 0) + (b.cost ?? 0);
  return { promptTokens: a.promptTokens + b.promptTokens, completionTokens: a.completionTokens + b.completionTokens, ...(cost ? { cost } : {}) };
}

export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/** The new message, preceded by the earlier conversation when the CLI starts without it. */
export function replayPrompt(earlier: ChatMessage[], message: string): string {
  if (earlier.length === 0) return message;
  const lines: string[] = [];
  for (const entry of earlier) {
    if (entry.role === "user") lines.push(`User: ${entry.content}`);
    else if (entry.role === "assistant") {
      if (entry.content) lines.push(`Assistant: ${entry.content}`);
      for (const call of entry.tool_calls ?? []) lines.push(`Assistant called ${call.function.name} ${call.function.arguments}`);
    } else if (entry.role === "tool") {
      const output = entry.content.length > REPLAY_OUTPUT_CHARS ? `${entry.content.slice(0, REPLAY_OUTPUT_CHARS)}… (cut)` : entry.content;
      lines.push(`Tool result: ${output}`);
    }
  }
  return [
    "This conversation began earlier, and your own record of it is not available here (files made then may be missing too). Here it is, from the platform's log:",
    "",
    "<earlier-conversation>",
    ...lines,
    "</earlier-conversation>",
    "",
    "The new message:",
    "",
    message,
  ].join("\n");
}
