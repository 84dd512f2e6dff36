import { z } from "zod";
import { router, teamProcedure } from "../init";
import { id, pageInput, role } from "../inputs";

export const apiKeysRouter = router({
  create: teamProcedure
    .input(z.strictObject({ name: z.string().trim().min(1).max(100), role: role.default("member") }))
    .mutation(({ ctx, input }) => ctx.team.apiKeys.create(input)),
  list: teamProcedure
    .input(z.strictObject({ ...pageInput, includeRevoked: z.boolean().default(false) }))
    .query(({ ctx, input }) => ctx.team.apiKeys.list(input)),
  revoke: teamProcedure.input(z.strictObject({ keyId: id })).mutation(({ ctx, input }) => ctx.team.apiKeys.revoke(input)),
});
