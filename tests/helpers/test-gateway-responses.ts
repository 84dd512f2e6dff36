import http from "node:http";
import { z } from "zod";
import { sleep, startRecordingServer, type ReceivedRequest } from "./recording-server";

/**
 * A scripted stand-in for OpenAI's Responses API (`POST /v1/responses`), for clients that speak
 * only that wire format (the Codex CLI): a real HTTP server on 127.0.0.1 that answers with the real
 * server-sent events (`response.created`, `response.output_item.added`/`.done`,
 * `response.output_text.delta`/`.done`, `response.function_call_arguments.delta`/`.done`,
 * `response.completed` with usage; `response.failed`), and checks every request the way OpenAI
 * would: its shape, and that each `function_call_output` answers a `function_call` of the input and
 * each `function_call` is answered. Requests it rejects get a 400 with an OpenAI-style error body and
 * are listed in `violations`.
 *
 *   const gateway = await startTestResponsesGateway({ apiKey: "sk-test" });
 *   gateway.script({ functionCalls: [{ name: "exec_command", arguments: { cmd: "ls" } }] }, { text: "Done." });
 *   ... point the client at `${gateway.url}/v1` ...
 *   expect(gateway.violations).toEqual([]);
 */

export type ResponsesUsage = { input: number; output: number; cached?: number; reasoning?: number };

type Timing = {
  /** Wait before sending anything (not even headers). */
  delayMs?: number;
  /** Wait between two events of the stream. */
  eventDelayMs?: number;
};

export type ResponsesStep = Timing &
  (
    | {
        /** An assistant message (streamed in `chunks` deltas, default 2)… */
        text?: string;
        chunks?: number;
        /** …and/or function calls, after the message. */
        functionCalls?: { name: string; arguments: Record<string, unknown> | string; callId?: string }[];
        usage?: ResponsesUsage;
      }
    /** An HTTP error with an OpenAI error body. */
    | { status: number; message?: string }
    /** A stream that ends with `response.failed`. */
    | { failed: { code: string; message: string } }
    /** Accept the request and never answer. */
    | { hang: true }
  );

export type ResponsesRequest = ReceivedRequest;

export type ResponsesScriptEntry = ResponsesStep | ((request: ResponsesRequest) => ResponsesStep | Promise<ResponsesStep>);

export type TestResponsesGateway = {
  /** `http://127.0.0.1:PORT` (no trailing slash, no `/v1`). */
  url: string;
  /** Queues replies, consumed one per valid `POST /v1/responses`, in order. */
  script(...steps: ResponsesScriptEntry[]): void;
  /** Every request received, valid or not. */
  requests: ResponsesRequest[];
  /** The valid `POST /v1/responses` requests, in order. */
  readonly responses: ResponsesRequest[];
  violations: string[];
  readonly pending: number;
  close(): Promise<void>;
};

// ---------------------------------------------------------------------------------------------
// What the Responses API accepts (the part clients use), checked on every request.

const NAME = /^[a-zA-Z0-9_-]{1,64}$/;

const contentPart = z
  .object({ type: z.enum(["input_text", "output_text", "input_image", "input_file", "refusal", "summary_text", "reasoning_text"]) })
  .loose();

const inputItem = z.union([
  z
    .object({
      type: z.literal("message").optional(),
      id: z.string().optional(),
      role: z.enum(["user", "assistant", "system", "developer"]),
      content: z.union([z.string(), z.array(contentPart)]),
    })
    .loose(),
  z.object({ type: z.literal("function_call"), id: z.string().optional(), call_id: z.string().min(1), name: z.string().regex(NAME), arguments: z.string() }).loose(),
  z
    .object({
      type: z.literal("function_call_output"),
      id: z.string().optional(),
      call_id: z.string().min(1),
      output: z.union([z.string(), z.array(contentPart)]),
    })
    .loose(),
  z.object({ type: z.literal("reasoning"), summary: z.array(contentPart) }).loose(),
  // Items this stand-in never produces but clients may carry along in their history.
  z.object({ type: z.enum(["custom_tool_call", "custom_tool_call_output", "web_search_call", "compaction", "item_reference"]) }).loose(),
]);

const tool = z.union([
  z
    .object({
      type: z.literal("function"),
      name: z.string().regex(NAME),
      description: z.string().optional(),
      parameters: z.record(z.string(), z.unknown()).nullable(),
      strict: z.boolean().nullish(),
    })
    .loose(),
  z.object({ type: z.literal("namespace"), name: z.string().regex(NAME), tools: z.array(z.object({ type: z.string(), name: z.string().regex(NAME) }).loose()) }).loose(),
  z.object({ type: z.enum(["custom", "web_search", "web_search_preview", "file_search", "image_generation", "local_shell", "mcp", "tool_search"]) }).loose(),
]);

