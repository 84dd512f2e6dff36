import { timingSafeEqual } from "node:crypto";
import fs from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import type { Logger } from "../logger";

/**
 * The model relay of one local sandbox: an HTTP server on a Unix socket bound into the jail (the
 * daemon forwards the jail's loopback port to it). Programs in the sandbox (opencode and other
 * coding-agent harnesses) call it like an OpenAI-compatible API with the sandbox's own model token;
 * the relay checks that token, swaps it for the platform's gateway key and streams the gateway's
 * answer back. The gateway key never enters the sandbox, and only inference paths pass: a LiteLLM
 * master key must not open the gateway's admin API to agent code.
 */
export type ModelRelayGateway = { baseUrl: string; apiKey: string | undefined };

export type ModelRelay = { close(): Promise<void> };

/** Inference endpoints of the OpenAI (and Anthropic, for LiteLLM's /v1/messages) wire formats. */
const ALLOWED = [
  { method: "POST", path: "/v1/chat/completions" },
  { method: "POST", path: "/v1/completions" },
  { method: "POST", path: "/v1/responses" },
  { method: "POST", path: "/v1/messages" },
  { method: "POST", path: "/v1/embeddings" },
  { method: "GET", path: "/v1/models" },
];

/** Request headers that describe the hop or carry credentials: never forwarded as they are. */
const DROPPED_HEADERS = new Set(["host", "authorization", "x-api-key", "api-key", "connection", "keep-alive", "proxy-authorization", "transfer-encoding", "upgrade"]);

export async function startModelRelay(options: { socketPath: string; token: string; gateway: ModelRelayGateway; logger: Logger }): Promise<ModelRelay> {
  const root = new URL(options.gateway.baseUrl.replace(/\/+$/, "").replace(/\/v1$/, "") + "/");
  const expected = Buffer.from(options.token);
  const transport = root.protocol === "https:" ? https : http;

  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://relay");
    if (!ALLOWED.some((allowed) => allowed.method === req.method && allowed.path === url.pathname)) {
      return refuse(res, 404, "not_found", `${req.method} ${url.pathname} is not a model endpoint the relay serves`);
    }
    const presented = bearer(req);
    if (!presented || presented.length !== expected.length || !timingSafeEqual(presented, expected)) {
      return refuse(res, 401, "invalid_api_key", "the sandbox's model token is missing or wrong (use BERTH_MODEL_API_KEY)");
    }
    const headers: http.OutgoingHttpHeaders = {};
    for (const [name, value] of Object.entries(req.headers)) if (!DROPPED_HEADERS.has(name) && value !== undefined) headers[name] = value;
    if (options.gateway.apiKey) headers.authorization = `Bearer ${options.gateway.apiKey}`;
    const target = new URL(url.pathname.slice(1) + url.search, root);
    const upstream = transport.request(target, { method: req.method, headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.on("error", (error) => {
      options.logger.warn({ err: error, path: url.pathname }, "model relay: the gateway could not be reached");
      if (!res.headersSent) refuse(res, 502, "gateway_unreachable", `the model gateway could not be reached: ${error.message}`);
      else res.destroy();
    });
    // The sandbox hung up (the harness was stopped): stop the gateway call too.
    res.on("close", () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
  });
  server.keepAliveTimeout = 30_000;

  await fs.rm(options.socketPath, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.socketPath, () => {
      server.off("error", reject);
      resolve();
    });
  });
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function bearer(req: http.IncomingMessage): Buffer | null {
  const header = req.headers.authorization;
  if (header?.toLowerCase().startsWith("bearer ")) return Buffer.from(header.slice(7).trim());
  const apiKey = req.headers["x-api-key"];
  return typeof apiKey === "string" ? Buffer.from(apiKey) : null;
}

function refuse(res: http.ServerResponse, status: number, code: string, message: string): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify({ error: { message, type: "berth_model_relay", code } }));
}
