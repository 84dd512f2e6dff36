import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestBerth, type TestBerth } from "../helpers/berth";
import { waitFor } from "../helpers/processes";
import { lastTurn, recordingScript, sessionProbe } from "../helpers/sessions";
import { startTestResponsesGateway, type ResponsesRequest, type ResponsesStep, type TestResponsesGateway } from "../helpers/test-gateway-responses";

const KEY = "codex_test_key_0123456789abcdefghijklmno";
const GATEWAY_KEY = "sk-gateway-secret-for-codex-3e2d1c";

type InputItem = { type?: string; role?: string; content?: unknown; call_id?: string; name?: string; arguments?: string; output?: unknown };
type ResponsesBody = { model: string; input: InputItem[]; tools?: { type: string; name?: string }[] };

const texts = (item: InputItem): string => (Array.isArray(item.content) ? item.content.map((part: { text?: string }) => part.text ?? "").join("") : String(item.content ?? ""));
/** The user's own messages (codex adds its environment context as user messages too). */
const userMessages = (body: ResponsesBody) => body.input.filter((item) => item.role === "user" && !texts(item).startsWith("<environment_context>")).map(texts);

/**
 * The codex harness end to end: the real codex binary (from @openai/codex) runs in a real
 * bubblewrap jail with no network, reaches the scripted Responses API gateway only through the
 * sandbox's model relay, and what it does is recorded as Berth events.
 */
