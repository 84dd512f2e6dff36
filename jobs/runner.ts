import { EventEmitter } from "node:events";
import { Logger as WorkerLogger, parseCrontab, run, type Runner, type WorkerEvents } from "graphile-worker";
import type { Logger } from "../server/logger";
import type { Services } from "../server/services";
import { crontab } from "./crontab";
import { toTaskList, type BerthTask } from "./registry";
import { allTasks } from "./tasks";

export type JobRunner = {
  isRunning(): boolean;
  /** Ids of the jobs this process is running right now. */
  runningJobIds(): string[];
  /**
   * After stop(): the jobs the shutdown cut short (they ended with an error after their abort
   * signal), for WorkerLiveness.resumeInterruptedJobs. Not those still running: their code has not
   * stopped, and the lock release at unregister leaves them to the next process.
   */
  interruptedJobIds(): string[];
  /** Stops taking jobs, waits for running ones up to the abort timeout, then releases what is left. */
  stop(): Promise<void>;
};

export type JobRunnerOptions = {
  databaseUrl: string;
  concurrency: number;
  services: Services;
  logger: Logger;
  /** After this long in a graceful shutdown, running jobs are aborted and their locks released. */
  shutdownAbortMs: number;
  /** Tasks in addition to the platform's own (tests, extensions). */
  extraTasks?: BerthTask[];
  onWorkerCreated?: (workerId: string) => void;
};

/** How often an idle worker looks for jobs it was not told about. */
export const JOB_POLL_INTERVAL_MS = 5_000;

/** The job runner's Postgres pool: a connection per concurrent job, and two for graphile-worker's own work. */
export function jobRunnerPoolSize(concurrency: number): number {
  return concurrency + 2;
}

function toWorkerLogger(logger: Logger): WorkerLogger {
  return new WorkerLogger((scope) => (level, message, meta) => {
    const fields = { ...scope, ...(meta ?? {}) };
    if (level === "error") logger.error(fields, message);
    else if (level === "warning") logger.warn(fields, message);
    else if (level === "info") logger.info(fields, message);
    else logger.debug(fields, message);
  });
}

export async function startJobRunner(options: JobRunnerOptions): Promise<JobRunner> {
  const logger = options.logger.child({ component: "worker" });
  const shutdown = new AbortController();
  const events: WorkerEvents = new EventEmitter();
  events.on("pool:create", ({ workerPool }) => options.onWorkerCreated?.(workerPool.id));
  events.on("worker:create", ({ worker }) => options.onWorkerCreated?.(worker.workerId));
  // Counted: after a lock mix-up (decision 009) one job id can be running and also waiting in the
  // queue serializer, and the first to end must not make the other look stale to the watchdog.
  const runningJobs = new Map<string, number>();
  events.on("job:start", ({ job }) => runningJobs.set(job.id, (runningJobs.get(job.id) ?? 0) + 1));
  events.on("job:complete", ({ job }) => {
    const count = (runningJobs.get(job.id) ?? 1) - 1;
    if (count > 0) runningJobs.set(job.id, count);
    else runningJobs.delete(job.id);
  });
  events.on("job:error", ({ job, error }) => {
    logger.warn({ jobId: job.id, task: job.task_identifier, attempt: job.attempts, err: error }, "job failed");
    if (job.attempts < job.max_attempts && !shutdown.signal.aborted) options.services.workerLiveness.wakeJobRunnersAfterRetryDelay(job.attempts);
  });
  const interruptedJobs = new Set<string>();

  const runner: Runner = await run({
    connectionString: workerConnectionString(options.databaseUrl),
    concurrency: options.concurrency,
    maxPoolSize: jobRunnerPoolSize(options.concurrency),
    noHandleSignals: true,
    // Each idle worker polls on its own: at 1 s, the default 32 workers made an idle server run 37
    // transactions a second. New jobs do not wait for a poll (graphile-worker's LISTEN on jobs:insert,
    // which Berth also sends when it releases or reschedules jobs, and when a failed job's retry
    // backoff has passed); a poll only finds what those missed, e.g. while the listener reconnected.
    pollInterval: JOB_POLL_INTERVAL_MS,
    logger: toWorkerLogger(logger),
    events,
    taskList: toTaskList([...allTasks, ...(options.extraTasks ?? [])], options.services, options.logger, shutdown.signal, {
      onInterrupted: (jobId) => interruptedJobs.add(jobId),
    }),
    parsedCronItems: parseCrontab(crontab),
    preset: { worker: { gracefulShutdownAbortTimeout: options.shutdownAbortMs } },
  });

  let running = true;
  runner.promise.then(
    () => (running = false),
    (error: unknown) => {
      running = false;
      logger.error({ err: error }, "the job runner stopped with an error");
    },
  );

  return {
    isRunning: () => running,
    runningJobIds: () => [...runningJobs.keys()],
    interruptedJobIds: () => [...interruptedJobs],
    async stop() {
      if (!running) return;
      shutdown.abort();
      await runner.stop().catch((error: unknown) => logger.warn({ err: error }, "job runner stopped with errors"));
      running = false;
    },
  };
}

/**
 * The job runner's own connections: labelled in pg_stat_activity, and committing without waiting for
 * the WAL flush. They only write graphile-worker's bookkeeping (take a job, complete it, schedule a
 * retry), and a Postgres crash that loses the last of those is the case graphile-worker's
 * at-least-once delivery already covers: a job runs again, and every task is written to be re-run.
 * Jobs, events and turns written by services go through the service pool and stay synchronous
 * (docs/decisions/015-turn-round-trips.md).
 */
export function workerConnectionString(databaseUrl: string): string {
  const url = new URL(databaseUrl);
  if (!url.searchParams.has("application_name")) url.searchParams.set("application_name", "berth-worker");
  // Added to the operator's own `options`, unless those already choose synchronous_commit.
  const options = url.searchParams.get("options") ?? "";
  if (!options.includes("synchronous_commit")) url.searchParams.set("options", `${options} -c synchronous_commit=off`.trim());
  return url.toString();
}
