import type { JobHelpers, Task, TaskList } from "graphile-worker";
import type { z } from "zod";
import type { Logger } from "../server/logger";
import type { Services } from "../server/services";
import { jobPayloads, type JobName, type JobPayload } from "../server/services/job-queue";

export type TaskContext = {
  services: Services;
  logger: Logger;
  helpers: JobHelpers;
  /** Aborted when the process shuts down and the job must stop soon. */
  signal: AbortSignal;
};

export type BerthTask = {
  name: string;
  payload: z.ZodType;
  run(payload: unknown, context: TaskContext): Promise<void>;
};

/** A task of the job contract in server/services/job-queue.ts: name and payload type come from there. */
export function defineTask<N extends JobName>(
  name: N,
  run: (payload: JobPayload<N>, context: TaskContext) => Promise<void>,
): BerthTask {
  return { name, payload: jobPayloads[name], run: run as BerthTask["run"] };
}

export class InvalidJobPayloadError extends Error {
  override name = "InvalidJobPayloadError";
}

/**
 * Runs the jobs of one graphile-worker queue one at a time in this process, whatever the queue's lock
 * says. graphile-worker completes and fails a job by the pool's id, which all the pool's workers
 * share, and retries that write in the background while Postgres is restarting; when it lands after
 * the job was released and taken again (WorkerLiveness.releaseOwnStaleLocks), it unlocks the queue
 * under the new run, and a second job of the same queue (the same session's turns) would start
 * beside it.
 */
export class QueueSerializer {
  private readonly tails = new Map<string, Promise<void>>();

  async run<T>(queueId: string | number | null | undefined, onWait: () => void, work: () => Promise<T>): Promise<T> {
    if (queueId === null || queueId === undefined) return work();
    const key = String(queueId);
    const before = this.tails.get(key);
    let done!: () => void;
    const mine = new Promise<void>((resolve) => (done = resolve));
    const tail = (before ?? Promise.resolve()).then(() => mine);
    this.tails.set(key, tail);
    try {
      if (before) {
        onWait();
        await before;
      }
      return await work();
    } finally {
      done();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}

/** Wraps Berth tasks for graphile-worker: payloads are parsed with zod before a handler sees them. */
export function toTaskList(
  tasks: BerthTask[],
  services: Services,
  logger: Logger,
  signal: AbortSignal,
  options: { queues?: QueueSerializer; onInterrupted?: (jobId: string) => void } = {},
): TaskList {
  const queues = options.queues ?? new QueueSerializer();
  const list: TaskList = {};
  for (const task of tasks) {
    const taskLogger = logger.child({ task: task.name });
    const handler: Task = async (rawPayload, helpers) => {
      const parsed = task.payload.safeParse(rawPayload ?? {});
      if (!parsed.success) {
        const detail = parsed.error.issues.map((issue) => `${issue.path.join(".") || "payload"}: ${issue.message}`).join("; ");
        throw new InvalidJobPayloadError(`invalid payload for job ${task.name} (${helpers.job.id}): ${detail}`);
      }
      services.metrics.jobWait.observe({ task: task.name }, Math.max(0, (Date.now() - new Date(helpers.job.run_at).getTime()) / 1000));
      const jobLogger = taskLogger.child({ jobId: helpers.job.id, attempt: helpers.job.attempts });
      const jobSignal = helpers.abortSignal ?? signal;
      try {
        await queues.run(
          helpers.job.job_queue_id,
          () => jobLogger.warn({ queueId: helpers.job.job_queue_id }, "another job of this queue is still running here; waiting for it (its queue lock was released under it)"),
          () => {
            if (jobSignal.aborted) throw new Error("the process is shutting down; the job runs again in the next one");
            return task.run(parsed.data, { services, logger: jobLogger, helpers, signal: jobSignal });
          },
        );
      } catch (error) {
        // Ended by the shutdown, not by a fault of its own: it may run again at once.
        if (jobSignal.aborted) options.onInterrupted?.(helpers.job.id);
        throw error;
      }
    };
    list[task.name] = handler;
  }
  return list;
}
