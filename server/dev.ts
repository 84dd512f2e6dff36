// `npm run dev`: the same composition root, with Vite in middleware mode for HMR of the web app.
import type { ServerBuild } from "@remix-run/node";
import { createServer as createViteServer } from "vite";
import { ConfigError, loadConfig } from "./config";
import { createLogger } from "./logger";
import { startBerth } from "./main";
import { exitOnSignals } from "./process";

let config;
try {
  config = loadConfig({ LOG_LEVEL: "debug", ...process.env, NODE_ENV: "development" });
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  process.stderr.write(`berth: ${error.message}\n`);
  process.exit(1);
}
const logger = createLogger(config.logLevel);
const vite = await createViteServer({ server: { middlewareMode: true }, appType: "custom" });
const berth = await startBerth({
  config,
  logger,
  remixBuild: () => vite.ssrLoadModule("virtual:remix/server-build") as Promise<ServerBuild>,
  devMiddleware: vite.middlewares,
  daemonScript: new URL("../build/sandboxd.js", import.meta.url).pathname,
});
logger.info({ url: `http://localhost:${berth.port}` }, "Berth (development) is ready");
exitOnSignals(berth, logger, config.shutdownTimeoutMs);
