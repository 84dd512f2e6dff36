import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { connectPostgres } from "../db/postgres-url";
import type { TestProject } from "vitest/node";
import { ensureApplicationDatabase, startEmbeddedPostgres, type EmbeddedPostgres } from "../db/embedded";
import { migrateDatabase } from "../db/migrate";
import { createLogger } from "../server/logger";

/**
 * One real Postgres for the whole run: DATABASE_URL when set (CI proves a plain Postgres works),
 * otherwise an embedded one in a temporary folder. A migrated template database is created once;
 * every test file clones its own database from it (tests/helpers/database.ts).
 * The web and server build is made once too, for the tests that start the built server.
 */
declare module "vitest" {
  export interface ProvidedContext {
    postgresAdminUrl: string;
    templateDatabase: string;
    /**
     * The embedded server's socket folder as this process reaches it (null with DATABASE_URL): the
     * server's own setting may name it as seen from a mount namespace of its own (db/embedded.ts).
     */
    postgresSocketDir: string | null;
  }
}

export default async function setup(project: TestProject) {
  const logger = createLogger("warn");
  let embedded: EmbeddedPostgres | undefined;
  let dataDir: string | undefined;
  let adminUrl = process.env.DATABASE_URL;
  if (!adminUrl) {
    dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-test-pg-"));
    embedded = await startEmbeddedPostgres({ dataDir, logger });
    adminUrl = embedded.url;
    await ensureApplicationDatabase(adminUrl);
  }

  const templateDatabase = `berth_template_${process.pid}`;
  const admin = connectPostgres(adminUrl, { max: 1, onnotice: () => {} });
  await admin.unsafe(`drop database if exists ${templateDatabase}`);
  await admin.unsafe(`create database ${templateDatabase}`);
  const templateUrl = new URL(adminUrl);
  templateUrl.pathname = `/${templateDatabase}`;
  await migrateDatabase(templateUrl.toString());

  if (process.env.BERTH_TEST_SKIP_BUILD !== "1") {
    execFileSync("npm", ["run", "build"], { stdio: ["ignore", "ignore", "inherit"] });
  }

  project.provide("postgresAdminUrl", adminUrl);
  project.provide("templateDatabase", templateDatabase);
  project.provide("postgresSocketDir", embedded?.socketUrl ? new URL(embedded.socketUrl).searchParams.get("host") : null);

  return async () => {
    await admin.unsafe(`drop database if exists ${templateDatabase} with (force)`).catch(() => {});
    await admin.end({ timeout: 5 });
    await embedded?.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  };
}
