import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type postgres from "postgres";
import { createTestDatabase, type TestDatabase } from "../tests/helpers/database";
import { connectionShortfall, connectionsWanted } from "./connection-budget";
import { connectPostgres } from "./postgres-url";

describe("connection budget", () => {
  let database: TestDatabase;
  let sql: postgres.Sql;
  beforeAll(async () => {
    database = await createTestDatabase();
    sql = connectPostgres(database.url, { max: 1, onnotice: () => {} });
  });
  afterAll(async () => {
    await sql?.end();
    await database?.drop();
  });

  it("counts the service pool, the job runner's pool and the process's own connections", () => {
    expect(connectionsWanted({ servicePool: 20, jobRunnerPool: 34 })).toBe(56);
  });

  it("says nothing when the server has room, and names the figures and the settings when it has not", async () => {
    const [settings] = await sql<{ max: number; reserved: number }[]>`select current_setting('max_connections')::int as max, current_setting('superuser_reserved_connections')::int as reserved`;
    expect(await connectionShortfall(sql, 1)).toBeNull();
    const message = await connectionShortfall(sql, settings!.max);
    expect(message).toContain(`may open up to ${settings!.max} Postgres connections`);
    expect(message).toMatch(/the server allows \d+ .*, \d+ of them open now/);
    expect(message).toContain("BERTH_WORKER_CONCURRENCY");
  });
});
