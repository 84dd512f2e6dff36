import type { DaemonClient, ExecChunk } from "../sandbox/port";
import type { Harness, TurnRow, TurnStore, TurnToRun, TurnUsage } from "../services/turns";
import { ClaudeCodeParser } from "./claude-code-events";
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

/** Where the local backend binds the binary, and where Kubernetes sandbox images must put it. */
export const CLAUDE_CODE_IN_SANDBOX = `${HARNESS_BIN_DIR}/claude`;
/** Claude Code's own state (its sessions, settings) lives in the workspace, so it survives a new sandbox. */
const STATE_DIR = ".berth/claude";
const CONFIG_DIR = `${STATE_DIR}/config`;
const PROMPT_FILE = `${STATE_DIR}/prompt.txt`;
const INSTRUCTIONS_FILE = `${STATE_DIR}/instructions.md`;
const HARNESS = "claude-code";

type ClaudeCodeState = { sessionId?: string };

/**
 * The `claude-code` harness: each user message becomes one `claude -p --output-format stream-json`
 * inside the session's sandbox, started through the sandbox daemon. Claude Code reaches the model
 * only through the sandbox's model relay (LiteLLM's Anthropic-compatible /v1/messages with the
 * platform's key, which never enters the sandbox). What it prints is recorded as Berth events as it
 * happens. Its session id is kept on the session row: the next turn, and a new sandbox on the same
 * workspace, resume that Claude Code session; on a workspace without it, the conversation is
 * replayed from Berth's log.
 */
export class ClaudeCodeHarness implements Harness {
  readonly name = HARNESS;

  constructor(private readonly deps: ExternalHarnessDeps) {}

  async runTurn({ turn: initial, agent }: TurnToRun, signals: { abort: AbortSignal; shutdown: AbortSignal }): Promise<void> {
    const { store } = this.deps;
    const logger = this.deps.logger.child({ sessionId: initial.sessionId, turnId: initial.id, harness: this.name });
    const begun = await beginExternalTurn(store, {
      turn: initial,
      harness: HARNESS,
      label: "Claude Code",
      unavailable: this.deps.unavailable,
      abortRequested: signals.abort.aborted,
      shuttingDown: signals.shutdown.aborted,
    });
    if (!begun) return;
    const { turn, message, earlier } = begun;
    const signal = AbortSignal.any([signals.abort, signals.shutdown]);
    let run = new RunRecorder(store, turn);

    let exit: ExecChunk & { type: "exit" };
    try {
      exit = await this.deps.lifecycle.withSandbox(turn.sessionId, async (client) => {
        await checkSandbox(client, { binary: CLAUDE_CODE_IN_SANDBOX, label: "Claude Code", packageName: "@anthropic-ai/claude-code" });
        const state = (await store.harnessState(turn.sessionId, HARNESS)) as ClaudeCodeState;
        await markRunning(store, turn, HARNESS);
        let resumeId = state.sessionId && (await fileExists(client, CONFIG_DIR)) ? state.sessionId : undefined;
        if (state.sessionId && !resumeId) logger.info({ claudeSession: state.sessionId }, "Claude Code's state is not in this workspace: replaying the conversation");
        const instructions = agent.systemPrompt.trim() !== "";
        if (instructions) await client.writeFile(INSTRUCTIONS_FILE, agent.systemPrompt);
        for (;;) {
          await client.writeFile(PROMPT_FILE, resumeId ? message : replayPrompt(earlier, message));
          const command = claudeCodeCommand({ model: agent.model, maxSteps: agent.maxSteps, resumeId, instructions });
          const result = await run.follow(client, command, this.deps.turnTimeoutMs, signal, async (sessionId) => {
            if (sessionId === state.sessionId) return;
            state.sessionId = sessionId;
            await store.setHarnessState(turn, HARNESS, { sessionId });
          });
          // A session Claude Code does not know ("No conversation found"): it ends before starting. Replay instead.
          if (resumeId && !run.started && result.exitCode !== 0 && !signal.aborted) {
            logger.warn({ claudeSession: resumeId, error: run.error, stderr: run.stderrTail() }, "Claude Code could not resume its session: replaying the conversation");
            resumeId = undefined;
            run = new RunRecorder(store, turn);
            continue;
          }
          return result;
        }
      });
    } catch (error) {
      const outcome = outcomeOfError("Claude Code", error, signals);
      return run.finish(outcome.status, outcome.error);
    }
    const outcome = outcomeOfExit("Claude Code", exit, signals, { timeoutMs: this.deps.turnTimeoutMs, failure: run.error, detail: null, stderrTail: run.stderrTail() });
    return run.finish(outcome.status, outcome.error);
  }
}

