import http from "node:http";
import https from "node:https";
import type { Logger } from "../logger";

/**
 * The model relay: the egress gateway's route for requests that are not proxy requests (on both
 * backends the sandbox reaches it at a loopback address the daemon forwards to the gateway).
 * Programs in the sandbox (opencode and other coding-agent harnesses) call it like an
 * OpenAI-compatible API with the sandbox's own gateway token; the relay checks that token, swaps it
 * for the platform's LiteLLM Gateway key and streams the gateway's answer back. The gateway key
 * never enters the sandbox, and only inference paths pass: a LiteLLM master key must not open the
 * gateway's admin API to agent code.
 */
export type ModelRelayGateway = { baseUrl: string; apiKey: string | undefined };

/** Handles one request; `authenticate` says whether the token the caller presented is the sandbox's. */
export type ModelRelay = (req: http.IncomingMessage, res: http.ServerResponse, authenticate: (token: string) => boolean) => void;

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

export function createModelRelay(options: { gateway: ModelRelayGateway | null; logger: Logger }): ModelRelay {
  const root = options.gateway ? new URL(options.gateway.baseUrl.replace(/\/+$/, "").replace(/\/v1$/, "") + "/") : null;
  const transport = root?.protocol === "https:" ? https : http;

  return (req, res, authenticate) => {
    let url: URL;
    try {
      url = new URL(req.url ?? "/", "http://relay");
    } catch {
      return refuse(res, 400, "bad_request", "the request target is not a path");
    }
    if (!ALLOWED.some((allowed) => allowed.method === req.method && allowed.path === url.pathname)) {
      return refuse(res, 404, "not_found", `${req.method} ${url.pathname} is not a model endpoint the relay serves`);
    }
    const presented = bearer(req);
    if (!presented || !authenticate(presented)) {
      return refuse(res, 401, "invalid_api_key", "the sandbox's model token is missing or wrong (use BERTH_MODEL_API_KEY)");
    }
    if (!root || !options.gateway) {
      return refuse(res, 503, "no_gateway", "this Berth has no LiteLLM Gateway configured (LITELLM_BASE_URL), so the model relay has nowhere to send requests");
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
  };
}

function bearer(req: http.IncomingMessage): string | null {
  const header = req.headers.authorization;
  if (header?.toLowerCase().startsWith("bearer ")) return header.slice(7).trim();
  const apiKey = req.headers["x-api-key"];
  return typeof apiKey === "string" ? apiKey : null;
}

function refuse(res: http.ServerResponse, status: number, code: string, message: string): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify({ error: { message, type: "berth_model_relay", code } }));
}
