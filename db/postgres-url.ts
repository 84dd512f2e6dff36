import postgres from "postgres";

/**
 * A libpq-style URL may name the server's Unix socket directory in `?host=` (e.g.
 * `postgres://berth@localhost/berth?host=/var/run/postgresql`), as psql, node-postgres and so graphile-worker
 * read it. postgres.js takes a socket only as its `path` option and would send `host` to the server
 * as a setting, which refuses it. This turns the first form into the second; any other URL is
 * passed on as it is.
 */
export function postgresTarget(url: string): { url: string; socketPath: string | null } {
  const parsed = new URL(url);
  const socketDir = parsed.searchParams.get("host");
  if (socketDir === null) return { url, socketPath: null };
  if (!socketDir.startsWith("/")) throw new Error(`the database URL's host parameter must be a Unix socket directory (an absolute path), not ${JSON.stringify(socketDir)}`);
  parsed.searchParams.delete("host");
  const port = parsed.port || "5432";
  return { url: parsed.toString(), socketPath: `${socketDir.replace(/\/+$/, "")}/.s.PGSQL.${port}` };
}

/** postgres.js on a database URL, a socket directory in `?host=` included (see postgresTarget). */
export function connectPostgres(url: string, options: postgres.Options<Record<string, postgres.PostgresType>> = {}): postgres.Sql {
  const target = postgresTarget(url);
  return postgres(target.url, { ...(target.socketPath ? { path: target.socketPath } : {}), ...options });
}
