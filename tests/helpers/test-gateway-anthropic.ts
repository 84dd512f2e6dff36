import http from "node:http";
import { z } from "zod";
import { sleep, startRecordingServer, type ReceivedRequest } from "./recording-server";

/**
 * A scripted Anthropic Messages API for tests (what LiteLLM serves at `/v1/messages`): a real HTTP
 * server on 127.0.0.1 that answers `POST /v1/messages` with the real wire format (SSE `message_start`,
 * `content_block_start/delta/stop`, `message_delta` with the stop reason and usage, `message_stop`;
 * one JSON message when `stream` is false) and checks every request the way Anthropic does. Requests
 * it rejects get a 400 with an Anthropic-style error body and are listed in `violations`.
 *
 *   const gateway = await startTestAnthropicGateway({ apiKey: "sk-test" });
 *   gateway.script({ toolUses: [{ name: "Write", input: { file_path: "/w/a.txt", content: "a" } }] }, { text: "Done." });
 *   ... point the code under test at gateway.url ...
 *   expect(gateway.violations).toEqual([]);
 *
 * It accepts the key as LiteLLM does from Claude Code behind Berth's model relay: `Authorization:
 * Bearer <key>`. `POST /v1/messages/count_tokens` is answered with a rough count; like LiteLLM, it
 * also answers `GET /v1/models` and `/health/liveliness` (Berth's health checks).
 */

export type AnthropicUsage = { input: number; output: number; cacheRead?: number; cacheCreation?: number };

export type AnthropicStep = {
  /** Wait before answering (not even headers). */
  delayMs?: number;
  /** Wait between two SSE events. */
  eventDelayMs?: number;
} & (
  | {
      text: string;
      /** Split the text into this many deltas (default 1). */
      chunks?: number;
      usage?: AnthropicUsage;
      stopReason?: "end_turn" | "max_tokens" | "stop_sequence";
      /** Answer with one JSON message even if the request asked for a stream. */
      json?: boolean;
    }
  | {
      toolUses: { name: string; input: Record<string, unknown>; id?: string }[];
      /** Text before the tool uses. */
      text?: string;
      usage?: AnthropicUsage;
      /** Each tool use's input JSON is streamed in this many fragments (default 3). */
      inputChunks?: number;
      json?: boolean;
    }
  /** An HTTP error with an Anthropic error body; `times` answers that many requests with it (default 1). */
  | { status: number; message?: string; type?: string; times?: number }
  /** Accept the request and never answer. */
  | { hang: true }
);

export type AnthropicRequest = ReceivedRequest;

export type MessagesBody = z.infer<typeof requestSchema>;

export type AnthropicScriptEntry = AnthropicStep | ((request: AnthropicRequest) => AnthropicStep | Promise<AnthropicStep>);

export type TestAnthropicGateway = {
  /** `http://127.0.0.1:PORT` (no trailing slash, no `/v1`). */
  url: string;
  /** Queues replies, consumed one per valid messages request, in order. */
  script(...steps: AnthropicScriptEntry[]): void;
  /** Drops the replies not consumed yet. */
  clear(): void;
  /** Every request received, valid or not, on any path. */
  requests: AnthropicRequest[];
  /** The `POST /v1/messages` requests only. */
  readonly messages: AnthropicRequest[];
  violations: string[];
  readonly pending: number;
  close(): Promise<void>;
};

// ---------------------------------------------------------------------------------------------
// What Anthropic accepts (the part coding agents use), checked on every request.

const TOOL_NAME = /^[a-zA-Z0-9_-]{1,128}$/;
const cacheControl = z.object({ type: z.literal("ephemeral") }).loose().nullish();
const textBlock = z.object({ type: z.literal("text"), text: z.string(), cache_control: cacheControl }).loose();
const toolUseBlock = z.object({ type: z.literal("tool_use"), id: z.string().min(1), name: z.string().regex(TOOL_NAME), input: z.record(z.string(), z.unknown()) }).loose();
const toolResultBlock = z
  .object({
    type: z.literal("tool_result"),
    tool_use_id: z.string().min(1),
    content: z.union([z.string(), z.array(z.object({ type: z.string() }).loose())]).optional(),
    is_error: z.boolean().optional(),
  })
  .loose();
const otherBlock = z.object({ type: z.enum(["image", "document", "thinking", "redacted_thinking", "search_result", "server_tool_use", "web_search_tool_result"]) }).loose();
const block = z.discriminatedUnion("type", [textBlock, toolUseBlock, toolResultBlock, otherBlock]);

const messageSchema = z.object({
  // "system" messages mid-conversation: Claude Code 2.1 sends them with its beta header `mid-conversation-tool-changes`.
  role: z.enum(["user", "assistant", "system"]),
  content: z.union([z.string(), z.array(block).min(1)]),
});

