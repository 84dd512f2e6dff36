import type { Logger } from "../logger";
import { DaemonRequestError, SandboxUnavailableError, type DaemonClient, type ExecChunk } from "../sandbox/port";
import type { SandboxLifecycle } from "../services/sandbox-lifecycle";
import type { Harness, TurnRow, TurnStore, TurnToRun, TurnUsage } from "../services/turns";
import { parseCodexLine, type CodexUsage } from "./codex-events";
import { buildConversation } from "./history";
import { replayPrompt } from "./opencode";

/** Where the local backend binds the binary, and where Kubernetes sandbox images must put it. */
export const CODEX_IN_SANDBOX = "/opt/berth/bin/codex";
/** codex's own state (CODEX_HOME: config, threads, its databases) lives in the workspace, so it survives a new sandbox. */
const STATE_DIR = ".berth/codex";
const CODEX_HOME = `${STATE_DIR}/home`;
const PROMPT_FILE = `${STATE_DIR}/prompt.txt`;
const CONFIG_FILE = `${CODEX_HOME}/config.toml`;
/** Where codex keeps its threads' rollouts: without it, no thread of this workspace can be resumed. */
const THREADS_DIR = `${CODEX_HOME}/sessions`;
const PROVIDER = "berth";
const ABORTED = "the turn was aborted by request";

/** The codex thread of the session, and the token totals codex last reported for it. */
type CodexState = { threadId?: string; usage?: CodexUsage };

