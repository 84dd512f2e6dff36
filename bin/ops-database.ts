import { existsSync } from "node:fs";
import path from "node:path";
import { ensureApplicationDatabase, startEmbeddedPostgres } from "../db/embedded";
import type { Config } from "../server/config";
import { createLogger } from "../server/logger";

/**
 * The database an ops script (backup, restore) works on: DATABASE_URL, or the embedded Postgres of
 * BERTH_DATA_DIR, started for the script's duration. The embedded one belongs to one process at a
 * time, so the Berth server using that data dir must be stopped first (the data dir lock says so).
 */
export async function withOpsDatabase<T>(
  config: Config,
  options: { purpose: string; mustExist: boolean },
  work: (databaseUrl: string) => Promise<T>,
): Promise<T> {
  if (config.databaseUrl) return work(config.databaseUrl);
  const pgDir = path.join(config.dataDir, "pg");
  if (options.mustExist && !existsSync(path.join(pgDir, "PG_VERSION"))) {
    throw new Error(`no embedded database in ${pgDir} (set DATABASE_URL, or BERTH_DATA_DIR to the data dir of the Berth to ${options.purpose})`);
  }
  // Its logs go to stderr at warn level: stdout is the script's own report.
  const logger = createLogger("warn", process.stderr);
  let embedded;
  try {
    embedded = await startEmbeddedPostgres({ dataDir: config.dataDir, logger });
  } catch (error) {
    const message = (error as Error).message;
    throw new Error(/Another Berth process/.test(message) ? `${message} (to ${options.purpose} the embedded database, stop the Berth server first)` : message);
  }
  try {
    await ensureApplicationDatabase(embedded.url);
    return await work(embedded.url);
  } finally {
    await embedded.stop();
  }
}
