import { initTRPC, TRPCError } from "@trpc/server";
import superjson from "superjson";
import { ZodError } from "zod";
import { DomainError, isDatabaseUnavailable } from "../services/errors";
import type { TrpcContext } from "./context";

const t = initTRPC.context<TrpcContext>().create({
  transformer: superjson,
  // Pings keep proxies from closing a quiet follow stream; the client reconnects after 30 s of silence.
  sse: { ping: { enabled: true, intervalMs: 10_000 }, client: { reconnectAfterInactivityMs: 30_000 } },
  errorFormatter({ shape, error }) {
    const cause = error.cause;
    return {
      ...shape,
      data: {
        ...shape.data,
        // Field-level messages for invalid input, keyed by the dotted path of the field.
        fieldErrors:
          cause instanceof ZodError
            ? Object.fromEntries(cause.issues.map((issue) => [issue.path.join(".") || "input", issue.message]))
            : undefined,
      },
    };
  },
});

const DOMAIN_TO_TRPC = {
  not_found: "NOT_FOUND",
  conflict: "CONFLICT",
  forbidden: "FORBIDDEN",
  invalid: "BAD_REQUEST",
  unauthenticated: "UNAUTHORIZED",
  unavailable: "SERVICE_UNAVAILABLE",
} as const;

/** Services throw DomainErrors; this is the one place they become tRPC errors. */
const domainErrors = t.middleware(async ({ next }) => {
  const result = await next();
  if (!result.ok && result.error.cause instanceof DomainError) {
    const cause = result.error.cause;
    throw new TRPCError({ code: DOMAIN_TO_TRPC[cause.kind], message: cause.message, cause });
  }
  if (!result.ok && isDatabaseUnavailable(result.error)) {
    throw new TRPCError({ code: "SERVICE_UNAVAILABLE", message: "the database is unavailable; try again shortly", cause: result.error });
  }
  return result;
});

/**
 * Cookie-authenticated mutations must come from our own pages: the browser sends Origin (or
 * Sec-Fetch-Site) on every POST, and a cross-site one is refused. SameSite=Lax is the first line.
 */
function assertSameOrigin(request: Request) {
  const fetchSite = request.headers.get("sec-fetch-site");
  if (fetchSite && fetchSite !== "same-origin" && fetchSite !== "none") {
    throw new TRPCError({ code: "FORBIDDEN", message: "cross-site request refused" });
  }
  const origin = request.headers.get("origin");
  if (origin) {
    const host = request.headers.get("x-forwarded-host") ?? request.headers.get("host");
    if (new URL(origin).host !== host) throw new TRPCError({ code: "FORBIDDEN", message: "cross-origin request refused" });
  }
}

export const router = t.router;
export const createCallerFactory = t.createCallerFactory;
export const publicProcedure = t.procedure.use(domainErrors);

/** A caller of any team, authenticated by API key or login cookie. */
export const authedProcedure = publicProcedure.use(async ({ ctx, type, next }) => {
  const principal = await ctx.principal();
  if (!principal) {
    const hasCredential = ctx.request.headers.has("authorization");
    throw new TRPCError({ code: "UNAUTHORIZED", message: hasCredential ? "invalid or revoked API key" : "authentication required" });
  }
  if (principal.via === "session" && type === "mutation") assertSameOrigin(ctx.request);
  return next({ ctx: { principal } });
});

/** Team-scoped: the procedure receives only services bound to the caller's team. */
export const teamProcedure = authedProcedure.use(({ ctx, next }) =>
  next({ ctx: { team: ctx.services.forTeam(ctx.principal) } }),
);
