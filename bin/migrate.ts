// `npm run migrate`: applies migrations to DATABASE_URL (or the embedded database) and exits.
import { loadConfig, ConfigError } from "../server/config";
import { createLogger } from "../server/logger";
import { ensureApplicationDatabase, startEmbeddedPostgres } from "../db/embedded";
import { migrateDatabase } from "../db/migrate";

try {
  const config = loadConfig(process.env);
  const logger = createLogger(config.logLevel);
  if (config.databaseUrl) {
    await migrateDatabase(config.databaseUrl);
  } else {
    const embedded = await startEmbeddedPostgres({ dataDir: config.dataDir, logger });
    try {
      await ensureApplicationDatabase(embedded.url);
      await migrateDatabase(embedded.url);
    } finally {
      await embedded.stop();
    }
  }
  console.log("migrations applied");
} catch (error) {
  console.error(`berth migrate: ${error instanceof ConfigError || error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
}