const requestSchema = z
  .object({
    model: z.string().min(1),
    max_tokens: z.number().int().positive(),
    messages: z.array(messageSchema).min(1),
    system: z.union([z.string(), z.array(textBlock)]).optional(),
    tools: z
      .array(
        z
          .object({
            name: z.string().regex(TOOL_NAME, "tool names are 1-128 letters, digits, '_' or '-'"),
            type: z.string().optional(),
            description: z.string().optional(),
            input_schema: z.object({ type: z.literal("object") }).loose().optional(),
          })
          .loose()
          // Server tools (web search, …) have a versioned type instead of an input schema.
          .refine((tool) => (tool.type && tool.type !== "custom" ? /_\d{8}$/.test(tool.type) : tool.input_schema !== undefined), {
            message: "a tool needs an input_schema (or the versioned type of a server tool)",
          }),
      )
      .optional(),
    stream: z.boolean().optional(),
  })
  .loose();

/** The conversation rules Anthropic enforces beyond the shape of each message. */
function conversationProblems(request: MessagesBody): string[] {
  const problems: string[] = [];
  const turns = request.messages.map((message, index) => ({ message, index })).filter(({ message }) => message.role !== "system");
  if (turns[0]?.message.role !== "user") problems.push("messages: the first user or assistant message must be a user message");
  let previousUses = new Set<string>();
  turns.forEach(({ message, index }, position) => {
    const blocks = typeof message.content === "string" ? [] : message.content;
    if (position > 0 && turns[position - 1]!.message.role === message.role) problems.push(`messages[${index}]: roles must alternate between "user" and "assistant"`);
    if (message.role === "user") {
      const answered = new Set<string>();
      for (const entry of blocks) {
        if (entry.type !== "tool_result") continue;
        const id = (entry as { tool_use_id: string }).tool_use_id;
        if (!previousUses.has(id)) problems.push(`messages[${index}]: tool_result answers ${JSON.stringify(id)}, which is not a tool_use of the previous assistant message`);
        answered.add(id);
      }
      const missing = [...previousUses].filter((id) => !answered.has(id));
      if (missing.length > 0) problems.push(`messages[${index}]: tool_use ids were found without tool_result blocks immediately after: ${missing.join(", ")}`);
      previousUses = new Set();
    } else {
      if (blocks.some((entry) => entry.type === "tool_result")) problems.push(`messages[${index}]: an assistant message cannot hold tool_result blocks`);
      previousUses = new Set(blocks.filter((entry) => entry.type === "tool_use").map((entry) => (entry as { id: string }).id));
    }
  });
  const last = turns.at(-1);
  if (last?.message.role === "assistant" && previousUses.size > 0) problems.push("the last message is an assistant message with tool_use blocks but no tool_result follows");
  const names = new Set<string>();
  for (const tool of request.tools ?? []) {
    if (names.has(tool.name)) problems.push(`tools: duplicate tool name ${JSON.stringify(tool.name)}`);
    names.add(tool.name);
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------

export async function startTestAnthropicGateway(options: { apiKey?: string } = {}): Promise<TestAnthropicGateway> {
  const queue: { entry: AnthropicScriptEntry; left: number }[] = [];
  const violations: string[] = [];
  let count = 0;

  async function handle(recorded: AnthropicRequest, res: http.ServerResponse, signal: AbortSignal) {
    const { body } = recorded;
    const where = `${recorded.method} ${recorded.path}`;
    const reject = (status: number, type: string, message: string) => {
      violations.push(`${where}: ${status} ${message}`);
      sendError(res, status, type, message);
    };

    // What LiteLLM also serves, and Berth's health checks ask.
    if (recorded.method === "GET" && recorded.path === "/health/liveliness") return void res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify("I'm alive!"));
    if (recorded.method === "GET" && recorded.path === "/v1/models") {
      if (options.apiKey && recorded.headers.authorization !== `Bearer ${options.apiKey}`) return reject(401, "authentication_error", "missing or wrong bearer token");
      return void res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ object: "list", data: [{ id: "test-model", object: "model", created: 0, owned_by: "berth-test" }] }));
    }
    if (recorded.path !== "/v1/messages" && recorded.path !== "/v1/messages/count_tokens") return reject(404, "not_found_error", `unknown path ${recorded.path}`);
    if (recorded.method !== "POST") return reject(405, "invalid_request_error", `method ${recorded.method} not allowed`);
    if (options.apiKey && recorded.headers.authorization !== `Bearer ${options.apiKey}`) return reject(401, "authentication_error", "missing or wrong bearer token");
    if (!String(recorded.headers["content-type"] ?? "").includes("application/json")) return reject(400, "invalid_request_error", "content-type must be application/json");
    if (typeof body !== "object" || body === null) return reject(400, "invalid_request_error", "the body is not a JSON object");

    if (recorded.path === "/v1/messages/count_tokens") {
      const parsed = requestSchema.omit({ max_tokens: true }).safeParse(body);
      if (!parsed.success) return reject(400, "invalid_request_error", issues(parsed.error));
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ input_tokens: Math.ceil(JSON.stringify(body).length / 4) }));
      return;
    }
    const parsed = requestSchema.safeParse(body);
    if (!parsed.success) return reject(400, "invalid_request_error", issues(parsed.error));
    const problems = conversationProblems(parsed.data);
    if (problems.length > 0) return reject(400, "invalid_request_error", problems.join("; "));

    const head = queue[0];
    if (!head) {
      violations.push(`${where}: test gateway: no scripted reply left`);
      return sendError(res, 500, "api_error", "test gateway: no scripted reply left");
    }
    if (--head.left <= 0) queue.shift();
    const step = typeof head.entry === "function" ? await head.entry(recorded) : head.entry;
    count++;
    await reply(res, step, parsed.data, count, signal);
  }

  const server = await startRecordingServer(handle, (res, message) => {
    violations.push(`test gateway crashed: ${message}`);
    sendError(res, 500, "api_error", "test gateway crashed");
  });
  const requests = server.requests;

  return {
    url: server.url,
    script: (...steps) => {
      for (const entry of steps) queue.push({ entry, left: typeof entry === "object" && "status" in entry ? (entry.times ?? 1) : 1 });
    },
    clear: () => void queue.splice(0),
    requests,
    get messages() {
      return requests.filter((request) => request.path === "/v1/messages");
    },
    violations,
    get pending() {
      return queue.length;
    },
    close: server.close,
  };
}

