import { eq, sql } from "drizzle-orm";
import type { Database } from "../../db/client";
import { teams } from "../../db/schema";
import { recordAudit } from "./audit";
import { conflict, invalid, notFound } from "./errors";
import type { Page } from "./pagination";
import { requireRole, type Principal } from "./principal";
import { ADMIN_TEAM_SLUG } from "./bootstrap";

/**
 * What the dashboard's jobs page shows of graphile-worker's queue (`graphile_worker._private_jobs`).
 * Completed jobs are deleted by graphile-worker, so every row here is waiting, running or failed.
 *
 * Jobs are platform-wide rows; a team sees the jobs whose payload names one of its sessions. Jobs
 * that name no session (maintenance crons) are the operators' business: only the bootstrap admin
 * team sees them. See docs/decisions/007-dashboard.md.
 */
export type JobState = "queued" | "running" | "failed";

export type JobView = {
  id: string;
  task: string;
  queue: string | null;
  sessionId: string | null;
  state: JobState;
  attempts: number;
  maxAttempts: number;
  lastError: string | null;
  runAt: Date;
  lockedAt: Date | null;
  createdAt: Date;
  updatedAt: Date;
};

const UUID = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/** A job's state, in SQL: running while locked, failed once it has used every attempt. */
const STATE = sql`case when j.locked_at is not null then 'running' when j.attempts >= j.max_attempts then 'failed' else 'queued' end`;

type JobRow = {
  id: string;
  task: string;
  queue: string | null;
  session_id: string | null;
  state: JobState;
  attempts: number;
  max_attempts: number;
  last_error: string | null;
  run_at: string | Date;
  locked_at: string | Date | null;
  created_at: string | Date;
  updated_at: string | Date;
};

const toDate = (value: string | Date) => (value instanceof Date ? value : new Date(value));

const view = (row: JobRow): JobView => ({
  id: String(row.id),
  task: row.task,
  queue: row.queue,
  sessionId: row.session_id,
  state: row.state,
  attempts: Number(row.attempts),
  maxAttempts: Number(row.max_attempts),
  lastError: row.last_error,
  runAt: toDate(row.run_at),
  lockedAt: row.locked_at === null ? null : toDate(row.locked_at),
  createdAt: toDate(row.created_at),
  updatedAt: toDate(row.updated_at),
});

/** The background jobs of the caller's team (admins and owners only). */
export class JobService {
  private platformScope: Promise<boolean> | undefined;

  constructor(
    private readonly db: Database,
    private readonly principal: Principal,
  ) {}

  /** Whether the caller's team is the bootstrap admin team, which also sees jobs of no session. */
  private seesPlatformJobs(): Promise<boolean> {
    this.platformScope ??= this.db
      .select({ slug: teams.slug })
      .from(teams)
      .where(eq(teams.id, this.principal.teamId))
      .then(([team]) => team?.slug === ADMIN_TEAM_SLUG);
    return this.platformScope;
  }

  /** The rows of graphile-worker's queue this team may see, with their session id when they have one. */
  private async scopedJobs() {
    const platform = await this.seesPlatformJobs();
    return sql`(
      select j.*, t.identifier as task, q.queue_name as queue, s.id as session_id
      from graphile_worker._private_jobs j
      join graphile_worker._private_tasks t on t.id = j.task_id
      left join graphile_worker._private_job_queues q on q.id = j.job_queue_id
      left join sessions s on s.id = case when (j.payload->>'sessionId') ~ ${UUID} then (j.payload->>'sessionId')::uuid end
      where s.team_id = ${this.principal.teamId}
         or (${platform}::boolean and (j.payload->>'sessionId') is null)
    ) j`;
  }

  async list(input: { state?: JobState; cursor?: string; limit: number }): Promise<Page<JobView> & { counts: Record<JobState, number> }> {
    requireRole(this.principal, "admin", "reading jobs");
    const before = input.cursor === undefined ? undefined : Number(input.cursor);
    if (before !== undefined && !Number.isSafeInteger(before)) throw invalid("cursor is not one this API returned");
    const jobs = await this.scopedJobs();
    const rows = (await this.db.execute(sql`
      select j.id::text as id, j.task, j.queue, j.session_id, ${STATE} as state, j.attempts, j.max_attempts,
             j.last_error, j.run_at, j.locked_at, j.created_at, j.updated_at
      from ${jobs}
      where (${input.state ?? null}::text is null or ${STATE} = ${input.state ?? null}::text)
        and (${before ?? null}::bigint is null or j.id < ${before ?? null}::bigint)
      order by j.id desc
      limit ${input.limit + 1}`)) as unknown as JobRow[];
    const [counted] = (await this.db.execute(sql`
      select count(*) filter (where ${STATE} = 'queued')::int as queued,
             count(*) filter (where ${STATE} = 'running')::int as running,
             count(*) filter (where ${STATE} = 'failed')::int as failed
      from ${jobs}`)) as unknown as Array<Record<JobState, number>>;
    const items = rows.slice(0, input.limit).map(view);
    return {
      items,
      nextCursor: rows.length > input.limit ? items[items.length - 1]!.id : null,
      counts: { queued: counted?.queued ?? 0, running: counted?.running ?? 0, failed: counted?.failed ?? 0 },
    };
  }

  /** Runs a failed job again: its attempts start over and it is due now. */
  async retry(input: { jobId: string }): Promise<JobView> {
    requireRole(this.principal, "admin", "retrying jobs");
    if (!/^\d{1,18}$/.test(input.jobId)) throw notFound("job");
    const jobs = await this.scopedJobs();
    return this.db.transaction(async (tx) => {
      const [job] = (await tx.execute(sql`
        select j.id::text as id, j.task, j.queue, j.session_id, ${STATE} as state, j.attempts, j.max_attempts,
               j.last_error, j.run_at, j.locked_at, j.created_at, j.updated_at
        from ${jobs}
        where j.id = ${input.jobId}::bigint`)) as unknown as JobRow[];
      if (!job) throw notFound("job");
      if (job.state !== "failed") throw conflict(`job ${job.id} is ${job.state}, not failed: only failed jobs can be retried`);
      // graphile-worker's own function; it skips a job that got locked in the meantime.
      const rescheduled = await tx.execute(sql`
        select id from graphile_worker.reschedule_jobs(array[${input.jobId}::bigint], run_at => now(), attempts => 0)`);
      if (rescheduled.length === 0) throw conflict(`job ${job.id} is running`);
      // reschedule_jobs does not wake the runners, which poll only every few seconds (jobs/runner.ts).
      await tx.execute(sql`select pg_notify('jobs:insert', '{"count":1}')`);
      await recordAudit(tx, {
        teamId: this.principal.teamId,
        actor: this.principal.actor,
        action: "job.retry",
        targetType: "job",
        targetId: job.id,
        metadata: { task: job.task, sessionId: job.session_id, attempts: Number(job.attempts) },
      });
      return view({ ...job, state: "queued", attempts: 0, run_at: new Date() });
    });
  }
}
