import type { DaemonClient, ExecChunk } from "../sandbox/port";
import type { Harness, TurnRow, TurnStore, TurnToRun, TurnUsage } from "../services/turns";
import { parseCodexLine, type CodexUsage } from "./codex-events";
import {
  boundEvents,
  type ExternalHarnessDeps,
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
export const CODEX_IN_SANDBOX = `${HARNESS_BIN_DIR}/codex`;
/** codex's own state (CODEX_HOME: config, threads, its databases) lives in the workspace, so it survives a new sandbox. */
const STATE_DIR = ".berth/codex";
const CODEX_HOME = `${STATE_DIR}/home`;
const PROMPT_FILE = `${STATE_DIR}/prompt.txt`;
const CONFIG_FILE = `${CODEX_HOME}/config.toml`;
/** Where codex keeps its threads' rollouts: without it, no thread of this workspace can be resumed. */
const THREADS_DIR = `${CODEX_HOME}/sessions`;
const PROVIDER = "berth";
const HARNESS = "codex";

/** The codex thread of the session, and the token totals codex last reported for it. */
type CodexState = { threadId?: string; usage?: CodexUsage };

/**
 * The `codex` harness: each user message becomes one `codex exec --json` inside the session's
 * sandbox, started through the sandbox daemon. codex speaks the Responses API (`POST /v1/responses`)
 * and reaches the model only through the sandbox's model relay (the LiteLLM Gateway with the
 * platform's key, which never enters the sandbox). Berth's jail is its sandbox, so codex runs
 * commands directly (`--dangerously-bypass-approvals-and-sandbox`: no nested bwrap, no approvals).
 * What it prints is recorded as Berth events as it happens. Its thread id is kept on the session
 * row: the next turn, and a new sandbox on the same workspace, resume that thread; on a workspace
 * without it (a fresh one), the conversation is replayed from Berth's log.
 */
export class CodexHarness implements Harness {
  readonly name = "codex";

  constructor(private readonly deps: ExternalHarnessDeps) {}

  async runTurn({ turn: initial, agent }: TurnToRun, signals: { abort: AbortSignal; shutdown: AbortSignal }): Promise<void> {
    const { store } = this.deps;
    const logger = this.deps.logger.child({ sessionId: initial.sessionId, turnId: initial.id, harness: "codex" });
    const begun = await beginExternalTurn(store, {
      turn: initial,
      harness: HARNESS,
      label: "codex",
      unavailable: this.deps.unavailable,
      abortRequested: signals.abort.aborted,
      shuttingDown: signals.shutdown.aborted,
    });
    if (!begun) return;
    const { turn, message, earlier } = begun;
    const signal = AbortSignal.any([signals.abort, signals.shutdown]);
    const state = (await store.harnessState(turn.sessionId, this.name)) as CodexState;
    const run = new RunRecorder(store, turn, `codex_${turn.id.slice(0, 8)}_`);

    let exit: ExecChunk & { type: "exit" };
    try {
      exit = await this.deps.lifecycle.withSandbox(turn.sessionId, async (client) => {
        await checkSandbox(client, { binary: CODEX_IN_SANDBOX, label: "codex", packageName: "@openai/codex" });
        await markRunning(store, turn, HARNESS);
        let resumeId = state.threadId && (await fileExists(client, THREADS_DIR)) ? state.threadId : undefined;
        if (state.threadId && !resumeId) logger.info({ codexThread: state.threadId }, "codex's thread is not in this workspace: replaying the conversation");
        await client.writeFile(CONFIG_FILE, codexConfig({ model: agent.model, instructions: agent.systemPrompt }));
        for (;;) {
          await client.writeFile(PROMPT_FILE, resumeId ? message : replayPrompt(earlier, message));
          const command = codexCommand({ resumeId });
          const result = await run.follow(client, command, this.deps.turnTimeoutMs, signal, async (threadId) => {
            if (threadId === state.threadId) return;
            state.threadId = threadId;
            state.usage = { inputTokens: 0, outputTokens: 0 };
            await store.setHarnessState(turn, HARNESS, state);
          });
          // A thread codex no longer knows: it exits before starting it. Replay instead.
          if (resumeId && !run.started && result.exitCode !== 0 && !signal.aborted) {
            logger.warn({ codexThread: resumeId, stderr: run.stderrTail() }, "codex could not resume its thread: replaying the conversation");
            resumeId = undefined;
            continue;
          }
          return result;
        }
      });
    } catch (error) {
      const outcome = outcomeOfError("codex", error, signals);
      return run.finish(outcome.status, outcome.error);
    }
    // codex reports the thread's token totals at the end of a turn; the turn used the difference.
    const usage = run.usageSince(state.usage);
    if (run.total) await store.setHarnessState(turn, HARNESS, { usage: run.total });
    const outcome = outcomeOfExit("codex", exit, signals, { timeoutMs: this.deps.turnTimeoutMs, failure: run.failure, detail: run.lastNotice, stderrTail: run.stderrTail() });
    return run.finish(outcome.status, outcome.error, usage);
  }
}

/** Records codex's output as it comes: events right away, the thread's token totals at the end. */
class RunRecorder {
  started = false;
  failure: string | null = null;
  lastNotice: string | null = null;
  total: CodexUsage | null = null;
  private readonly stderr = { text: "" };

  constructor(
    private readonly store: TurnStore,
    private readonly turn: TurnRow,
    private readonly idPrefix: string,
  ) {}

  follow(client: DaemonClient, command: string, timeoutMs: number, signal: AbortSignal, onThread: (threadId: string) => Promise<void>): Promise<ExecChunk & { type: "exit" }> {
    return followLines(
      client.exec({ command, timeoutMs }, signal),
      async (line) => {
        const output = parseCodexLine(line, this.idPrefix);
        switch (output.kind) {
          case "ignored":
            return;
          case "thread":
            this.started = true;
            return onThread(output.threadId);
          case "events":
            return this.store.append(this.turn, boundEvents(output.events));
          case "usage":
            this.total = output.total;
            return;
          case "failed":
            this.failure = output.message;
            return;
          case "notice":
            this.lastNotice = output.message;
            return;
        }
      },
      this.stderr,
    );
  }

  /** The tokens this run used: codex's new thread totals minus those it had reported before. */
  usageSince(previous: CodexUsage | undefined): TurnUsage | null {
    if (!this.total) return null;
    const before = previous && previous.inputTokens <= this.total.inputTokens && previous.outputTokens <= this.total.outputTokens ? previous : { inputTokens: 0, outputTokens: 0 };
    return { promptTokens: this.total.inputTokens - before.inputTokens, completionTokens: this.total.outputTokens - before.outputTokens };
  }

  stderrTail(): string {
    // codex prints a stack backtrace after its error line: keep the lines before it.
    const lines = this.stderr.text.split("\n").filter((text) => text.trim() && !text.startsWith("WARNING: proceeding"));
    const backtrace = lines.findIndex((text) => text.startsWith("Stack backtrace:"));
    return (backtrace >= 0 ? lines.slice(0, backtrace) : lines).slice(-3).join(" ").slice(-500);
  }

  async finish(status: "completed" | "failed" | "aborted", error?: string, usage?: TurnUsage | null): Promise<void> {
    await clearRunning(this.store, this.turn, HARNESS);
    await this.store.finish(this.turn, { status, error, usage: usage ?? null });
  }
}

/**
 * codex's config.toml (in CODEX_HOME, rewritten every turn): the gateway as a Responses API
 * provider whose key codex reads from BERTH_MODEL_API_KEY (the sandbox's relay token), and nothing
 * that reaches for the internet (update check, analytics, feedback upload, web search, plugins and
 * apps; checked through a logging proxy: with these off, codex 0.169 connects to nothing but the
 * provider). The
 * relay's URL is only known inside the sandbox; the command passes it with `-c`.
 */
export function codexConfig(input: { model: string; instructions: string }): string {
  const lines = [
    `model = ${tomlString(input.model)}`,
    `model_provider = ${tomlString(PROVIDER)}`,
    ...(input.instructions.trim() ? [`developer_instructions = ${tomlString(input.instructions)}`] : []),
    "check_for_update_on_startup = false",
    `web_search = "disabled"`,
    "",
    // Plugins and apps (connectors) are fetched from github.com and chatgpt.com at startup.
    "[features]",
    "plugins = false",
    "remote_plugin = false",
    "apps = false",
    "",
    "[analytics]",
    "enabled = false",
    "",
    "[feedback]",
    "enabled = false",
    "",
    `[model_providers.${PROVIDER}]`,
    `name = "Berth (LiteLLM Gateway)"`,
    // Replaced on the command line by the relay's address.
    `base_url = "http://127.0.0.1/v1"`,
    `env_key = "BERTH_MODEL_API_KEY"`,
    // The only wire format codex 0.169 speaks ("chat" was removed).
    `wire_api = "responses"`,
    // The gateway retries for itself; codex's own retries would only delay a refusal.
    "request_max_retries = 1",
    "stream_max_retries = 1",
    "",
  ];
  return lines.join("\n");
}

/** The whole codex invocation; the message comes from a file (no argument length limit, no quoting). */
export function codexCommand(input: { resumeId: string | undefined }): string {
  const args = [
    "exec",
    ...(input.resumeId ? ["resume", shellQuote(input.resumeId)] : []),
    "--json",
    "--skip-git-repo-check",
    // Berth's jail is the sandbox: codex must not try to nest its own (bwrap/landlock), nor ask for approvals.
    "--dangerously-bypass-approvals-and-sandbox",
    "-c",
    `"model_providers.${PROVIDER}.base_url=\\"$BERTH_MODEL_BASE_URL\\""`,
    "-",
  ];
  return `mkdir -p "${CODEX_HOME}" && exec env CODEX_HOME="$PWD/${CODEX_HOME}" ${CODEX_IN_SANDBOX} ${args.join(" ")} < ${PROMPT_FILE}`;
}

/** A TOML basic string: JSON's escapes are TOML's, except DEL and lone surrogates, which TOML does not allow raw. */
function tomlString(value: string): string {
  return JSON.stringify(value.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD")).replaceAll("\u007f", "\\u007F");
}
