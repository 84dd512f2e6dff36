import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestResponsesGateway, type TestResponsesGateway } from "./test-gateway-responses";

const KEY = "sk-responses-test";

type SseEvent = { event: string; data: Record<string, unknown> };

async function post(gateway: TestResponsesGateway, body: unknown, headers: Record<string, string> = {}) {
  return fetch(`${gateway.url}/v1/responses`, {
    method: "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
}

async function events(response: Response): Promise<SseEvent[]> {
  const text = await response.text();
  return text
    .split("\n\n")
    .filter((block) => block.trim())
    .map((block) => {
      const lines = block.split("\n");
      const event = lines.find((line) => line.startsWith("event: "))!.slice(7);
      const data = JSON.parse(lines.find((line) => line.startsWith("data: "))!.slice(6)) as Record<string, unknown>;
      return { event, data };
    });
}

const user = (text: string) => ({ type: "message", role: "user", content: [{ type: "input_text", text }] });
const tools = [{ type: "function", name: "exec_command", description: "run", strict: false, parameters: { type: "object", properties: { cmd: { type: "string" } } } }];

describe("the scripted Responses API gateway", () => {
  let gateway: TestResponsesGateway;
  beforeAll(async () => {
    gateway = await startTestResponsesGateway({ apiKey: KEY });
  });
  afterAll(async () => {
    await gateway.close();
  });

  it("streams a message and function calls as Responses API events, with usage at the end", async () => {
    gateway.script({ text: "Running it.", chunks: 3, functionCalls: [{ name: "exec_command", arguments: { cmd: "ls" }, callId: "call_1" }], usage: { input: 12, output: 4, cached: 2 } });
    const response = await post(gateway, { model: "m", input: [user("list files")], tools, stream: true, store: false });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toBe("text/event-stream");
    const stream = await events(response);
    for (const { event, data } of stream) expect(data.type).toBe(event);
    expect(stream.map((event) => event.data.sequence_number)).toEqual(stream.map((_, index) => index));
    expect(stream.map((event) => event.event)).toEqual([
      "response.created",
      "response.in_progress",
      "response.output_item.added",
      "response.content_part.added",
      "response.output_text.delta",
      "response.output_text.delta",
      "response.output_text.delta",
      "response.output_text.done",
      "response.content_part.done",
      "response.output_item.done",
      "response.output_item.added",
      "response.function_call_arguments.delta",
      "response.function_call_arguments.delta",
      "response.function_call_arguments.delta",
      "response.function_call_arguments.done",
      "response.output_item.done",
      "response.completed",
    ]);
    const deltas = stream.filter((event) => event.event === "response.output_text.delta").map((event) => event.data.delta).join("");
    expect(deltas).toBe("Running it.");
    const args = stream.filter((event) => event.event === "response.function_call_arguments.delta").map((event) => event.data.delta).join("");
    expect(JSON.parse(args)).toEqual({ cmd: "ls" });
    const completed = stream.at(-1)!.data.response as { status: string; output: { type: string; call_id?: string }[]; usage: Record<string, unknown> };
    expect(completed.status).toBe("completed");
    expect(completed.output.map((item) => item.type)).toEqual(["message", "function_call"]);
    expect(completed.output[1]!.call_id).toBe("call_1");
    expect(completed.usage).toEqual({ input_tokens: 12, input_tokens_details: { cached_tokens: 2 }, output_tokens: 4, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 16 });
    expect(gateway.violations).toEqual([]);
  });

  it("accepts a function call answered by its output, and ends a failed response with response.failed", async () => {
    gateway.script({ failed: { code: "server_error", message: "boom" } });
    const response = await post(gateway, {
      model: "m",
      input: [
        user("list files"),
        { type: "function_call", call_id: "call_1", name: "exec_command", arguments: "{\"cmd\":\"ls\"}" },
        { type: "function_call_output", call_id: "call_1", output: "a.txt\n" },
      ],
      tools,
      stream: true,
    });
    const stream = await events(response);
    expect(stream.at(-1)!.event).toBe("response.failed");
    expect((stream.at(-1)!.data.response as { error: unknown }).error).toEqual({ code: "server_error", message: "boom" });
    expect(gateway.violations).toEqual([]);
  });

  it("answers a scripted HTTP error with an OpenAI error body", async () => {
    gateway.script({ status: 429, message: "slow down" });
    const response = await post(gateway, { model: "m", input: "hi", stream: true });
    expect(response.status).toBe(429);
    expect(await response.json()).toMatchObject({ error: { message: "slow down" } });
    expect(gateway.violations).toEqual([]);
  });

  it("rejects and lists requests OpenAI would refuse", async () => {
    const before = gateway.violations.length;
    const pending = gateway.pending;
    const cases: [unknown, Record<string, string>, number, RegExp][] = [
      [{ model: "m", input: "hi" }, { authorization: "Bearer wrong" }, 401, /bearer token/],
      [{ input: "hi" }, {}, 400, /model/],
      [{ model: "m", input: [] }, {}, 400, /input/],
      [{ model: "m", input: [user("x"), { type: "function_call_output", call_id: "nope", output: "?" }] }, {}, 400, /No tool call found .* nope/],
      [{ model: "m", input: [user("x"), { type: "function_call", call_id: "c1", name: "exec_command", arguments: "{}" }] }, {}, 400, /No tool output found for function call c1/],
      [{ model: "m", input: "hi", tools: [...tools, ...tools] }, {}, 400, /duplicate tool name/],
      [{ model: "m", input: "hi", tools: [{ type: "function", name: "bad name!", parameters: {} }] }, {}, 400, /tools/],
    ];
    for (const [body, headers, status, message] of cases) {
      const response = await post(gateway, body, headers);
      expect(response.status).toBe(status);
      expect(JSON.stringify(await response.json())).toMatch(message);
    }
    const wrongPath = await fetch(`${gateway.url}/v1/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" }, body: "{}" });
    expect(wrongPath.status).toBe(404);
    expect(gateway.violations.length - before).toBe(cases.length + 1);
    expect(gateway.pending).toBe(pending);
  });

  it("lists a valid request that finds no scripted reply", async () => {
    const response = await post(gateway, { model: "m", input: "hi" });
    expect(response.status).toBe(500);
    expect(gateway.violations.at(-1)).toMatch(/no scripted reply left/);
    gateway.violations.length = 0;
  });
});
