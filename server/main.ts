import type { ServerBuild } from "@remix-run/node";
import type express from "express";
import { connectDatabase, type DatabaseClient } from "../db/client";
import { connectionShortfall, connectionsWanted } from "../db/connection-budget";
import { ensureApplicationDatabase, startEmbeddedPostgres, type EmbeddedPostgres } from "../db/embedded";
import { migrateDatabase, shippedMigrationCount } from "../db/migrate";
import type { BerthTask } from "../jobs/registry";
import { jobRunnerPoolSize, startJobRunner, type JobRunner } from "../jobs/runner";
import type { Config } from "./config";
import { startHttpServer, type HttpServer } from "./http";
import type { Logger } from "./logger";
import { createServices, type Services } from "./services";
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { LocalSandboxBackend } from "./sandbox/local";
import type { SandboxBackend } from "./sandbox/port";
import { loadOrCreateSecretKey, SecretBox } from "./services/secret-box";
import { ensureBootstrapAdmin, type BootstrapResult } from "./services/bootstrap";
import { createTrpcCaller, createTrpcHandler } from "./trpc/handler";
import { createGatewayClient } from "./gateway/client";
import { createDemoModel, DEMO_MODEL } from "./gateway/demo";
import type { ModelResolver } from "./harness/builtin";
import { findClaudeCodeBinary, findCodexBinary, findOpencodeBinary } from "./harness/binaries";
import { EventBus } from "./services/event-bus";
import { AddressRules } from "./egress/addresses";
import { EgressCa, fileCaStore } from "./egress/ca";
import { EgressLog } from "./egress/egress-log";
import { EgressGateway } from "./egress/gateway";
import { createGatewayTokens } from "./egress/tokens";
import { writeTrustBundle } from "./egress/trust-bundle";
import { createModelRelay } from "./sandbox/model-relay";
import { EgressDirectory } from "./services/egress-directory";
import { BerthMetrics } from "./metrics";

/**
 * The composition root: the only place that wires concrete pieces together. Everything a Berth
 * process runs (database, migrations, services, job runner, HTTP) starts here, in order, and stops
 * here, in reverse.
 */
export type BerthOptions = {
  config: Config;
  logger: Logger;
  remixBuild: ServerBuild | (() => Promise<ServerBuild>);
  clientAssetsDir?: string;
  devMiddleware?: express.RequestHandler;
  extraTasks?: BerthTask[];
  /** The bundled sandbox daemon (build/sandboxd.js). */
  daemonScript: string;
};

export type RunningBerth = {
  url: string;
  port: number;
  databaseUrl: string;
  services: Services;
  bootstrap: BootstrapResult;
  /** Graceful shutdown; resolves when everything is stopped. Safe to call twice. */
  stop(): Promise<void>;
};

