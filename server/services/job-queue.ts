import { sql } from "drizzle-orm";
import { z } from "zod";
import type { DatabaseOrTransaction } from "../../db/client";

/**
 * The contract between services (which enqueue work) and jobs/ (which run it): every job name and
 * the zod schema of its payload. Services enqueue through `enqueueJob`, inside their own transaction
 * when the job must exist if and only if their write commits.
 */
export const jobPayloads = {
  "maintenance:release-dead-worker-locks": z.object({}).passthrough(),
  "maintenance:prune-login-failures": z.object({}).passthrough(),
  "sandbox:provision": z.object({ sessionId: z.uuid(), reason: z.string().max(500).optional() }),
  "sandbox:suspend-idle": z.object({}).passthrough(),
  "sandbox:reconcile": z.object({}).passthrough(),
  "turn:run": z.object({ sessionId: z.uuid() }),
  "turn:queue-stranded": z.object({}).passthrough(),
} satisfies Record<string, z.ZodType>;

export type JobName = keyof typeof jobPayloads;
export type JobPayload<N extends JobName> = z.infer<(typeof jobPayloads)[N]>;

export type EnqueueOptions = {
  /** Replaces a pending job with the same key (graphile-worker job_key semantics). */
  jobKey?: string;
  queueName?: string;
  runAt?: Date;
  maxAttempts?: number;
  priority?: number;
};

export async function enqueueJob<N extends JobName>(
  db: DatabaseOrTransaction,
  name: N,
  payload: JobPayload<N>,
  options: EnqueueOptions = {},
): Promise<void> {
  const parsed = jobPayloads[name].parse(payload);
  await db.execute(sql`
    select graphile_worker.add_job(
      identifier => ${name}::text,
      payload => ${JSON.stringify(parsed)}::json,
      queue_name => ${options.queueName ?? null}::text,
      run_at => ${options.runAt?.toISOString() ?? null}::timestamptz,
      max_attempts => ${options.maxAttempts ?? null}::int,
      job_key => ${options.jobKey ?? null}::text,
      priority => ${options.priority ?? null}::int
    )`);
}
