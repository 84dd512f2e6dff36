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

/** Wraps Berth tasks for graphile-worker: payloads are parsed with zod before a handler sees them. */
export function toTaskList(tasks: BerthTask[], services: Services, logger: Logger, signal: AbortSignal): TaskList {
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
      await task.run(parsed.data, { services, logger: jobLogger, helpers, signal: helpers.abortSignal ?? signal });
    };
    list[task.name] = handler;
  }
  return list;
}
