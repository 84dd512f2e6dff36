import { z } from "zod";
import { router, teamProcedure } from "../init";
import { email, id, pageInput, role } from "../inputs";

export const teamsRouter = router({
  get: teamProcedure.query(({ ctx }) => ctx.team.team.get()),
  members: teamProcedure.input(z.strictObject(pageInput)).query(({ ctx, input }) => ctx.team.team.listMembers(input)),
  /**
   * Invites a person by email: a pending invitation, the same answer whether or not the email has an
   * account. The token (in `path`) is returned once; the person joins only by accepting.
   */
  invite: teamProcedure
    .input(z.strictObject({ email, role: role.default("member") }))
    .mutation(({ ctx, input }) => ctx.team.invitations.invite(input)),
  invitations: teamProcedure.input(z.strictObject(pageInput)).query(({ ctx, input }) => ctx.team.invitations.list(input)),
  revokeInvitation: teamProcedure.input(z.strictObject({ invitationId: id })).mutation(({ ctx, input }) => ctx.team.invitations.revoke(input)),
  removeMember: teamProcedure.input(z.strictObject({ userId: id })).mutation(async ({ ctx, input }) => {
    await ctx.team.team.removeMember(input);
    return { userId: input.userId };
  }),
  setMemberRole: teamProcedure.input(z.strictObject({ userId: id, role })).mutation(({ ctx, input }) => ctx.team.team.setMemberRole(input)),
});
