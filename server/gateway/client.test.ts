import net from "node:net";
import { Writable } from "node:stream";
import { afterEach, describe, expect, it } from "vitest";
import { waitFor } from "../../tests/helpers/processes";
import { startTestGateway, type TestGateway, type TestGatewayStep } from "../../tests/helpers/test-gateway";
import { createLogger } from "../logger";
import { createGatewayClient, GatewayError, type ChatMessage, type GatewayClientOptions, type ToolDefinition } from "./client";

// Every test talks HTTP to the scripted OpenAI-compatible gateway in tests/helpers; nothing is mocked.

const API_KEY = "sk-berth-test-0123456789abcdef";
const messages: ChatMessage[] = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "hello" },
];
const bash: ToolDefinition = {
  name: "bash",
  description: "Run a shell command",
  parameters: { type: "object", properties: { command: { type: "string" } }, required: ["command"] },
};

let gateway: TestGateway;

afterEach(async () => {
  await gateway?.close();
});

async function setup(steps: TestGatewayStep[], options: Partial<GatewayClientOptions> = {}) {
  gateway = await startTestGateway({ apiKey: API_KEY });
  gateway.script(...steps);
  return createGatewayClient({ baseUrl: gateway.url, apiKey: API_KEY, retryBaseMs: 5, ...options });
}

async function failure(promise: Promise<unknown>): Promise<GatewayError> {
  const error = await promise.then(
    () => undefined,
    (thrown: unknown) => thrown,
  );
  expect(error).toBeInstanceOf(GatewayError);
  return error as GatewayError;
}

