import http from "node:http";
import type { AddressInfo } from "node:net";
import { createRequestHandler } from "@remix-run/express";
import type { ServerBuild } from "@remix-run/node";
import express from "express";
import type { Logger } from "./logger";
import type { BerthLoadContext } from "./load-context";
import type { Services } from "./services";
import { routeLabel } from "./metrics";
import { isTrpcPath, serveTrpc } from "./trpc/node-adapter";
import { createHash, timingSafeEqual } from "node:crypto";

function safeEqual(given: string, expected: string): boolean {
  const digest = (value: string) => createHash("sha256").update(value).digest();
  return timingSafeEqual(digest(given), digest(expected));
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
  let draining = false;
  app.locals.setDraining = (value: boolean) => (draining = value);

  const metrics = options.services.metrics;
  app.use((req, res, next) => {
    const end = metrics.httpDuration.startTimer();
    res.once("finish", () => end({ method: req.method, route: routeLabel(req.path), status: String(res.statusCode) }));
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
      res.status(503).json({ error: "metrics could not be collected (is the database reachable?)" });
    }
  });

  app.get("/healthz", (_req, res) => {
    res.json({ ok: true });
  });
  app.get("/readyz", async (_req, res) => {
    const readiness = await options.services.health.readiness();
    const ready = readiness.ready && !draining;
    res.status(ready ? 200 : 503).json({ ...readiness, ready, draining });
  });

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
  app.all(
    "*",
    createRequestHandler({
      build: options.remixBuild,
      getLoadContext: () => options.loadContext,
    }),
  );
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
