import type { DaemonClient, ExecChunk } from "../sandbox/port";
import type { Harness, TurnRow, TurnStore, TurnToRun, TurnUsage } from "../services/turns";
import {
  boundEvents,
  type ExternalHarnessDeps,
  addUsage,
  beginExternalTurn,
  checkSandbox,
  clearRunning,
  fileExists,
  followLines,
  HARNESS_BIN_DIR,
  markRunning,
  outcomeOfError,
  outcomeOfExit,
  replayPrompt,
  shellQuote,
} from "./external";
import { parseOpencodeLine } from "./opencode-events";

export const OPENCODE_IN_SANDBOX = `${HARNESS_BIN_DIR}/opencode`;
/** opencode's own state (its session database, config, npm cache) lives in the workspace, so it survives a new sandbox. */
const STATE_DIR = ".berth/opencode";
const PROMPT_FILE = `${STATE_DIR}/prompt.txt`;
const INSTRUCTIONS_FILE = `${STATE_DIR}/instructions.md`;
const DATABASE_FILE = `${STATE_DIR}/home/.local/share/opencode/opencode.db`;
const HARNESS = "opencode";

/** Kept on the session: opencode's session id, and the turn an opencode process is working on. */
type OpencodeState = { sessionId?: string; runningTurn?: string };
/** Which opencode session a run continues: a known one, the workspace's last one, or a new one. */
type OpencodeResume = { sessionId: string } | "last" | null;

/**
 * The `opencode` harness: each user message becomes one `opencode run --format json` inside the
 * session's sandbox, started through the sandbox daemon. opencode reaches the model only through the
 * sandbox's model relay (the LiteLLM Gateway with the platform's key, which never enters the
 * sandbox). What it prints is recorded as Berth events as it happens. Its session id is kept on the
 * session row: the next turn, and a new sandbox on the same workspace, continue that opencode
 * session; on a workspace without it (a fresh one), the conversation is replayed from Berth's log.
 */
export class OpencodeHarness implements Harness {
  readonly name = HARNESS;

  constructor(private readonly deps: ExternalHarnessDeps) {}

  async runTurn({ turn: initial, agent }: TurnToRun, signals: { abort: AbortSignal; shutdown: AbortSignal }): Promise<void> {
    const { store } = this.deps;
    const logger = this.deps.logger.child({ sessionId: initial.sessionId, turnId: initial.id, harness: HARNESS });
    const begun = await beginExternalTurn(store, {
      turn: initial,
      harness: HARNESS,
      label: "opencode",
      unavailable: this.deps.unavailable,
      abortRequested: signals.abort.aborted,
      shuttingDown: signals.shutdown.aborted,
    });
    if (!begun) return;
    const { turn, message, earlier } = begun;
    const signal = AbortSignal.any([signals.abort, signals.shutdown]);
    const run = new RunRecorder(store, turn);

    let exit: ExecChunk & { type: "exit" };
    try {
      exit = await this.deps.lifecycle.withSandbox(turn.sessionId, async (client) => {
        await checkSandbox(client, { binary: OPENCODE_IN_SANDBOX, label: "opencode", packageName: "opencode-linux-x64" });
        const state = (await store.harnessState(turn.sessionId, HARNESS)) as OpencodeState;
        await markRunning(store, turn, HARNESS);
        // The workspace keeps opencode's store: continue the session we know, or (a crash before
        // opencode printed its id) the last one in this workspace, which can only be ours.
        let resume: OpencodeResume = (await fileExists(client, DATABASE_FILE)) ? (state.sessionId ? { sessionId: state.sessionId } : "last") : null;
        if (state.sessionId && !resume) logger.info({ opencodeSession: state.sessionId }, "opencode's session is not in this workspace: replaying the conversation");
        const instructions = agent.systemPrompt.trim() !== "";
        if (instructions) await client.writeFile(INSTRUCTIONS_FILE, agent.systemPrompt);
        for (;;) {
          await client.writeFile(PROMPT_FILE, resume ? message : replayPrompt(earlier, message));
          const command = opencodeCommand({ model: agent.model, maxSteps: agent.maxSteps, resume, instructions });
          const result = await run.follow(client, command, this.deps.turnTimeoutMs, signal, async (sessionId) => {
            if (sessionId === state.sessionId) return;
            state.sessionId = sessionId;
            await store.setHarnessState(turn, HARNESS, { sessionId });
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
      const outcome = outcomeOfError("opencode", error, signals);
      return run.finish(outcome.status, outcome.error);
    }
    const outcome = outcomeOfExit("opencode", exit, signals, { timeoutMs: this.deps.turnTimeoutMs, failure: run.error, detail: null, stderrTail: run.stderrTail() });
    return run.finish(outcome.status, outcome.error);
  }
}

/** Records opencode's output as it comes: events right away, usage per model call. */
class RunRecorder {
  started = false;
  error: string | null = null;
  private usage: TurnUsage = { promptTokens: 0, completionTokens: 0 };
  private readonly stderr = { text: "" };

  constructor(
    private readonly store: TurnStore,
    private readonly turn: TurnRow,
  ) {}

  follow(client: DaemonClient, command: string, timeoutMs: number, signal: AbortSignal, onSession: (sessionId: string) => Promise<void>) {
    return followLines(
      client.exec({ command, timeoutMs }, signal),
      async (line) => {
        const output = parseOpencodeLine(line);
        if (output.kind === "ignored") return;
        if (output.kind === "error") {
          this.error = output.message;
          return;
        }
        this.started = true;
        await onSession(output.sessionId);
        if (output.kind === "events") await this.store.append(this.turn, boundEvents(output.events));
        else if (output.kind === "step") {
          if (output.toolStep) await this.store.recordStep(this.turn, [], output.usage);
          else this.usage = addUsage(this.usage, output.usage);
        }
      },
      this.stderr,
    );
  }

  stderrTail(): string {
    return this.stderr.text.trim().split("\n").slice(-3).join(" ").slice(-500);
  }

  async finish(status: "completed" | "failed" | "aborted", error?: string): Promise<void> {
    await clearRunning(this.store, this.turn, HARNESS);
    await this.store.finish(this.turn, { status, error, usage: this.usage });
  }
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
