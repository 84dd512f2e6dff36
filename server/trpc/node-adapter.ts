import type { IncomingMessage, ServerResponse } from "node:http";
import { incomingMessageToRequest } from "@trpc/server/adapters/node-http";
import { limitedBodyOf, principalLookedUpFor } from "../body-limit";
import type { Principal } from "../services/principal";
import { TRPC_ENDPOINT, type TrpcRequestHandler } from "./handler";

/** Whether a request path is served by tRPC (`/api/trpc` and everything under it). */
export function isTrpcPath(path: string): boolean {
  return path === TRPC_ENDPOINT || path.startsWith(`${TRPC_ENDPOINT}/`);
}

/**
 * The fetch Request tRPC reads. Its body is the one server/body-limit.ts counts against the caller's
 * limit (tRPC's own adapter reads a body whole, unbounded, before anything checks who sends it); URL,
 * headers and the abort signal are as tRPC's adapter makes them.
 */
function toFetchRequest(req: IncomingMessage, res: ServerResponse): Request {
  if (req.method === "GET" || req.method === "HEAD") return incomingMessageToRequest(req, res, { maxBodySize: null });
  const abort = new AbortController();
  const onClose = () => {
    if (!res.writableEnded) abort.abort();
  };
  res.once("close", onClose);
  const headers = new Headers();
  for (const [key, value] of Object.entries(req.headers)) {
    if (Array.isArray(value)) for (const item of value) headers.append(key, item);
    else if (value !== undefined) headers.append(key, value);
  }
  const base = `http://${req.headers.host ?? "localhost"}`;
  const url = URL.canParse(req.url ?? "/", base) ? new URL(req.url ?? "/", base) : new URL(req.url ?? "/", "http://localhost");
  return new Request(url, {
    method: req.method,
    headers,
    signal: abort.signal,
    body: limitedBodyOf(req) ?? null,
    duplex: "half",
  } as RequestInit);
}

/**
 * Serves tRPC straight from Node's request and response (Express answers before Remix), through the
 * same fetch-API handler the Remix resource route delegates to; see docs/decisions/013-accept-hot-path.md. Bodies
 * are streamed, so `sessions.follow` (SSE) works; a client that disconnects aborts the Request's
 * signal, which ends the stream.
 */
export async function serveTrpc(handle: TrpcRequestHandler, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const request = toFetchRequest(req, res);
  const principal = principalLookedUpFor(req) as Promise<Principal | null> | undefined;
  const response = await handle(request, { peerAddress: req.socket.remoteAddress ?? null, principal });
  // The body passed its limit while tRPC read it: the 413 is already sent (server/body-limit.ts).
  if (res.headersSent) {
    void response.body?.cancel().catch(() => {});
    return;
  }
  res.statusCode = response.status;
  for (const [key, value] of response.headers) {
    if (key !== "set-cookie") res.setHeader(key, value);
  }
  const cookies = response.headers.getSetCookie();
  if (cookies.length > 0) res.setHeader("set-cookie", cookies);
  if (!response.body) {
    res.end();
    return;
  }
  // A plain JSON answer goes out whole with its length (one write, no chunked framing); streams
  // (SSE, JSON lines) are relayed as they come.
  if (response.headers.get("content-type")?.startsWith("application/json") && !response.headers.has("transfer-encoding")) {
    const body = Buffer.from(await response.arrayBuffer());
    res.setHeader("content-length", body.length);
    res.end(body);
    return;
  }
  const reader = response.body.getReader();
  const stop = () => void reader.cancel().catch(() => {});
  res.once("close", stop);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done || res.destroyed) break;
      if (!res.write(value)) await new Promise<void>((resolve) => {
        const settle = () => {
          res.off("drain", settle);
          res.off("close", settle);
          resolve();
        };
        res.once("drain", settle);
        res.once("close", settle);
      });
    }
  } finally {
    res.off("close", stop);
    res.end();
  }
}
