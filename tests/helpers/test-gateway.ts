import http from "node:http";
import { z } from "zod";
import { sleep, startRecordingServer, type ReceivedRequest } from "./recording-server";

/**
 * A scripted OpenAI-compatible gateway for tests: a real HTTP server on 127.0.0.1 that speaks the
 * chat completions wire format (SSE `chat.completion.chunk`s, usage chunk, `[DONE]`; plain JSON when
 * `stream` is false) and checks every request the way OpenAI would. Requests it rejects get a 400
 * with an OpenAI-style error body and are listed in `violations`, so a test can assert there were none.
 *
 *   const gateway = await startTestGateway({ apiKey: "sk-test" });
 *   gateway.script({ text: "Hello", chunks: 3 }, { toolCalls: [{ name: "bash", arguments: { command: "ls" } }] });
 *   ... point the code under test at gateway.url ...
 *   expect(gateway.violations).toEqual([]);
 *   await gateway.close();
 */

export type TestGatewayUsage = {
  prompt: number;
  completion: number;
  cost?: number;
  /** Where the cost goes: `usage.cost` of the reply (default) or the `x-litellm-response-cost` header. */
  costIn?: "usage" | "header";
};

type StepTiming = {
  /** Wait before sending anything (not even headers). */
  delayMs?: number;
  /** Wait between two streamed chunks. */
  chunkDelayMs?: number;
};

export type TestGatewayStep = StepTiming &
  (
    | {
        text: string;
        /** Split the text into this many deltas (default 1). */
        chunks?: number;
        usage?: TestGatewayUsage;
        finishReason?: string;
        /** Answer with one JSON document even if the request asked for a stream. */
        json?: boolean;
      }
    | {
        toolCalls: { name: string; arguments: Record<string, unknown> | string; id?: string }[];
        /** Text streamed before the tool calls. */
        text?: string;
        usage?: TestGatewayUsage;
        /** Each call's arguments are streamed in this many fragments (default 3). */
        argumentChunks?: number;
        json?: boolean;
      }
    | { status: number; body?: unknown; message?: string; retryAfter?: number | string }
    | {
        /**
         * bad-json: a data line that is not JSON; no-choices: a chunk without `choices`;
         * cut: some text, then the stream ends cleanly with no finish_reason and no [DONE].
         */
        malformed: "bad-json" | "no-choices" | "cut";
      }
    /**
     * Raw SSE events: objects are JSON-encoded, strings sent as they are after `data: `, except
     * strings starting with `:`, sent as SSE comment lines (keep-alives).
     */
    | { sse: (string | Record<string, unknown>)[] }
    /** Close the connection: before the headers, or after a first chunk of a stream. */
    | { disconnect: "before-headers" | "mid-stream" }
    /** Accept the request and never answer. */
    | { hang: true }
  );

export type RecordedRequest = ReceivedRequest;

export type TestGatewayScriptEntry = TestGatewayStep | ((request: RecordedRequest) => TestGatewayStep | Promise<TestGatewayStep>);

export type TestGateway = {
  /** `http://127.0.0.1:PORT` (no trailing slash, no `/v1`). */
  url: string;
  /** Queues replies, consumed one per valid chat completion request, in order. */
  script(...steps: TestGatewayScriptEntry[]): void;
  /** Drops the scripted replies not consumed yet (so a failed test's leftovers do not answer the next). */
  clear(): void;
  /** Every request received, valid or not, on any path. */
  requests: RecordedRequest[];
  /** The chat completion requests only. */
  readonly completions: RecordedRequest[];
  /** Everything the gateway found wrong with what it was sent, one readable line each. */
  violations: string[];
  /** Scripted replies not consumed yet. */
  readonly pending: number;
  close(): Promise<void>;
};

export type TestGatewayOptions = {
  /** When set, chat completions and `/v1/models` require `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Serve LiteLLM's `/health/liveliness` (default true); false makes it 404 like a plain OpenAI server. */
  liveliness?: boolean;
  /** Model ids listed by `/v1/models`. */
  models?: string[];
};

// ---------------------------------------------------------------------------------------------
// What OpenAI accepts (the part Berth uses), checked on every request.

const TOOL_NAME = /^[a-zA-Z0-9_-]{1,64}$/;

