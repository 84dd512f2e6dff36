import type postgres from "postgres";

/**
 * The connections one Berth process may open at most: the service pool and its listening connection,
 * the job runner's pool and the worker-liveness connection.
 */
export function connectionsWanted(pools: { servicePool: number; jobRunnerPool: number }): number {
  return pools.servicePool + 1 + pools.jobRunnerPool + 1;
}

/**
 * Says what is short when the server cannot give this process the connections it may open: fewer
 * allowed for ordinary roles (max_connections minus the reserved ones) than `wanted`, or fewer left
 * beside those already open (other replicas, other programs). Null when there is room.
 */
export async function connectionShortfall(sql: postgres.Sql, wanted: number): Promise<string | null> {
  const [row] = await sql<{ allowed: number; open: number }[]>`
    select current_setting('max_connections')::int
             - current_setting('superuser_reserved_connections')::int
             - coalesce(current_setting('reserved_connections', true)::int, 0) as allowed,
           (select count(*)::int from pg_stat_activity where backend_type = 'client backend') as open`;
  const { allowed, open } = row!;
  if (wanted <= allowed - open) return null;
  return (
    `this process may open up to ${wanted} Postgres connections, and the server allows ${allowed} (max_connections minus reserved ones), ${open} of them open now: ` +
    "under load some calls will fail with too_many_connections; raise max_connections or lower BERTH_DATABASE_POOL_SIZE and BERTH_WORKER_CONCURRENCY (every replica counts)"
  );
}
