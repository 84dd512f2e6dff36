import type { Logger } from "../logger";
import { SandboxUnavailableError, type ExecChunk } from "../sandbox/port";
import type { SandboxLifecycle } from "../services/sandbox-lifecycle";
import type { Harness, TurnRow, TurnStore, TurnToRun, TurnUsage } from "../services/turns";
import { ABORTED, addUsage, checkSandbox, exists, HarnessSetupError, isDomainUnavailable, replayPrompt, shellQuote } from "./external";
import { buildConversation } from "./history";
import { parseOpencodeLine } from "./opencode-events";

/** Where the local backend binds the binary, and where Kubernetes sandbox images must put it. */
export const OPENCODE_IN_SANDBOX = "/opt/berth/bin/opencode";
/** opencode's own state (its session database, config, npm cache) lives in the workspace, so it survives a new sandbox. */
const STATE_DIR = ".berth/opencode";
const PROMPT_FILE = `${STATE_DIR}/prompt.txt`;
const INSTRUCTIONS_FILE = `${STATE_DIR}/instructions.md`;
const DATABASE_FILE = `${STATE_DIR}/home/.local/share/opencode/opencode.db`;

type OpencodeState = { sessionId?: string };

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
    if ((await store.turnEvents(turn)).length > 0) {
      // opencode cannot pick a run up halfway: say so rather than run the message twice.
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
    const run = new RunRecorder(store, turn);

    let exit: ExecChunk & { type: "exit" };
    try {
      exit = await this.deps.lifecycle.withSandbox(turn.sessionId, async (client) => {
        await checkSandbox(client, { name: "opencode", binary: OPENCODE_IN_SANDBOX, source: "the opencode-ai package" });
        const state = (await store.harnessState(turn.sessionId, this.name)) as OpencodeState;
        let resumeId = state.sessionId && (await exists(client, DATABASE_FILE)) ? state.sessionId : undefined;
        if (state.sessionId && !resumeId) logger.info({ opencodeSession: state.sessionId }, "opencode's session is not in this workspace: replaying the conversation");
        const instructions = agent.systemPrompt.trim() !== "";
        if (instructions) await client.writeFile(INSTRUCTIONS_FILE, agent.systemPrompt);
        for (;;) {
          await client.writeFile(PROMPT_FILE, resumeId ? message : replayPrompt(earlier, message));
          const command = opencodeCommand({ model: agent.model, maxSteps: agent.maxSteps, resumeId, instructions });
          const result = await run.follow(client.exec({ command, timeoutMs: this.deps.turnTimeoutMs }, signal), async (sessionId) => {
            if (sessionId !== state.sessionId) {
              state.sessionId = sessionId;
              await store.setHarnessState(turn.sessionId, this.name, { sessionId });
            }
          });
          // A session id opencode no longer knows: it ends before doing anything. Replay instead.
          if (resumeId && !run.started && result.exitCode !== 0 && !signal.aborted) {
            logger.warn({ opencodeSession: resumeId, stderr: run.stderrTail() }, "opencode could not resume its session: replaying the conversation");
            resumeId = undefined;
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
    await this.store.finish(this.turn, { status, error, usage: this.usage });
  }
}

/** The whole opencode invocation; the message comes from a file (no argument length limit, no quoting). */
export function opencodeCommand(input: { model: string; maxSteps: number; resumeId: string | undefined; instructions: boolean }): string {
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
  const args = ["run", "--format", "json", "--auto", "--pure", "--title", shellQuote("Berth session"), ...(input.resumeId ? ["--session", shellQuote(input.resumeId)] : [])];
  return `mkdir -p "${STATE_DIR}/home" && exec env ${env.join(" ")} ${OPENCODE_IN_SANDBOX} ${args.join(" ")} < ${PROMPT_FILE}`;
}
