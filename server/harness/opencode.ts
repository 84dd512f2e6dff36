import type { ChatMessage } from "../gateway/client";
import type { Logger } from "../logger";
import { DaemonRequestError, SandboxUnavailableError, type DaemonClient, type ExecChunk } from "../sandbox/port";
import type { SandboxLifecycle } from "../services/sandbox-lifecycle";
import type { Harness, TurnRow, TurnStore, TurnToRun, TurnUsage } from "../services/turns";
import { buildConversation } from "./history";
import { parseOpencodeLine } from "./opencode-events";

/** Where the local backend binds the binary, and where Kubernetes sandbox images must put it. */
export const OPENCODE_IN_SANDBOX = "/opt/berth/bin/opencode";
/** opencode's own state (its session database, config, npm cache) lives in the workspace, so it survives a new sandbox. */
const STATE_DIR = ".berth/opencode";
const PROMPT_FILE = `${STATE_DIR}/prompt.txt`;
const INSTRUCTIONS_FILE = `${STATE_DIR}/instructions.md`;
const DATABASE_FILE = `${STATE_DIR}/home/.local/share/opencode/opencode.db`;
/** Replayed tool output is cut to this many characters each: the replay is context, not an archive. */
const REPLAY_OUTPUT_CHARS = 2_000;
const ABORTED = "the turn was aborted by request";

/** Kept on the session: opencode's session id, and the turn an opencode process is working on. */
type OpencodeState = { sessionId?: string; runningTurn?: string };
/** Which opencode session a run continues: a known one, the workspace's last one, or a new one. */
type OpencodeResume = { sessionId: string } | "last" | null;

class HarnessSetupError extends Error {}

/**
 * The `opencode` harness: each user message becomes one `opencode run --format json` inside the
 * session's sandbox, started through the sandbox daemon. opencode reaches the model only through the
 * sandbox's model relay (the LiteLLM Gateway with the platform's key, which never enters the
 * sandbox). What it prints is recorded as Berth events as it happens. Its session id is kept on the
 * session row: the next turn, and a new sandbox on the same workspace, continue that opencode
 * session; on a workspace without it (a fresh one), the conversation is replayed from Berth's log.
 */
export class OpencodeHarness implements Harness {
  readonly name = "opencode";

  constructor(
    private readonly deps: {
      store: TurnStore;
      lifecycle: SandboxLifecycle;
      logger: Logger;
      /** Why opencode cannot run on this installation (no gateway), or null. */
      unavailable: string | null;
      turnTimeoutMs: number;
    },
  ) {}