// ---------------------------------------------------------------------------------------------

async function reply(res: http.ServerResponse, step: AnthropicStep, request: MessagesBody, n: number, signal: AbortSignal) {
  if (step.delayMs) await sleep(step.delayMs, signal);
  if (signal.aborted) return;
  if ("hang" in step) {
    await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
    return;
  }
  if ("status" in step) {
    const type = step.type ?? (step.status === 401 ? "authentication_error" : step.status === 429 ? "rate_limit_error" : step.status >= 500 ? "api_error" : "invalid_request_error");
    sendError(res, step.status, type, step.message ?? `test gateway scripted HTTP ${step.status}`);
    return;
  }

  const id = `msg_test_${n}`;
  const usage = step.usage ?? { input: 0, output: 0 };
  const tools = "toolUses" in step ? step.toolUses.map((use, index) => ({ type: "tool_use" as const, id: use.id ?? `toolu_test_${n}_${index}`, name: use.name, input: use.input })) : [];
  const text = step.text ?? "";
  const content: ({ type: "text"; text: string } | (typeof tools)[number])[] = [...(text ? [{ type: "text" as const, text }] : []), ...tools];
  const stopReason = tools.length > 0 ? "tool_use" : ("stopReason" in step && step.stopReason) || "end_turn";
  const usageBody = {
    input_tokens: usage.input,
    output_tokens: usage.output,
    cache_creation_input_tokens: usage.cacheCreation ?? 0,
    cache_read_input_tokens: usage.cacheRead ?? 0,
  };
  const message = { id, type: "message", role: "assistant", model: request.model, content, stop_reason: stopReason, stop_sequence: null, usage: usageBody };

  if (!request.stream || step.json) {
    res.writeHead(200, { "content-type": "application/json", "request-id": `req_test_${n}` }).end(JSON.stringify(message));
    return;
  }
  const events: [string, Record<string, unknown>][] = [
    ["message_start", { type: "message_start", message: { ...message, content: [], stop_reason: null, usage: { ...usageBody, output_tokens: Math.min(1, usage.output) } } }],
    ["ping", { type: "ping" }],
  ];
  content.forEach((entry, index) => {
    if (entry.type === "text") {
      events.push(["content_block_start", { type: "content_block_start", index, content_block: { type: "text", text: "" } }]);
      for (const piece of split(entry.text, "chunks" in step ? (step.chunks ?? 1) : 1)) events.push(["content_block_delta", { type: "content_block_delta", index, delta: { type: "text_delta", text: piece } }]);
    } else {
      events.push(["content_block_start", { type: "content_block_start", index, content_block: { type: "tool_use", id: entry.id, name: entry.name, input: {} } }]);
      for (const piece of split(JSON.stringify(entry.input), "inputChunks" in step ? (step.inputChunks ?? 3) : 3)) {
        events.push(["content_block_delta", { type: "content_block_delta", index, delta: { type: "input_json_delta", partial_json: piece } }]);
      }
    }
    events.push(["content_block_stop", { type: "content_block_stop", index }]);
  });
  events.push(["message_delta", { type: "message_delta", delta: { stop_reason: stopReason, stop_sequence: null }, usage: { output_tokens: usage.output } }]);
  events.push(["message_stop", { type: "message_stop" }]);

  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive", "request-id": `req_test_${n}` });
  res.flushHeaders();
  for (const [index, [name, data]] of events.entries()) {
    if (index > 0 && step.eventDelayMs) await sleep(step.eventDelayMs, signal);
    if (signal.aborted || res.destroyed) return;
    res.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
  }
  res.end();
}

function issues(error: z.ZodError): string {
  return error.issues.map((issue) => `${issue.path.join(".") || "body"}: ${issue.message}`).join("; ");
}

function split(text: string, parts: number): string[] {
  if (text === "") return [];
  const count = Math.max(1, Math.min(parts, text.length));
  const size = Math.ceil(text.length / count);
  const pieces: string[] = [];
  for (let start = 0; start < text.length; start += size) pieces.push(text.slice(start, start + size));
  return pieces;
}

function sendError(res: http.ServerResponse, status: number, type: string, message: string) {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify({ type: "error", error: { type, message } }));
}


