import { randomBytes } from "node:crypto";
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
