import type { IncomingMessage, ServerResponse } from "node:http";
import { incomingMessageToRequest } from "@trpc/server/adapters/node-http";
import { TRPC_ENDPOINT, type TrpcRequestHandler } from "./handler";

/** Whether a request path is served by tRPC (`/api/trpc` and everything under it). */
export function isTrpcPath(path: string): boolean {
  return path === TRPC_ENDPOINT || path.startsWith(`${TRPC_ENDPOINT}/`);
}

/**
 * Serves tRPC straight from Node's request and response (Express answers before Remix), through the
 * same fetch-API handler the Remix resource route delegates to; see docs/decisions/013-accept-hot-path.md. Bodies
 * are streamed, so `sessions.follow` (SSE) works; a client that disconnects aborts the Request's
 * signal, which ends the stream.
 */
export async function serveTrpc(handle: TrpcRequestHandler, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const request = incomingMessageToRequest(req, res, { maxBodySize: null });
  const response = await handle(request, { peerAddress: req.socket.remoteAddress ?? null });
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
