import http from "node:http";
import type { AddressInfo } from "node:net";
import { createRequestHandler, writeReadableStreamToWritable, type ServerBuild } from "@remix-run/node";
import { bodyLimit, limitedBodyOf } from "./body-limit";
import { hasCredential, principalOf } from "./trpc/context";
import express from "express";
import type { Logger } from "./logger";
import type { BerthLoadContext } from "./load-context";
import type { Services } from "./services";
import { routeLabel } from "./metrics";
import { appRouter } from "./trpc/router";
import { isTrpcPath, serveTrpc } from "./trpc/node-adapter";
import { createHash, timingSafeEqual } from "node:crypto";

/** The API's procedure names (`agents.create`, ...): only these become metric labels. */
const PROCEDURES: ReadonlySet<string> = new Set(Object.keys(appRouter._def.procedures));

function safeEqual(given: string, expected: string): boolean {
  const digest = (value: string) => createHash("sha256").update(value).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

/** The status an error handed to Express asks for (http-errors' `status` / `statusCode`), 500 otherwise. */
function httpStatusOf(error: unknown): number {
  const candidate = (error as { status?: unknown; statusCode?: unknown } | null)?.status ?? (error as { statusCode?: unknown } | null)?.statusCode;
  return typeof candidate === "number" && candidate >= 400 && candidate <= 599 ? candidate : 500;
}

/**
 * Remix behind Express, as @remix-run/express serves it, except that a request's body is the one
 * server/body-limit.ts counts (the adapter would read the request itself, unbounded).
 */
function createRemixHandler(build: ServerBuild | (() => Promise<ServerBuild>), mode: "development" | "production") {
  const handleRequest = createRequestHandler(build, mode);
  return async (req: express.Request, res: express.Response, loadContext: BerthLoadContext) => {
    const abort = new AbortController();
    res.once("close", () => {
      if (!res.writableFinished) abort.abort();
    });
    const hostPort = Number.parseInt(req.get("host")?.split(":")[1] ?? "", 10);
    const url = new URL(`${req.protocol}://${req.hostname}${Number.isSafeInteger(hostPort) ? `:${hostPort}` : ""}${req.originalUrl}`);
    const body = req.method === "GET" || req.method === "HEAD" ? undefined : (limitedBodyOf(req) ?? null);
    const headers = new Headers();
    for (const [key, value] of Object.entries(req.headers)) {
      if (Array.isArray(value)) for (const item of value) headers.append(key, item);
      else if (value !== undefined) headers.set(key, value);
    }
    const request = new Request(url.href, { method: req.method, headers, signal: abort.signal, body, duplex: "half" } as RequestInit);
    const response = await handleRequest(request, loadContext);
    // The body passed its limit while an action read it: the 413 is already sent.
    if (res.headersSent) {
      void response.body?.cancel().catch(() => {});
      return;
    }
    res.statusMessage = response.statusText;
    res.status(response.status);
    for (const [key, value] of response.headers.entries()) res.append(key, value);
    if (/text\/event-stream/i.test(response.headers.get("content-type") ?? "")) res.flushHeaders();
    if (response.body) await writeReadableStreamToWritable(response.body, res);
    else res.end();
  };
}

export type HttpServerOptions = {
  services: Services;
  logger: Logger;
  loadContext: BerthLoadContext;
  /** The Remix server build, or (development) a function that loads the current one. */
  remixBuild: ServerBuild | (() => Promise<ServerBuild>);
  /** Folder of the built browser assets; absent in development, where Vite serves them. */
  clientAssetsDir?: string;
  /** Development only: Vite's middleware, in front of Remix. */
  devMiddleware?: express.RequestHandler;
};

export type HttpServer = {
  server: http.Server;
  port: number;
  /** Stops accepting connections; open requests may finish until `forceClose`. */
  close(): Promise<void>;
  forceClose(): void;
};

export function createHttpApp(options: HttpServerOptions): express.Express {
  const app = express();
  app.disable("x-powered-by");
  // Express's own error pages carry stack traces unless its env is "production", which it takes from
  // NODE_ENV (unset under `npm start`): only the development configuration shows them.
  const development = options.services.config.nodeEnv === "development";
  app.set("env", development ? "development" : "production");
  let draining = false;
  app.locals.setDraining = (value: boolean) => (draining = value);

  const metrics = options.services.metrics;
  app.use((req, res, next) => {
    const end = metrics.httpDuration.startTimer();
    res.once("finish", () => end({ method: req.method, route: routeLabel(req.path, PROCEDURES), status: String(res.statusCode) }));
    next();
  });
  app.get("/metrics", async (req, res) => {
    const token = options.services.config.metricsToken;
    if (token && !safeEqual(req.get("authorization") ?? "", `Bearer ${token}`)) {
      res.status(401).set("www-authenticate", "Bearer").json({ error: "GET /metrics needs the BERTH_METRICS_TOKEN bearer token" });
      return;
    }
    try {
      res.set("content-type", metrics.registry.contentType).send(await metrics.registry.metrics());
    } catch (error) {
      options.logger.warn({ err: error }, "metrics could not be collected");
      res.status(503).json({ error: "metrics could not be collected; the log says why" });
    }
  });

  app.get("/healthz", (_req, res) => {
    res.json({ ok: true });
  });
  // Ready means "serves": a host without sandboxes is still ready (HealthService.readiness says why).
  app.get("/readyz", async (_req, res) => {
    const readiness = await options.services.health.readiness();
    const ready = readiness.ready && !draining;
    res.status(ready ? 200 : 503).json({ ...readiness, ready, draining });
  });

  // Request bodies are limited before anything reads them (server/body-limit.ts); tRPC and Remix read
  // them only through the counted stream this hands on.
  app.use(
    bodyLimit({
      maxBodyBytes: options.services.config.maxBodyBytes,
      hasCredential,
      authenticate: (headers) => principalOf(options.services, headers),
      isTrpcPath,
      logger: options.logger,
    }),
  );

  // tRPC is answered here, before Remix, with the same handler the resource route
  // app/routes/api.trpc.$.ts delegates to (kept as a fallback); see docs/decisions/013-accept-hot-path.md.
  const handleTrpc = options.loadContext.handleTrpc;
  app.use((req, res, next) => {
    if (!isTrpcPath(req.path)) return next();
    serveTrpc(handleTrpc, req, res).catch((error: unknown) => {
      options.logger.error({ err: error }, "tRPC request failed");
      if (!res.headersSent) res.status(500).json({ error: "internal error" });
      else res.destroy();
    });
  });

  if (options.devMiddleware) app.use(options.devMiddleware);
  if (options.clientAssetsDir) {
    app.use("/assets", express.static(`${options.clientAssetsDir}/assets`, { immutable: true, maxAge: "1y" }));
    app.use(express.static(options.clientAssetsDir, { maxAge: "1h" }));
  }
  // Not NODE_ENV (the Express adapter's default): Remix sends error messages and stacks in development mode only.
  const handleRemix = createRemixHandler(options.remixBuild, development ? "development" : "production");
  app.all("*", (req, res, next) => {
    handleRemix(req, res, options.loadContext).catch(next);
  });
  // Whatever reaches Express's error handling (a malformed URL, a failed Remix render): a short JSON
  // answer, never a stack trace; server faults are logged.
  app.use((error: unknown, req: express.Request, res: express.Response, next: express.NextFunction) => {
    const status = httpStatusOf(error);
    if (status >= 500) options.logger.error({ err: error, method: req.method, path: req.path }, "request failed");
    if (res.headersSent) return next(error);
    const exposed = status < 500 && error instanceof Error && (error as { expose?: unknown }).expose !== false;
    res.status(status).json({ error: exposed ? error.message : status >= 500 ? "internal error" : "bad request", ...(development && error instanceof Error ? { stack: error.stack } : {}) });
  });
  return app;
}

export async function startHttpServer(options: HttpServerOptions & { host: string; port: number }): Promise<HttpServer> {
  const app = createHttpApp(options);
  const server = http.createServer(app);
  // Slightly above typical load-balancer idle timeouts, so the balancer closes first.
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  options.logger.info({ host: options.host, port }, "listening");
  return {
    server,
    port,
    close() {
      (app.locals.setDraining as (value: boolean) => void)(true);
      return new Promise((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
    },
    forceClose() {
      server.closeAllConnections();
    },
  };
}
