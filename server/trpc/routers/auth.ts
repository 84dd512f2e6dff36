import { z } from "zod";
import { SESSION_COOKIE } from "../context";
import { authedProcedure, publicProcedure, router } from "../init";
import { email, id } from "../inputs";

/** The login cookie (also set by `invitations.signUp`). */
export function sessionCookie(request: Request, value: string, expires: Date): string {
  const url = new URL(request.url);
  const secure =
    url.protocol === "https:" ||
    request.headers.get("x-forwarded-proto") === "https" ||
    ["localhost", "127.0.0.1", "[::1]"].includes(url.hostname);
  return [
    `${SESSION_COOKIE}=${encodeURIComponent(value)}`,
    "Path=/",
    "HttpOnly",
    "SameSite=Lax",
    `Expires=${expires.toUTCString()}`,
    ...(secure ? ["Secure"] : []),
  ].join("; ");
}

export const authRouter = router({
  login: publicProcedure
    .input(z.strictObject({ email, password: z.string().min(1).max(1024), teamId: id.optional() }))
    .mutation(async ({ ctx, input }) => {
      const { token, expiresAt, principal } = await ctx.services.auth.login(input, ctx.clientAddress);
      ctx.responseHeaders.append("set-cookie", sessionCookie(ctx.request, token, expiresAt));
      return { userId: principal.userId!, teamId: principal.teamId, role: principal.role, expiresAt };
    }),
  logout: authedProcedure.mutation(async ({ ctx }) => {
    await ctx.services.auth.logout(ctx.principal);
    ctx.responseHeaders.append("set-cookie", sessionCookie(ctx.request, "", new Date(0)));
    return { ok: true as const };
  }),
  me: authedProcedure.query(async ({ ctx }) => {
    const { principal } = ctx;
    return {
      teamId: principal.teamId,
      role: principal.role,
      via: principal.via,
      userId: principal.userId,
      teams: principal.userId ? await ctx.services.auth.teamsOf(principal.userId) : [],
    };
  }),
  switchTeam: authedProcedure.input(z.strictObject({ teamId: id })).mutation(async ({ ctx, input }) => {
    await ctx.services.auth.switchTeam(ctx.principal, input.teamId);
    return { teamId: input.teamId };
  }),
});