const messageSchema = z.discriminatedUnion("role", [
  z.object({ role: z.literal("system"), content: z.string(), name: z.string().optional() }),
  z.object({ role: z.literal("developer"), content: z.string(), name: z.string().optional() }),
  z.object({
    role: z.literal("user"),
    content: z.union([z.string(), z.array(z.object({ type: z.string() }).loose()).min(1)]),
    name: z.string().optional(),
  }),
  z
    .object({
      role: z.literal("assistant"),
      content: z.string().nullish(),
      tool_calls: z
        .array(
          z.object({
            id: z.string().min(1),
            type: z.literal("function"),
            function: z.object({ name: z.string().regex(TOOL_NAME), arguments: z.string() }),
          }),
        )
        .min(1)
        .optional(),
    })
    .refine((message) => (message.content ?? "") !== "" || message.tool_calls !== undefined, {
      message: "an assistant message needs content or tool_calls",
    }),
  z.object({ role: z.literal("tool"), tool_call_id: z.string().min(1), content: z.string() }),
]);

const requestSchema = z
  .object({
    model: z.string().min(1),
    messages: z.array(messageSchema).min(1),
    tools: z
      .array(
        z.object({
          type: z.literal("function"),
          function: z.object({
            name: z.string().regex(TOOL_NAME, "tool names are 1-64 letters, digits, '_' or '-'"),
            description: z.string().optional(),
            parameters: z.record(z.string(), z.unknown()).optional(),
          }),
        }),
      )
      .min(1, "tools must not be an empty array (omit it)")
      .optional(),
    stream: z.boolean().nullish(),
    stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
  })
  .loose();

type ChatRequest = z.infer<typeof requestSchema>;

/** The conversation rules OpenAI enforces beyond the shape of each message. */
function conversationProblems(request: ChatRequest): string[] {
  const problems: string[] = [];
  const known = new Set<string>();
  let awaiting: Set<string> | undefined;
  request.messages.forEach((message, index) => {
    if (message.role === "tool") {
      if (!known.has(message.tool_call_id)) {
        problems.push(`messages[${index}]: tool message answers unknown tool_call_id ${JSON.stringify(message.tool_call_id)}`);
      } else if (!awaiting) {
        problems.push(`messages[${index}]: a tool message must follow an assistant message with tool_calls (or other tool messages)`);
      } else {
        awaiting.delete(message.tool_call_id);
      }
      return;
    }
    if (awaiting && awaiting.size > 0) {
      problems.push(
        `messages[${index}]: an assistant message with tool_calls must be followed by tool messages for each tool_call_id; missing ${[...awaiting].join(", ")}`,
      );
    }
    awaiting = undefined;
    if (message.role === "assistant" && message.tool_calls) {
      awaiting = new Set();
      for (const call of message.tool_calls) {
        if (known.has(call.id)) problems.push(`messages[${index}]: duplicate tool call id ${JSON.stringify(call.id)}`);
        known.add(call.id);
        awaiting.add(call.id);
      }
    }
  });
  if (awaiting && awaiting.size > 0) {
    problems.push(`the last assistant message's tool_calls have no tool messages: ${[...awaiting].join(", ")}`);
  }
  if (request.stream_options && !request.stream) problems.push("stream_options is only allowed when stream is true");
  const names = new Set<string>();
  for (const tool of request.tools ?? []) {
    if (names.has(tool.function.name)) problems.push(`duplicate tool name ${JSON.stringify(tool.function.name)}`);
    names.add(tool.function.name);
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------

export async function startTestGateway(options: TestGatewayOptions = {}): Promise<TestGateway> {
  const queue: TestGatewayScriptEntry[] = [];
  const violations: string[] = [];
  let completionCount = 0;

  async function handle(recorded: RecordedRequest, res: http.ServerResponse, signal: AbortSignal) {
    const { body } = recorded;
    const where = `${recorded.method} ${recorded.path}`;

    if (recorded.method === "GET" && recorded.path === "/health/liveliness") {
      // A plain OpenAI-compatible server has no such route: a 404, but not the client's fault.
      if (options.liveliness === false) return sendError(res, 404, "Not Found", "invalid_request_error");
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify("I'm alive!"));
      return;
    }
    if (recorded.method === "GET" && recorded.path === "/v1/models") {
      if (!authorized(recorded)) return reject(res, where, 401, "missing or wrong bearer token", "authentication_error");
      const data = (options.models ?? ["test-model"]).map((id) => ({ id, object: "model", created: 0, owned_by: "berth-test" }));
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ object: "list", data }));
      return;
    }
    if (recorded.path !== "/v1/chat/completions") {
      return reject(res, where, 404, `unknown path ${recorded.path}`, "invalid_request_error");
    }
    if (recorded.method !== "POST") return reject(res, where, 405, `method ${recorded.method} not allowed`, "invalid_request_error");
    if (!authorized(recorded)) return reject(res, where, 401, "missing or wrong bearer token", "authentication_error");
    if (!String(recorded.headers["content-type"] ?? "").includes("application/json")) {
      return reject(res, where, 400, "content-type must be application/json", "invalid_request_error");
    }
    if (typeof body !== "object" || body === null) return reject(res, where, 400, "the body is not a JSON object", "invalid_request_error");
    const parsed = requestSchema.safeParse(body);
    if (!parsed.success) {
      const problems = parsed.error.issues.map((issue) => `${issue.path.join(".") || "body"}: ${issue.message}`);
      return reject(res, where, 400, problems.join("; "), "invalid_request_error");
    }
    const problems = conversationProblems(parsed.data);
    if (problems.length > 0) return reject(res, where, 400, problems.join("; "), "invalid_request_error");

    const entry = queue.shift();
    if (!entry) {
      violations.push(`${where}: test gateway: no scripted reply left`);
      sendError(res, 500, "test gateway: no scripted reply left", "server_error");
      return;
    }
    const step = typeof entry === "function" ? await entry(recorded) : entry;
    completionCount++;
    await reply(res, step, parsed.data, completionCount, signal);
  }

  function authorized(request: RecordedRequest): boolean {
    return !options.apiKey || request.headers.authorization === `Bearer ${options.apiKey}`;
  }

  function reject(res: http.ServerResponse, where: string, status: number, message: string, type: string) {
    violations.push(`${where}: ${status} ${message}`);
    sendError(res, status, message, type);
  }

  const server = await startRecordingServer(handle, (res, message) => {
    violations.push(`test gateway crashed: ${message}`);
    sendError(res, 500, "test gateway crashed", "server_error");
  });
  const requests = server.requests;

  return {
    url: server.url,
    script: (...steps) => void queue.push(...steps),
    clear: () => void queue.splice(0),
    requests,
    get completions() {
      return requests.filter((request) => request.path === "/v1/chat/completions");
    },
    violations,
    get pending() {
      return queue.length;
    },
    close: server.close,
  };
}

