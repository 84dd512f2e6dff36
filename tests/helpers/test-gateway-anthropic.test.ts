import { afterEach, describe, expect, it } from "vitest";
import { startTestAnthropicGateway, type TestAnthropicGateway } from "./test-gateway-anthropic";

// The scripted Anthropic gateway is only useful if it behaves like the real thing: these tests pin
// its wire format and the request checks it applies. (Claude Code 2.1.331 itself ran against it
// without a violation: tests/e2e/claude-code-harness.test.ts.)

let gateway: TestAnthropicGateway;

afterEach(async () => {
  await gateway?.close();
});

const user = [{ role: "user", content: "hi" }];

async function post(body: unknown, options: { headers?: Record<string, string>; path?: string } = {}) {
  return fetch(`${gateway.url}${options.path ?? "/v1/messages?beta=true"}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer sk-test", "anthropic-version": "2023-06-01", ...options.headers },
    body: JSON.stringify(body),
  });
}

/** The SSE events of a body: [event name, decoded data]. */
async function events(response: Response): Promise<[string, Record<string, unknown>][]> {
  const text = await response.text();
  expect(text.endsWith("\n\n")).toBe(true);
  return text
    .split("\n\n")
    .filter(Boolean)
    .map((event) => {
      const [name, data] = event.split("\n");
      expect(name!.startsWith("event: ") && data!.startsWith("data: ")).toBe(true);
      const decoded = JSON.parse(data!.slice("data: ".length)) as Record<string, unknown>;
      expect(decoded.type).toBe(name!.slice("event: ".length));
      return [name!.slice("event: ".length), decoded];
    });
}

describe("Anthropic test gateway wire format", () => {
  it("streams a text answer: message_start, content block events, message_delta with stop reason and usage, message_stop", async () => {
    gateway = await startTestAnthropicGateway({ apiKey: "sk-test" });
    gateway.script({ text: "Hello world", chunks: 2, usage: { input: 12, output: 3, cacheRead: 5 } });
    const response = await post({ model: "m", max_tokens: 100, messages: user, stream: true });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toBe("text/event-stream");
    const all = await events(response);
    expect(all.map(([name]) => name)).toEqual(["message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]);
    expect(all[0]![1]).toEqual({
      type: "message_start",
      message: { id: "msg_test_1", type: "message", role: "assistant", model: "m", content: [], stop_reason: null, stop_sequence: null, usage: { input_tokens: 12, output_tokens: 1, cache_read_input_tokens: 5, cache_creation_input_tokens: 0 } },
    });
    expect(all[2]![1]).toEqual({ type: "content_block_start", index: 0, content_block: { type: "text", text: "" } });
    expect(all.slice(3, 5).map(([, data]) => data.delta)).toEqual([{ type: "text_delta", text: "Hello " }, { type: "text_delta", text: "world" }]);
    expect(all[6]![1]).toEqual({ type: "message_delta", delta: { stop_reason: "end_turn", stop_sequence: null }, usage: { output_tokens: 3 } });
    expect(gateway.violations).toEqual([]);
    expect(gateway.messages[0]!.query).toBe("?beta=true");
  });

  it("streams tool uses with input_json_delta fragments and stop_reason tool_use", async () => {
    gateway = await startTestAnthropicGateway();
    gateway.script({ text: "Writing.", toolUses: [{ name: "Write", input: { file_path: "/w/a.txt", content: "a" }, id: "toolu_1" }], inputChunks: 2 });
    const all = await events(await post({ model: "m", max_tokens: 100, messages: user, stream: true, tools: [{ name: "Write", input_schema: { type: "object" } }] }));
    const starts = all.filter(([name]) => name === "content_block_start").map(([, data]) => data.content_block);
    expect(starts).toEqual([{ type: "text", text: "" }, { type: "tool_use", id: "toolu_1", name: "Write", input: {} }]);
    const fragments = all.filter(([name, data]) => name === "content_block_delta" && data.index === 1).map(([, data]) => data.delta as { type: string; partial_json: string });
    expect(fragments).toHaveLength(2);
    expect(fragments.every((fragment) => fragment.type === "input_json_delta")).toBe(true);
    expect(JSON.parse(fragments.map((fragment) => fragment.partial_json).join(""))).toEqual({ file_path: "/w/a.txt", content: "a" });
    expect(all.find(([name]) => name === "message_delta")![1].delta).toEqual({ stop_reason: "tool_use", stop_sequence: null });
  });

  it("answers one JSON message when stream is false, and count_tokens", async () => {
    gateway = await startTestAnthropicGateway();
    gateway.script({ toolUses: [{ name: "Bash", input: { command: "ls" }, id: "toolu_9" }], usage: { input: 4, output: 2 } });
    const response = await post({ model: "m", max_tokens: 10, messages: user });
    expect(await response.json()).toEqual({
      id: "msg_test_1",
      type: "message",
      role: "assistant",
      model: "m",
      content: [{ type: "tool_use", id: "toolu_9", name: "Bash", input: { command: "ls" } }],
      stop_reason: "tool_use",
      stop_sequence: null,
      usage: { input_tokens: 4, output_tokens: 2, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 },
    });
    const count = await post({ model: "m", messages: user }, { path: "/v1/messages/count_tokens" });
    expect(await count.json()).toEqual({ input_tokens: expect.any(Number) });
    expect(gateway.violations).toEqual([]);
  });

  it("answers scripted errors with an Anthropic error body, repeated `times`, and hangs when told", async () => {
    gateway = await startTestAnthropicGateway();
    gateway.script({ status: 400, message: "no such model", times: 2 }, { text: "ok" });
    for (let attempt = 0; attempt < 2; attempt++) {
      const response = await post({ model: "m", max_tokens: 10, messages: user });
      expect(response.status).toBe(400);
      expect(await response.json()).toEqual({ type: "error", error: { type: "invalid_request_error", message: "no such model" } });
    }
    expect((await post({ model: "m", max_tokens: 10, messages: user })).status).toBe(200);
    expect(gateway.pending).toBe(0);

    gateway.script({ hang: true });
    const hung = await Promise.race([post({ model: "m", max_tokens: 10, messages: user }).then(() => "answered"), new Promise((resolve) => setTimeout(() => resolve("hanging"), 300))]);
    expect(hung).toBe("hanging");
    gateway.script({ text: "dropped" });
    gateway.clear();
    expect(gateway.pending).toBe(0);
  });
});

describe("Anthropic test gateway request checks", () => {
  async function rejected(body: unknown, headers?: Record<string, string>) {
    gateway.violations.length = 0;
    const response = await post(body, { headers });
    const answer = (await response.json()) as { type: string; error: { type: string; message: string } };
    expect(answer.type).toBe("error");
    expect(gateway.violations).toHaveLength(1);
    return { status: response.status, message: answer.error.message };
  }

  it("rejects what Anthropic rejects", async () => {
    gateway = await startTestAnthropicGateway({ apiKey: "sk-test" });
    expect((await rejected({ model: "m", max_tokens: 1, messages: user }, { authorization: "Bearer wrong" })).status).toBe(401);
    // LiteLLM behind the relay gets the key as a bearer token; x-api-key alone is not what the relay sends.
    expect((await rejected({ model: "m", max_tokens: 1, messages: user }, { authorization: "", "x-api-key": "sk-test" })).status).toBe(401);
    expect((await rejected({ model: "m", messages: user })).message).toMatch(/max_tokens/);
    expect((await rejected({ max_tokens: 1, messages: user })).message).toMatch(/model/);
    expect((await rejected({ model: "m", max_tokens: 1, messages: [] })).message).toMatch(/messages/);
    expect((await rejected({ model: "m", max_tokens: 1, messages: [{ role: "assistant", content: "hi" }] })).message).toMatch(/first .* must be a user message/);
    expect((await rejected({ model: "m", max_tokens: 1, messages: [...user, ...user] })).message).toMatch(/alternate/);
    expect((await rejected({ model: "m", max_tokens: 1, messages: user, tools: [{ name: "x" }] })).message).toMatch(/input_schema|type/);
    expect((await rejected({ model: "m", max_tokens: 1, messages: user, tools: [{ name: "bad name!", input_schema: { type: "object" } }] })).status).toBe(400);
    const use = { role: "assistant", content: [{ type: "tool_use", id: "toolu_a", name: "Bash", input: {} }] };
    expect((await rejected({ model: "m", max_tokens: 1, messages: [...user, use, { role: "user", content: [{ type: "tool_result", tool_use_id: "toolu_b", content: "x" }] }] })).message).toMatch(/toolu_b.*not a tool_use/);
    expect((await rejected({ model: "m", max_tokens: 1, messages: [...user, use, { role: "user", content: "next" }] })).message).toMatch(/without tool_result.*toolu_a/);
    expect((await rejected({ model: "m", max_tokens: 1, messages: [...user, use] })).message).toMatch(/no tool_result follows/);
  });

  it("accepts what Claude Code sends: block content, cache_control, system blocks and mid-conversation system messages, tool results", async () => {
    gateway = await startTestAnthropicGateway({ apiKey: "sk-test" });
    gateway.script({ text: "ok" });
    const response = await post({
      model: "m",
      max_tokens: 32000,
      system: [{ type: "text", text: "You are an agent.", cache_control: { type: "ephemeral" } }],
      messages: [
        { role: "user", content: [{ type: "text", text: "do it" }] },
        { role: "system", content: "# Environment" },
        { role: "assistant", content: [{ type: "text", text: "ok" }, { type: "tool_use", id: "toolu_a", name: "Bash", input: { command: "ls" } }] },
        { role: "user", content: [{ type: "tool_result", tool_use_id: "toolu_a", content: "a.txt", is_error: false }] },
      ],
      tools: [{ name: "Bash", description: "run", input_schema: { type: "object", properties: {} } }],
      thinking: { type: "adaptive" },
      metadata: { user_id: "x" },
      stream: true,
    });
    expect(response.status).toBe(200);
    await response.text();
    expect(gateway.violations).toEqual([]);
  });

  it("lists requests for unknown paths as violations", async () => {
    gateway = await startTestAnthropicGateway();
    expect((await post({}, { path: "/v1/chat/completions" })).status).toBe(404);
    expect(gateway.violations).toEqual(["POST /v1/chat/completions: 404 unknown path /v1/chat/completions"]);
  });
});
