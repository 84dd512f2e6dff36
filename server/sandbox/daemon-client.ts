/**
 * HTTP client for the in-sandbox daemon (sandboxd/). Backend-neutral: the address is a Unix socket
 * (`unix:/abs/path.sock`, local backend) or a base URL (`http://host:port`, Kubernetes).
 *
 * Errors: anything that means "the daemon cannot be reached or stopped answering" (refused, missing
 * socket, reset, hang-up, timeout, a stream cut before the exit) is a SandboxUnavailableError; an
 * error the daemon answered with is a DaemonRequestError; a reply that does not follow the protocol
 * is a DaemonProtocolError.
 */
import http from "node:http";
import { StringDecoder } from "node:string_decoder";
import { z } from "zod";
import {
  DaemonRequestError,
  SandboxUnavailableError,
  type DaemonClient,
  type ExecChunk,
  type ExecRequest,
  type ExecResult,
  type FileEntry,
} from "./port";

export type DaemonClientOptions = {
  address: string;
  token: string;
  /** Deadline for one request/response (and for an exec stream to start). Default 30 s. */
  timeoutMs?: number;
};

/** The daemon answered something that is not its protocol. */
export class DaemonProtocolError extends Error {
  override name = "DaemonProtocolError";
}

const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_EXEC_TIMEOUT_MS = 120_000;
/** Exec: the daemon kills at timeoutMs, SIGKILLs 2 s later; this is our slack on top before giving up. */
const EXEC_SLACK_MS = 15_000;
/** Largest JSON reply accepted (a 10 MiB file as base64 JSON is about 13.4 MiB). */
const MAX_REPLY_BYTES = 32 * 1024 * 1024;
/**
 * Longest NDJSON line of an exec stream. The daemon sends one chunk per pipe read (at most 64 KiB,
 * about 384 Ki characters as JSON in the worst case), so a longer line is not the daemon speaking.
 */
const MAX_EXEC_LINE_CHARS = 4 * 1024 * 1024;
/** Default per-stream cap of collectExec (and of what it asks the daemon to send). */
export const DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024;
/** Largest per-stream cap a caller may ask for. */
export const MAX_OUTPUT_BYTES_LIMIT = 16 * 1024 * 1024;

const errorReply = z.object({ error: z.object({ code: z.string(), message: z.string() }) });
const healthReply = z.object({ ok: z.literal(true), pid: z.number().int(), uptimeMs: z.number(), bound: z.boolean() });
const readReply = z.object({ content: z.string(), encoding: z.enum(["utf8", "base64"]), size: z.number().int().nonnegative() });
const writeReply = z.object({ size: z.number().int().nonnegative() });
const listReply = z.object({
  entries: z.array(
    z.object({
      name: z.string(),
      type: z.enum(["file", "directory", "symlink", "other"]),
      size: z.number(),
      modifiedAt: z.string(),
    }),
  ),
});
const execChunk = z.discriminatedUnion("type", [
  z.object({ type: z.literal("stdout"), data: z.string() }),
  z.object({ type: z.literal("stderr"), data: z.string() }),
  z.object({
    type: z.literal("exit"),
    exitCode: z.number().int().nullable(),
    signal: z.string().nullable(),
    timedOut: z.boolean(),
    durationMs: z.number(),
    stdoutBytes: z.number().int().nonnegative().optional(),
    stderrBytes: z.number().int().nonnegative().optional(),
    stdoutTruncated: z.boolean().optional(),
    stderrTruncated: z.boolean().optional(),
  }),
]);

type Target = { socketPath: string; host?: undefined; port?: undefined } | { socketPath?: undefined; host: string; port: number };

