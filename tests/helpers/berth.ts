import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import type { ServerBuild } from "@remix-run/node";
import { createTRPCClient, httpBatchLink } from "@trpc/client";
import superjson from "superjson";
import { loadConfig, type Config } from "../../server/config";
import { createLogger } from "../../server/logger";
import { startBerth, type RunningBerth } from "../../server/main";
import { createBerthClient } from "../../server/client";
import type { AppRouter } from "../../server/trpc/router";
import type { BerthTask } from "../../jobs/registry";
import { createTestDatabase, type TestDatabase } from "./database";

export const ROOT = path.resolve(import.meta.dirname, "../..");
const SERVER_BUILD = path.join(ROOT, "build/server/index.js");

export type TestBerth = RunningBerth & {
  database: TestDatabase;
  config: Config;
  /** Everything the process logged, as raw JSON lines (for tests that search the logs). */
  logs: () => string;
  client: (apiKey?: string) => ReturnType<typeof createTRPCClient<AppRouter>>;
  close(): Promise<void>;
};

/**
 * A whole Berth, in this test process, on its own database and data dir, listening on a free port:
 * the real composition root with the real built web app, job runner and HTTP server.
 */
export async function startTestBerth(
  options: { env?: Record<string, string>; extraTasks?: BerthTask[]; /** Default: the built build/sandboxd.js. */ daemonScript?: string } = {},
): Promise<TestBerth> {
  const database = await createTestDatabase();
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-test-data-"));
  const config = loadConfig({
    NODE_ENV: "test",
    PORT: "1",
    HOST: "127.0.0.1",
    DATABASE_URL: database.url,
    BERTH_DATA_DIR: dataDir,
    LOG_LEVEL: "debug",
    BERTH_WORKER_CONCURRENCY: "4",
    BERTH_DATABASE_POOL_SIZE: "5",
    BERTH_SHUTDOWN_TIMEOUT_MS: "4000",
    BERTH_WARM_POOL_SIZE: "0",
    ...options.env,
  });
  config.port = 0;
  let logText = "";
  const sink = new Writable({
    write(chunk, _encoding, callback) {
      logText += chunk.toString();
      callback();
    },
  });
  const logger = createLogger(config.logLevel, sink);
  const remixBuild = (await import(SERVER_BUILD)) as ServerBuild;
  const berth = await startBerth({
    config,
    logger,
    remixBuild,
    clientAssetsDir: path.join(ROOT, "build/client"),
    extraTasks: options.extraTasks,
    daemonScript: options.daemonScript ?? path.join(ROOT, "build/sandboxd.js"),
  });
  return {
    ...berth,
    database,
    config,
    logs: () => logText,
    client: (apiKey?: string) =>
      apiKey ? createBerthClient({ url: berth.url, apiKey }) : createTRPCClient<AppRouter>({
        links: [
          httpBatchLink({
            url: `${berth.url}/api/trpc`,
            transformer: superjson,
            headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
          }),
        ],
      }),
    async close() {
      await berth.stop();
      await database.drop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
