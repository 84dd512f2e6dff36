import { z } from "zod";
import { router, teamProcedure } from "../init";
import { pageInput } from "../inputs";

export const auditRouter = router({
  list: teamProcedure
    .input(
      z.strictObject({
        ...pageInput,
        cursor: z.string().regex(/^\d{1,18}$/, "must be a cursor this API returned").optional(),
        action: z.string().max(100).optional(),
        targetType: z.string().max(100).optional(),
        targetId: z.string().max(100).optional(),
      }),
    )
    .query(({ ctx, input }) => ctx.team.audit.list(input)),
});
