import { z } from "zod";
import type { Logger } from "../logger";

/**
 * Client for the LiteLLM Gateway, or any OpenAI-compatible `/v1/chat/completions` endpoint.
 *
 * One `complete()` call is one model step: it streams the reply (SSE), hands text deltas to the caller
 * as they arrive, and resolves with the assembled text, tool calls, finish reason and usage. Failures
 * are `GatewayError`s with a `kind` the caller can act on. Transient failures that happen before any
 * reply data arrived are retried here (exponential backoff with jitter, `Retry-After` honoured); once
 * data has arrived nothing is retried, because the caller may already have shown it.
 *
 * The API key only ever goes into the `Authorization` header: it is never logged, and any echo of it
 * in a gateway's error text is redacted before it reaches an error message.
 */

export type ChatMessage =
  | { role: "system" | "user"; content: string }
  | {
      role: "assistant";
      content: string | null;
      tool_calls?: { id: string; type: "function"; function: { name: string; arguments: string } }[];
    }
  | { role: "tool"; tool_call_id: string; content: string };

export type ToolDefinition = {
  name: string;
  description: string;
  /** JSON schema of the tool's arguments object. */
  parameters: Record<string, unknown>;
};

export type ToolCall = { id: string; name: string; /** Raw JSON text as the model produced it; the caller parses. */ arguments: string };

export type Usage = { promptTokens: number; completionTokens: number; cost?: number };

export type Completion = {
  text: string;
  toolCalls: ToolCall[];
  finishReason: string | null;
  usage: Usage | null;
};

export type CompletionRequest = {
  model: string;
  messages: ChatMessage[];
  tools: ToolDefinition[];
  signal?: AbortSignal;
  onTextDelta?: (text: string) => void;
};

export interface ModelGateway {
  complete(request: CompletionRequest): Promise<Completion>;
  health(): Promise<{ status: "ok" | "unreachable"; detail?: string }>;
}

export type GatewayErrorKind = "http" | "timeout" | "malformed" | "network" | "aborted";

/**
 * `retryable` says whether sending the same request again later may succeed (429, 5xx, network
 * failures, timeouts, a stream cut short). The client itself has already retried what it safely could.
 */
export class GatewayError extends Error {
  constructor(
    message: string,
    readonly kind: GatewayErrorKind,
    readonly status: number | undefined,
    readonly retryable: boolean,
  ) {
    super(message);
    this.name = "GatewayError";
  }
}

export type GatewayClientOptions = {
  /** `http://host:4000`, with or without a trailing slash or `/v1`. */
  baseUrl: string;
  apiKey?: string;
  /** Whole attempt, request to last byte. Default 120 000. */
  timeoutMs?: number;
  /** Until the response headers arrive (connect + gateway think time). Default: `timeoutMs`. */
  firstByteTimeoutMs?: number;
  /** Longest silence allowed between two pieces of the body once headers arrived. Default 60 000. */
  idleTimeoutMs?: number;
  /** Retries after the first attempt. Default 3. */
  maxRetries?: number;
  /** First backoff; doubles each retry, with jitter. Default 500. */
  retryBaseMs?: number;
  /** Cap on any single wait between attempts, `Retry-After` included. Default 30 000. */
  maxRetryDelayMs?: number;
  /** `health()` budget. Default 3 000. */
  healthTimeoutMs?: number;
  logger?: Logger;
  fetch?: typeof fetch;
};