// ---------------------------------------------------------------------------------------------

async function reply(res: http.ServerResponse, step: TestGatewayStep, request: ChatRequest, n: number, signal: AbortSignal) {
  if (step.delayMs) await sleep(step.delayMs, signal);
  if (signal.aborted) return;
  if ("hang" in step) {
    await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
    return;
  }
  if ("disconnect" in step && step.disconnect === "before-headers") {
    res.socket?.destroy();
    return;
  }
  if ("status" in step) {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (step.retryAfter !== undefined) headers["retry-after"] = String(step.retryAfter);
    const body =
      step.body === undefined
        ? errorBody(step.message ?? `test gateway scripted HTTP ${step.status}`, step.status >= 500 ? "server_error" : "invalid_request_error", step.status)
        : typeof step.body === "string"
          ? step.body
          : JSON.stringify(step.body);
    res.writeHead(step.status, headers).end(body);
    return;
  }

  const id = `chatcmpl-test-${n}`;
  const created = Math.floor(Date.now() / 1000);
  const model = request.model;
  const includeUsage = request.stream_options?.include_usage === true;
  const usage = "usage" in step ? step.usage : undefined;
  const usageBody = (u: TestGatewayUsage) => ({
    prompt_tokens: u.prompt,
    completion_tokens: u.completion,
    total_tokens: u.prompt + u.completion,
    ...(u.cost !== undefined && (u.costIn ?? "usage") === "usage" ? { cost: u.cost } : {}),
  });
  const costHeader: Record<string, string> =
    usage?.cost !== undefined && usage.costIn === "header" ? { "x-litellm-response-cost": String(usage.cost) } : {};

  if ("text" in step || "toolCalls" in step) {
    const text = step.text ?? "";
    const toolCalls =
      "toolCalls" in step
        ? step.toolCalls.map((call, index) => ({
            id: call.id ?? `call_test_${n}_${index}`,
            name: call.name,
            arguments: typeof call.arguments === "string" ? call.arguments : JSON.stringify(call.arguments),
          }))
        : [];
    const finishReason = "finishReason" in step && step.finishReason ? step.finishReason : toolCalls.length > 0 ? "tool_calls" : "stop";

    if (!request.stream || step.json) {
      const message = {
        role: "assistant",
        content: text === "" && toolCalls.length > 0 ? null : text,
        refusal: null,
        ...(toolCalls.length > 0
          ? { tool_calls: toolCalls.map((call) => ({ id: call.id, type: "function", function: { name: call.name, arguments: call.arguments } })) }
          : {}),
      };
      const body = {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [{ index: 0, message, logprobs: null, finish_reason: finishReason }],
        usage: usageBody(usage ?? { prompt: 0, completion: 0 }),
      };
      res.writeHead(200, { "content-type": "application/json", ...costHeader }).end(JSON.stringify(body));
      return;
    }

    const chunk = (delta: Record<string, unknown>, finish: string | null = null) => ({
      id,
      object: "chat.completion.chunk",
      created,
      model,
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
      ...(includeUsage ? { usage: null } : {}),
    });
    const events: unknown[] = [chunk({ role: "assistant", content: "" })];
    for (const piece of split(text, "chunks" in step ? (step.chunks ?? 1) : 1)) events.push(chunk({ content: piece }));
    toolCalls.forEach((call, index) => {
      events.push(chunk({ tool_calls: [{ index, id: call.id, type: "function", function: { name: call.name, arguments: "" } }] }));
      const pieces = split(call.arguments, "argumentChunks" in step ? (step.argumentChunks ?? 3) : 3);
      for (const piece of pieces) events.push(chunk({ tool_calls: [{ index, function: { arguments: piece } }] }));
    });
    events.push(chunk({}, finishReason));
    if (includeUsage) {
      events.push({ id, object: "chat.completion.chunk", created, model, choices: [], usage: usageBody(usage ?? { prompt: 0, completion: 0 }) });
    }
    events.push("[DONE]");
    await stream(res, events, step, signal, costHeader);
    return;
  }

  const first = { id, object: "chat.completion.chunk", created, model, choices: [{ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }] };
  const piece = (content: string) => ({ ...first, choices: [{ index: 0, delta: { content }, logprobs: null, finish_reason: null }] });
  if ("disconnect" in step) {
    await stream(res, [first, piece("partial")], step, signal, {}, { end: "destroy" });
    return;
  }
  if ("sse" in step) {
    await stream(res, step.sse, step, signal, {});
    return;
  }
  switch (step.malformed) {
    case "bad-json":
      await stream(res, [first, "{\"id\": \"chatcmpl-broken\", \"choices\": [", "[DONE]"], step, signal, {});
      return;
    case "no-choices":
      await stream(res, [{ id, object: "chat.completion.chunk", created, model }, "[DONE]"], step, signal, {});
      return;
    case "cut":
      await stream(res, [first, piece("Hello, wor")], step, signal, {});
      return;
  }
}

