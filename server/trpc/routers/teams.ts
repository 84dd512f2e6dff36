import { z } from "zod";
import { router, teamProcedure } from "../init";
import { email, id, pageInput, password, role } from "../inputs";

export const teamsRouter = router({
  get: teamProcedure.query(({ ctx }) => ctx.team.team.get()),
  members: teamProcedure.input(z.strictObject(pageInput)).query(({ ctx, input }) => ctx.team.team.listMembers(input)),
  addMember: teamProcedure
    .input(z.strictObject({ email, role: role.default("member"), name: z.string().trim().max(200).optional(), password: password.optional() }))
    .mutation(({ ctx, input }) => ctx.team.team.addMember(input)),
  removeMember: teamProcedure.input(z.strictObject({ userId: id })).mutation(async ({ ctx, input }) => {
    await ctx.team.team.removeMember(input);
    return { userId: input.userId };
  }),
  setMemberRole: teamProcedure.input(z.strictObject({ userId: id, role })).mutation(({ ctx, input }) => ctx.team.team.setMemberRole(input)),
});
