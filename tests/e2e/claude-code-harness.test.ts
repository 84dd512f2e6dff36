import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestBerth, type TestBerth } from "../helpers/berth";
import { waitFor } from "../helpers/processes";
import { lastTurn, recordingScript, sessionProbe } from "../helpers/sessions";
import { startTestAnthropicGateway, type AnthropicRequest, type AnthropicStep, type MessagesBody, type TestAnthropicGateway } from "../helpers/test-gateway-anthropic";

const KEY = "claude_code_test_key_0123456789abcdefghij";
const GATEWAY_KEY = "sk-gateway-secret-for-claude-code-4d3e2f";

type Block = { type: string; text?: string; id?: string; tool_use_id?: string; content?: unknown };

/**
 * The claude-code harness end to end: the real Claude Code binary (from @anthropic-ai/claude-code)
 * runs in a real bubblewrap jail with no network, reaches the scripted Anthropic Messages API only
 * through the sandbox's model relay, and what it does is recorded as Berth events.
 */
describe("the claude-code harness", () => {
  let berth: TestBerth;
  let gateway: TestAnthropicGateway;
  let api: ReturnType<TestBerth["client"]>;
  let sql: postgres.Sql;
  let probe: ReturnType<typeof sessionProbe>;

  beforeAll(async () => {
    gateway = await startTestAnthropicGateway({ apiKey: GATEWAY_KEY });
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: KEY, LITELLM_BASE_URL: gateway.url, LITELLM_API_KEY: GATEWAY_KEY } });
    api = berth.client(KEY);
    sql = postgres(berth.databaseUrl, { max: 2, onnotice: () => {} });
    probe = sessionProbe(api, sql);
  });
  afterAll(async () => {
    await sql?.end();
    await berth?.close();
    await gateway?.close();
  });

  const session = (name: string, options: { maxSteps?: number; systemPrompt?: string } = {}) => probe.readySession({ name, model: "test-model", harness: "claude-code", ...options });
  const settled = (sessionId: string, turnCount: number) => probe.settled(sessionId, turnCount);
  const exec = (sessionId: string, command: string) => probe.exec(sessionId, command);
  const claudeSession = (sessionId: string) => probe.harnessValue(sessionId, "claude-code", "sessionId");
  /** Queues replies for the CLI's model requests, in order; returns the requests as they come. */
  const script = (...steps: AnthropicStep[]) => recordingScript<AnthropicStep, AnthropicRequest>(gateway, steps);

  const body = (request: AnthropicRequest) => request.body as MessagesBody;
  /** The user's own words in a request (Claude Code adds <system-reminder> blocks, and sends tool results as user messages). */
  const userTexts = (request: AnthropicRequest) =>
    body(request)
      .messages.filter((message) => message.role === "user")
      .flatMap((message) => (typeof message.content === "string" ? [message.content] : (message.content as Block[]).filter((part) => part.type === "text").map((part) => part.text!)))
      .filter((text) => !text.startsWith("<system-reminder>"));

  it("runs a turn that writes a file in the workspace, records it, and continues the conversation after the sandbox is killed", async () => {
    const id = await session("claude-writer", { systemPrompt: "Always answer in one short sentence." });
    const workspace = (await exec(id, "pwd")).stdout.trim();
    const started = Date.now();
    const first = script(
      { toolUses: [{ name: "Write", input: { file_path: `${workspace}/notes/hello.txt`, content: "hello from claude\n" } }], usage: { input: 120, output: 20 } },
      { text: "I wrote notes/hello.txt.", usage: { input: 160, output: 8 } },
    );
    await api.sessions.send.mutate({ sessionId: id, text: "Write a greeting to notes/hello.txt" });
    const turn1 = lastTurn(await settled(id, 1));
    console.log(`claude-code turn with one tool call: ${Date.now() - started} ms`);
    expect(turn1.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    const callId = turn1[1]!.payload.id as string;
    expect(turn1[1]!.payload).toEqual({ id: callId, name: "Write", input: { file_path: `${workspace}/notes/hello.txt`, content: "hello from claude\n" } });
    expect(turn1[2]!.payload).toMatchObject({ callId, isError: false });
    expect(turn1[3]!.payload).toEqual({ text: "I wrote notes/hello.txt." });
    expect(turn1[4]!.payload).toEqual({ promptTokens: 280, completionTokens: 28 });
    expect((await exec(id, "cat notes/hello.txt")).stdout).toBe("hello from claude\n");
    const [turnRow] = await sql<{ steps: number }[]>`select steps from turns where session_id = ${id}`;
    expect(turnRow!.steps).toBe(1);

    // Claude Code used the agent's model and system prompt, through the relay, which put the
    // gateway's key on the request; the sandbox itself never held that key.
    const request = first[0]!;
    expect(body(request).model).toBe("test-model");
    expect(request.headers.authorization).toBe(`Bearer ${GATEWAY_KEY}`);
    expect(request.headers["x-api-key"]).toBeUndefined();
    expect(JSON.stringify(body(request).system)).toContain("Always answer in one short sentence.");
    expect(body(request).tools!.map((tool) => tool.name)).toContain("Write");
    expect(userTexts(request)).toEqual(["Write a greeting to notes/hello.txt"]);
    const environment = (await exec(id, "env; cat /proc/1/environ | tr '\\0' '\\n'")).stdout;
    expect(environment).not.toContain(GATEWAY_KEY);
    expect(environment).toMatch(/BERTH_MODEL_BASE_URL=http:\/\/127\.0\.0\.1:\d+\/v1/);
    const claudeId = await claudeSession(id);
    expect(claudeId).toMatch(/^[0-9a-f-]{36}$/);
    expect(request.headers["x-claude-code-session-id"]).toBe(claudeId);
    expect(gateway.violations).toEqual([]);

    // Kill the sandbox: the session reconnects on a new generation with the same workspace.
    const before = await api.sessions.get.query({ sessionId: id });
    process.kill(before.sandbox!.hostPid!, "SIGKILL");
    await waitFor("the session to be ready on generation 2", async () => {
      const current = await api.sessions.get.query({ sessionId: id });
      return current.status === "ready" && current.sandbox!.generation === 2 ? true : undefined;
    }, 30_000);

    const second = script({ text: "It says hello from claude." });
    await api.sessions.send.mutate({ sessionId: id, text: "What is in the file?" });
    const turn2 = lastTurn(await settled(id, 2));
    expect(turn2.map((event) => event.type)).toEqual(["user_message", "assistant_message", "usage"]);
    // The same Claude Code session went on: the model saw the first turn, tool use and result included.
    expect(userTexts(second[0]!)).toEqual(["Write a greeting to notes/hello.txt", "What is in the file?"]);
    const messages = body(second[0]!).messages;
    const blocks = messages.flatMap((message) => (typeof message.content === "string" ? [] : (message.content as Block[])));
    expect(blocks.some((part) => part.type === "tool_use" && part.id === callId)).toBe(true);
    expect(blocks.some((part) => part.type === "tool_result" && part.tool_use_id === callId)).toBe(true);
    expect(await claudeSession(id)).toBe(claudeId);
    expect(gateway.violations).toEqual([]);
  });

  it("replays the conversation from Berth's log when the workspace lost Claude Code's session", async () => {
    const id = await session("claude-replay");
    script({ toolUses: [{ name: "Bash", input: { command: "echo replay-marker", description: "print a marker" } }] }, { text: "Printed it." });
    await api.sessions.send.mutate({ sessionId: id, text: "Print a marker" });
    const turn1 = lastTurn(await settled(id, 1));
    expect(turn1.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    expect(turn1[2]!.payload).toMatchObject({ output: "replay-marker", exitCode: 0, isError: false });
    const firstSession = await claudeSession(id);

    await exec(id, "rm -rf .berth/claude");
    const seen = script({ text: "Continuing from the replay." });
    await api.sessions.send.mutate({ sessionId: id, text: "And now?" });
    const turn2 = lastTurn(await settled(id, 2));
    expect(turn2.map((event) => event.type)).toEqual(["user_message", "assistant_message", "usage"]);
    const users = userTexts(seen[0]!);
    expect(users).toHaveLength(1);
    const prompt = users[0]!;
    expect(prompt).toContain("<earlier-conversation>");
    expect(prompt).toContain("User: Print a marker");
    expect(prompt).toContain("Tool result: replay-marker");
    expect(prompt).toContain("Assistant: Printed it.");
    expect(prompt.trimEnd().endsWith("And now?")).toBe(true);
    const secondSession = await claudeSession(id);
    expect(secondSession).toMatch(/^[0-9a-f-]{36}$/);
    expect(secondSession).not.toBe(firstSession);

    // Claude Code's state is there but not the session: it cannot resume, and the harness replays.
    await exec(id, "rm -rf .berth/claude/config/projects");
    const third = script({ text: "Replayed again." });
    await api.sessions.send.mutate({ sessionId: id, text: "Once more" });
    const turn3 = lastTurn(await settled(id, 3));
    expect(turn3.map((event) => event.type)).toEqual(["user_message", "assistant_message", "usage"]);
    const replayed = userTexts(third[0]!);
    expect(replayed).toHaveLength(1);
    expect(replayed[0]).toContain("User: And now?");
    expect(replayed[0]).toContain("Assistant: Continuing from the replay.");
    expect(replayed[0]!.trimEnd().endsWith("Once more")).toBe(true);
    expect(await claudeSession(id)).not.toBe(secondSession);
    expect(gateway.violations).toEqual([]);
  });

  it("ends the turn with an error event when the gateway refuses, and the session stays usable", async () => {
    const id = await session("claude-refused");
    // Claude Code retries a 400 a few times without some beta features before it gives up.
    gateway.script({ status: 400, message: "this model does not exist", times: 20 });
    await api.sessions.send.mutate({ sessionId: id, text: "hello" });
    const turn = lastTurn(await settled(id, 1));
    gateway.clear();
    expect(turn.map((event) => event.type)).toEqual(["user_message", "error"]);
    expect(String(turn.at(-1)!.payload.message)).toMatch(/Claude Code failed: .*this model does not exist/);
    const [row] = await sql<{ status: string }[]>`select status from turns where session_id = ${id}`;
    expect(row!.status).toBe("failed");

    script({ text: "Now it works." });
    await api.sessions.send.mutate({ sessionId: id, text: "try again" });
    const next = lastTurn(await settled(id, 2));
    expect(next.map((event) => event.type)).toEqual(["user_message", "assistant_message", "usage"]);
    expect((await api.sessions.get.query({ sessionId: id })).status).toBe("ready");
  });

  it("aborts a running Claude Code turn: the process is stopped and the turn ends aborted", async () => {
    const id = await session("claude-abort");
    const seen = script({ hang: true });
    await api.sessions.send.mutate({ sessionId: id, text: "take forever" });
    await waitFor("Claude Code to call the model", () => (seen.length > 0 ? true : undefined), 60_000);
    expect((await exec(id, "pgrep -x claude")).stdout.trim()).toMatch(/^\d+$/);
    await api.sessions.abort.mutate({ sessionId: id });
    const turn = lastTurn(await settled(id, 1));
    expect(turn.at(-1)).toMatchObject({ type: "error", payload: { message: "the turn was aborted by request" } });
    const [row] = await sql<{ status: string }[]>`select status from turns where session_id = ${id}`;
    expect(row!.status).toBe("aborted");
    // The daemon stops the command when the harness hangs up (SIGTERM, SIGKILL 2 s later): it may
    // outlive the turn's end by a moment.
    await waitFor("Claude Code to be stopped", async () => ((await exec(id, "pgrep -x claude || true")).stdout.trim() === "" ? true : undefined), 10_000);
  });
});