const MAX_ERROR_TEXT = 300;
const MAX_SSE_LINE = 8 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Wire schemas. Lenient about what OpenAI-compatible servers vary on (nulls, missing optional
// fields, extra fields), strict about what the agent loop depends on.

const usageSchema = z.object({
  prompt_tokens: z.number().int().nonnegative(),
  completion_tokens: z.number().int().nonnegative(),
  cost: z.number().nonnegative().nullish(),
});

const errorBodySchema = z.object({
  error: z.union([
    z.string(),
    z.object({ message: z.unknown().optional(), code: z.unknown().optional() }).loose(),
  ]),
});

const toolCallDeltaSchema = z.object({
  index: z.number().int().nonnegative().nullish(),
  id: z.string().nullish(),
  type: z.string().nullish(),
  function: z.object({ name: z.string().nullish(), arguments: z.string().nullish() }).nullish(),
});

const chunkSchema = z.object({
  // The usage-only chunk has `choices: []`; some servers (vLLM) send null or omit it there.
  choices: z
    .array(
      z.object({
        index: z.number().int().nonnegative().nullish(),
        delta: z
          .object({
            content: z.string().nullish(),
            tool_calls: z.array(toolCallDeltaSchema).nullish(),
          })
          .nullish(),
        finish_reason: z.string().nullish(),
      }),
    )
    .nullish(),
  usage: usageSchema.nullish(),
});

const toolArgumentsSchema = z.union([
  z.string(),
  // Some servers hand back an already-parsed object; keep the contract "raw JSON text".
  z.record(z.string(), z.unknown()).transform((value) => JSON.stringify(value)),
]);

const completionSchema = z.object({
  choices: z
    .array(
      z.object({
        message: z.object({
          content: z.string().nullish(),
          tool_calls: z
            .array(
              z.object({
                id: z.string().min(1, "tool call without an id"),
                function: z.object({
                  name: z.string().min(1, "tool call without a name"),
                  arguments: toolArgumentsSchema.nullish(),
                }),
              }),
            )
            .nullish(),
        }),
        finish_reason: z.string().nullish(),
      }),
    )
    .min(1, "no choices"),
  usage: usageSchema.nullish(),
});

// ---------------------------------------------------------------------------------------------

/** The root the gateway's paths hang off: no trailing slash, no trailing `/v1`. */
export function gatewayRoot(baseUrl: string): string {
  let root = baseUrl.trim().replace(/\/+$/, "");
  if (root.endsWith("/v1")) root = root.slice(0, -3).replace(/\/+$/, "");
  return root;
}

export function createGatewayClient(options: GatewayClientOptions): ModelGateway {
  return new GatewayClient(options);
}

/** Thrown inside one attempt; carries what the retry loop needs to decide. */
class AttemptFailure {
  constructor(
    readonly error: GatewayError,
    readonly streamStarted: boolean,
    readonly retryAfterMs?: number,
  ) {}
}

/** An exception thrown by the caller's `onTextDelta`; passed through untouched. */
class CallerFailure {
  constructor(readonly cause: unknown) {}
}

class GatewayClient implements ModelGateway {
  private readonly root: string;
  private readonly apiKey: string | undefined;
  private readonly timeoutMs: number;
  private readonly firstByteTimeoutMs: number;
  private readonly idleTimeoutMs: number;
  private readonly maxRetries: number;
  private readonly retryBaseMs: number;
  private readonly maxRetryDelayMs: number;
  private readonly healthTimeoutMs: number;
  private readonly logger: Logger | undefined;
  private readonly fetch: typeof fetch;

  constructor(options: GatewayClientOptions) {
    this.root = gatewayRoot(options.baseUrl);
    this.apiKey = options.apiKey || undefined;
    this.timeoutMs = options.timeoutMs ?? 120_000;
    this.firstByteTimeoutMs = options.firstByteTimeoutMs ?? this.timeoutMs;
    this.idleTimeoutMs = options.idleTimeoutMs ?? 60_000;
    this.maxRetries = Math.max(0, options.maxRetries ?? 3);
    this.retryBaseMs = options.retryBaseMs ?? 500;
    this.maxRetryDelayMs = options.maxRetryDelayMs ?? 30_000;
    this.healthTimeoutMs = options.healthTimeoutMs ?? 3_000;
    this.logger = options.logger;
    this.fetch = options.fetch ?? fetch;
  }

  async complete(request: CompletionRequest): Promise<Completion> {
    const { signal } = request;
    const body = JSON.stringify({
      model: request.model,
      messages: request.messages,
      ...(request.tools.length > 0
        ? {
            tools: request.tools.map((tool) => ({
              type: "function",
              function: { name: tool.name, description: tool.description, parameters: tool.parameters },
            })),
          }
        : {}),
      stream: true,
      stream_options: { include_usage: true },
    });

    for (let attempt = 0; ; attempt++) {
      if (signal?.aborted) throw abortedError();
      try {
        const started = Date.now();
        const completion = await this.attempt(body, request);
        this.logger?.debug(
          { model: request.model, attempt, ms: Date.now() - started, finishReason: completion.finishReason, usage: completion.usage },
          "gateway completion",
        );
        return completion;
      } catch (thrown) {
        if (thrown instanceof CallerFailure) throw thrown.cause;
        if (!(thrown instanceof AttemptFailure)) throw thrown;
        const { error, streamStarted, retryAfterMs } = thrown;
        const retry = error.retryable && !streamStarted && attempt < this.maxRetries;
        if (!retry) {
          if (error.kind !== "aborted") {
            this.logger?.warn({ model: request.model, attempt, kind: error.kind, status: error.status, err: error.message }, "gateway request failed");
          }
          throw error;
        }
        const delayMs = this.retryDelay(attempt, retryAfterMs);
        this.logger?.warn(
          { model: request.model, attempt, kind: error.kind, status: error.status, err: error.message, delayMs },
          "gateway request failed, retrying",
        );
        await sleep(delayMs, signal);
      }
    }
  }

  async health(): Promise<{ status: "ok" | "unreachable"; detail?: string }> {
    const signal = AbortSignal.timeout(this.healthTimeoutMs);
    const problems: string[] = [];
    for (const path of ["/health/liveliness", "/v1/models"]) {
      try {
        const response = await this.fetch(`${this.root}${path}`, { headers: this.headers(), signal });
        await response.body?.cancel().catch(() => {});
        if (response.ok) return { status: "ok" };
        problems.push(`${path}: HTTP ${response.status}`);
      } catch (error) {
        problems.push(`${path}: ${signal.aborted ? `no answer within ${this.healthTimeoutMs} ms` : describeNetworkError(error)}`);
        if (signal.aborted) break;
      }
    }
    return { status: "unreachable", detail: this.redact(problems.join("; ")) };
  }

  // -------------------------------------------------------------------------------------------

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return { ...extra, ...(this.apiKey ? { authorization: `Bearer ${this.apiKey}` } : {}) };
  }

  private retryDelay(attempt: number, retryAfterMs: number | undefined): number {
    if (retryAfterMs !== undefined) return Math.min(retryAfterMs, this.maxRetryDelayMs);
    const exponential = Math.min(this.retryBaseMs * 2 ** attempt, this.maxRetryDelayMs);
    // "Equal jitter": at least half the backoff, so retries from many sessions spread out.
    return Math.round(exponential / 2 + Math.random() * (exponential / 2));
  }

  private redact(text: string): string {
    return this.apiKey ? text.split(this.apiKey).join("[redacted]") : text;
  }

  private fail(message: string, kind: GatewayErrorKind, status: number | undefined, retryable: boolean): GatewayError {
    return new GatewayError(this.redact(message), kind, status, retryable);
  }

  /** One HTTP exchange. Throws AttemptFailure (or CallerFailure), never anything else. */
  private async attempt(body: string, request: CompletionRequest): Promise<Completion> {
    const { signal } = request;
    const controller = new AbortController();
    let timedOut: string | undefined;
    const timeout = (what: string) => () => {
      timedOut ??= what;
      controller.abort();
    };
    const onAbort = () => controller.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    const total = setTimeout(timeout(`no complete reply within ${this.timeoutMs} ms`), this.timeoutMs);
    let idle = setTimeout(timeout(`no response within ${this.firstByteTimeoutMs} ms`), this.firstByteTimeoutMs);
    const touch = () => {
      clearTimeout(idle);
      idle = setTimeout(timeout(`no data for ${this.idleTimeoutMs} ms`), this.idleTimeoutMs);
    };
    let streamStarted = false;

    try {
      const response = await this.fetch(`${this.root}/v1/chat/completions`, {
        method: "POST",
        headers: this.headers({ "content-type": "application/json", accept: "text/event-stream, application/json" }),
        body,
        signal: controller.signal,
      });
      touch();

      if (!response.ok) {
        let text = "";
        try {
          text = await response.text();
        } catch {
          // The status alone is still worth reporting.
        }
        const status = response.status;
        const retryable = status === 408 || status === 429 || status >= 500;
        const detail = errorText(text);
        throw new AttemptFailure(
          this.fail(`gateway returned HTTP ${status}${detail ? `: ${detail}` : ""}`, "http", status, retryable),
          false,
          parseRetryAfter(response.headers.get("retry-after")),
        );
      }

      const headerCost = parseCost(response.headers.get("x-litellm-response-cost"));
      const contentType = response.headers.get("content-type") ?? "";
      if (contentType.includes("application/json")) {
        // A gateway that ignored `stream: true`: one JSON document.
        const text = await response.text();
        streamStarted = text.length > 0;
        return this.parseJsonCompletion(text, headerCost, request.onTextDelta);
      }
      if (!response.body) throw new AttemptFailure(this.fail("gateway reply has no body", "malformed", undefined, false), false);
      return await this.readStream(response.body, headerCost, request.onTextDelta, () => {
        streamStarted = true;
        touch();
      });
    } catch (thrown) {
      if (thrown instanceof CallerFailure) throw thrown;
      if (signal?.aborted) throw new AttemptFailure(abortedError(), streamStarted);
      if (thrown instanceof AttemptFailure) throw thrown;
      if (timedOut) {
        throw new AttemptFailure(this.fail(`gateway request timed out: ${timedOut}`, "timeout", undefined, true), streamStarted);
      }
      throw new AttemptFailure(
        this.fail(`gateway request failed: ${describeNetworkError(thrown)}`, "network", undefined, true),
        streamStarted,
      );
    } finally {
      clearTimeout(total);
      clearTimeout(idle);
      signal?.removeEventListener("abort", onAbort);
    }
  }

  private malformed(message: string, retryable = false): AttemptFailure {
    return new AttemptFailure(this.fail(`malformed gateway reply: ${message}`, "malformed", undefined, retryable), true);
  }

  private parseJsonCompletion(text: string, headerCost: number | undefined, onTextDelta?: (text: string) => void): Completion {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw this.malformed(`body is not valid JSON (${snippet(text)})`);
    }
    const gatewayError = errorBodySchema.safeParse(json);
    if (gatewayError.success && !(typeof json === "object" && json && "choices" in json)) {
      throw new AttemptFailure(this.fail(`gateway returned an error: ${errorText(text)}`, "http", 200, false), true);
    }
    const parsed = completionSchema.safeParse(json);
    if (!parsed.success) throw this.malformed(zodProblem(parsed.error));
    const choice = parsed.data.choices[0]!;
    const content = choice.message.content ?? "";
    if (content && onTextDelta) deliver(onTextDelta, content);
    return {
      text: content,
      toolCalls: (choice.message.tool_calls ?? []).map((call) => ({
        id: call.id,
        name: call.function.name,
        arguments: call.function.arguments ?? "",
      })),
      finishReason: choice.finish_reason ?? null,
      usage: toUsage(parsed.data.usage, headerCost),
    };
  }

  private async readStream(
    body: ReadableStream<Uint8Array>,
    headerCost: number | undefined,
    onTextDelta: ((text: string) => void) | undefined,
    onBytes: () => void,
  ): Promise<Completion> {
    let text = "";
    const toolCalls = new Map<number, { id?: string; name?: string; arguments: string }>();
    let lastToolIndex: number | undefined;
    let finishReason: string | null = null;
    let usage: z.infer<typeof usageSchema> | undefined;
    let done = false;
    let events = 0;

    const handle = (data: string) => {
      events++;
      if (data.trim() === "[DONE]") {
        done = true;
        return;
      }
      let json: unknown;
      try {
        json = JSON.parse(data);
      } catch {
        throw this.malformed(`stream event ${events} is not valid JSON (${snippet(data)})`);
      }
      if (typeof json === "object" && json !== null && "error" in json && !("choices" in json)) {
        // A mid-stream error (LiteLLM, OpenRouter): the provider failed after the reply began.
        const parsedError = errorBodySchema.safeParse(json);
        const code = parsedError.success && typeof parsedError.data.error === "object" ? Number(parsedError.data.error.code) : NaN;
        const retryable = code === 429 || code >= 500;
        throw new AttemptFailure(
          this.fail(`gateway reported an error mid-stream: ${errorText(data)}`, "http", Number.isFinite(code) ? code : undefined, retryable),
          true,
        );
      }
      const parsed = chunkSchema.safeParse(json);
      if (!parsed.success) throw this.malformed(`stream event ${events}: ${zodProblem(parsed.error)}`);
      const chunk = parsed.data;
      if (chunk.usage) usage = chunk.usage;
      if (!chunk.choices) {
        if (!chunk.usage) throw this.malformed(`stream event ${events} has no choices`);
        return;
      }
      for (const choice of chunk.choices) {
        if ((choice.index ?? 0) !== 0) continue; // we never ask for n > 1
        if (choice.finish_reason) finishReason = choice.finish_reason;
        const delta = choice.delta;
        if (!delta) continue;
        if (delta.content) {
          text += delta.content;
          if (onTextDelta) deliver(onTextDelta, delta.content);
        }
        for (const fragment of delta.tool_calls ?? []) {
          let index = fragment.index ?? undefined;
          if (index === undefined) {
            // Servers that omit `index`: a new id starts a new call, anything else continues the last.
            const known = fragment.id ? [...toolCalls].find(([, call]) => call.id === fragment.id) : undefined;
            index = known ? known[0] : fragment.id || lastToolIndex === undefined ? toolCalls.size : lastToolIndex;
          }
          lastToolIndex = index;
          let call = toolCalls.get(index);
          if (!call) {
            call = { arguments: "" };
            toolCalls.set(index, call);
          }
          if (fragment.id && !call.id) call.id = fragment.id;
          if (fragment.function?.name && !call.name) call.name = fragment.function.name;
          if (fragment.function?.arguments) call.arguments += fragment.function.arguments;
        }
      }
    };

    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let dataLines: string[] = [];
    const line = (raw: string) => {
      const current = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (current === "") {
        if (dataLines.length > 0) {
          const data = dataLines.join("\n");
          dataLines = [];
          handle(data);
        }
        return;
      }
      if (current.startsWith(":")) return; // SSE comment (keep-alive)
      const colon = current.indexOf(":");
      const field = colon === -1 ? current : current.slice(0, colon);
      let value = colon === -1 ? "" : current.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") dataLines.push(value);
    };

    try {
      while (!done) {
        const { done: ended, value } = await reader.read();
        if (ended) break;
        onBytes();
        buffer += decoder.decode(value, { stream: true });
        let newline: number;
        while (!done && (newline = buffer.indexOf("\n")) !== -1) {
          const current = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          line(current);
        }
        if (buffer.length > MAX_SSE_LINE) throw this.malformed(`stream line longer than ${MAX_SSE_LINE} bytes`);
      }
      if (!done) {
        buffer += decoder.decode();
        if (buffer) line(buffer);
        line("");
      }
    } finally {
      reader.cancel().catch(() => {});
    }

    if (!done && finishReason === null) {
      // Most likely the connection was cut; sending the request again may well work.
      throw this.malformed("the stream ended before [DONE] or a finish_reason", true);
    }

    const calls: ToolCall[] = [];
    for (const [index, call] of [...toolCalls].sort(([a], [b]) => a - b)) {
      if (!call.id) throw this.malformed(`tool call at index ${index} has no id`);
      if (!call.name) throw this.malformed(`tool call at index ${index} has no function name`);
      calls.push({ id: call.id, name: call.name, arguments: call.arguments });
    }
    return { text, toolCalls: calls, finishReason, usage: toUsage(usage, headerCost) };
  }
}