async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe("gateway client: replies", () => {
  it("streams text, handing each delta to the caller", async () => {
    const client = await setup([{ text: "Hello there, friend", chunks: 3, usage: { prompt: 12, completion: 4 } }]);
    const deltas: string[] = [];
    const completion = await client.complete({ model: "gpt-test", messages, tools: [], onTextDelta: (delta) => deltas.push(delta) });
    expect(completion).toEqual({ text: "Hello there, friend", toolCalls: [], finishReason: "stop", usage: { promptTokens: 12, completionTokens: 4 } });
    expect(deltas).toHaveLength(3);
    expect(deltas.join("")).toBe("Hello there, friend");

    const [request] = gateway.completions;
    expect(request!.headers.authorization).toBe(`Bearer ${API_KEY}`);
    expect(request!.body).toEqual({ model: "gpt-test", messages, stream: true, stream_options: { include_usage: true } });
    expect(gateway.violations).toEqual([]);
  });

  it("assembles several tool calls from streamed fragments, arguments kept raw", async () => {
    const client = await setup([
      {
        text: "Let me look.",
        toolCalls: [
          { name: "bash", arguments: { command: "ls -la /workspace" }, id: "call_one" },
          { name: "bash", arguments: '{"command": "cat README.md"}', id: "call_two" },
          { name: "bash", arguments: "not json at all" },
        ],
        argumentChunks: 4,
      },
    ]);
    const completion = await client.complete({ model: "m", messages, tools: [bash] });
    expect(completion.text).toBe("Let me look.");
    expect(completion.finishReason).toBe("tool_calls");
    expect(completion.toolCalls).toEqual([
      { id: "call_one", name: "bash", arguments: '{"command":"ls -la /workspace"}' },
      { id: "call_two", name: "bash", arguments: '{"command": "cat README.md"}' },
      { id: "call_test_1_2", name: "bash", arguments: "not json at all" },
    ]);
    expect((gateway.completions[0]!.body as { tools: unknown }).tools).toEqual([
      { type: "function", function: { name: "bash", description: bash.description, parameters: bash.parameters } },
    ]);
    expect(gateway.violations).toEqual([]);
  });

  it("sends a conversation with tool results the gateway accepts", async () => {
    const client = await setup([{ text: "It has two files." }]);
    const history: ChatMessage[] = [
      ...messages,
      { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "bash", arguments: '{"command":"ls"}' } }] },
      { role: "tool", tool_call_id: "call_1", content: "a\nb\n" },
    ];
    expect((await client.complete({ model: "m", messages: history, tools: [bash] })).text).toBe("It has two files.");
    expect(gateway.violations).toEqual([]);
  });

  it("reports usage with the cost from usage.cost or the x-litellm-response-cost header", async () => {
    const client = await setup([
      { text: "a", usage: { prompt: 100, completion: 20, cost: 0.0042 } },
      { text: "b", usage: { prompt: 5, completion: 6, cost: 0.5, costIn: "header" } },
      { text: "c" },
    ]);
    expect((await client.complete({ model: "m", messages, tools: [] })).usage).toEqual({ promptTokens: 100, completionTokens: 20, cost: 0.0042 });
    expect((await client.complete({ model: "m", messages, tools: [] })).usage).toEqual({ promptTokens: 5, completionTokens: 6, cost: 0.5 });
    expect((await client.complete({ model: "m", messages, tools: [] })).usage).toEqual({ promptTokens: 0, completionTokens: 0 });
  });

  it("accepts a plain JSON reply from a gateway that ignores stream", async () => {
    const client = await setup([
      { toolCalls: [{ name: "bash", arguments: { command: "pwd" }, id: "call_j" }], json: true, usage: { prompt: 9, completion: 3, cost: 0.01, costIn: "header" } },
    ]);
    const deltas: string[] = [];
    const completion = await client.complete({ model: "m", messages, tools: [bash], onTextDelta: (delta) => deltas.push(delta) });
    expect(completion).toEqual({
      text: "",
      toolCalls: [{ id: "call_j", name: "bash", arguments: '{"command":"pwd"}' }],
      finishReason: "tool_calls",
      usage: { promptTokens: 9, completionTokens: 3, cost: 0.01 },
    });
    expect(deltas).toEqual([]);
  });

  it("accepts the base URL with or without a trailing slash or /v1", async () => {
    await setup([{ text: "1" }, { text: "2" }, { text: "3" }, { text: "4" }]);
    for (const baseUrl of [gateway.url, `${gateway.url}/`, `${gateway.url}/v1`, `${gateway.url}/v1/`]) {
      const client = createGatewayClient({ baseUrl, apiKey: API_KEY });
      await client.complete({ model: "m", messages, tools: [] });
    }
    expect(gateway.completions).toHaveLength(4);
    expect(gateway.violations).toEqual([]);
  });

  it("tolerates keep-alive comments, null choices on the usage chunk and a missing [DONE] after finish_reason", async () => {
    const chunk = (delta: object, finish: string | null = null) => ({ id: "x", object: "chat.completion.chunk", created: 1, model: "m", choices: [{ index: 0, delta, finish_reason: finish }] });
    const client = await setup([
      { sse: [": keep-alive", chunk({ role: "assistant" }), ": PROCESSING", chunk({ content: "fine" }), chunk({}, "stop"), { id: "x", choices: null, usage: { prompt_tokens: 1, completion_tokens: 1 } }] },
    ]);
    expect(await client.complete({ model: "m", messages, tools: [] })).toEqual({
      text: "fine",
      toolCalls: [],
      finishReason: "stop",
      usage: { promptTokens: 1, completionTokens: 1 },
    });
  });
});

