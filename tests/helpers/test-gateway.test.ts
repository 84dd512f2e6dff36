import { afterEach, describe, expect, it } from "vitest";
import { startTestGateway, type TestGateway } from "./test-gateway";

// The scripted gateway is only useful if it behaves like the real thing: these tests pin its wire
// format and the request checks it applies.

let gateway: TestGateway;

afterEach(async () => {
  await gateway?.close();
});

const user = [{ role: "user", content: "hi" }];

async function post(body: unknown, headers: Record<string, string> = {}) {
  return fetch(`${gateway.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer sk-test", ...headers },
    body: JSON.stringify(body),
  });
}

/** The `data:` payloads of an SSE body, JSON-decoded except `[DONE]`. */
async function events(response: Response): Promise<unknown[]> {
  const text = await response.text();
  expect(text.endsWith("\n\n")).toBe(true);
  return text
    .split("\n\n")
    .filter(Boolean)
    .map((event) => {
      expect(event.startsWith("data: ")).toBe(true);
      const data = event.slice("data: ".length);
      return data === "[DONE]" ? data : JSON.parse(data);
    });
}

describe("test gateway wire format", () => {
  it("streams chat.completion.chunk objects, a usage chunk and [DONE]", async () => {
    gateway = await startTestGateway({ apiKey: "sk-test" });
    gateway.script({ text: "Hello world", chunks: 2, usage: { prompt: 7, completion: 2, cost: 0.25 } });
    const response = await post({ model: "m", messages: user, stream: true, stream_options: { include_usage: true } });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toBe("text/event-stream");
    const all = await events(response);
    expect(all.at(-1)).toBe("[DONE]");
    const chunks = all.slice(0, -1) as Record<string, unknown>[];
    for (const chunk of chunks) {
      expect(chunk).toMatchObject({ id: "chatcmpl-test-1", object: "chat.completion.chunk", model: "m", created: expect.any(Number) });
      expect(chunk).toHaveProperty("usage");
    }
    expect(chunks.map((chunk) => (chunk.choices as { delta: unknown }[])[0]?.delta)).toEqual([
      { role: "assistant", content: "" },
      { content: "Hello " },
      { content: "world" },
      {},
      undefined,
    ]);
    expect((chunks[3]!.choices as unknown[])[0]).toEqual({ index: 0, delta: {}, logprobs: null, finish_reason: "stop" });
    expect(chunks[4]).toMatchObject({ choices: [], usage: { prompt_tokens: 7, completion_tokens: 2, total_tokens: 9, cost: 0.25 } });
    expect(gateway.violations).toEqual([]);
  });

  it("sends no usage chunk without stream_options.include_usage", async () => {
    gateway = await startTestGateway();
    gateway.script({ text: "ok" });
    const all = (await events(await post({ model: "m", messages: user, stream: true }))) as Record<string, unknown>[];
    expect(all).toHaveLength(4);
    expect(all.slice(0, 3).every((chunk) => !("usage" in chunk))).toBe(true);
  });

  it("streams tool calls as an id+name fragment followed by argument fragments", async () => {
    gateway = await startTestGateway();
    gateway.script({ toolCalls: [{ name: "bash", arguments: { command: "ls -la" }, id: "call_a" }, { name: "read", arguments: "{}" }] });
    const all = (await events(await post({ model: "m", messages: user, stream: true }))) as { choices: { delta: { tool_calls?: unknown[] }; finish_reason: string | null }[] }[];
    const fragments = all.slice(0, -1).flatMap((chunk) => chunk.choices[0]?.delta.tool_calls ?? []);
    expect(fragments[0]).toEqual({ index: 0, id: "call_a", type: "function", function: { name: "bash", arguments: "" } });
    expect(fragments.filter((fragment) => (fragment as { index: number }).index === 0)).toHaveLength(4);
    expect(fragments).toContainEqual({ index: 1, id: "call_test_1_1", type: "function", function: { name: "read", arguments: "" } });
    expect(all.at(-2)).toMatchObject({ choices: [{ finish_reason: "tool_calls" }] });
  });

  it("answers with one chat.completion JSON document when stream is false", async () => {
    gateway = await startTestGateway();
    gateway.script({ toolCalls: [{ name: "bash", arguments: { command: "pwd" } }], usage: { prompt: 3, completion: 4, cost: 0.5, costIn: "header" } });
    const response = await post({ model: "m", messages: user });
    expect(response.headers.get("content-type")).toBe("application/json");
    expect(response.headers.get("x-litellm-response-cost")).toBe("0.5");
    expect(await response.json()).toMatchObject({
      object: "chat.completion",
      choices: [
        {
          index: 0,
          finish_reason: "tool_calls",
          message: { role: "assistant", content: null, tool_calls: [{ id: "call_test_1_0", type: "function", function: { name: "bash", arguments: '{"command":"pwd"}' } }] },
        },
      ],
      usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 },
    });
  });

  it("scripts error replies, dynamic replies, and reports an empty script (also after clear)", async () => {
    gateway = await startTestGateway();
    gateway.script({ status: 429, retryAfter: 2, message: "slow down" }, (request) => ({
      text: `model was ${(request.body as { model: string }).model}`,
      json: true,
    }));
    const limited = await post({ model: "m", messages: user });
    expect(limited.status).toBe(429);
    expect(limited.headers.get("retry-after")).toBe("2");
    expect(await limited.json()).toEqual({ error: { message: "slow down", type: "invalid_request_error", param: null, code: "429" } });
    expect(await (await post({ model: "dyn", messages: user })).json()).toMatchObject({ choices: [{ message: { content: "model was dyn" } }] });
    expect(gateway.violations).toEqual([]);
    gateway.script({ text: "left over" }, { text: "left over too" });
    gateway.clear();
    expect(gateway.pending).toBe(0);
    const empty = await post({ model: "m", messages: user });
    expect(empty.status).toBe(500);
    expect(await empty.json()).toMatchObject({ error: { message: "test gateway: no scripted reply left" } });
    expect(gateway.violations).toEqual(["POST /v1/chat/completions: test gateway: no scripted reply left"]);
  });

  it("serves the health routes", async () => {
    gateway = await startTestGateway({ apiKey: "sk-test" });
    expect((await fetch(`${gateway.url}/health/liveliness`)).status).toBe(200);
    const models = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: "Bearer sk-test" } });
    expect(await models.json()).toMatchObject({ object: "list", data: [{ id: "test-model", object: "model" }] });
    expect((await fetch(`${gateway.url}/v1/models`)).status).toBe(401);
    expect(gateway.violations).toEqual(["GET /v1/models: 401 missing or wrong bearer token"]);
    await gateway.close();
    gateway = await startTestGateway({ liveliness: false });
    expect((await fetch(`${gateway.url}/health/liveliness`)).status).toBe(404);
    expect(gateway.violations).toEqual([]);
  });
});

describe("test gateway request checks", () => {
  const assistantCall = { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "bash", arguments: "{}" } }] };
  const tool = { type: "function", function: { name: "bash", description: "run", parameters: { type: "object" } } };

  it.each([
    ["an empty model", { model: "", messages: user }, "model"],
    ["no messages", { model: "m", messages: [] }, "messages"],
    ["an unknown role", { model: "m", messages: [{ role: "robot", content: "x" }] }, "messages.0"],
    ["a tool message with an unknown tool_call_id", { model: "m", messages: [...user, assistantCall, { role: "tool", tool_call_id: "call_2", content: "x" }] }, "unknown tool_call_id \"call_2\""],
    ["a tool call without its result", { model: "m", messages: [...user, assistantCall, { role: "user", content: "next" }] }, "missing call_1"],
    ["a dangling tool call at the end", { model: "m", messages: [...user, assistantCall] }, "have no tool messages: call_1"],
    ["an assistant message with neither content nor tool calls", { model: "m", messages: [...user, { role: "assistant", content: null }] }, "needs content or tool_calls"],
    ["an empty tools array", { model: "m", messages: user, tools: [] }, "tools must not be an empty array"],
    ["a tool not in function format", { model: "m", messages: user, tools: [{ name: "bash", parameters: {} }] }, "tools.0"],
    ["stream_options without stream", { model: "m", messages: user, stream_options: { include_usage: true } }, "stream_options is only allowed"],
  ])("rejects %s with a 400 and records it", async (_name, body, expected) => {
    gateway = await startTestGateway({ apiKey: "sk-test" });
    gateway.script({ text: "never sent" });
    const response = await post(body);
    expect(response.status).toBe(400);
    const json = (await response.json()) as { error: { message: string; type: string } };
    expect(json.error.type).toBe("invalid_request_error");
    expect(json.error.message).toContain(expected);
    expect(gateway.violations).toHaveLength(1);
    expect(gateway.violations[0]).toContain(expected);
    expect(gateway.pending).toBe(1);
  });

  it("rejects a wrong bearer token, a wrong path and a non-JSON body", async () => {
    gateway = await startTestGateway({ apiKey: "sk-test" });
    expect((await post({ model: "m", messages: user }, { authorization: "Bearer nope" })).status).toBe(401);
    expect((await fetch(`${gateway.url}/chat/completions`, { method: "POST" })).status).toBe(404);
    const notJson = await fetch(`${gateway.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Bearer sk-test" },
      body: "{nope",
    });
    expect(notJson.status).toBe(400);
    expect(gateway.violations).toHaveLength(3);
    expect(gateway.requests.map((request) => request.path)).toEqual(["/v1/chat/completions", "/chat/completions", "/v1/chat/completions"]);
  });

  it("accepts a well-formed conversation with tool calls and results", async () => {
    gateway = await startTestGateway({ apiKey: "sk-test" });
    gateway.script({ text: "done" });
    const response = await post({
      model: "m",
      messages: [{ role: "system", content: "be brief" }, ...user, assistantCall, { role: "tool", tool_call_id: "call_1", content: "output" }],
      tools: [tool],
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(response.status).toBe(200);
    await response.text();
    expect(gateway.violations).toEqual([]);
    expect(gateway.completions[0]!.headers.authorization).toBe("Bearer sk-test");
  });
});