async function stream(
  res: http.ServerResponse,
  events: unknown[],
  timing: StepTiming,
  signal: AbortSignal,
  headers: Record<string, string>,
  options: { end?: "destroy" } = {},
) {
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive", ...headers });
  res.flushHeaders();
  for (const [index, event] of events.entries()) {
    if (index > 0 && timing.chunkDelayMs) await sleep(timing.chunkDelayMs, signal);
    if (signal.aborted || res.destroyed) return;
    if (typeof event === "string" && event.startsWith(":")) res.write(`${event}\n\n`);
    else res.write(`data: ${typeof event === "string" ? event : JSON.stringify(event)}\n\n`);
  }
  if (options.end === "destroy") {
    // Let the written chunks reach the client, then drop the connection without ending the body.
    await sleep(20, signal);
    res.socket?.destroy();
    return;
  }
  res.end();
}

function split(text: string, parts: number): string[] {
  if (text === "") return [];
  const count = Math.max(1, Math.min(parts, text.length));
  const size = Math.ceil(text.length / count);
  const pieces: string[] = [];
  for (let start = 0; start < text.length; start += size) pieces.push(text.slice(start, start + size));
  return pieces;
}

function errorBody(message: string, type: string, status: number): string {
  return JSON.stringify({ error: { message, type, param: null, code: String(status) } });
}

function sendError(res: http.ServerResponse, status: number, message: string, type: string) {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, { "content-type": "application/json" }).end(errorBody(message, type, status));
}


