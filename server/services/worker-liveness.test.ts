import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../tests/helpers/database";
import { waitFor } from "../../tests/helpers/processes";
import { createLogger } from "../logger";
import { WorkerLiveness } from "./worker-liveness";

const logger = createLogger("silent");

async function addLockedJob(sql: postgres.Sql, lockedBy: string, lockedAgo = "0 seconds"): Promise<string> {
  const [job] = await sql<{ id: string }[]>`select id::text from graphile_worker.add_job('maintenance:release-dead-worker-locks', '{}'::json)`;
  await sql`update graphile_worker._private_jobs set locked_by = ${lockedBy}, locked_at = now() - ${lockedAgo}::interval where id = ${job!.id}`;
  return job!.id;
}

async function lockOf(sql: postgres.Sql, jobId: string) {
  const [row] = await sql<{ locked_by: string | null }[]>`select locked_by from graphile_worker.jobs where id = ${jobId}`;
  return row?.locked_by ?? null;
}

describe("WorkerLiveness", () => {
  let database: TestDatabase;
  let sql: postgres.Sql;
  beforeAll(async () => {
    database = await createTestDatabase();
    sql = postgres(database.url, { max: 4, onnotice: () => {} });
  });
  afterAll(async () => {
    await sql.end({ timeout: 5 });
    await database.drop();
  });

  it("releases the locks of a process whose connection died, and only those", async () => {
    // The "dead" process: its own connection pool, which we then close, as a crash would.
    const deadSql = postgres(database.url, { max: 2, onnotice: () => {} });
    const dead = new WorkerLiveness(deadSql, logger, { databaseUrl: database.url });
    await dead.register();
    dead.recordWorkerId("worker-dead-1");
    const alive = new WorkerLiveness(sql, logger, { databaseUrl: database.url });
    await alive.register();
    alive.recordWorkerId("worker-alive-1");
    await alive.releaseLocksOfDeadWorkers(); // flushes the recorded id; nothing is dead yet
    await dead.releaseLocksOfDeadWorkers();

    const deadJob = await addLockedJob(sql, "worker-dead-1");
    const aliveJob = await addLockedJob(sql, "worker-alive-1");
    expect(await alive.releaseLocksOfDeadWorkers()).toEqual([]);
    expect(await lockOf(sql, deadJob)).toBe("worker-dead-1");

    // The crash: the lock's backend goes away (the process's sockets would close the same way).
    await sql`select pg_terminate_backend(${await dead.lockBackendPid()})`;
    await deadSql.end({ timeout: 0 });
    // The server ends the dead backend (and its advisory lock) a moment after the socket closes.
    let released: string[] = [];
    for (let attempt = 0; attempt < 100 && released.length === 0; attempt++) {
      released = await alive.releaseLocksOfDeadWorkers();
      if (released.length === 0) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(released).toEqual(["worker-dead-1"]);
    expect(await lockOf(sql, deadJob)).toBeNull();
    expect(await lockOf(sql, aliveJob)).toBe("worker-alive-1");
    const [row] = await sql<{ count: number }[]>`select count(*)::int as count from worker_instances where id = ${dead.id!}`;
    expect(row!.count).toBe(0);
    await alive.unregister();
    await dead.unregister();
  });

  it("gives a process whose lock a database restart dropped time to take it again", async () => {
    const restartedSql = postgres(database.url, { max: 2, onnotice: () => {} });
    const restarted = new WorkerLiveness(restartedSql, logger, { databaseUrl: database.url });
    await restarted.register();
    restarted.recordWorkerId("worker-restarted-1");
    const patient = new WorkerLiveness(sql, logger, { databaseUrl: database.url, restartGraceSeconds: 1_000_000_000 });
    await patient.register();
    await patient.releaseLocksOfDeadWorkers();
    const job = await addLockedJob(sql, "worker-restarted-1");

    // A restart ends every backend; the row says the lock was taken before this postmaster started.
    // With a timeout, pg_terminate_backend waits for the backend to exit: its lock is really gone,
    // so only the grace keeps the sweep below from releasing the job.
    const [terminated] = await sql<{ done: boolean }[]>`select pg_terminate_backend(${await restarted.lockBackendPid()}, 5000) as done`;
    expect(terminated!.done).toBe(true);
    await sql`update worker_instances set lock_taken_at = pg_postmaster_start_time() - interval '1 second' where id = ${restarted.id!}`;
    expect(await patient.releaseLocksOfDeadWorkers()).toEqual([]);
    expect(await lockOf(sql, job)).toBe("worker-restarted-1");

    // The process takes its lock again (its watchdog's round): it stays alive for every sweep after.
    await restarted.ensureRegistered();
    const [row] = await sql<{ fresh: boolean }[]>`select lock_taken_at >= pg_postmaster_start_time() as fresh from worker_instances where id = ${restarted.id!}`;
    expect(row!.fresh).toBe(true);
    const impatient = new WorkerLiveness(sql, logger, { databaseUrl: database.url, restartGraceSeconds: 0 });
    expect(await impatient.releaseLocksOfDeadWorkers()).not.toContain("worker-restarted-1");

    // One that never comes back counts as dead once the grace is over.
    await sql`select pg_terminate_backend(${await restarted.lockBackendPid()})`;
    await restartedSql.end({ timeout: 0 });
    await sql`update worker_instances set lock_taken_at = pg_postmaster_start_time() - interval '1 second' where id = ${restarted.id!}`;
    let released: string[] = [];
    for (let attempt = 0; attempt < 100 && released.length === 0; attempt++) {
      expect(await patient.releaseLocksOfDeadWorkers()).not.toContain("worker-restarted-1");
      released = await impatient.releaseLocksOfDeadWorkers();
      if (released.length === 0) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(released).toContain("worker-restarted-1");
    expect(await lockOf(sql, job)).toBeNull();
    await patient.unregister();
    await impatient.unregister();
  });

  it("releases its own stale locks that none of its workers runs, and wakes the job runners", async () => {
    const liveness = new WorkerLiveness(sql, logger, { databaseUrl: database.url });
    await liveness.register();
    liveness.recordWorkerId("worker-own-1");
    const wakeUps: unknown[] = [];
    // add_job's own notifications carry a random "r"; they may arrive at any point here.
    const listener = await sql.listen("jobs:insert", (payload) => {
      const message = JSON.parse(payload) as { r?: number };
      if (message.r === undefined) wakeUps.push(message);
    });
    try {
      const stale = await addLockedJob(sql, "worker-own-1", "10 seconds");
      const running = await addLockedJob(sql, "worker-own-1", "10 seconds");
      const fresh = await addLockedJob(sql, "worker-own-1", "1 second");
      expect(await liveness.releaseOwnStaleLocks([running])).toBe(1);
      expect(await lockOf(sql, stale)).toBeNull();
      expect(await lockOf(sql, running)).toBe("worker-own-1");
      expect(await lockOf(sql, fresh)).toBe("worker-own-1");
      // graphile-worker's listener nudges this many idle workers: the job does not wait for a poll.
      await waitFor("the wake-up notification", () => wakeUps.length > 0, 10_000);
      expect(wakeUps).toEqual([{ count: 1 }]);
    } finally {
      await listener.unlisten();
      await liveness.unregister();
    }
  });

  it("makes the jobs a shutdown interrupted due at once, but not one out of attempts or another's", async () => {
    const liveness = new WorkerLiveness(sql, logger, { databaseUrl: database.url });
    await liveness.register();
    liveness.recordWorkerId("worker-stopping-1");
    await liveness.releaseLocksOfDeadWorkers();
    // As graphile-worker leaves them: failed with a backoff, or still locked (failure not recorded).
    const backedOff = await addLockedJob(sql, "worker-stopping-1");
    await sql`update graphile_worker._private_jobs set locked_by = null, locked_at = null, attempts = 1, run_at = now() + interval '3 seconds' where id = ${backedOff}`;
    const stillLocked = await addLockedJob(sql, "worker-stopping-1");
    const exhausted = await addLockedJob(sql, "worker-stopping-1");
    await sql`update graphile_worker._private_jobs set locked_by = null, locked_at = null, attempts = max_attempts, run_at = now() + interval '1 hour' where id = ${exhausted}`;
    const others = await addLockedJob(sql, "worker-someone-else");

    expect(await liveness.resumeInterruptedJobs([backedOff, stillLocked, exhausted, others])).toBe(2);
    const rows = await sql<{ id: string; locked_by: string | null; due: boolean }[]>`
      select id::text, locked_by, run_at <= now() as due from graphile_worker._private_jobs where id = any(${[backedOff, stillLocked, exhausted, others]}::bigint[]) order by id`;
    expect(Object.fromEntries(rows.map((row) => [row.id, [row.locked_by, row.due]]))).toEqual({
      [backedOff]: [null, true],
      [stillLocked]: [null, true],
      [exhausted]: [null, false],
      [others]: ["worker-someone-else", true],
    });
    await sql`delete from graphile_worker._private_jobs where id = any(${[backedOff, stillLocked, exhausted, others]}::bigint[])`;
    await liveness.unregister();
  });

  it("wakes the job runners when a failed job's retry backoff has passed", async () => {
    const liveness = new WorkerLiveness(sql, logger, { databaseUrl: database.url });
    const wokenAt: number[] = [];
    const listener = await sql.listen("jobs:insert", (payload) => {
      if (payload === '{"count":1}') wokenAt.push(performance.now());
    });
    try {
      const failedAt = performance.now();
      liveness.wakeJobRunnersAfterRetryDelay(0); // graphile-worker's backoff for it: e^0 = 1 s
      // The listener records when it arrived, so a coarse wait does not blur the measurement.
      await waitFor("the wake-up notification", () => wokenAt.length > 0, 10_000);
      expect(wokenAt).toHaveLength(1);
      expect(wokenAt[0]! - failedAt).toBeGreaterThanOrEqual(1_000);
    } finally {
      await listener.unlisten();
    }
  });

  it("releases a lock held by an unregistered worker id only after the grace period", async () => {
    const liveness = new WorkerLiveness(sql, logger, { databaseUrl: database.url, unknownLockGraceSeconds: 60 });
    await liveness.register();
    const recent = await addLockedJob(sql, "worker-unknown-recent", "5 seconds");
    const old = await addLockedJob(sql, "worker-unknown-old", "5 minutes");
    const released = await liveness.releaseLocksOfDeadWorkers();
    expect(released).toContain("worker-unknown-old");
    expect(released).not.toContain("worker-unknown-recent");
    expect(await lockOf(sql, old)).toBeNull();
    expect(await lockOf(sql, recent)).toBe("worker-unknown-recent");
    await liveness.unregister();
  });
});
