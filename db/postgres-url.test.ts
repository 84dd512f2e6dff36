import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../tests/helpers/database";
import { connectDatabase } from "./client";
import { postgresTarget } from "./postgres-url";

describe("postgresTarget", () => {
  it("turns a socket directory in ?host= into postgres.js's socket path, keeping the rest of the URL", () => {
    expect(postgresTarget("postgres://berth:pw@localhost:5433/berth?host=/var/run/postgresql/&sslmode=disable")).toEqual({
      url: "postgres://berth:pw@localhost:5433/berth?sslmode=disable",
      socketPath: "/var/run/postgresql/.s.PGSQL.5433",
    });
    expect(postgresTarget("postgres:///berth?host=%2Ftmp%2Fpg").socketPath).toBe("/tmp/pg/.s.PGSQL.5432");
  });

  it("passes any other URL on as it is", () => {
    const url = "postgres://berth:pw@db.internal:5432/berth?sslmode=require";
    expect(postgresTarget(url)).toEqual({ url, socketPath: null });
  });

  it("refuses a host parameter that is not a directory", () => {
    expect(() => postgresTarget("postgres://berth@localhost/berth?host=db2")).toThrow("must be a Unix socket directory");
  });
});

// The embedded test server listens on a socket with the URL's credentials; a DATABASE_URL server's
// local connections follow its own pg_hba.conf (peer authentication on Debian), which is not ours.
describe.skipIf(Boolean(process.env.DATABASE_URL))("a database URL naming the socket directory", () => {
  let database: TestDatabase;
  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    await database?.drop();
  });

  it("reaches the server over its Unix socket", async () => {
    const overTcp = connectDatabase(database.url, { max: 1 });
    const [settings] = await overTcp.sql<{ dirs: string; address: string | null }[]>`
      select current_setting('unix_socket_directories') as dirs, inet_server_addr()::text as address`;
    await overTcp.close();
    expect(settings!.address).not.toBeNull();
    const socketDir = inject("postgresSocketDir") ?? settings!.dirs.split(",")[0]!.trim();
    expect(socketDir).toMatch(/^\//);

    const url = new URL(database.url);
    url.searchParams.set("host", socketDir);
    const overSocket = connectDatabase(url.toString(), { max: 1 });
    try {
      const [row] = await overSocket.sql<{ database: string; address: string | null }[]>`select current_database() as database, inet_server_addr()::text as address`;
      // inet_server_addr() is null on a Unix-socket connection.
      expect(row).toEqual({ database: database.name, address: null });
    } finally {
      await overSocket.close();
    }
  });
});