// ---------------------------------------------------------------------------------------------

function deliver(onTextDelta: (text: string) => void, piece: string) {
  try {
    onTextDelta(piece);
  } catch (error) {
    throw new CallerFailure(error);
  }
}

function abortedError(): GatewayError {
  return new GatewayError("gateway request aborted", "aborted", undefined, false);
}

function toUsage(usage: z.infer<typeof usageSchema> | null | undefined, headerCost: number | undefined): Usage | null {
  if (!usage) return null;
  const cost = usage.cost ?? headerCost;
  return {
    promptTokens: usage.prompt_tokens,
    completionTokens: usage.completion_tokens,
    ...(cost === undefined ? {} : { cost }),
  };
}

function parseCost(header: string | null): number | undefined {
  if (header === null || header.trim() === "") return undefined;
  const value = Number(header);
  return Number.isFinite(value) && value >= 0 ? value : undefined;
}

/** `Retry-After` as seconds or an HTTP date, in ms; undefined when absent or unreadable. */
export function parseRetryAfter(header: string | null): number | undefined {
  if (header === null) return undefined;
  const trimmed = header.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Math.round(Number(trimmed) * 1000);
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

/** The gateway's own error message (`error.message`, `detail`, `message`) or the raw text, shortened. */
function errorText(body: string): string {
  let message: unknown;
  try {
    const json: unknown = JSON.parse(body);
    if (json && typeof json === "object") {
      const record = json as Record<string, unknown>;
      const error = record.error;
      message =
        typeof error === "string"
          ? error
          : error && typeof error === "object" && "message" in error
            ? (error as { message: unknown }).message
            : (record.detail ?? record.message);
    }
  } catch {
    message = undefined;
  }
  const text = typeof message === "string" ? message : message !== undefined ? JSON.stringify(message) : body;
  return truncate(text.replace(/\s+/g, " ").trim(), MAX_ERROR_TEXT);
}

function truncate(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

function snippet(text: string): string {
  return JSON.stringify(truncate(text, 80));
}

function zodProblem(error: z.ZodError): string {
  return error.issues
    .slice(0, 3)
    .map((issue) => (issue.path.length > 0 ? `${issue.path.join(".")}: ${issue.message}` : issue.message))
    .join("; ");
}

function describeNetworkError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const cause = (error as { cause?: unknown }).cause;
  if (cause && typeof cause === "object") {
    const code = (cause as { code?: unknown }).code;
    const message = (cause as { message?: unknown }).message;
    if (typeof code === "string" && typeof message === "string") return message.includes(code) ? message : `${code}: ${message}`;
    if (typeof message === "string" && message) return `${error.message}: ${message}`;
  }
  return error.message;
}

/** Waits, unless the signal fires first (then throws an "aborted" GatewayError). */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortedError());
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortedError());
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
