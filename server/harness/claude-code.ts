import type { Logger } from "../logger";
import { SandboxUnavailableError, type ExecChunk } from "../sandbox/port";
import type { SandboxLifecycle } from "../services/sandbox-lifecycle";
import type { Harness, TurnRow, TurnStore, TurnToRun, TurnUsage } from "../services/turns";
import { ClaudeCodeParser } from "./claude-code-events";
import { ABORTED, addUsage, checkSandbox, exists, HarnessSetupError, isDomainUnavailable, replayPrompt, shellQuote } from "./external";
import { buildConversation } from "./history";

/** Where the local backend binds the binary, and where Kubernetes sandbox images must put it. */
export const CLAUDE_CODE_IN_SANDBOX = "/opt/berth/bin/claude";
/** Claude Code's own state (its sessions, settings) lives in the workspace, so it survives a new sandbox. */
const STATE_DIR = ".berth/claude";
const CONFIG_DIR = `${STATE_DIR}/config`;
const PROMPT_FILE = `${STATE_DIR}/prompt.txt`;
const INSTRUCTIONS_FILE = `${STATE_DIR}/instructions.md`;

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
  readonly name = "claude-code";

  constructor(
    private readonly deps: {
      store: TurnStore;
      lifecycle: SandboxLifecycle;
      logger: Logger;
      /** Why Claude Code cannot run on this installation (no gateway), or null. */
      unavailable: string | null;
      turnTimeoutMs: number;
    },
  ) {}

  async runTurn({ turn: initial, agent }: TurnToRun, signals: { abort: AbortSignal; shutdown: AbortSignal }): Promise<void> {
    const { store } = this.deps;
    const logger = this.deps.logger.child({ sessionId: initial.sessionId, turnId: initial.id, harness: this.name });
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
      // Claude Code cannot pick a run up halfway: say so rather than run the message twice.
      await store.finish(turn, {
        status: "failed",
        error: "the platform stopped while Claude Code worked on this message; what it did is recorded above. Send a message to continue (Claude Code keeps its session).",
      });
      return;
    }
    await store.markSessionRunning(turn.sessionId);

    const history = await store.history(turn.sessionId);
    const userEvent = history.events.find((event) => event.seq === turn.userSeq && event.type === "user_message");
    const message = userEvent?.type === "user_message" ? userEvent.payload.text : "";
    const earlier = buildConversation(history.events, history.turns.filter((other) => other.userSeq !== turn.userSeq), "");
    const signal = AbortSignal.any([signals.abort, signals.shutdown]);
    let run = new RunRecorder(store, turn);

    let exit: ExecChunk & { type: "exit" };
    try {
      exit = await this.deps.lifecycle.withSandbox(turn.sessionId, async (client) => {
        await checkSandbox(client, { name: "Claude Code", binary: CLAUDE_CODE_IN_SANDBOX, source: "the @anthropic-ai/claude-code package" });
        const state = (await store.harnessState(turn.sessionId, this.name)) as ClaudeCodeState;
        let resumeId = state.sessionId && (await exists(client, CONFIG_DIR)) ? state.sessionId : undefined;
        if (state.sessionId && !resumeId) logger.info({ claudeSession: state.sessionId }, "Claude Code's state is not in this workspace: replaying the conversation");
        const instructions = agent.systemPrompt.trim() !== "";
        if (instructions) await client.writeFile(INSTRUCTIONS_FILE, agent.systemPrompt);
        for (;;) {
          await client.writeFile(PROMPT_FILE, resumeId ? message : replayPrompt(earlier, message));
          const command = claudeCodeCommand({ model: agent.model, maxSteps: agent.maxSteps, resumeId, instructions });
          const result = await run.follow(client.exec({ command, timeoutMs: this.deps.turnTimeoutMs }, signal), async (sessionId) => {
            if (sessionId !== state.sessionId) {
              state.sessionId = sessionId;
              await store.setHarnessState(turn.sessionId, this.name, { sessionId });
            }
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
      if (signals.shutdown.aborted) throw error;
      if (signals.abort.aborted) return run.finish("aborted", ABORTED);
      if (error instanceof HarnessSetupError) return run.finish("failed", error.message);
      if (error instanceof SandboxUnavailableError || isDomainUnavailable(error)) {
        return run.finish("failed", `the sandbox stopped while Claude Code ran (${(error as Error).message}); it is being reconnected. Send a message to continue: Claude Code resumes its session on the same workspace.`);
      }
      throw error;
    }
    if (signals.shutdown.aborted) throw new Error("the process is shutting down; Claude Code was stopped");
    if (signals.abort.aborted) return run.finish("aborted", ABORTED);
    if (exit.timedOut) return run.finish("failed", `Claude Code did not finish within ${Math.round(this.deps.turnTimeoutMs / 1000)} s and was stopped`);
    if (exit.exitCode === 0 && !run.error) return run.finish("completed");
    const detail = run.error ?? `exit ${exit.signal ?? exit.exitCode}${run.stderrTail() ? `: ${run.stderrTail()}` : ""}`;
    return run.finish("failed", `Claude Code failed: ${detail}`);
  }
}

/** Records Claude Code's output as it comes: events right away, usage per model call. */
class RunRecorder {
  /** Claude Code started its session (the init line): a resume it could not do never gets here. */
  started = false;
  error: string | null = null;
  private usage: TurnUsage = { promptTokens: 0, completionTokens: 0 };
  private stderr = "";
  private readonly parser = new ClaudeCodeParser();

  constructor(
    private readonly store: TurnStore,
    private readonly turn: TurnRow,
  ) {}

  async follow(chunks: AsyncIterable<ExecChunk>, onSession: (sessionId: string) => Promise<void>): Promise<ExecChunk & { type: "exit" }> {
    let pending = "";
    const handle = async (text: string) => {
      const output = this.parser.parse(text);
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
          return this.store.append(this.turn, output.events);
        case "step":
          if (output.toolStep) await this.store.recordStep(this.turn, [], output.usage);
          else this.usage = addUsage(this.usage, output.usage);
          return;
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
