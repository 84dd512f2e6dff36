import { hostname } from "node:os";
import type postgres from "postgres";
import type { Logger } from "../logger";

/** Advisory-lock class id for worker_instances rows (any fixed int, unique to this use). */
const LIVENESS_LOCK_CLASS = 0x4257;

/**
 * Lets every Berth process tell, exactly and at once, which graphile-worker locks belong to dead
 * processes, so a killed process never leaves jobs locked for graphile-worker's 4-hour timeout.
 *
 * Each process inserts a `worker_instances` row and holds a session advisory lock on its id on a
 * dedicated connection. When the process dies, Postgres drops the connection and the lock with it;
 * whoever next sweeps can take the lock, and so knows the row's workers are dead and unlocks their jobs.
 */
export class WorkerLiveness {
  private connection: postgres.ReservedSql | undefined;
  private instanceId: number | undefined;
  private readonly pendingWorkerIds: string[] = [];
  private flushing: Promise<void> = Promise.resolve();

  constructor(
    private readonly sql: postgres.Sql,
    private readonly logger: Logger,
    /** A lock held by a worker id that no process has registered is released after this long. */
    private readonly unknownLockGraceSeconds = 60,
  ) {}

  get id(): number | undefined {
    return this.instanceId;
  }

  async register(): Promise<void> {
    this.connection = await this.sql.reserve();
    const [row] = await this.connection<{ id: number }[]>`
      insert into worker_instances (hostname, pid) values (${hostname()}, ${process.pid}) returning id`;
    this.instanceId = row!.id;
    await this.connection`select pg_advisory_lock(${LIVENESS_LOCK_CLASS}, ${this.instanceId})`;
  }

  /** Called for each graphile-worker pool and worker id as it is created. */
  recordWorkerId(workerId: string): void {
    this.pendingWorkerIds.push(workerId);
    this.flushing = this.flushing.then(() => this.flush()).catch((error: unknown) => {
      this.logger.error({ err: error }, "could not record a worker id");
    });
  }

  private async flush(): Promise<void> {
    if (!this.connection || this.instanceId === undefined || this.pendingWorkerIds.length === 0) return;
    const ids = this.pendingWorkerIds.splice(0);
    await this.connection`
      update worker_instances set worker_ids = worker_ids || ${ids}::text[] where id = ${this.instanceId}`;
  }

  /**
   * Releases every job and queue lock held by a dead process. Returns the worker ids it unlocked.
   * Runs at start-up and from a cron job, so a replica that dies is swept by the survivors.
   */
  async releaseLocksOfDeadWorkers(): Promise<string[]> {
    await this.flushing;
    const released = await this.sql.begin(async (tx) => {
      const dead = await tx<{ worker_ids: string[] }[]>`
        delete from worker_instances
        where pg_try_advisory_xact_lock(${LIVENESS_LOCK_CLASS}, id)
        returning worker_ids`;
      const deadIds = dead.flatMap((row) => row.worker_ids);
      const unknown = await tx<{ locked_by: string }[]>`
        select distinct locked_by from graphile_worker.jobs
        where locked_by is not null
          and locked_at < now() - make_interval(secs => ${this.unknownLockGraceSeconds})
          and not exists (select 1 from worker_instances wi where jobs.locked_by = any(wi.worker_ids))`;
      const ids = [...new Set([...deadIds, ...unknown.map((row) => row.locked_by)])];
      if (ids.length > 0) await tx`select graphile_worker.force_unlock_workers(${ids}::text[])`;
      return ids;
    });
    if (released.length > 0) this.logger.warn({ workerIds: released }, "released job locks held by dead workers");
    return released;
  }

  /**
   * Call after the job runner has stopped: any lock our workers still hold is stale (graphile-worker
   * 0.17 can leave a job aborted at shutdown locked by the pool id), so release it before leaving.
   */
  async unregister(): Promise<void> {
    if (!this.connection) return;
    const connection = this.connection;
    try {
      await this.flushing;
      this.connection = undefined;
      await connection`
        with gone as (delete from worker_instances where id = ${this.instanceId!} returning worker_ids)
        select graphile_worker.force_unlock_workers(worker_ids) from gone where cardinality(worker_ids) > 0`;
      await connection`select pg_advisory_unlock(${LIVENESS_LOCK_CLASS}, ${this.instanceId!})`;
    } finally {
      connection.release();
    }
  }
}