describe("gateway client: retries", () => {
  it("retries a 429 after its Retry-After, then succeeds", async () => {
    const client = await setup([{ status: 429, retryAfter: 1, message: "rate limited" }, { text: "ok" }]);
    const started = Date.now();
    expect((await client.complete({ model: "m", messages, tools: [] })).text).toBe("ok");
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    expect(gateway.completions).toHaveLength(2);
  });

  it("retries 5xx replies with backoff, then succeeds", async () => {
    const client = await setup([{ status: 500 }, { status: 503 }, { text: "third time" }]);
    expect((await client.complete({ model: "m", messages, tools: [] })).text).toBe("third time");
    expect(gateway.completions).toHaveLength(3);
  });

  it("gives up after maxRetries with the last error", async () => {
    const client = await setup([{ status: 502 }, { status: 502 }, { status: 503, message: "upstream overloaded" }], { maxRetries: 2 });
    const error = await failure(client.complete({ model: "m", messages, tools: [] }));
    expect(error).toMatchObject({ kind: "http", status: 503, retryable: true });
    expect(error.message).toContain("upstream overloaded");
    expect(gateway.completions).toHaveLength(3);
  });

  it("does not retry a 400 and surfaces the gateway's message, truncated", async () => {
    const long = `model "nope" does not exist. ${"x".repeat(1000)}`;
    const client = await setup([{ status: 400, message: long }, { text: "never" }]);
    const error = await failure(client.complete({ model: "nope", messages, tools: [] }));
    expect(error).toMatchObject({ kind: "http", status: 400, retryable: false });
    expect(error.message).toContain('HTTP 400: model "nope" does not exist.');
    expect(error.message.length).toBeLessThan(400);
    expect(gateway.completions).toHaveLength(1);
  });

  it("surfaces the gateway's 400 for a history it rejects (tool result for an unknown call)", async () => {
    const client = await setup([{ text: "never" }]);
    const bad: ChatMessage[] = [...messages, { role: "tool", tool_call_id: "call_ghost", content: "x" }];
    const error = await failure(client.complete({ model: "m", messages: bad, tools: [] }));
    expect(error).toMatchObject({ kind: "http", status: 400, retryable: false });
    expect(error.message).toContain('unknown tool_call_id "call_ghost"');
    expect(gateway.violations).toHaveLength(1);
  });

  it("retries a connection dropped before the reply, but not one dropped mid-stream", async () => {
    const client = await setup([{ disconnect: "before-headers" }, { text: "after reconnect" }, { disconnect: "mid-stream" }, { text: "never" }]);
    expect((await client.complete({ model: "m", messages, tools: [] })).text).toBe("after reconnect");
    const deltas: string[] = [];
    const error = await failure(client.complete({ model: "m", messages, tools: [], onTextDelta: (delta) => deltas.push(delta) }));
    expect(error).toMatchObject({ kind: "network", retryable: true });
    expect(deltas).toEqual(["partial"]);
    expect(gateway.completions).toHaveLength(3);
  });

  it("reports an unreachable gateway as a network error after retrying", async () => {
    const port = await closedPort();
    const client = createGatewayClient({ baseUrl: `http://127.0.0.1:${port}`, apiKey: API_KEY, maxRetries: 1, retryBaseMs: 1 });
    const error = await failure(client.complete({ model: "m", messages, tools: [] }));
    expect(error).toMatchObject({ kind: "network", retryable: true });
    expect(error.message).toContain("ECONNREFUSED");
  });
});

describe("gateway client: malformed replies", () => {
  const cases: [string, TestGatewayStep, string][] = [
    ["a data line that is not JSON", { malformed: "bad-json" }, "stream event 2 is not valid JSON"],
    ["a chunk without choices", { malformed: "no-choices" }, "stream event 1 has no choices"],
    ["a stream cut short", { malformed: "cut" }, "ended before [DONE] or a finish_reason"],
    [
      "a tool call without a name",
      { sse: [{ id: "x", choices: [{ index: 0, delta: { tool_calls: [{ index: 0, id: "call_1", function: { arguments: "{}" } }] }, finish_reason: "tool_calls" }] }, "[DONE]"] },
      "tool call at index 0 has no function name",
    ],
    [
      "a tool call without an id",
      { sse: [{ id: "x", choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { name: "bash", arguments: "{}" } }] }, finish_reason: "tool_calls" }] }, "[DONE]"] },
      "tool call at index 0 has no id",
    ],
    ["a chunk of the wrong shape", { sse: [{ id: "x", choices: [{ index: 0, delta: { content: 42 } }] }, "[DONE]"] }, "choices.0.delta.content"],
    ["an error in the middle of the stream", { sse: [{ error: { message: "provider exploded", code: 400 } }] }, "provider exploded"],
  ];

  it.each(cases)("rejects %s without retrying", async (_name, step, expected) => {
    const client = await setup([step, { text: "never" }]);
    const error = await failure(client.complete({ model: "m", messages, tools: [] }));
    expect(["malformed", "http"]).toContain(error.kind);
    expect(error.message).toContain(expected);
    expect(error.message).not.toContain(API_KEY);
    expect(gateway.completions).toHaveLength(1);
  });

  it("rejects a 200 JSON document that is not a completion", async () => {
    const client = await setup([{ status: 200, body: { id: "x", object: "chat.completion" } }]);
    const error = await failure(client.complete({ model: "m", messages, tools: [] }));
    expect(error.kind).toBe("malformed");
    expect(error.message).toContain("choices");
  });
});