  async runTurn({ turn: initial, agent }: TurnToRun, signals: { abort: AbortSignal; shutdown: AbortSignal }): Promise<void> {
    const { store } = this.deps;
    const logger = this.deps.logger.child({ sessionId: initial.sessionId, turnId: initial.id, harness: "opencode" });
    const turn = await store.get(initial.id);
    if (turn.status !== "running") return;
    if (this.deps.unavailable) {
      await store.finish(turn, { status: "failed", error: this.deps.unavailable });
      return;
    }
    if (signals.abort.aborted || turn.abortRequestedAt) {
      await store.finish(turn, { status: "aborted", error: ABORTED });
      return;
    }
    if (signals.shutdown.aborted) throw new Error("shutting down");
    const saved = (await store.harnessState(turn.sessionId, this.name)) as OpencodeState;
    if (saved.runningTurn === turn.id || (await store.turnEvents(turn)).length > 0) {
      // opencode cannot pick a run up halfway: say so rather than run the message (and its commands) twice.
      await store.setHarnessState(turn.sessionId, this.name, { sessionId: saved.sessionId });
      await store.finish(turn, {
        status: "failed",
        error: "the platform stopped while opencode worked on this message; what it did is recorded above. Send a message to continue (opencode keeps its session).",
      });
      return;
    }
    await store.markSessionRunning(turn.sessionId);

    const history = await store.history(turn.sessionId);
    const userEvent = history.events.find((event) => event.seq === turn.userSeq && event.type === "user_message");
    const message = userEvent?.type === "user_message" ? userEvent.payload.text : "";
    const earlier = buildConversation(history.events, history.turns.filter((other) => other.userSeq !== turn.userSeq), "");
    const signal = AbortSignal.any([signals.abort, signals.shutdown]);
    const run = new RunRecorder(store, turn, async () => {
      const current = (await store.harnessState(turn.sessionId, this.name)) as OpencodeState;
      if (current.runningTurn === turn.id) await store.setHarnessState(turn.sessionId, this.name, { sessionId: current.sessionId });
    });

    let exit: ExecChunk & { type: "exit" };
    try {
      exit = await this.deps.lifecycle.withSandbox(turn.sessionId, async (client) => {
        await checkSandbox(client);
        const state = (await store.harnessState(turn.sessionId, this.name)) as OpencodeState;
        // Recorded before opencode starts: after a crash, the next process knows this message was under way.
        await store.setHarnessState(turn.sessionId, this.name, { ...state, runningTurn: turn.id });
        // The workspace keeps opencode's store: continue the session we know, or (a crash before
        // opencode printed its id) the last one in this workspace, which can only be ours.
        let resume: OpencodeResume = (await exists(client, DATABASE_FILE)) ? (state.sessionId ? { sessionId: state.sessionId } : "last") : null;
        if (state.sessionId && !resume) logger.info({ opencodeSession: state.sessionId }, "opencode's session is not in this workspace: replaying the conversation");
        const instructions = agent.systemPrompt.trim() !== "";
        if (instructions) await client.writeFile(INSTRUCTIONS_FILE, agent.systemPrompt);
        for (;;) {
          await client.writeFile(PROMPT_FILE, resume ? message : replayPrompt(earlier, message));
          const command = opencodeCommand({ model: agent.model, maxSteps: agent.maxSteps, resume, instructions });
          const result = await run.follow(client.exec({ command, timeoutMs: this.deps.turnTimeoutMs }, signal), async (sessionId) => {
            if (sessionId !== state.sessionId) {
              state.sessionId = sessionId;
              await store.setHarnessState(turn.sessionId, this.name, { sessionId, runningTurn: turn.id });
            }
          });
          // A session opencode no longer knows: it ends before doing anything. Replay instead.
          if (resume && !run.started && result.exitCode !== 0 && !signal.aborted) {
            logger.warn({ resume, stderr: run.stderrTail() }, "opencode could not resume its session: replaying the conversation");
            resume = null;
            continue;
          }
          return result;
        }
      });
    } catch (error) {
      if (signals.shutdown.aborted) throw error;
      if (signals.abort.aborted) return run.finish("aborted", ABORTED);
      if (error instanceof HarnessSetupError) return run.finish("failed", error.message);
      if (error instanceof SandboxUnavailableError || isDomainUnavailable(error)) {
        return run.finish("failed", `the sandbox stopped while opencode ran (${(error as Error).message}); it is being reconnected. Send a message to continue: opencode resumes its session on the same workspace.`);
      }
      throw error;
    }
    if (signals.shutdown.aborted) throw new Error("the process is shutting down; opencode was stopped");
    if (signals.abort.aborted) return run.finish("aborted", ABORTED);
    if (exit.timedOut) return run.finish("failed", `opencode did not finish within ${Math.round(this.deps.turnTimeoutMs / 1000)} s and was stopped`);
    if (exit.exitCode === 0 && !run.error) return run.finish("completed");
    const detail = run.error ?? `exit ${exit.signal ?? exit.exitCode}${run.stderrTail() ? `: ${run.stderrTail()}` : ""}`;
    return run.finish("failed", `opencode failed: ${detail}`);
  }
}

/** Records opencode's output as it comes: events right away, usage per model call. */
class RunRecorder {
  started = false;
  error: string | null = null;
  private usage: TurnUsage = { promptTokens: 0, completionTokens: 0 };
  private stderr = "";

  constructor(
    private readonly store: TurnStore,
    private readonly turn: TurnRow,
    private readonly clearRunning: () => Promise<void>,
  ) {}

  async follow(chunks: AsyncIterable<ExecChunk>, onSession: (sessionId: string) => Promise<void>): Promise<ExecChunk & { type: "exit" }> {
    let pending = "";
    const handle = async (text: string) => {
      const output = parseOpencodeLine(text);
      if (output.kind === "ignored") return;
      if (output.kind === "error") {
        this.error = output.message;
        return;
      }
      this.started = true;
      await onSession(output.sessionId);
      if (output.kind === "events") await this.store.append(this.turn, output.events);
      else if (output.kind === "step") {
        if (output.toolStep) await this.store.recordStep(this.turn, [], output.usage);
        else this.usage = addUsage(this.usage, output.usage);
      }
    };
    for await (const chunk of chunks) {
      if (chunk.type === "stderr") this.stderr = (this.stderr + chunk.data).slice(-4_000);
      else if (chunk.type === "stdout") {
        pending += chunk.data;
        const lines = pending.split("\n");
        pending = lines.pop()!;
        for (const text of lines) if (text.trim()) await handle(text);
      } else {
        if (pending.trim()) await handle(pending);
        return chunk;
      }
    }
    throw new SandboxUnavailableError("the sandbox daemon ended the command without its exit status");
  }

