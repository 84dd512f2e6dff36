import { z } from "zod";
import { envName } from "../../services/agent-config";
import { router, teamProcedure } from "../init";
import { id, pageInput } from "../inputs";

export const secretsRouter = router({
  /** Write-only: the value goes in and never comes out of the API. */
  set: teamProcedure
    .input(z.strictObject({ name: envName, value: z.string().max(65_536, "must be at most 64 KiB"), agentId: id.optional() }))
    .mutation(({ ctx, input }) => ctx.team.secrets.set(input)),
  list: teamProcedure
    .input(z.strictObject({ ...pageInput, agentId: id.optional() }))
    .query(({ ctx, input }) => ctx.team.secrets.list(input)),
  delete: teamProcedure.input(z.strictObject({ secretId: id })).mutation(({ ctx, input }) => ctx.team.secrets.delete(input)),
});
