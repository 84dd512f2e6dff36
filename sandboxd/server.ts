import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import { createRequire } from "node:module";
import { z } from "zod";
import { HttpError } from "./errors";
import { streamCommand, type ExecTracker } from "./exec";
import { GATEWAY_TOKEN, GATEWAY_TOKEN_RULE, gatewayEnv, parseCertificates, removeCaFiles, writeCaFiles, type GatewaySession } from "./gateway-env";
import { MAX_FILE_BYTES, type Workspace } from "./workspace";

// Loaded with require(): Node 22+ builds an ES module's view of node:http by reading every export,
// its lazy WebSocket getters included, which load undici and compile its WebAssembly HTTP parser in
// every sandbox (about 20 ms of CPU and a 10 GiB address-space reservation; the daemon never uses it).
const http = createRequire(import.meta.url)("node:http") as typeof import("node:http");

/** Largest request body accepted (a 10 MiB file is about 13.4 MiB as base64 JSON). */
export const MAX_BODY_BYTES = 16 * 1024 * 1024;
const DEFAULT_EXEC_TIMEOUT_MS = 120_000;
/** Largest maxOutputBytes an exec may ask for (the platform allows 16 MiB). */
const MAX_OUTPUT_BYTES_LIMIT = 1024 * 1024 * 1024;
const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

export type DaemonState = {
  token: string;
  workspace: Workspace;
  /** The workspace path as configured (what commands see as HOME). */
  workspacePath: string;
  shell: string;
  startedAt: number;
  bound: boolean;
  sessionId: string | null;
  /** The session's environment, passed to every command. */
  env: Record<string, string>;
  /** The egress gateway commands reach through the daemon's forwarder; null: none configured. */
  gateway: GatewaySession | null;
  /** Set by the platform for every command, after the session's own (proxy, model and CA variables: gatewayEnv(gateway)). */
  platformEnv: Record<string, string>;
  execs: ExecTracker;
};

const envName = z.string().regex(/^[^=\0]+$/, "environment variable names must be non-empty and contain no '=' or NUL");
const envValue = z.string().refine((value) => !value.includes("\0"), "environment values must not contain NUL");

const bindBody = z.strictObject({
  sessionId: z.string().min(1).max(256),
  env: z.record(envName, envValue),
  /** The bearer token from now on (a warm-pool daemon starts with the pool's token; the claimed one gets its own). */
  token: z.string().min(32).max(1024).optional(),
  /** The session's own gateway token (a warm-pool daemon starts with the pool's); ignored without a gateway. */
  gatewayToken: z.string().regex(GATEWAY_TOKEN, GATEWAY_TOKEN_RULE).optional(),
  /** The installation's egress CA (PEM, certificates only), replacing the one the daemon started with; ignored without a gateway. */
  caPem: z
    .string()
    .max(1024 * 1024)
    .transform((pem, context) => {
      try {
        return parseCertificates(pem);
      } catch (error) {
        context.addIssue({ code: "custom", message: (error as Error).message });
        return z.NEVER;
      }
    })
    .optional(),
});

const execBody = z.strictObject({
  command: z.string().min(1).max(100_000),
  cwd: z.string().optional(),
  timeoutMs: z.number().int().min(1).max(3_600_000).optional(),
  /** Per stream (stdout, stderr): at most this many bytes are sent, the rest is read and dropped. Default: all. */
  maxOutputBytes: z.number().int().min(0).max(MAX_OUTPUT_BYTES_LIMIT).optional(),
});

const writeBody = z.strictObject({
  path: z.string(),
  content: z.string(),
  encoding: z.enum(["utf8", "base64"]).optional(),
});

/**
 * Padded base64 (RFC 4648 alphabet). Checked as length and alphabet: a regex with a repeated group (one
 * backtrack entry per 4 characters) overflows V8's stack on inputs of a few MB.
 */
const BASE64_CHARS = /^[A-Za-z0-9+/]*={0,2}$/;
const isBase64 = (text: string) => text.length % 4 === 0 && BASE64_CHARS.test(text);

type Handler = (req: IncomingMessage, res: ServerResponse, url: URL, state: DaemonState) => Promise<void>;

