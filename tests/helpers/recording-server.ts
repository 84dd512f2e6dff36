import http from "node:http";
import type { AddressInfo } from "node:net";

/** A request as a stand-in server received it: the JSON body parsed, the raw text when not JSON. */
export type ReceivedRequest = { method: string; path: string; query: string; headers: http.IncomingHttpHeaders; body: unknown };

export type RecordingServer = {
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** Every request received, in order. */
  requests: ReceivedRequest[];
  /** Ends every open response (hung streams included) and stops listening. */
  close(): Promise<void>;
};

/**
 * The HTTP part of the model-gateway stand-ins: listens on 127.0.0.1, reads and records each request,
 * and gives the handler a signal that fires when the client hangs up or the server closes. A handler
 * that throws is a bug of the stand-in: `onCrash` answers it (and records it where a test looks).
 */
export async function startRecordingServer(
  handle: (request: ReceivedRequest, res: http.ServerResponse, signal: AbortSignal) => Promise<void>,
  onCrash: (res: http.ServerResponse, message: string) => void,
): Promise<RecordingServer> {
  const requests: ReceivedRequest[] = [];
  const live = new Set<AbortController>();
  const server = http.createServer((req, res) => {
    const controller = new AbortController();
    live.add(controller);
    res.on("close", () => {
      live.delete(controller);
      controller.abort();
    });
    res.on("error", () => {});
    receive(req)
      .then((request) => {
        requests.push(request);
        return handle(request, res, controller.signal);
      })
      .catch((error: unknown) => {
        if (!res.headersSent && !res.destroyed) onCrash(res, error instanceof Error ? error.message : String(error));
        else res.destroy();
      });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        for (const controller of live) controller.abort();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

async function receive(req: http.IncomingMessage): Promise<ReceivedRequest> {
  const text = await new Promise<string>((resolve, reject) => {
    const parts: Buffer[] = [];
    req.on("data", (part: Buffer) => parts.push(part));
    req.on("end", () => resolve(Buffer.concat(parts).toString("utf8")));
    req.on("error", reject);
  });
  let body: unknown = undefined;
  if (text !== "") {
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
  }
  const url = new URL(req.url ?? "/", "http://127.0.0.1");
  return { method: req.method ?? "", path: url.pathname, query: url.search, headers: req.headers, body };
}

/** Waits `ms`, or less when the signal fires. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
