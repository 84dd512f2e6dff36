import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createBerthClient } from "../../server/client";
import { startTestBerth, type TestBerth } from "../helpers/berth";
import { createTestDatabase, type TestDatabase } from "../helpers/database";
import { freePort, readyzStatus, startProcess, waitFor, type BerthProcess } from "../helpers/processes";
import { lastTurn, recordingScript, sessionProbe, type LoggedEvent } from "../helpers/sessions";
import { startTestGateway, type RecordedRequest, type TestGateway, type TestGatewayStep } from "../helpers/test-gateway";

const KEY = "opencode_test_key_0123456789abcdefghijkl";
const GATEWAY_KEY = "sk-gateway-secret-for-opencode-7c6b5a";

type Event = LoggedEvent;
type ChatBody = { model: string; messages: { role: string; content: unknown; tool_calls?: { id: string; function: { name: string } }[]; tool_call_id?: string }[]; tools?: { function: { name: string } }[] };

/**
 * The opencode harness end to end: the real opencode binary (npm's opencode-linux-x64 package) runs in
 * a real bubblewrap jail with no network, reaches the scripted OpenAI-compatible gateway only
 * through the sandbox's model relay, and what it does is recorded as Berth events.
 */
describe("the opencode harness", () => {
  let berth: TestBerth;
  let gateway: TestGateway;
  let api: ReturnType<TestBerth["client"]>;
  let sql: postgres.Sql;
  let probe: ReturnType<typeof sessionProbe>;

  beforeAll(async () => {
    gateway = await startTestGateway({ apiKey: GATEWAY_KEY });
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

  const session = (name: string, options: { maxSteps?: number; systemPrompt?: string } = {}) => probe.readySession({ name, model: "test-model", harness: "opencode", ...options });
  const settled = (sessionId: string, turnCount: number) => probe.settled(sessionId, turnCount);
  const exec = (sessionId: string, command: string) => probe.exec(sessionId, command);
  const opencodeSession = (sessionId: string) => probe.harnessValue(sessionId, "opencode", "sessionId");
  /** Queues replies for the CLI's model requests, in order; returns the requests as they come. */
  const script = (...steps: TestGatewayStep[]) => recordingScript<TestGatewayStep, RecordedRequest>(gateway, steps);

  it("runs a turn that writes a file in the workspace, records it, and continues the conversation after the sandbox is killed", async () => {
    const id = await session("opencode-writer", { systemPrompt: "Always answer in one short sentence." });
    const first = script(
      { toolCalls: [{ name: "write", arguments: { filePath: "notes/hello.txt", content: "hello from opencode\n" } }], usage: { prompt: 120, completion: 20 } },
      { text: "I wrote notes/hello.txt.", usage: { prompt: 160, completion: 8 } },
    );
    await api.sessions.send.mutate({ sessionId: id, text: "Write a greeting to notes/hello.txt" });
    const turn1 = lastTurn(await settled(id, 1));
    expect(turn1.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    const callId = turn1[1]!.payload.id as string;
    expect(turn1[1]!.payload).toEqual({ id: callId, name: "write", input: { filePath: "notes/hello.txt", content: "hello from opencode\n" } });
    expect(turn1[2]!.payload).toMatchObject({ callId, isError: false });
    expect(turn1[3]!.payload).toEqual({ text: "I wrote notes/hello.txt." });
    expect(turn1[4]!.payload).toEqual({ promptTokens: 280, completionTokens: 28 });
    expect((await exec(id, "cat notes/hello.txt")).stdout).toBe("hello from opencode\n");

    // opencode used the agent's model and system prompt, through the relay, which put the gateway's
    // key on the request; the sandbox itself never held that key.
    const request = first[0]!;
    const body = request.body as ChatBody;
    expect(body.model).toBe("test-model");
    expect(request.headers.authorization).toBe(`Bearer ${GATEWAY_KEY}`);
    expect(JSON.stringify(body.messages[0]!.content)).toContain("Always answer in one short sentence.");
    expect(body.tools!.map((tool) => tool.function.name)).toContain("write");
    const environment = (await exec(id, "env; cat /proc/1/environ | tr '\\0' '\\n'")).stdout;
    expect(environment).not.toContain(GATEWAY_KEY);
    expect(environment).toMatch(/BERTH_MODEL_BASE_URL=http:\/\/127\.0\.0\.1:\d+\/v1/);
    const openSession = await opencodeSession(id);
    expect(openSession).toMatch(/^ses_/);
    expect(gateway.violations).toEqual([]);

    // Kill the sandbox: the session reconnects on a new generation with the same workspace.
    const before = await api.sessions.get.query({ sessionId: id });
    process.kill(before.sandbox!.hostPid!, "SIGKILL");
    await waitFor("the session to be ready on generation 2", async () => {
      const current = await api.sessions.get.query({ sessionId: id });
      return current.status === "ready" && current.sandbox!.generation === 2 ? true : undefined;
    }, 30_000);

    const second = script({ text: "It says hello from opencode." });
    await api.sessions.send.mutate({ sessionId: id, text: "What is in the file?" });
    const turn2 = lastTurn(await settled(id, 2));
    expect(turn2.map((event) => event.type)).toEqual(["user_message", "assistant_message", "usage"]);
    // The same opencode session went on: the model saw the first turn, call and result included.
    const messages = (second[0]!.body as ChatBody).messages;
    expect(messages.filter((message) => message.role === "user").map((message) => message.content)).toEqual(["Write a greeting to notes/hello.txt", "What is in the file?"]);
    expect(messages.some((message) => message.tool_calls?.some((call) => call.id === callId))).toBe(true);
    expect(messages.some((message) => message.role === "tool" && message.tool_call_id === callId)).toBe(true);
    expect(await opencodeSession(id)).toBe(openSession);
    expect(gateway.violations).toEqual([]);
  });

  it("replays the conversation from Berth's log when the workspace lost opencode's session", async () => {
    const id = await session("opencode-replay");
    script({ toolCalls: [{ name: "bash", arguments: { command: "echo replay-marker", description: "print a marker" } }] }, { text: "Printed it." });
    await api.sessions.send.mutate({ sessionId: id, text: "Print a marker" });
    const turn1 = lastTurn(await settled(id, 1));
    expect(turn1.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    expect(turn1[2]!.payload).toMatchObject({ output: "replay-marker\n", exitCode: 0, isError: false });
    const firstSession = await opencodeSession(id);

    await exec(id, "rm -rf .berth/opencode");
    const seen = script({ text: "Continuing from the replay." });
    await api.sessions.send.mutate({ sessionId: id, text: "And now?" });
    const turn2 = lastTurn(await settled(id, 2));
    expect(turn2.map((event) => event.type)).toEqual(["user_message", "assistant_message", "usage"]);
    const users = (seen[0]!.body as ChatBody).messages.filter((message) => message.role === "user");
    expect(users).toHaveLength(1);
    const prompt = String(users[0]!.content);
    expect(prompt).toContain("<earlier-conversation>");
    expect(prompt).toContain("User: Print a marker");
    expect(prompt).toContain("Tool result: replay-marker");
    expect(prompt).toContain("Assistant: Printed it.");
    expect(prompt.trimEnd().endsWith("And now?")).toBe(true);
    const secondSession = await opencodeSession(id);
    expect(secondSession).toMatch(/^ses_/);
    expect(secondSession).not.toBe(firstSession);
  });

  it("ends the turn with an error event when the gateway refuses, and the session stays usable", async () => {
    const id = await session("opencode-refused");
    script({ status: 400, message: "this model does not exist" });
    await api.sessions.send.mutate({ sessionId: id, text: "hello" });
    const turn = lastTurn(await settled(id, 1));
    expect(turn.at(-1)!.type).toBe("error");
    expect(String(turn.at(-1)!.payload.message)).toMatch(/opencode failed: .*this model does not exist/);
    const [row] = await sql<{ status: string }[]>`select status from turns where session_id = ${id}`;
    expect(row!.status).toBe("failed");

    script({ text: "Now it works." });
    await api.sessions.send.mutate({ sessionId: id, text: "try again" });
    const next = lastTurn(await settled(id, 2));
    expect(next.map((event) => event.type)).toEqual(["user_message", "assistant_message", "usage"]);
    expect((await api.sessions.get.query({ sessionId: id })).status).toBe("ready");
  });

  it("aborts a running opencode turn: the process is stopped and the turn ends aborted", async () => {
    const id = await session("opencode-abort");
    const seen = script({ hang: true });
    await api.sessions.send.mutate({ sessionId: id, text: "take forever" });
    await waitFor("opencode to call the model", () => (seen.length > 0 ? true : undefined), 60_000);
    await api.sessions.abort.mutate({ sessionId: id });
    const turn = lastTurn(await settled(id, 1));
    expect(turn.at(-1)).toMatchObject({ type: "error", payload: { message: "the turn was aborted by request" } });
    const [row] = await sql<{ status: string }[]>`select status from turns where session_id = ${id}`;
    expect(row!.status).toBe("aborted");
    // The daemon stops the process group (TERM, then KILL after 2 s) once the turn is recorded.
    await waitFor("opencode to exit", async () => ((await exec(id, "pgrep -x opencode || true")).stdout.trim() === "" ? true : undefined), 10_000);
  });
});

describe("the opencode harness when the platform is killed", () => {
  let database: TestDatabase;
  let gateway: TestGateway;
  let sql: postgres.Sql;
  let dataDir: string;
  let server: BerthProcess | undefined;

  beforeAll(async () => {
    database = await createTestDatabase();
    gateway = await startTestGateway({ apiKey: GATEWAY_KEY });
    sql = postgres(database.url, { max: 2, onnotice: () => {} });
    dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-opencode-crash-"));
  });
  afterAll(async () => {
    server?.child.kill("SIGKILL");
    await sql?.end();
    await gateway?.close();
    await database?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  async function startServer() {
    const port = await freePort();
    server = startProcess(process.execPath, ["build/main.js"], {
      DATABASE_URL: database.url,
      BERTH_DATA_DIR: dataDir,
      PORT: String(port),
      HOST: "127.0.0.1",
      BERTH_ADMIN_API_KEY: KEY,
      LITELLM_BASE_URL: gateway.url,
      LITELLM_API_KEY: GATEWAY_KEY,
      BERTH_WARM_POOL_SIZE: "0",
      LOG_LEVEL: "info",
    });
    await waitFor("/readyz", async () => ((await readyzStatus(port)) === 200 ? true : undefined), 60_000);
    return createBerthClient({ url: `http://127.0.0.1:${port}`, apiKey: KEY });
  }

  async function turnStatuses(sessionId: string) {
    return (await sql<{ status: string }[]>`select status::text from turns where session_id = ${sessionId} order by user_seq`).map((row) => row.status);
  }

  it("ends the interrupted message with an error instead of running it twice, and the next message continues opencode's session", async () => {
    let api = await startServer();
    const agent = await api.agents.create.mutate({ name: "opencode-crash", model: "test-model", harness: "opencode" });
    const { id } = await api.sessions.create.mutate({ agentId: agent.id });
    await waitFor("ready", async () => ((await api.sessions.get.query({ sessionId: id })).status === "ready" ? true : undefined), 30_000);

    const before = gateway.completions.length;
    gateway.script({ hang: true });
    await api.sessions.send.mutate({ sessionId: id, text: "survive this" });
    await waitFor("opencode to call the model", () => (gateway.completions.length > before ? true : undefined), 60_000);
    server!.child.kill("SIGKILL");
    await server!.exited;

    api = await startServer();
    await waitFor("the interrupted turn to end", async () => ((await turnStatuses(id))[0] === "failed" ? true : undefined), 60_000);
    const log = await sql<Event[]>`select seq::int, type::text, payload from session_events where session_id = ${id} order by seq`;
    expect(log.filter((event) => event.type === "error").map((event) => event.payload.message)).toEqual([expect.stringMatching(/^the platform stopped while opencode worked on this message/)]);
    expect(gateway.completions.length).toBe(before + 1);

    gateway.script({ text: "Back, with the first message in my history." });
    await api.sessions.send.mutate({ sessionId: id, text: "are you there?" });
    await waitFor("the second turn to complete", async () => ((await turnStatuses(id))[1] === "completed" ? true : undefined), 90_000);
    const users = (gateway.completions.at(-1)!.body as ChatBody).messages.filter((message) => message.role === "user").map((message) => message.content);
    expect(users).toEqual(["survive this", "are you there?"]);
    expect(gateway.violations).toEqual([]);
    server!.child.kill("SIGTERM");
    expect(await server!.exited).toEqual({ code: 0, signal: null });
    server = undefined;
  });
});