const requestSchema = z
  .object({
    model: z.string().min(1, "model must be set"),
    input: z.union([z.string().min(1), z.array(inputItem).min(1)]),
    instructions: z.string().nullish(),
    tools: z.array(tool).optional(),
    tool_choice: z.union([z.enum(["auto", "none", "required"]), z.object({ type: z.string() }).loose()]).optional(),
    parallel_tool_calls: z.boolean().optional(),
    stream: z.boolean().optional(),
    store: z.boolean().optional(),
    previous_response_id: z.string().nullish(),
    include: z.array(z.string()).optional(),
  })
  .loose();

type Request = z.infer<typeof requestSchema>;

function conversationProblems(request: Request): string[] {
  const problems: string[] = [];
  const calls = new Map<string, number>();
  const answered = new Set<string>();
  (typeof request.input === "string" ? [] : request.input).forEach((item, index) => {
    if (!("type" in item)) return;
    if (item.type === "function_call") {
      const callId = (item as { call_id: string }).call_id;
      if (calls.has(callId)) problems.push(`input[${index}]: duplicate function_call call_id ${JSON.stringify(callId)}`);
      calls.set(callId, index);
    } else if (item.type === "function_call_output") {
      const callId = (item as { call_id: string }).call_id;
      if (!calls.has(callId)) problems.push(`input[${index}]: No tool call found for function call output with call_id ${callId}.`);
      else if (answered.has(callId)) problems.push(`input[${index}]: a second function_call_output for call_id ${callId}`);
      answered.add(callId);
    }
  });
  for (const callId of calls.keys()) if (!answered.has(callId)) problems.push(`No tool output found for function call ${callId}.`);
  const names = new Set<string>();
  for (const entry of request.tools ?? []) {
    if (!("name" in entry) || typeof entry.name !== "string") continue;
    if (names.has(entry.name)) problems.push(`duplicate tool name ${JSON.stringify(entry.name)}`);
    names.add(entry.name);
  }
  if (request.previous_response_id && request.store === false) problems.push("previous_response_id cannot be used with store: false");
  return problems;
}

// ---------------------------------------------------------------------------------------------

export async function startTestResponsesGateway(options: { apiKey?: string } = {}): Promise<TestResponsesGateway> {
  const queue: ResponsesScriptEntry[] = [];
  const accepted: ResponsesRequest[] = [];
  const violations: string[] = [];
  let count = 0;

  async function handle(recorded: ResponsesRequest, res: http.ServerResponse, signal: AbortSignal) {
    const { body } = recorded;
    const where = `${recorded.method} ${recorded.path}`;
    const reject = (status: number, message: string, type = "invalid_request_error") => {
      violations.push(`${where}: ${status} ${message}`);
      sendError(res, status, message, type);
    };

    if (recorded.path !== "/v1/responses") return reject(404, `unknown path ${recorded.path}`);
    if (recorded.method !== "POST") return reject(405, `method ${recorded.method} not allowed`);
    if (options.apiKey && recorded.headers.authorization !== `Bearer ${options.apiKey}`) return reject(401, "missing or wrong bearer token", "authentication_error");
    if (recorded.headers["content-encoding"]) return reject(400, `unsupported content-encoding ${String(recorded.headers["content-encoding"])}`);
    if (!String(recorded.headers["content-type"] ?? "").includes("application/json")) return reject(400, "content-type must be application/json");
    if (typeof body !== "object" || body === null) return reject(400, "the body is not a JSON object");
    const parsed = requestSchema.safeParse(body);
    if (!parsed.success) return reject(400, parsed.error.issues.map((issue) => `${issue.path.join(".") || "body"}: ${issue.message}`).join("; "));
    const problems = conversationProblems(parsed.data);
    if (problems.length > 0) return reject(400, problems.join("; "));

    accepted.push(recorded);
    const entry = queue.shift();
    if (!entry) {
      violations.push(`${where}: test gateway: no scripted reply left`);
      return sendError(res, 500, "test gateway: no scripted reply left", "server_error");
    }
    const step = typeof entry === "function" ? await entry(recorded) : entry;
    count++;
    await reply(res, step, parsed.data, count, signal);
  }

  const server = await startRecordingServer(handle, (res, message) => {
    violations.push(`test gateway crashed: ${message}`);
    sendError(res, 500, "test gateway crashed", "server_error");
  });
  const requests = server.requests;
  return {
    url: server.url,
    script: (...steps) => void queue.push(...steps),
    requests,
    get responses() {
      return accepted;
    },
    violations,
    get pending() {
      return queue.length;
    },
    close: server.close,
  };
}