describe("the codex harness", () => {
  let berth: TestBerth;
  let gateway: TestResponsesGateway;
  let api: ReturnType<TestBerth["client"]>;
  let sql: postgres.Sql;
  let probe: ReturnType<typeof sessionProbe>;

  beforeAll(async () => {
    gateway = await startTestResponsesGateway({ apiKey: GATEWAY_KEY });
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

  const session = (name: string, options: { systemPrompt?: string } = {}) => probe.readySession({ name, model: "test-model", harness: "codex", ...options });
  const settled = (sessionId: string, turnCount: number) => probe.settled(sessionId, turnCount);
  const exec = (sessionId: string, command: string) => probe.exec(sessionId, command);
  const codexThread = (sessionId: string) => probe.harnessValue(sessionId, "codex", "threadId");
  /** Queues replies for the CLI's model requests, in order; returns the requests as they come. */
  const script = (...steps: ResponsesStep[]) => recordingScript<ResponsesStep, ResponsesRequest>(gateway, steps);

  it("runs a turn that writes a file in the workspace, records it, and continues the same thread after the sandbox is killed", async () => {
    const id = await session("codex-writer", { systemPrompt: "Always answer in one short sentence." });
    const command = "mkdir -p notes && printf 'hello from codex\\n' > notes/hello.txt && echo written";
    const first = script(
      { functionCalls: [{ name: "exec_command", arguments: { cmd: command } }], usage: { input: 120, output: 20 } },
      { text: "I wrote notes/hello.txt.", usage: { input: 160, output: 8 } },
    );
    const started = Date.now();
    await api.sessions.send.mutate({ sessionId: id, text: "Write a greeting to notes/hello.txt" });
    const turn1 = lastTurn(await settled(id, 1));
    console.log(`codex turn with one command: ${Date.now() - started} ms`);
    expect(turn1.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    const callId = turn1[1]!.payload.id as string;
    expect(turn1[1]!.payload).toMatchObject({ name: "command_execution" });
    expect(String((turn1[1]!.payload.input as { command: string }).command)).toContain("notes/hello.txt");
    expect(turn1[2]!.payload).toEqual({ callId, output: "written\n", exitCode: 0, isError: false });
    expect(turn1[3]!.payload).toEqual({ text: "I wrote notes/hello.txt." });
    expect(turn1[4]!.payload).toEqual({ promptTokens: 280, completionTokens: 28 });
    expect((await exec(id, "cat notes/hello.txt")).stdout).toBe("hello from codex\n");

    // codex used the agent's model and system prompt, through the relay, which put the gateway's
    // key on the request; the sandbox itself never held that key.
    const request = first[0]!;
    const body = request.body as ResponsesBody;
    expect(request.path).toBe("/v1/responses");
    expect(body.model).toBe("test-model");
    expect(request.headers.authorization).toBe(`Bearer ${GATEWAY_KEY}`);
    expect(body.input.filter((item) => item.role === "developer").map(texts).join("\n")).toContain("Always answer in one short sentence.");
    expect(body.tools!.map((tool) => tool.name)).toContain("exec_command");
    expect(body.tools!.map((tool) => tool.type)).not.toContain("web_search");
    // The second request carries the command's output back.
    const second = first[1]!.body as ResponsesBody;
    const call = second.input.find((item) => item.type === "function_call")!;
    expect(second.input.find((item) => item.type === "function_call_output" && item.call_id === call.call_id)).toBeDefined();
    const environment = (await exec(id, "env; cat /proc/1/environ | tr '\\0' '\\n'")).stdout;
    expect(environment).not.toContain(GATEWAY_KEY);
    expect(environment).toMatch(/BERTH_MODEL_BASE_URL=http:\/\/127\.0\.0\.1:\d+\/v1/);
    const thread = await codexThread(id);
    expect(thread).toMatch(/^[0-9a-f-]{36}$/);
    expect(gateway.violations).toEqual([]);

    // Kill the sandbox: the session reconnects on a new generation with the same workspace.
    const before = await api.sessions.get.query({ sessionId: id });
    process.kill(before.sandbox!.hostPid!, "SIGKILL");
    await waitFor("the session to be ready on generation 2", async () => {
      const current = await api.sessions.get.query({ sessionId: id });
      return current.status === "ready" && current.sandbox!.generation === 2 ? true : undefined;
    }, 30_000);

    const next = script({ text: "It says hello from codex.", usage: { input: 300, output: 9 } });
    await api.sessions.send.mutate({ sessionId: id, text: "What is in the file?" });
    const turn2 = lastTurn(await settled(id, 2));
    expect(turn2.map((event) => event.type)).toEqual(["user_message", "assistant_message", "usage"]);
    // codex reports the thread's totals: the turn records only its own share.
    expect(turn2[2]!.payload).toEqual({ promptTokens: 300, completionTokens: 9 });
    // The same codex thread went on: the model saw the first turn, call and result included.
    const resumed = next[0]!.body as ResponsesBody;
    expect(userMessages(resumed)).toEqual(["Write a greeting to notes/hello.txt", "What is in the file?"]);
    expect(resumed.input.some((item) => item.type === "function_call" && item.name === "exec_command")).toBe(true);
    expect(resumed.input.some((item) => item.type === "function_call_output")).toBe(true);
    expect(await codexThread(id)).toBe(thread);
    expect(gateway.violations).toEqual([]);
  });

  it("replays the conversation from Berth's log when the workspace lost codex's thread", async () => {
    const id = await session("codex-replay");
    script({ functionCalls: [{ name: "exec_command", arguments: { cmd: "echo replay-marker" } }] }, { text: "Printed it." });
    await api.sessions.send.mutate({ sessionId: id, text: "Print a marker" });
    const turn1 = lastTurn(await settled(id, 1));
    expect(turn1.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    expect(turn1[2]!.payload).toMatchObject({ output: "replay-marker\n", exitCode: 0, isError: false });
    const firstThread = await codexThread(id);

    await exec(id, "rm -rf .berth/codex");
    const seen = script({ text: "Continuing from the replay." });
    await api.sessions.send.mutate({ sessionId: id, text: "And now?" });
    const turn2 = lastTurn(await settled(id, 2));
    expect(turn2.map((event) => event.type)).toEqual(["user_message", "assistant_message", "usage"]);
    const users = userMessages(seen[0]!.body as ResponsesBody);
    expect(users).toHaveLength(1);
    const prompt = users[0]!;
    expect(prompt).toContain("<earlier-conversation>");
    expect(prompt).toContain("User: Print a marker");
    expect(prompt).toContain("Tool result: replay-marker");
    expect(prompt).toContain("Assistant: Printed it.");
    expect(prompt.trimEnd().endsWith("And now?")).toBe(true);
    const secondThread = await codexThread(id);
    expect(secondThread).toMatch(/^[0-9a-f-]{36}$/);
    expect(secondThread).not.toBe(firstThread);
    expect(gateway.violations).toEqual([]);
  });

  it("ends the turn with an error event when the gateway refuses, and the session stays usable", async () => {
    const id = await session("codex-refused");
    script({ status: 400, message: "this model does not exist" });
    await api.sessions.send.mutate({ sessionId: id, text: "hello" });
    const turn = lastTurn(await settled(id, 1));
    expect(turn.at(-1)!.type).toBe("error");
    expect(String(turn.at(-1)!.payload.message)).toBe("codex failed: this model does not exist");
    const [row] = await sql<{ status: string }[]>`select status from turns where session_id = ${id}`;
    expect(row!.status).toBe("failed");

    script({ text: "Now it works." });
    await api.sessions.send.mutate({ sessionId: id, text: "try again" });
    const next = lastTurn(await settled(id, 2));
    expect(next.map((event) => event.type)).toEqual(["user_message", "assistant_message", "usage"]);
    expect((await api.sessions.get.query({ sessionId: id })).status).toBe("ready");
  });

  it("aborts a running codex turn: the process is stopped and the turn ends aborted", async () => {
    const id = await session("codex-abort");
    const seen = script({ hang: true });
    await api.sessions.send.mutate({ sessionId: id, text: "take forever" });
    await waitFor("codex to call the model", () => (seen.length > 0 ? true : undefined), 60_000);
    await api.sessions.abort.mutate({ sessionId: id });
    const turn = lastTurn(await settled(id, 1));
    expect(turn.at(-1)).toMatchObject({ type: "error", payload: { message: "the turn was aborted by request" } });
    const [row] = await sql<{ status: string }[]>`select status from turns where session_id = ${id}`;
    expect(row!.status).toBe("aborted");
    // The daemon stops the process group (TERM, then KILL after 2 s) once the turn is recorded.
    await waitFor("codex to exit", async () => ((await exec(id, "pgrep -x codex || true")).stdout.trim() === "" ? true : undefined), 10_000);
  });
});