export async function startBerth(options: BerthOptions): Promise<RunningBerth> {
  const { config, logger } = options;
  const cleanups: Array<() => Promise<void>> = [];
  const cleanUp = async () => {
    for (const cleanup of cleanups.splice(0).reverse()) {
      await cleanup().catch((error: unknown) => logger.error({ err: error }, "error during shutdown"));
    }
  };

  try {
    let databaseUrl = config.databaseUrl;
    if (!databaseUrl) {
      const embedded: EmbeddedPostgres = await startEmbeddedPostgres({ dataDir: config.dataDir, logger });
      cleanups.push(() => embedded.stop());
      databaseUrl = embedded.socketUrl ?? embedded.url;
      await ensureApplicationDatabase(databaseUrl);
      logger.info({ port: embedded.port, pid: embedded.pid }, "embedded Postgres running");
    }

    await migrateDatabase(databaseUrl);
    const database: DatabaseClient = connectDatabase(databaseUrl, { max: config.databasePoolSize });
    cleanups.push(() => database.close());
    const wanted = connectionsWanted({ servicePool: config.databasePoolSize, jobRunnerPool: jobRunnerPoolSize(config.workerConcurrency) });
    const shortfall = await connectionShortfall(database.sql, wanted).catch(() => null);
    if (shortfall) logger.warn(shortfall);

    const secretKey = loadOrCreateSecretKey(config.secretKey, config.dataDir);
    const secretBox = new SecretBox(secretKey);
    const metrics = new BerthMetrics(database.sql);
    const egress = await startEgressGateway({ config, db: database.db, secretKey, secretBox, metrics, logger: logger.child({ component: "egress" }) });
    cleanups.push(() => egress.gateway.close());
    const sandboxBackend = await createSandboxBackend(config, secretKey, options.daemonScript, egress, logger);
    cleanups.push(() => sandboxBackend.shutdown());

    const bus = new EventBus(database.sql, logger.child({ component: "event-bus" }));
    await bus.start();
    cleanups.push(() => bus.stop());

    // Services are built before the runner exists, but ask it whether it runs.
    const worker: { runner?: JobRunner } = {};
    const services = createServices({
      db: database.db,
      sql: database.sql,
      databaseUrl,
      config,
      logger,
      secretBox,
      sandboxBackend,
      shippedMigrations: shippedMigrationCount(),
      isWorkerRunning: () => worker.runner?.isRunning() ?? false,
      bus,
      models: createModelResolver(config, logger, metrics),
      metrics,
    });

    const bootstrap = await ensureBootstrapAdmin(database.db, config, logger);

    await services.workerLiveness.register();
    cleanups.push(() => services.workerLiveness.unregister());
    // The embedded database is this process's own: no other process is alive on it, so a row left
    // by a killed one is dead even though the restarted database dropped every lock.
    await services.workerLiveness.releaseLocksOfDeadWorkers(config.databaseUrl ? {} : { restartGraceSeconds: 0 });

    // Sandboxes of a previous run (their jails died with it) are reconciled before any job resumes a
    // turn in them: their sessions go to `reconnecting` and get a new generation.
    await services.sandboxes.reconcile();

    const runner = await startJobRunner({
      databaseUrl,
      concurrency: config.workerConcurrency,
      services,
      logger,
      shutdownAbortMs: Math.max(1_000, Math.floor(config.shutdownTimeoutMs / 2)),
      extraTasks: options.extraTasks,
      onWorkerCreated: (id) => services.workerLiveness.recordWorkerId(id),
    });
    worker.runner = runner;
    cleanups.push(() => runner.stop());
    services.workerLiveness.startWatchdog(() => runner.runningJobIds());


    const httpServer: HttpServer = await startHttpServer({
      host: config.host,
      port: config.port,
      services,
      logger,
      remixBuild: options.remixBuild,
      clientAssetsDir: options.clientAssetsDir,
      devMiddleware: options.devMiddleware,
      loadContext: { handleTrpc: createTrpcHandler(services, logger, { clientAddress: { header: config.clientAddressHeader, trustedProxies: config.trustedProxies } }), trpcCaller: createTrpcCaller(services) },
    });
    let stopping: Promise<void> | undefined;
    return {
      url: `http://127.0.0.1:${httpServer.port}`,
      port: httpServer.port,
      databaseUrl,
      services,
      bootstrap,
      stop() {
        stopping ??= (async () => {
          logger.info("shutting down");
          // No new requests; open ones may finish while running jobs wind down.
          const closing = httpServer.close();
          // From here on the runner's view of running jobs goes stale (a job still running when the
          // runner stops is no longer listed), so the watchdog would release jobs whose code still
          // runs. What the shutdown leaves locked is released by unregister, at the very end.
          services.workerLiveness.stopWatchdog();
          await runner.stop();
          await services.workerLiveness
            .resumeInterruptedJobs(runner.interruptedJobIds())
            .catch((error: unknown) => logger.warn({ err: error }, "could not reschedule the jobs the shutdown interrupted; they run after their retry delay"));
          await sandboxBackend.shutdown();
          await Promise.race([closing, new Promise((resolve) => setTimeout(resolve, 1_000))]);
          httpServer.forceClose();
          await cleanUp();
          logger.info("stopped");
        })();
        return stopping;
      },
    };
  } catch (error) {
    await cleanUp();
    throw error;
  }
}

function createModelResolver(config: Config, logger: Logger, metrics: BerthMetrics): ModelResolver {
  const demo = createDemoModel();
  const gateway = config.gateway
    ? metrics.instrumentGateway(createGatewayClient({
        baseUrl: config.gateway.baseUrl,
        apiKey: config.gateway.apiKey,
        timeoutMs: config.gatewayTimeouts.requestMs,
        idleTimeoutMs: config.gatewayTimeouts.idleMs,
        maxRetries: config.gatewayTimeouts.maxRetries,
        logger: logger.child({ component: "gateway" }),
      }))
    : null;
  return (model) => {
    if (model === DEMO_MODEL) return demo;
    return gateway ?? { unavailable: `the model "${model}" needs the LiteLLM Gateway, and LITELLM_BASE_URL is not set (only the offline "${DEMO_MODEL}" model works without it)` };
  };
}