function parseAddress(address: string): Target {
  if (address.startsWith("unix:")) {
    const socketPath = address.slice("unix:".length);
    if (!socketPath.startsWith("/")) throw new Error(`sandbox daemon address ${address}: the socket path must be absolute`);
    return { socketPath };
  }
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    throw new Error(`sandbox daemon address ${address} is neither unix:/abs/path.sock nor http://host:port`);
  }
  if (url.protocol !== "http:") throw new Error(`sandbox daemon address ${address}: only http:// is supported`);
  return { host: url.hostname.replace(/^\[(.*)\]$/, "$1"), port: url.port ? Number(url.port) : 80 };
}

export function createDaemonClient(options: DaemonClientOptions): DaemonClient {
  const { address, token } = options;
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const target = parseAddress(address);

  const unavailable = (what: string, cause?: unknown) =>
    new SandboxUnavailableError(`sandbox daemon at ${address} is unavailable: ${what}`, cause === undefined ? undefined : { cause });

  /**
   * Sends one request and resolves with the response once its headers arrived. Every failure before
   * that is a SandboxUnavailableError (or the caller's abort reason). `deadlineMs` covers the whole
   * exchange: past it the request is destroyed, also while the body is being read.
   */
  function send(
    method: string,
    path: string,
    body: unknown,
    deadlineMs: number,
    signal?: AbortSignal,
  ): Promise<{ req: http.ClientRequest; res: http.IncomingMessage }> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const headers: Record<string, string | number> = { accept: "application/json, application/x-ndjson" };
      if (token) headers.authorization = `Bearer ${token}`;
      if (payload !== undefined) {
        headers["content-type"] = "application/json";
        headers["content-length"] = Buffer.byteLength(payload);
      }
      // No keep-alive: a pooled socket the daemon just closed would look like a dead sandbox.
      const req = http.request({ ...target, method, path, headers, agent: false });
      const timer = setTimeout(
        () => req.destroy(unavailable(`no complete reply to ${method} ${path} within ${deadlineMs} ms`)),
        deadlineMs,
      );
      const onAbort = () => req.destroy(signal!.reason instanceof Error ? signal!.reason : new Error("aborted"));
      signal?.addEventListener("abort", onAbort, { once: true });
      req.once("close", () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      });
      req.once("error", (error) => {
        if (signal?.aborted) reject(signal.reason);
        else if (error instanceof SandboxUnavailableError) reject(error);
        else reject(unavailable(error.message, error));
      });
      req.on("error", () => {}); // later errors surface through the response stream
      req.once("response", (res) => {
        res.on("error", () => {}); // surfaced by the reader (async iteration rethrows); never an uncaught event
        resolve({ req, res });
      });
      req.end(payload);
    });
  }

  /** Reads a whole (bounded) response body. */
  async function readBody(res: http.IncomingMessage, what: string): Promise<string> {
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of res as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > MAX_REPLY_BYTES) {
          res.destroy();
          throw new DaemonProtocolError(`sandbox daemon at ${address}: reply to ${what} is larger than ${MAX_REPLY_BYTES} bytes`);
        }
        chunks.push(chunk);
      }
    } catch (error) {
      if (error instanceof DaemonProtocolError || error instanceof SandboxUnavailableError) throw error;
      throw unavailable(`reply to ${what} was cut off: ${(error as Error).message}`, error);
    }
    return Buffer.concat(chunks).toString("utf8");
  }

  function parseJson<T>(schema: z.ZodType<T>, text: string, what: string): T {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw new DaemonProtocolError(`sandbox daemon at ${address}: reply to ${what} is not JSON: ${text.slice(0, 200)}`);
    }
    const result = schema.safeParse(value);
    if (!result.success) {
      throw new DaemonProtocolError(`sandbox daemon at ${address}: malformed reply to ${what}: ${z.prettifyError(result.error)}`);
    }
    return result.data;
  }

  /** Turns a non-2xx response into the error the daemon meant. */
  async function failure(res: http.IncomingMessage, what: string): Promise<never> {
    const status = res.statusCode ?? 0;
    const text = await readBody(res, what);
    let parsed: z.infer<typeof errorReply> | undefined;
    try {
      parsed = errorReply.parse(JSON.parse(text));
    } catch {
      parsed = undefined;
    }
    if (!parsed) {
      throw new DaemonProtocolError(`sandbox daemon at ${address}: HTTP ${status} for ${what} without an error body: ${text.slice(0, 200)}`);
    }
    throw new DaemonRequestError(status, parsed.error.code, parsed.error.message);
  }

  async function call<T>(method: string, path: string, body: unknown, schema: z.ZodType<T> | null): Promise<T> {
    const what = `${method} ${path.split("?")[0]}`;
    const { res } = await send(method, path, body, timeoutMs);
    const status = res.statusCode ?? 0;
    if (status < 200 || status >= 300) return failure(res, what);
    const text = await readBody(res, what);
    if (schema === null) return undefined as T;
    return parseJson(schema, text, what);
  }

  async function* exec(request: ExecRequest, signal?: AbortSignal): AsyncGenerator<ExecChunk> {
    const execTimeout = typeof request.timeoutMs === "number" ? request.timeoutMs : DEFAULT_EXEC_TIMEOUT_MS;
    const { req, res } = await send("POST", "/v1/exec", request, timeoutMs + execTimeout + EXEC_SLACK_MS, signal);
    let sawExit = false;
    try {
      const status = res.statusCode ?? 0;
      if (status < 200 || status >= 300) await failure(res, "POST /v1/exec");
      const contentType = res.headers["content-type"] ?? "";
      if (!contentType.startsWith("application/x-ndjson")) {
        throw new DaemonProtocolError(`sandbox daemon at ${address}: exec replied with content-type ${contentType || "(none)"}`);
      }
      const decoder = new StringDecoder("utf8");
      let pending = "";
      const parseLine = (line: string): ExecChunk => parseJson(execChunk, line, "POST /v1/exec (stream line)");
      try {
        for await (const bytes of res as AsyncIterable<Buffer>) {
          pending += decoder.write(bytes);
          let newline: number;
          while ((newline = pending.indexOf("\n")) !== -1) {
            const line = pending.slice(0, newline);
            pending = pending.slice(newline + 1);
            if (line.trim() === "") continue;
            const chunk = parseLine(line);
            yield chunk;
            if (chunk.type === "exit") {
              sawExit = true;
              return;
            }
          }
          if (pending.length > MAX_EXEC_LINE_CHARS) {
            throw new DaemonProtocolError(`sandbox daemon at ${address}: exec stream line longer than ${MAX_EXEC_LINE_CHARS} characters`);
          }
        }
      } catch (error) {
        if (signal?.aborted) throw signal.reason;
        if (error instanceof DaemonProtocolError || error instanceof SandboxUnavailableError) throw error;
        throw unavailable(`exec stream broke: ${(error as Error).message}`, error);
      }
      pending += decoder.end();
      if (pending.trim() !== "") {
        const chunk = parseLine(pending);
        yield chunk;
        if (chunk.type === "exit") {
          sawExit = true;
          return;
        }
      }
      if (signal?.aborted) throw signal.reason;
      throw unavailable("the exec stream ended without an exit status");
    } finally {
      // Stopped early (abort, consumer break, error): closing the connection makes the daemon kill the command.
      if (!sawExit || !res.complete) req.destroy();
    }
  }

  return {
    health: () => call("GET", "/v1/health", undefined, healthReply),
    bind: async (input) => {
      await call("POST", "/v1/bind", input, null);
    },
    exec,
    readFile: (path) => call("GET", `/v1/files/read?path=${encodeURIComponent(path)}`, undefined, readReply),
    writeFile: (path, content, encoding) =>
      call("PUT", "/v1/files/write", encoding === undefined ? { path, content } : { path, content, encoding }, writeReply),
    listFiles: async (path) => (await call("GET", `/v1/files/list?path=${encodeURIComponent(path)}`, undefined, listReply)).entries satisfies FileEntry[],
  };
}