describe("gateway client: timeouts and abort", () => {
  it("times out a gateway that never answers, retrying first", async () => {
    // Each attempt's time includes connecting and sending: long enough for both to reach the gateway.
    const client = await setup([{ hang: true }, { hang: true }], { timeoutMs: 1_000, maxRetries: 1 });
    const error = await failure(client.complete({ model: "m", messages, tools: [] }));
    expect(error).toMatchObject({ kind: "timeout", retryable: true });
    expect(error.message).toContain("1000 ms");
    expect(gateway.completions).toHaveLength(2);
  });

  it("retries when the first byte is too slow, then succeeds", async () => {
    // The retry must get its first byte in time, connecting included; the late reply is far later.
    const client = await setup([{ text: "late", delayMs: 5_000 }, { text: "on time" }], { firstByteTimeoutMs: 1_000 });
    expect((await client.complete({ model: "m", messages, tools: [] })).text).toBe("on time");
    expect(gateway.completions).toHaveLength(2);
  });

  it("times out a stream that goes quiet, without retrying", async () => {
    // The first chunk follows the headers at once and must be read within the idle time (else the
    // attempt is retried): a margin for a loaded machine, and a gap far beyond it.
    const client = await setup([{ text: "slow stream", chunks: 3, chunkDelayMs: 3_000 }, { text: "never" }], { idleTimeoutMs: 500 });
    const error = await failure(client.complete({ model: "m", messages, tools: [] }));
    expect(error).toMatchObject({ kind: "timeout" });
    expect(error.message).toContain("no data for 500 ms");
    expect(gateway.completions).toHaveLength(1);
  });

  it("aborts a request in flight without retrying", async () => {
    const client = await setup([{ hang: true }, { text: "never" }]);
    const controller = new AbortController();
    const pending = failure(client.complete({ model: "m", messages, tools: [], signal: controller.signal }));
    // Abort once the request is in flight (the gateway has it), not after a guess at how long that takes.
    await waitFor("the gateway to receive the request", () => gateway.completions.length === 1, 10_000);
    const aborted = Date.now();
    controller.abort();
    const error = await pending;
    expect(error).toMatchObject({ kind: "aborted", retryable: false });
    expect(Date.now() - aborted).toBeLessThan(2_000);
    expect(gateway.completions).toHaveLength(1);
  });

  it("aborts during a retry wait, and sends nothing when already aborted", async () => {
    let logged = "";
    const logger = createLogger("warn", new Writable({ write: (chunk, _encoding, done) => ((logged += String(chunk)), done()) }));
    const client = await setup([{ status: 429, retryAfter: 30 }], { maxRetryDelayMs: 60_000, logger });
    const controller = new AbortController();
    const pending = failure(client.complete({ model: "m", messages, tools: [], signal: controller.signal }));
    // Abort once the 429 is in and the client has started its 30 s wait (it logs that just before).
    await waitFor("the client to wait before retrying", () => logged.includes("gateway request failed, retrying"), 10_000);
    controller.abort();
    const error = await pending;
    expect(error.kind).toBe("aborted");
    expect(gateway.completions).toHaveLength(1);
    const again = await failure(client.complete({ model: "m", messages, tools: [], signal: controller.signal }));
    expect(again.kind).toBe("aborted");
    expect(gateway.completions).toHaveLength(1);
  });

  it("passes an exception from onTextDelta through unchanged", async () => {
    const client = await setup([{ text: "abc", chunks: 3 }]);
    const boom = new Error("caller gave up");
    await expect(
      client.complete({
        model: "m",
        messages,
        tools: [],
        onTextDelta: () => {
          throw boom;
        },
      }),
    ).rejects.toBe(boom);
    expect(gateway.completions).toHaveLength(1);
  });
});

