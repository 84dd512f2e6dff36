import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { drizzle } from "drizzle-orm/postgres-js";
import { migrate } from "drizzle-orm/postgres-js/migrator";
import { Logger as WorkerLogger, runMigrations as runWorkerMigrations } from "graphile-worker";
import type postgres from "postgres";
import { connectPostgres } from "./postgres-url";

/** Next to this file in the source tree; copied next to the bundle by bin/build-server.mjs. */
export const MIGRATIONS_FOLDER = fileURLToPath(new URL("./migrations", import.meta.url));

/** Any fixed 32-bit number unique to Berth; serialises migrations across replicas starting at once. */
const MIGRATION_LOCK_KEY = 0x4265_7274;

const silentWorkerLogger = new WorkerLogger(() => () => {});

/**
 * Applies Berth's schema migrations and graphile-worker's own, under an advisory lock so that
 * replicas starting together do not race. Safe to run on every start.
 */
export async function migrateDatabase(databaseUrl: string, migrationsFolder = MIGRATIONS_FOLDER): Promise<void> {
  const sql = connectPostgres(databaseUrl, { max: 1, onnotice: () => {}, connect_timeout: 10 });
  try {
    await sql`select pg_advisory_lock(${MIGRATION_LOCK_KEY})`;
    try {
      await migrate(drizzle(sql), { migrationsFolder });
      await runWorkerMigrations({ connectionString: databaseUrl, logger: silentWorkerLogger });
    } finally {
      await sql`select pg_advisory_unlock(${MIGRATION_LOCK_KEY})`;
    }
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/** How many migrations this build ships (from drizzle-kit's journal). */
export function shippedMigrationCount(migrationsFolder = MIGRATIONS_FOLDER): number {
  const journal = JSON.parse(readFileSync(path.join(migrationsFolder, "meta", "_journal.json"), "utf8")) as {
    entries: unknown[];
  };
  return journal.entries.length;
}

/** How many of this build's migrations the database has not applied yet (for /readyz). */
export async function pendingMigrationCount(sql: postgres.Sql, shipped: number): Promise<number> {
  const rows = await sql<{ count: number }[]>`select count(*)::int as count from drizzle.__drizzle_migrations`;
  return Math.max(0, shipped - (rows[0]?.count ?? 0));
}