/**
 * Runs a request to its end and returns the first `maxOutputBytes` (default 1 MiB) of each stream
 * and the exit status. The daemon is told the cap, so it sends no more; whatever arrives past it
 * anyway (a daemon without the cap) is read and dropped, never buffered.
 */
export async function runExec(
  client: DaemonClient,
  request: Omit<ExecRequest, "maxOutputBytes">,
  options: { maxOutputBytes?: number; signal?: AbortSignal } = {},
): Promise<ExecResult> {
  const maxOutputBytes = options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
  return collectExec(client.exec({ ...request, maxOutputBytes }, options.signal), { maxOutputBytes });
}

/** Runs an exec stream to its end and returns the output (the first `maxOutputBytes` of each stream, default 1 MiB) and the exit status. */
export async function collectExec(chunks: AsyncIterable<ExecChunk>, options: { maxOutputBytes?: number } = {}): Promise<ExecResult> {
  const limit = options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
  const streams = { stdout: new CappedText(limit), stderr: new CappedText(limit) };
  for await (const chunk of chunks) {
    if (chunk.type !== "exit") {
      streams[chunk.type].append(chunk.data);
      continue;
    }
    const stdoutTruncated = streams.stdout.truncated || chunk.stdoutTruncated === true;
    const stderrTruncated = streams.stderr.truncated || chunk.stderrTruncated === true;
    return {
      exitCode: chunk.exitCode,
      signal: chunk.signal,
      timedOut: chunk.timedOut,
      durationMs: chunk.durationMs,
      stdout: streams.stdout.text(),
      stderr: streams.stderr.text(),
      stdoutTruncated,
      stderrTruncated,
      truncated: stdoutTruncated || stderrTruncated,
      stdoutBytes: Math.max(chunk.stdoutBytes ?? 0, streams.stdout.bytes),
      stderrBytes: Math.max(chunk.stderrBytes ?? 0, streams.stderr.bytes),
    };
  }
  throw new SandboxUnavailableError("the exec stream ended without an exit status");
}