describe("gateway client: secrets", () => {
  it("never puts the API key in errors or logs", async () => {
    let logged = "";
    const logger = createLogger("debug", new Writable({ write: (chunk, _encoding, done) => ((logged += String(chunk)), done()) }));
    gateway = await startTestGateway({ apiKey: "sk-the-right-key" });
    gateway.script({ status: 400, body: { error: { message: "Invalid model for key sk-the-right-key, check sk-the-right-key" } } }, { status: 503 }, { status: 503 });
    const client = createGatewayClient({ baseUrl: gateway.url, apiKey: API_KEY, logger, retryBaseMs: 1, maxRetries: 1 });

    const wrongKey = await failure(client.complete({ model: "m", messages, tools: [] }));
    expect(wrongKey).toMatchObject({ kind: "http", status: 401 });
    expect(wrongKey.message).toContain("missing or wrong bearer token");

    const rightClient = createGatewayClient({ baseUrl: gateway.url, apiKey: "sk-the-right-key", logger, retryBaseMs: 1, maxRetries: 1 });
    const echoed = await failure(rightClient.complete({ model: "m", messages, tools: [] }));
    expect(echoed.message).toContain("Invalid model for key [redacted], check [redacted]");
    await failure(rightClient.complete({ model: "m", messages, tools: [] }));

    const unreachable = createGatewayClient({ baseUrl: `http://127.0.0.1:${await closedPort()}`, apiKey: API_KEY, logger, maxRetries: 0 });
    const network = await failure(unreachable.complete({ model: "m", messages, tools: [] }));
    const health = await unreachable.health();

    for (const text of [wrongKey.message, network.message, String(wrongKey.stack), health.detail ?? ""]) {
      expect(text).not.toContain(API_KEY);
    }
    // Wait for pino's async destination to flush before reading what it wrote.
    await new Promise((resolve) => logger.flush(() => resolve(undefined)));
    expect(logged).toContain("gateway request failed");
    expect(logged).not.toContain(API_KEY);
    expect(logged).not.toContain("sk-the-right-key");
  });
});

describe("gateway client: health", () => {
  it("is ok when LiteLLM's liveliness route answers", async () => {
    gateway = await startTestGateway({ apiKey: API_KEY });
    expect(await createGatewayClient({ baseUrl: `${gateway.url}/v1`, apiKey: API_KEY }).health()).toEqual({ status: "ok" });
    expect(gateway.requests.map((request) => request.path)).toEqual(["/health/liveliness"]);
  });

  it("falls back to /v1/models on a plain OpenAI-compatible server", async () => {
    gateway = await startTestGateway({ apiKey: API_KEY, liveliness: false });
    expect(await createGatewayClient({ baseUrl: gateway.url, apiKey: API_KEY }).health()).toEqual({ status: "ok" });
    const wrongKey = await createGatewayClient({ baseUrl: gateway.url, apiKey: "sk-wrong" }).health();
    expect(wrongKey).toEqual({ status: "unreachable", detail: "/health/liveliness: HTTP 404; /v1/models: HTTP 401" });
  });

  it("is unreachable when nothing listens", async () => {
    const health = await createGatewayClient({ baseUrl: `http://127.0.0.1:${await closedPort()}` }).health();
    expect(health.status).toBe("unreachable");
    expect(health.detail).toContain("ECONNREFUSED");
  });

  it("is unreachable within its timeout when the gateway hangs", async () => {
    const sockets: net.Socket[] = [];
    const server = net.createServer((socket) => void sockets.push(socket));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = server.address() as net.AddressInfo;
      const started = Date.now();
      const health = await createGatewayClient({ baseUrl: `http://127.0.0.1:${port}`, healthTimeoutMs: 200 }).health();
      expect(health).toEqual({ status: "unreachable", detail: "/health/liveliness: no answer within 200 ms" });
      expect(Date.now() - started).toBeLessThan(1_000);
    } finally {
      for (const socket of sockets) socket.destroy();
      server.close();
    }
  });
});