/** Harness binaries the local backend binds into jails. */
function localSandboxTools(config: Config, logger: Logger): Record<string, string> {
  const harnesses = [
    { tool: "opencode", harness: "opencode", path: findOpencodeBinary(config.opencodeBinary), source: "BERTH_OPENCODE_BINARY or the opencode-linux-x64 packages" },
    { tool: "codex", harness: "codex", path: findCodexBinary(config.codexBinary), source: "BERTH_CODEX_BINARY or the @openai/codex package" },
    { tool: "claude", harness: "claude-code", path: findClaudeCodeBinary(config.claudeCodeBinary), source: "BERTH_CLAUDE_CODE_BINARY or the @anthropic-ai/claude-code package" },
  ];
  const tools: Record<string, string> = {};
  for (const { tool, harness, path, source } of harnesses) {
    if (path) tools[tool] = path;
    else logger.warn({ tool }, `no ${tool} binary found (${source}): agents on the ${harness} harness will fail`);
  }
  return tools;
}

/**
 * The egress gateway with everything it needs: the sandboxes' policies and brokered secrets from
 * the database, the installation's CA, the address rules, the model relay, and the event log its
 * records go to.
 */
async function startEgressGateway(input: { config: Config; db: DatabaseClient["db"]; secretKey: Buffer; secretBox: SecretBox; metrics: BerthMetrics; logger: Logger }) {
  const { config, logger } = input;
  const directory = new EgressDirectory(input.db, input.secretBox);
  // In a cluster every replica must present the same CA: it lives in a Secret there.
  const caStore = config.sandboxBackend === "kubernetes" ? (await import("../k8s/index")).kubernetesCaStore(config, logger) : fileCaStore(config.dataDir);
  const ca = await EgressCa.open(caStore);
  const trustBundlePath = await writeTrustBundle(config.dataDir, ca.certificatePem);
  if (config.egress.resolveMap.size > 0) {
    logger.warn({ hosts: [...config.egress.resolveMap.keys()] }, "BERTH_EGRESS_RESOLVE is set: these names bypass DNS and the address rules (for tests only)");
  }
  const tokens = createGatewayTokens(input.secretKey);
  const gateway = new EgressGateway({
    directory,
    tokens,
    addressRules: new AddressRules({ allowPrivate: config.egress.allowPrivate, ownAddresses: AddressRules.ownHostAddresses() }),
    resolveMap: config.egress.resolveMap,
    ca: async () => ca,
    modelRelay: createModelRelay({ gateway: config.gateway ?? null, logger }),
    log: new EgressLog((sessionId, events) => directory.record(sessionId, events), { windowMs: 1_000, logger, metrics: input.metrics }),
    metrics: input.metrics,
    logger,
    ...(config.egress.extraCaFile ? { extraUpstreamCa: readFileSync(config.egress.extraCaFile, "utf8") } : {}),
  });
  if (config.sandboxBackend === "kubernetes") {
    // Sandbox pods reach the gateway over the network (a NetworkPolicy makes it their only egress).
    const listener = await gateway.listenTcp(config.egress.port, config.host);
    logger.info({ port: listener.port }, "egress gateway listening for sandbox pods");
  }
  return { gateway, tokens, ca, trustBundlePath };
}

type StartedEgress = Awaited<ReturnType<typeof startEgressGateway>>;

async function createSandboxBackend(config: Config, secretKey: Buffer, daemonScript: string, egress: StartedEgress, logger: Logger): Promise<SandboxBackend> {
  // Derived, not stored: any process holding the secret key can reach a sandbox by its name.
  const tokenFor = (name: string) => createHmac("sha256", secretKey).update(`sandbox-daemon:${name}`).digest("base64url");
  if (config.sandboxBackend === "kubernetes") {
    // Loaded only when used: the local backend never pays for the Kubernetes client.
    const { createKubernetesBackend } = await import("../k8s/index");
    return createKubernetesBackend(config, tokenFor, { address: config.egress.podAddress, tokenFor: (name) => egress.tokens.issue(name), caPem: egress.ca.certificatePem }, logger);
  }
  return LocalSandboxBackend.create({
    dataDir: config.dataDir,
    runtimePath: process.execPath,
    daemonScript,
    warmPoolSize: config.warmPoolSize,
    unsafeNoIsolation: config.unsafeNoSandboxIsolation,
    egress: {
      listenForSandbox: (socketPath, name) => egress.gateway.listenForSandbox(socketPath, name),
      tokenFor: (name) => egress.tokens.issue(name),
      caPem: egress.ca.certificatePem,
      trustBundlePath: egress.trustBundlePath,
    },
    tools: localSandboxTools(config, logger),
    tokenFor,
    logger,
  });
}