/** Text kept up to `limit` UTF-8 bytes (cut on a character boundary); what comes after is counted and dropped. */
export class CappedText {
  private readonly parts: string[] = [];
  private kept = 0;
  /** UTF-8 bytes seen in all. */
  bytes = 0;
  truncated = false;

  constructor(private readonly limit: number) {}

  append(data: string): void {
    const size = Buffer.byteLength(data, "utf8");
    this.bytes += size;
    if (this.truncated) return;
    if (this.kept + size <= this.limit) {
      this.parts.push(data);
      this.kept += size;
      return;
    }
    this.truncated = true;
    const head = utf8Prefix(data, this.limit - this.kept);
    this.parts.push(head);
    this.kept += Buffer.byteLength(head, "utf8");
  }

  text(): string {
    return this.parts.join("");
  }
}

/** The longest prefix of `text` whose UTF-8 encoding fits in `maxBytes`, never splitting a character. */
export function utf8Prefix(text: string, maxBytes: number): string {
  if (maxBytes <= 0) return "";
  if (Buffer.byteLength(text, "utf8") <= maxBytes) return text;
  // maxBytes UTF-16 units encode to at least maxBytes bytes: enough to hold the prefix. Never cut a surrogate pair.
  const units = maxBytes >= 1 && isHighSurrogate(text.charCodeAt(maxBytes - 1)) ? maxBytes - 1 : maxBytes;
  const bytes = Buffer.from(text.slice(0, units), "utf8");
  let end = Math.min(maxBytes, bytes.length);
  // Back off to the start of a character (continuation bytes are 10xxxxxx).
  if (end < bytes.length) while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end -= 1;
  return bytes.toString("utf8", 0, end);
}

const isHighSurrogate = (code: number) => code >= 0xd800 && code <= 0xdbff;