/** Records Claude Code's output as it comes: events right away, usage per model call. */
class RunRecorder {
  /** Claude Code started its session (the init line): a resume it could not do never gets here. */
  started = false;
  error: string | null = null;
  private usage: TurnUsage = { promptTokens: 0, completionTokens: 0 };
  private readonly stderr = { text: "" };
  private readonly parser = new ClaudeCodeParser();

  constructor(
    private readonly store: TurnStore,
    private readonly turn: TurnRow,
  ) {}

  follow(client: DaemonClient, command: string, timeoutMs: number, signal: AbortSignal, onSession: (sessionId: string) => Promise<void>): Promise<ExecChunk & { type: "exit" }> {
    return followLines(
      client.exec({ command, timeoutMs }, signal),
      async (line) => {
        const output = this.parser.parse(line);
        switch (output.kind) {
          case "ignored":
            return;
          case "result":
            this.error = output.error;
            return;
          case "session":
            this.started = true;
            return onSession(output.sessionId);
          case "events":
            return this.store.append(this.turn, boundEvents(output.events));
          case "step":
            if (output.toolStep) await this.store.recordStep(this.turn, [], output.usage);
            else this.usage = addUsage(this.usage, output.usage);
            return;
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

/** The whole Claude Code invocation; the message comes from a file (no argument length limit, no quoting). */
export function claudeCodeCommand(input: { model: string; maxSteps: number; resumeId: string | undefined; instructions: boolean }): string {
  const model = shellQuote(input.model);
  const env = [
    `HOME="$PWD/${STATE_DIR}/home"`,
    `CLAUDE_CONFIG_DIR="$PWD/${CONFIG_DIR}"`,
    // The relay, as an Anthropic base URL (Claude Code adds /v1/messages), with the sandbox's token as
    // a bearer token (what LiteLLM expects); no API key, which would be sent as x-api-key instead.
    `ANTHROPIC_BASE_URL="\${BERTH_MODEL_BASE_URL%/v1}"`,
    `ANTHROPIC_AUTH_TOKEN="$BERTH_MODEL_API_KEY"`,
    // Every model Claude Code would pick by itself (background tasks, subagents) is the agent's model.
    `ANTHROPIC_MODEL=${model}`,
    `ANTHROPIC_SMALL_FAST_MODEL=${model}`,
    `ANTHROPIC_DEFAULT_HAIKU_MODEL=${model}`,
    `ANTHROPIC_DEFAULT_SONNET_MODEL=${model}`,
    `ANTHROPIC_DEFAULT_OPUS_MODEL=${model}`,
    `CLAUDE_CODE_SUBAGENT_MODEL=${model}`,
    // No network but the relay: nothing to update, report or fetch.
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1",
    "DISABLE_AUTOUPDATER=1",
    "DISABLE_TELEMETRY=1",
    "DISABLE_ERROR_REPORTING=1",
    "DISABLE_BUG_COMMAND=1",
  ];
  const args = [
    "-p",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
    "--model",
    model,
    // The sandbox is the boundary: no permission prompts (there is nobody to answer them).
    "--permission-mode",
    "bypassPermissions",
    "--max-turns",
    String(input.maxSteps),
    ...(input.instructions ? ["--append-system-prompt-file", INSTRUCTIONS_FILE] : []),
    ...(input.resumeId ? ["--resume", shellQuote(input.resumeId)] : []),
  ];
  return `mkdir -p "${STATE_DIR}/home" "${CONFIG_DIR}" && exec env -u ANTHROPIC_API_KEY ${env.join(" ")} ${CLAUDE_CODE_IN_SANDBOX} ${args.join(" ")} < ${PROMPT_FILE}`;
}
