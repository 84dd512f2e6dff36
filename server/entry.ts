import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { ServerBuild } from "@remix-run/node";
import { ConfigError, loadConfig, type Config } from "./config";
import { createLogger } from "./logger";
import { startBerth } from "./main";
import { exitOnSignals } from "./process";

/**
 * The process entry (`npm run serve`, the Docker image, Bun): reads the environment once, starts
 * Berth, and turns SIGTERM/SIGINT into a graceful shutdown with a bounded exit.
 */
function readConfig(): Config {
  try {
    return loadConfig(process.env);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`berth: ${error.message}\n`);
      process.exit(1);
    }
    throw error;
  }
}

/** build/main.js sits beside build/server; from the source tree the build is in ../build. */
function locateBuild(): { serverBuild: string; clientAssetsDir: string; daemonScript: string } {
  for (const base of ["./", "../build/"]) {
    const serverBuild = fileURLToPath(new URL(`${base}server/index.js`, import.meta.url));
    if (existsSync(serverBuild)) {
      return {
        serverBuild,
        clientAssetsDir: fileURLToPath(new URL(`${base}client`, import.meta.url)),
        daemonScript: fileURLToPath(new URL(`${base}sandboxd.js`, import.meta.url)),
      };
    }
  }
  process.stderr.write("berth: the web build is missing; run `npm run build` first\n");
  process.exit(1);
}

/**
 * A generated credential, for the operator at the terminal: written plainly to stderr, never through
 * the logger, so it is in no JSON log line (stdout), only in its 0600 file. The log says where the file is.
 */
function printOnce(label: string, value: string, file: string) {
  process.stderr.write(`\n  ${label}: ${value}\n  (shown once; also saved to ${file}, mode 0600)\n\n`);
  logger.info({ file }, `${label} generated: shown once on the terminal (stderr) and saved to ${file} (mode 0600)`);
}

const config = readConfig();
const logger = createLogger(config.logLevel);
// A library promise nobody awaited (graphile-worker 0.17 does not retry every connection error when
// it records a job's end) must not take the whole platform down during a database outage: log it.
// Work it left half-done is recovered by the liveness watchdog and the retried jobs.
process.on("unhandledRejection", (reason) => logger.error({ err: reason }, "unhandled promise rejection"));
const build = locateBuild();

try {
  const berth = await startBerth({
    config,
    logger,
    remixBuild: (await import(build.serverBuild)) as ServerBuild,
    clientAssetsDir: build.clientAssetsDir,
    daemonScript: build.daemonScript,
  });
  if (berth.bootstrap.generatedApiKey) printOnce("Admin API key", berth.bootstrap.generatedApiKey, berth.bootstrap.apiKeyFile);
  if (berth.bootstrap.generatedPassword) {
    printOnce(`Admin password for ${config.adminEmail}`, berth.bootstrap.generatedPassword, berth.bootstrap.passwordFile);
  }
  const url = `http://localhost:${berth.port}`;
  const password = config.adminPassword ? "the password is BERTH_ADMIN_PASSWORD" : `the password is in ${berth.bootstrap.passwordFile}`;
  // Every start, for the person at the terminal: where to go and how to sign in (never the password itself).
  process.stderr.write(`\n  Berth is ready: ${url}\n  Sign in as ${config.adminEmail}; ${password}.\n\n`);
  const sandboxes = berth.services.health.sandboxes();
  // Berth serves without sandboxes; the person at the terminal should not have to find out from a failed session.
  if (!sandboxes.available) process.stderr.write(`  Sandboxes are unavailable: ${sandboxes.reason}.\n  To fix: ${sandboxes.fix}\n\n`);
  logger.info({ url, adminEmail: config.adminEmail, ...(config.adminPassword ? {} : { passwordFile: berth.bootstrap.passwordFile }) }, "Berth is ready");

  exitOnSignals(berth, logger, config.shutdownTimeoutMs);
} catch (error) {
  logger.fatal({ err: error }, `Berth could not start: ${error instanceof Error ? error.message : String(error)}`);
  logger.flush();
  process.exitCode = 1;
  setTimeout(() => process.exit(1), 100).unref();
}