// ---------------------------------------------------------------------------------------------

async function reply(res: http.ServerResponse, step: ResponsesStep, request: Request, n: number, signal: AbortSignal) {
  if (step.delayMs) await sleep(step.delayMs, signal);
  if (signal.aborted) return;
  if ("hang" in step) {
    await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
    return;
  }
  if ("status" in step) {
    sendError(res, step.status, step.message ?? `test gateway scripted HTTP ${step.status}`, step.status >= 500 ? "server_error" : "invalid_request_error");
    return;
  }

  const id = `resp_test_${n}`;
  const base = {
    id,
    object: "response",
    created_at: Math.floor(Date.now() / 1000),
    model: request.model,
    error: null,
    incomplete_details: null,
    instructions: request.instructions ?? null,
    parallel_tool_calls: request.parallel_tool_calls ?? true,
    tool_choice: request.tool_choice ?? "auto",
    tools: request.tools ?? [],
    store: request.store ?? true,
  };
  const events: Record<string, unknown>[] = [];
  let sequence = 0;
  const emit = (type: string, fields: Record<string, unknown>) => events.push({ type, sequence_number: sequence++, ...fields });
  emit("response.created", { response: { ...base, status: "in_progress", output: [], usage: null } });
  emit("response.in_progress", { response: { ...base, status: "in_progress", output: [], usage: null } });

  if ("failed" in step) {
    emit("response.failed", { response: { ...base, status: "failed", output: [], usage: null, error: step.failed } });
  } else {
    const output: Record<string, unknown>[] = [];
    if (step.text !== undefined && step.text !== "") {
      const itemId = `msg_test_${n}`;
      const index = output.length;
      emit("response.output_item.added", { output_index: index, item: { id: itemId, type: "message", status: "in_progress", role: "assistant", content: [] } });
      emit("response.content_part.added", { item_id: itemId, output_index: index, content_index: 0, part: { type: "output_text", text: "", annotations: [] } });
      for (const delta of split(step.text, step.chunks ?? 2)) {
        emit("response.output_text.delta", { item_id: itemId, output_index: index, content_index: 0, delta, logprobs: [] });
      }
      emit("response.output_text.done", { item_id: itemId, output_index: index, content_index: 0, text: step.text, logprobs: [] });
      const part = { type: "output_text", text: step.text, annotations: [] };
      emit("response.content_part.done", { item_id: itemId, output_index: index, content_index: 0, part });
      const item = { id: itemId, type: "message", status: "completed", role: "assistant", content: [part] };
      emit("response.output_item.done", { output_index: index, item });
      output.push(item);
    }
    (step.functionCalls ?? []).forEach((call, callIndex) => {
      const itemId = `fc_test_${n}_${callIndex}`;
      const callId = call.callId ?? `call_test_${n}_${callIndex}`;
      const args = typeof call.arguments === "string" ? call.arguments : JSON.stringify(call.arguments);
      const index = output.length;
      emit("response.output_item.added", { output_index: index, item: { id: itemId, type: "function_call", status: "in_progress", arguments: "", call_id: callId, name: call.name } });
      for (const delta of split(args, 3)) emit("response.function_call_arguments.delta", { item_id: itemId, output_index: index, delta });
      emit("response.function_call_arguments.done", { item_id: itemId, output_index: index, arguments: args });
      const item = { id: itemId, type: "function_call", status: "completed", arguments: args, call_id: callId, name: call.name };
      emit("response.output_item.done", { output_index: index, item });
      output.push(item);
    });
    const usage = step.usage ?? { input: 0, output: 0 };
    emit("response.completed", {
      response: {
        ...base,
        status: "completed",
        output,
        usage: {
          input_tokens: usage.input,
          input_tokens_details: { cached_tokens: usage.cached ?? 0 },
          output_tokens: usage.output,
          output_tokens_details: { reasoning_tokens: usage.reasoning ?? 0 },
          total_tokens: usage.input + usage.output,
        },
      },
    });
  }

  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
  res.flushHeaders();
  for (const [index, event] of events.entries()) {
    if (index > 0 && step.eventDelayMs) await sleep(step.eventDelayMs, signal);
    if (signal.aborted || res.destroyed) return;
    res.write(`event: ${String(event.type)}\ndata: ${JSON.stringify(event)}\n\n`);
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

function sendError(res: http.ServerResponse, status: number, message: string, type: string) {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify({ error: { message, type, param: null, code: null } }));
}


