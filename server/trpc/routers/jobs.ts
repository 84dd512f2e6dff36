import { z } from "zod";
import { router, teamProcedure } from "../init";
import { pageInput } from "../inputs";

const jobState = z.enum(["queued", "running", "failed"]);

export const jobsRouter = router({
  /** The team's background jobs (graphile-worker rows), newest first, with a count per state. */
  list: teamProcedure
    .input(z.strictObject({ ...pageInput, cursor: z.string().regex(/^\d{1,18}$/, "must be a cursor this API returned").optional(), state: jobState.optional() }))
    .query(({ ctx, input }) => ctx.team.jobs.list(input)),
  /** Runs a failed job again from its first attempt. */
  retry: teamProcedure
    .input(z.strictObject({ jobId: z.string().regex(/^\d{1,18}$/, "must be a job id") }))
    .mutation(({ ctx, input }) => ctx.team.jobs.retry(input)),
});
