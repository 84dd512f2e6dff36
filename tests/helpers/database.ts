import { randomBytes } from "node:crypto";
import type postgres from "postgres";
import { connectPostgres } from "../../db/postgres-url";
import { inject } from "vitest";

export type TestDatabase = { url: string; name: string; drop(): Promise<void> };

/** A fresh, migrated database of its own, cloned from the run's template in a few milliseconds. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const adminUrl = inject("postgresAdminUrl");
  const template = inject("templateDatabase");
  const name = `berth_t_${randomBytes(6).toString("hex")}`;
  const admin = connectPostgres(adminUrl, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database ${name} template ${template}`);
  } finally {
    await admin.end({ timeout: 5 });
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    name,
    async drop() {
      const sql = connectPostgres(adminUrl, { max: 1, onnotice: () => {} });
      try {
        await sql.unsafe(`drop database if exists ${name} with (force)`);
      } finally {
        await sql.end({ timeout: 5 });
      }
    },
  };
}

/**
 * Terminates this database's connections that wait on LISTEN, as a database restart or a network cut
 * would (postgres.js and graphile-worker then listen again on new ones). Returns their application names.
 */
export async function dropListeningConnections(sql: postgres.Sql): Promise<string[]> {
  const rows = await sql<{ pid: number; application_name: string }[]>`
    select pid, application_name from pg_stat_activity
    where datname = current_database() and pid <> pg_backend_pid() and state = 'idle' and query ilike 'listen %'`;
  for (const { pid } of rows) await sql`select pg_terminate_backend(${pid})`;
  return rows.map((row) => row.application_name).sort();
}