const routes: Record<string, Partial<Record<string, Handler>>> = {
  "/v1/health": {
    GET: async (_req, res, _url, state) => {
      sendJson(res, 200, { ok: true, pid: process.pid, uptimeMs: Date.now() - state.startedAt, bound: state.bound, gateway: state.gateway !== null });
    },
  },
  "/v1/bind": {
    POST: async (req, res, _url, state) => {
      const body = parse(bindBody, await readJson(req));
      if (state.bound) throw new HttpError(409, "already_bound", "this sandbox daemon is already bound to a session");
      if (state.gateway && (body.gatewayToken !== undefined || body.caPem !== undefined)) {
        const previous = state.gateway;
        // Written before anything changes: a bind that fails here leaves the daemon unbound as it was.
        const ca = body.caPem === undefined ? previous.ca : writeCaFiles(body.caPem);
        state.gateway = { ...previous, token: body.gatewayToken ?? previous.token, ca };
        state.platformEnv = gatewayEnv(state.gateway);
        if (ca !== previous.ca) removeCaFiles(previous.ca);
      }
      state.bound = true;
      state.sessionId = body.sessionId;
      state.env = { ...body.env };
      // The pool's token stops working as soon as this answer is sent: only the claimant knows the new one.
      if (body.token) state.token = body.token;
      res.writeHead(204).end();
    },
  },
  "/v1/exec": {
    POST: async (req, res, _url, state) => {
      const body = parse(execBody, await readJson(req));
      requireBound(state);
      const cwd = await state.workspace.directory(body.cwd ?? ".");
      streamCommand(res, {
        shell: state.shell,
        command: body.command,
        cwd,
        env: { HOME: state.workspacePath, PATH: DEFAULT_PATH, ...state.env, ...state.platformEnv },
        timeoutMs: body.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS,
        ...(body.maxOutputBytes === undefined ? {} : { maxOutputBytes: body.maxOutputBytes }),
        execs: state.execs,
      });
    },
  },
  "/v1/files/read": {
    GET: async (_req, res, url, state) => {
      requireBound(state);
      sendJson(res, 200, await state.workspace.readFile(queryPath(url, undefined)));
    },
  },
  "/v1/files/write": {
    PUT: async (req, res, _url, state) => {
      const body = parse(writeBody, await readJson(req));
      requireBound(state);
      let bytes: Buffer;
      if (body.encoding === "base64") {
        if (!isBase64(body.content)) throw new HttpError(400, "bad_request", "content: not valid base64");
        bytes = Buffer.from(body.content, "base64");
      } else {
        bytes = Buffer.from(body.content, "utf8");
      }
      if (bytes.length > MAX_FILE_BYTES) {
        throw new HttpError(413, "too_large", `content is ${bytes.length} bytes, above the ${MAX_FILE_BYTES}-byte limit`);
      }
      sendJson(res, 200, await state.workspace.writeFile(body.path, bytes));
    },
  },
  "/v1/files/list": {
    GET: async (_req, res, url, state) => {
      requireBound(state);
      sendJson(res, 200, { entries: await state.workspace.listFiles(queryPath(url, ".")) });
    },
  },
};

export function createDaemonServer(state: DaemonState): Server {
  // Recomputed when bind rotates the token.
  let expectedFor = state.token;
  let expected = digest(`Bearer ${state.token}`);
  const server = http.createServer({ noDelay: true }, (req, res) => {
    void handle(req, res).catch((error: unknown) => {
      if (error instanceof HttpError) {
        sendError(res, error);
        return;
      }
      console.error(`sandboxd: ${req.method} ${req.url}: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
      sendError(res, new HttpError(500, "internal", error instanceof Error ? error.message : "internal error"));
    });
  });
  // exec responses stream for up to an hour; only the request itself is bounded.
  server.requestTimeout = 60_000;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const authorization = req.headers.authorization ?? "";
    if (expectedFor !== state.token) {
      expectedFor = state.token;
      expected = digest(`Bearer ${state.token}`);
    }
    if (!timingSafeEqual(digest(authorization), expected)) {
      throw new HttpError(401, "unauthorized", "missing or wrong bearer token", { "www-authenticate": "Bearer" });
    }
    const url = new URL(req.url ?? "/", "http://sandboxd");
    const route = routes[url.pathname];
    if (!route) throw new HttpError(404, "no_route", `no route ${url.pathname}`);
    const handler = route[req.method ?? ""];
    if (!handler) {
      const allowed = Object.keys(route).join(", ");
      throw new HttpError(405, "method_not_allowed", `${req.method} is not allowed on ${url.pathname} (allowed: ${allowed})`, {
        allow: allowed,
      });
    }
    await handler(req, res, url, state);
  }

  return server;
}

function digest(value: string): Buffer {
  return createHash("sha256").update(value).digest();
}

function requireBound(state: DaemonState): void {
  if (!state.bound) throw new HttpError(409, "not_bound", "this sandbox daemon is not bound to a session yet (POST /v1/bind)");
}

function queryPath(url: URL, fallback: string | undefined): string {
  const value = url.searchParams.get("path") ?? fallback;
  if (value === undefined) throw new HttpError(400, "bad_request", "path: required query parameter");
  return value;
}

function parse<T>(schema: z.ZodType<T>, input: unknown): T {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const message = result.error.issues
    .map((issue) => `${issue.path.length > 0 ? issue.path.map(String).join(".") : "body"}: ${issue.message}`)
    .join("; ");
  throw new HttpError(400, "bad_request", message);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const tooLarge = () =>
    new HttpError(413, "body_too_large", `request body above the ${MAX_BODY_BYTES}-byte limit`, { connection: "close" });
  const declared = Number(req.headers["content-length"]);
  if (Number.isFinite(declared) && declared > MAX_BODY_BYTES) throw tooLarge();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw tooLarge();
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  if (text.trim() === "") throw new HttpError(400, "bad_request", "body: expected a JSON object, got an empty body");
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new HttpError(400, "bad_request", `body: malformed JSON (${(error as Error).message})`);
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(payload),
    "cache-control": "no-store",
    ...headers,
  });
  res.end(payload);
}

function sendError(res: ServerResponse, error: HttpError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, error.status, { error: { code: error.code, message: error.message } }, error.headers);
}