class HarnessSetupError extends Error {}

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

  constructor(
    private readonly deps: {
      store: TurnStore;
      lifecycle: SandboxLifecycle;
      logger: Logger;
      /** Why codex cannot run on this installation (no gateway), or null. */
      unavailable: string | null;
      turnTimeoutMs: number;
    },
  ) {}

  async runTurn({ turn: initial, agent }: TurnToRun, signals: { abort: AbortSignal; shutdown: AbortSignal }): Promise<void> {
    const { store } = this.deps;
    const logger = this.deps.logger.child({ sessionId: initial.sessionId, turnId: initial.id, harness: "codex" });
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
      // codex cannot pick a run up halfway: say so rather than run the message twice.
      await store.finish(turn, {
        status: "failed",
        error: "the platform stopped while codex worked on this message; what it did is recorded above. Send a message to continue (codex keeps its thread).",
      });
      return;
    }
    await store.markSessionRunning(turn.sessionId);

    const history = await store.history(turn.sessionId);
    const userEvent = history.events.find((event) => event.seq === turn.userSeq && event.type === "user_message");
    const message = userEvent?.type === "user_message" ? userEvent.payload.text : "";
    const earlier = buildConversation(history.events, history.turns.filter((other) => other.userSeq !== turn.userSeq), "");
    const signal = AbortSignal.any([signals.abort, signals.shutdown]);
    const state = (await store.harnessState(turn.sessionId, this.name)) as CodexState;
    const run = new RunRecorder(store, turn, `codex_${turn.id.slice(0, 8)}_`);

    let exit: ExecChunk & { type: "exit" };
    try {
      exit = await this.deps.lifecycle.withSandbox(turn.sessionId, async (client) => {
        await checkSandbox(client);
        let resumeId = state.threadId && (await exists(client, THREADS_DIR)) ? state.threadId : undefined;
        if (state.threadId && !resumeId) logger.info({ codexThread: state.threadId }, "codex's thread is not in this workspace: replaying the conversation");
        await client.writeFile(CONFIG_FILE, codexConfig({ model: agent.model, instructions: agent.systemPrompt }));
        for (;;) {
          await client.writeFile(PROMPT_FILE, resumeId ? message : replayPrompt(earlier, message));
          const command = codexCommand({ resumeId });
          const result = await run.follow(client.exec({ command, timeoutMs: this.deps.turnTimeoutMs }, signal), async (threadId) => {
            if (threadId === state.threadId) return;
            state.threadId = threadId;
            state.usage = { inputTokens: 0, outputTokens: 0 };
            await store.setHarnessState(turn.sessionId, this.name, state);
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
      if (signals.shutdown.aborted) throw error;
      if (signals.abort.aborted) return run.finish("aborted", ABORTED);
      if (error instanceof HarnessSetupError) return run.finish("failed", error.message);
      if (error instanceof SandboxUnavailableError || isDomainUnavailable(error)) {
        return run.finish("failed", `the sandbox stopped while codex ran (${(error as Error).message}); it is being reconnected. Send a message to continue: codex resumes its thread on the same workspace.`);
      }
      throw error;
    }
    // codex reports the thread's token totals at the end of a turn; the turn used the difference.
    const usage = run.usageSince(state.usage);
    if (run.total) await store.setHarnessState(turn.sessionId, this.name, { ...state, usage: run.total });
    if (signals.shutdown.aborted) throw new Error("the process is shutting down; codex was stopped");
    if (signals.abort.aborted) return run.finish("aborted", ABORTED, usage);
    if (exit.timedOut) return run.finish("failed", `codex did not finish within ${Math.round(this.deps.turnTimeoutMs / 1000)} s and was stopped`, usage);
    if (exit.exitCode === 0 && !run.failure) return run.finish("completed", undefined, usage);
    const detail = run.failure ?? run.lastNotice ?? `exit ${exit.signal ?? exit.exitCode}${run.stderrTail() ? `: ${run.stderrTail()}` : ""}`;
    return run.finish("failed", `codex failed: ${detail}`, usage);
  }
}

/** Records codex's output as it comes: events right away, the thread's token totals at the end. */
class RunRecorder {
  started = false;
  failure: string | null = null;
  lastNotice: string | null = null;
  total: CodexUsage | null = null;
  private stderr = "";

  constructor(
    private readonly store: TurnStore,
    private readonly turn: TurnRow,
    private readonly idPrefix: string,
  ) {}

  async follow(chunks: AsyncIterable<ExecChunk>, onThread: (threadId: string) => Promise<void>): Promise<ExecChunk & { type: "exit" }> {
    let pending = "";
    const handle = async (text: string) => {
      const output = parseCodexLine(text, this.idPrefix);
      switch (output.kind) {
        case "ignored":
          return;
        case "thread":
          this.started = true;
          return onThread(output.threadId);
        case "events":
          return this.store.append(this.turn, output.events);
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

  /** The tokens this run used: codex's new thread totals minus those it had reported before. */
  usageSince(previous: CodexUsage | undefined): TurnUsage | null {
    if (!this.total) return null;
    const before = previous && previous.inputTokens <= this.total.inputTokens && previous.outputTokens <= this.total.outputTokens ? previous : { inputTokens: 0, outputTokens: 0 };
    return { promptTokens: this.total.inputTokens - before.inputTokens, completionTokens: this.total.outputTokens - before.outputTokens };
  }

  stderrTail(): string {
    // codex prints a stack backtrace after its error line: keep the lines before it.
    const lines = this.stderr.split("\n").filter((text) => text.trim() && !text.startsWith("WARNING: proceeding"));
    const backtrace = lines.findIndex((text) => text.startsWith("Stack backtrace:"));
    return (backtrace >= 0 ? lines.slice(0, backtrace) : lines).slice(-3).join(" ").slice(-500);
  }

  async finish(status: "completed" | "failed" | "aborted", error?: string, usage?: TurnUsage | null): Promise<void> {
    await this.store.finish(this.turn, { status, error, usage: usage ?? null });
  }
}

async function checkSandbox(client: DaemonClient): Promise<void> {
  let output = "";
  let exitCode: number | null = null;
  for await (const chunk of client.exec({ command: `test -x ${CODEX_IN_SANDBOX} || echo missing-binary; test -n "$BERTH_MODEL_BASE_URL" || echo missing-relay`, timeoutMs: 10_000 })) {
    if (chunk.type === "stdout") output += chunk.data;
    else if (chunk.type === "exit") exitCode = chunk.exitCode;
  }
  if (exitCode !== 0) throw new SandboxUnavailableError("the sandbox could not run a check command");
  if (output.includes("missing-binary")) {
    throw new HarnessSetupError(`codex is not installed in this sandbox (${CODEX_IN_SANDBOX}); the local backend binds the binary of the @openai/codex package, Kubernetes sandbox images must carry it there`);
  }
  if (output.includes("missing-relay")) {
    throw new HarnessSetupError("this sandbox has no model relay (BERTH_MODEL_BASE_URL), which codex needs to reach the gateway; the Kubernetes backend does not provide one yet");
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

function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

function isDomainUnavailable(error: unknown): boolean {
  return typeof error === "object" && error !== null && (error as { kind?: string }).kind === "unavailable";
}
