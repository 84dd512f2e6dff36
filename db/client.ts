import { drizzle, type PostgresJsDatabase } from "drizzle-orm/postgres-js";
import type postgres from "postgres";
import { connectPostgres } from "./postgres-url";
import * as schema from "./schema";

export type Database = PostgresJsDatabase<typeof schema>;
/** A database handle or an open transaction on it: services accept either. */
export type DatabaseOrTransaction = Database | Parameters<Parameters<Database["transaction"]>[0]>[0];

export type DatabaseClient = {
  db: Database;
  sql: postgres.Sql;
  close(): Promise<void>;
};

/** The service pool. A Unix socket is named in the URL (`?host=<dir>`, db/postgres-url.ts). */
export function connectDatabase(url: string, options: { max: number; applicationName?: string }): DatabaseClient {
  const sql = connectPostgres(url, {
    max: options.max,
    onnotice: () => {},
    connect_timeout: 5,
    // Reconnect quickly after an outage (the driver's default waits up to 20 s between attempts,
    // and a call queued on such a connection waits with it).
    backoff: (attempts: number) => Math.min(0.05 * 2 ** attempts, 2),
    // A dead database must fail calls quickly instead of queueing them forever.
    idle_timeout: 60,
    connection: { application_name: options.applicationName ?? "berth" },
  });
  const db = drizzle(sql, { schema });
  return { db, sql, close: () => sql.end({ timeout: 5 }) };
}
