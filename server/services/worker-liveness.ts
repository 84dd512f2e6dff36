import { hostname } from "node:os";
import type postgres from "postgres";
import { connectPostgres } from "../../db/postgres-url";
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
  /**
   * The lock's own one-connection client. Not `sql.reserve()`: postgres.js 3.4.9 throws an
   * uncatchable error when a reserved connection whose backend died is used again (porsager/postgres
   * #1208), which is exactly what a database restart does; a one-connection pool reconnects instead.
   */
  private connection: postgres.Sql | undefined;
  private instanceId: number | undefined;
  private readonly pendingWorkerIds: string[] = [];
  private flushing: Promise<void> = Promise.resolve();
  private readonly unknownLockGraceSeconds: number;

  constructor(
    private readonly sql: postgres.Sql,
    private readonly logger: Logger,
    private readonly options: {
      databaseUrl: string;
      /** A lock held by a worker id that no process has registered is released after this long. */
      unknownLockGraceSeconds?: number;
      /**
       * After Postgres starts, how long a process whose liveness lock the restart dropped has to take
       * it again before it counts as dead. Its watchdog does so within its interval (5 s).
       */
      restartGraceSeconds?: number;
    },
  ) {
    this.unknownLockGraceSeconds = options.unknownLockGraceSeconds ?? 60;
    this.restartGraceSeconds = options.restartGraceSeconds ?? 30;
  }

  private readonly restartGraceSeconds: number;

  /** The backend holding the lock (tests end it to play a crashed process). */
  async lockBackendPid(): Promise<number> {
    const [row] = await this.connection!<{ pid: number }[]>`select pg_backend_pid() as pid`;
    return row!.pid;
  }

  get id(): number | undefined {
    return this.instanceId;
  }

  async register(): Promise<void> {
    this.connection = connectPostgres(this.options.databaseUrl, {
      max: 1,
      onnotice: () => {},
      connect_timeout: 5,
      // The session lock lives as long as the connection: never recycle it on purpose (0 = off).
      idle_timeout: 0,
      max_lifetime: 0,
      connection: { application_name: "berth-liveness" },
    });
    const [row] = await this.connection<{ id: number }[]>`
      insert into worker_instances (hostname, pid) values (${hostname()}, ${process.pid}) returning id`;
    this.instanceId = row!.id;
    await this.connection`select pg_advisory_lock(${LIVENESS_LOCK_CLASS}, ${this.instanceId})`;
  }

  /**
   * After a database outage the lock connection may be gone, and with it the lock: this process
   * would look dead. Takes the same id's lock again on a fresh connection (re-creating the row if a
   * sweep removed it), so our running jobs are not released to run twice.
   */
  async ensureRegistered(): Promise<void> {
    if (!this.connection || this.instanceId === undefined) return;
    const holding = await this.connection<{ held: boolean }[]>`
      select exists (
        select 1 from pg_locks
        where locktype = 'advisory' and classid = ${LIVENESS_LOCK_CLASS} and objid = ${this.instanceId} and pid = pg_backend_pid() and granted
      ) as held`.then(
      (rows) => rows[0]!.held,
      () => false,
    );
    if (holding) return;
    this.logger.warn({ instanceId: this.instanceId }, "lost the liveness lock (database connection dropped); taking it again");
    // The one-connection client has reconnected (or will, on this query): lock again on it.
    await this.connection`select pg_advisory_lock(${LIVENESS_LOCK_CLASS}, ${this.instanceId})`;
    await this.connection`
      insert into worker_instances (id, hostname, pid, worker_ids) values (${this.instanceId}, ${hostname()}, ${process.pid}, ${this.allWorkerIds}::text[])
      on conflict (id) do update set worker_ids = excluded.worker_ids, lock_taken_at = now()`;
  }

  /**
   * Jobs locked by our own workers that none of them is running: their end could not be recorded
   * (the database was down when the job finished or failed). Unlocked, they run again; every task
   * is written to be safe to re-run.
   */
  async releaseOwnStaleLocks(runningJobIds: string[]): Promise<number> {
    if (this.allWorkerIds.length === 0) return 0;
    return this.sql.begin(async (tx) => {
      const jobs = await tx<{ id: string }[]>`
        update graphile_worker._private_jobs set locked_by = null, locked_at = null
        where locked_by = any(${this.allWorkerIds}::text[]) and not (id = any(${runningJobIds}::bigint[]))
          and locked_at < now() - interval '5 seconds'
        returning id::text`;
      await this.unlockIdleQueues(tx);
      if (jobs.length > 0) {
        await wakeJobRunners(tx, jobs.length);
        this.logger.warn({ jobs: jobs.map((job) => job.id) }, "released jobs whose end could not be recorded");
      }
      return jobs.length;
    });
  }

  /**
   * Jobs a graceful shutdown cut short run again at once, elsewhere or on the next start:
   * graphile-worker failed them with its retry backoff (e^attempts seconds), as if they had failed.
   * The attempt still counts, so a job that keeps ending in shutdowns is given up in the end. Call
   * after the job runner stopped: a lock our workers still hold is stale (the failure was not
   * recorded before the runner closed its connections).
   */
  async resumeInterruptedJobs(jobIds: string[]): Promise<number> {
    if (jobIds.length === 0) return 0;
    return this.sql.begin(async (tx) => {
      const jobs = await tx<{ id: string }[]>`
        update graphile_worker._private_jobs set run_at = now(), locked_by = null, locked_at = null
        where id = any(${jobIds}::bigint[]) and (locked_by is null or locked_by = any(${this.allWorkerIds}::text[]))
          and attempts < max_attempts
        returning id::text`;
      await this.unlockIdleQueues(tx);
      if (jobs.length > 0) {
        await wakeJobRunners(tx, jobs.length);
        this.logger.info({ jobs: jobs.map((job) => job.id) }, "jobs interrupted by the shutdown run again at once");
      }
      return jobs.length;
    });
  }

  /** Queue locks of our workers over queues none of whose jobs is locked any more. */
  private async unlockIdleQueues(tx: postgres.TransactionSql): Promise<void> {
    await tx`
      update graphile_worker._private_job_queues q set locked_by = null, locked_at = null
      where q.locked_by = any(${this.allWorkerIds}::text[])
        and not exists (select 1 from graphile_worker._private_jobs j where j.job_queue_id = q.id and j.locked_by is not null)`;
  }

  private readonly wakeUpTimers = new Set<NodeJS.Timeout>();

  /**
   * A failed job is due again after graphile-worker's backoff (e^attempts seconds, attempts capped at
   * 10); nothing announces that moment, and idle workers poll only every few seconds. Wakes the job
   * runners then. Best effort: a wake-up lost to an outage leaves the job to the next poll.
   */
  wakeJobRunnersAfterRetryDelay(attempts: number): void {
    const delayMs = Math.exp(Math.min(attempts, 10)) * 1000 + 100;
    const timer = setTimeout(() => {
      this.wakeUpTimers.delete(timer);
      void wakeJobRunners(this.sql, 1).catch((error: unknown) => this.logger.debug({ err: error }, "could not wake the job runners for a retry"));
    }, delayMs);
    timer.unref();
    this.wakeUpTimers.add(timer);
  }

  private watchdog: NodeJS.Timeout | undefined;

  /** Every few seconds: keep the liveness lock and release our own stale job locks (after outages). */
  startWatchdog(runningJobIds: () => string[], intervalMs = 5_000): void {
    let busy = false;
    this.watchdog = setInterval(() => {
      if (busy) return;
      busy = true;
      void (async () => {
        await this.ensureRegistered();
        await this.releaseOwnStaleLocks(runningJobIds());
      })()
        .catch((error: unknown) => this.logger.debug({ err: error }, "liveness watchdog: database not reachable"))
        .finally(() => (busy = false));
    }, intervalMs);
    this.watchdog.unref();
  }

  stopWatchdog(): void {
    clearInterval(this.watchdog);
    for (const timer of this.wakeUpTimers) clearTimeout(timer);
    this.wakeUpTimers.clear();
  }

  /** Every worker id this process created: restored on the row if a sweep removed it. */
  private readonly allWorkerIds: string[] = [];

  /** Called for each graphile-worker pool and worker id as it is created. */
  recordWorkerId(workerId: string): void {
    this.allWorkerIds.push(workerId);
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
   *
   * A free liveness lock proves death only if it was taken since Postgres last started: a restart
   * drops every process's lock, and a live one takes it again at its watchdog's next round. Until
   * then (at most `restartGraceSeconds` after the start) its jobs are still running there, and
   * releasing them would run them twice at once.
   */
  async releaseLocksOfDeadWorkers(options: { restartGraceSeconds?: number } = {}): Promise<string[]> {
    const restartGraceSeconds = options.restartGraceSeconds ?? this.restartGraceSeconds;
    await this.ensureRegistered();
    await this.flushing;
    const released = await this.sql.begin(async (tx) => {
      const dead = await tx<{ worker_ids: string[] }[]>`
        delete from worker_instances
        where (lock_taken_at >= pg_postmaster_start_time() or pg_postmaster_start_time() < now() - make_interval(secs => ${restartGraceSeconds}))
          and pg_try_advisory_xact_lock(${LIVENESS_LOCK_CLASS}, id)
        returning worker_ids`;
      const deadIds = dead.flatMap((row) => row.worker_ids);
      const unknown = await tx<{ locked_by: string }[]>`
        select distinct locked_by from graphile_worker.jobs
        where locked_by is not null
          and locked_at < now() - make_interval(secs => ${this.unknownLockGraceSeconds})
          and not exists (select 1 from worker_instances wi where jobs.locked_by = any(wi.worker_ids))`;
      const ids = [...new Set([...deadIds, ...unknown.map((row) => row.locked_by)])];
      if (ids.length > 0) await forceUnlockWorkers(tx, ids);
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
    this.stopWatchdog();
    if (!this.connection) return;
    const connection = this.connection;
    try {
      await this.flushing;
      this.connection = undefined;
      const [gone] = await connection<{ worker_ids: string[] }[]>`
        delete from worker_instances where id = ${this.instanceId!} returning worker_ids`;
      if (gone && gone.worker_ids.length > 0) await forceUnlockWorkers(connection, gone.worker_ids);
      await connection`select pg_advisory_unlock(${LIVENESS_LOCK_CLASS}, ${this.instanceId!})`;
    } finally {
      await connection.end({ timeout: 5 });
    }
  }
}

/** graphile-worker's force_unlock_workers, and a wake-up for the jobs it freed. */
async function forceUnlockWorkers(sql: postgres.Sql | postgres.TransactionSql, workerIds: string[]): Promise<void> {
  const [held] = await sql<{ count: number }[]>`
    select count(*)::int as count from graphile_worker._private_jobs where locked_by = any(${workerIds}::text[])`;
  await sql`select graphile_worker.force_unlock_workers(${workerIds}::text[])`;
  if (held!.count > 0) await wakeJobRunners(sql, held!.count);
}

/**
 * graphile-worker's own wake-up call: every pool listening nudges up to `count` idle workers, so
 * released jobs start now instead of at the next poll (jobs/runner.ts polls only every few seconds).
 */
async function wakeJobRunners(sql: postgres.Sql | postgres.TransactionSql, count: number): Promise<void> {
  await sql`select pg_notify('jobs:insert', ${JSON.stringify({ count })})`;
}
