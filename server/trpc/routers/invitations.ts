import { z } from "zod";
import { authedProcedure, publicProcedure, router } from "../init";
import { id, password } from "../inputs";
import { sessionCookie } from "./auth";

/** The secret of an invitation link: 32 random bytes, base64url. */
const token = z.string().regex(/^[A-Za-z0-9_-]{43}$/, "is not an invitation token");

/**
 * The invited person's side of invitations (the inviting team's side is `teams.invite`,
 * `teams.invitations`, `teams.revokeInvitation`). Signed in: the invitations for the account's
 * email. With no account yet: the invitation link's token.
 */
export const invitationsRouter = router({
  mine: authedProcedure.query(({ ctx }) => ctx.services.receivedInvitations.listFor(ctx.principal)),
  accept: authedProcedure
    .input(z.strictObject({ invitationId: id }))
    .mutation(({ ctx, input }) => ctx.services.receivedInvitations.accept(ctx.principal, input)),
  decline: authedProcedure
    .input(z.strictObject({ invitationId: id }))
    .mutation(({ ctx, input }) => ctx.services.receivedInvitations.decline(ctx.principal, input)),
  preview: publicProcedure.input(z.strictObject({ token })).query(({ ctx, input }) => ctx.services.receivedInvitations.preview(input.token)),
  /** Creates the account of the invited email (which must have none), joins the team and signs in. */
  signUp: publicProcedure
    .input(z.strictObject({ token, name: z.string().trim().max(200).default(""), password }))
    .mutation(async ({ ctx, input }) => {
      const joined = await ctx.services.receivedInvitations.signUp(input);
      const { token: sessionToken, expiresAt } = await ctx.services.auth.login({ email: joined.email, password: input.password, teamId: joined.teamId }, ctx.clientAddress);
      ctx.responseHeaders.append("set-cookie", sessionCookie(ctx.request, sessionToken, expiresAt));
      return { userId: joined.userId, teamId: joined.teamId, role: joined.role };
    }),
});