  stderrTail(): string {
    return this.stderr.trim().split("\n").slice(-3).join(" ").slice(-500);
  }

  async finish(status: "completed" | "failed" | "aborted", error?: string): Promise<void> {
    await this.clearRunning();
    await this.store.finish(this.turn, { status, error, usage: this.usage });
  }
}

function addUsage(a: TurnUsage, b: TurnUsage): TurnUsage {
  const cost = (a.cost ?? 0) + (b.cost ?? 0);
  return { promptTokens: a.promptTokens + b.promptTokens, completionTokens: a.completionTokens + b.completionTokens, ...(cost ? { cost } : {}) };
}

async function checkSandbox(client: DaemonClient): Promise<void> {
  let output = "";
  let exitCode: number | null = null;
  for await (const chunk of client.exec({ command: `test -x ${OPENCODE_IN_SANDBOX} || echo missing-binary; test -n "$BERTH_MODEL_BASE_URL" || echo missing-relay`, timeoutMs: 10_000 })) {
    if (chunk.type === "stdout") output += chunk.data;
    else if (chunk.type === "exit") exitCode = chunk.exitCode;
  }
  if (exitCode !== 0) throw new SandboxUnavailableError("the sandbox could not run a check command");
  if (output.includes("missing-binary")) {
    throw new HarnessSetupError(`opencode is not installed in this sandbox (${OPENCODE_IN_SANDBOX}); the local backend binds the binary of the opencode-ai package, Kubernetes sandbox images must carry it there`);
  }
  if (output.includes("missing-relay")) {
    throw new HarnessSetupError("this sandbox has no model relay (BERTH_MODEL_BASE_URL), which opencode needs to reach the gateway; the Kubernetes backend does not provide one yet");
  }
}

async function exists(client: DaemonClient, file: string): Promise<boolean> {
  const slash = file.lastIndexOf("/");
  try {
    const entries = await client.listFiles(file.slice(0, slash));
    return entries.some((entry) => entry.name === file.slice(slash + 1));
  } catch (error) {
    if (error instanceof DaemonRequestError) return false;
    throw error;
  }
}

function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/** The whole opencode invocation; the message comes from a file (no argument length limit, no quoting). */
export function opencodeCommand(input: { model: string; maxSteps: number; resume: OpencodeResume; instructions: boolean }): string {
  const config = {
    $schema: "https://opencode.ai/config.json",
    provider: {
      berth: {
        npm: "@ai-sdk/openai-compatible",
        name: "Berth (LiteLLM Gateway)",
        // opencode fills these from the environment the daemon gives every command.
        options: { baseURL: "{env:BERTH_MODEL_BASE_URL}", apiKey: "{env:BERTH_MODEL_API_KEY}" },
        models: { [input.model]: { name: input.model } },
      },
    },
    model: `berth/${input.model}`,
    small_model: `berth/${input.model}`,
    agent: { build: { steps: input.maxSteps } },
    ...(input.instructions ? { instructions: ["{env:BERTH_OPENCODE_INSTRUCTIONS}"] } : {}),
    autoupdate: false,
    share: "disabled",
  };
  const env = [
    `HOME="$PWD/${STATE_DIR}/home"`,
    `XDG_CACHE_HOME=/tmp/opencode-cache`,
    `BERTH_OPENCODE_INSTRUCTIONS="$PWD/${INSTRUCTIONS_FILE}"`,
    `OPENCODE_CONFIG_CONTENT=${shellQuote(JSON.stringify(config))}`,
    // No network but the relay: nothing to fetch, nothing to update, nothing to share.
    "OPENCODE_DISABLE_MODELS_FETCH=1",
    "OPENCODE_DISABLE_AUTOUPDATE=1",
    "OPENCODE_DISABLE_SHARE=1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS=1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD=1",
  ];
  const args = ["run", "--format", "json", "--auto", "--pure", "--title", shellQuote("Berth session"), ...(input.resume === "last" ? ["--continue"] : input.resume ? ["--session", shellQuote(input.resume.sessionId)] : [])];
  return `mkdir -p "${STATE_DIR}/home" && exec env ${env.join(" ")} ${OPENCODE_IN_SANDBOX} ${args.join(" ")} < ${PROMPT_FILE}`;
}

/** The new message, preceded by the earlier conversation when opencode starts without it. */
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

function isDomainUnavailable(error: unknown): boolean {
  return typeof error === "object" && error !== null && (error as { kind?: string }).kind === "unavailable";
}

