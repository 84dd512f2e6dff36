import { initTRPC, TRPCError } from "@trpc/server";
import superjson from "superjson";
import { ZodError } from "zod";
import { crossOriginReason } from "../request-origin";
import { DomainError, isDatabaseUnavailable } from "../services/errors";
import type { TrpcContext } from "./context";

/** Invalid input found outside a zod schema, with the field it is in (a zod v4 ZodError is not an Error, so tRPC would not keep it as the cause). */
class InputFieldError extends Error {
  constructor(
    readonly path: (string | number)[],
    readonly fieldMessage: string,
  ) {
    super(`${path.join(".") || "input"}: ${fieldMessage}`);
    this.name = "InputFieldError";
  }
}

/** Per-procedure settings read by the middlewares below. */
export type ProcedureMeta = {
  /** Top-level input fields that never reach a Postgres text column (file contents for a sandbox): U+0000 is allowed in them. */
  nulAllowedIn?: string[];
};

const t = initTRPC.context<TrpcContext>().meta<ProcedureMeta>().create({
  transformer: superjson,
  // tRPC's default puts the stack trace in every error body unless NODE_ENV=production. Never here:
  // the formatter below adds it back only when the configuration says development (`npm run dev`).
  isDev: false,
  // Pings keep proxies from closing a quiet follow stream; the client reconnects after 30 s of silence.
  sse: { ping: { enabled: true, intervalMs: 10_000 }, client: { reconnectAfterInactivityMs: 30_000 } },
  errorFormatter({ shape, error, ctx }) {
    const cause = error.cause;
    const development = ctx?.services.config.nodeEnv === "development";
    return {
      ...shape,
      // An unexpected error's own text (a database error, a path) is for the server log, not the caller.
      message: shape.data.code === "INTERNAL_SERVER_ERROR" && !development ? "internal error (the server log has the details)" : shape.message,
      data: {
        ...shape.data,
        ...(development ? { stack: error.stack } : {}),
        // Field-level messages for invalid input, keyed by the dotted path of the field.
        fieldErrors:
          cause instanceof ZodError
            ? Object.fromEntries(cause.issues.map((issue) => [issue.path.join(".") || "input", issue.message]))
            : cause instanceof InputFieldError
              ? { [cause.path.join(".") || "input"]: cause.fieldMessage }
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
  rate_limited: "TOO_MANY_REQUESTS",
  precondition: "PRECONDITION_FAILED",
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
 * Cookie-authenticated mutations must come from our own pages (server/request-origin.ts): the
 * browser sends Origin (and Sec-Fetch-Site) on every POST, and a cross-site one is refused.
 * SameSite=Lax is the first line.
 */
function assertSameOrigin(ctx: TrpcContext) {
  const { publicUrl, trustedProxies } = ctx.services.config;
  const reason = crossOriginReason(ctx.request.headers, ctx.peerAddress, { publicUrl, trustedProxies });
  if (reason) throw new TRPCError({ code: "FORBIDDEN", message: reason });
}

/**
 * Postgres cannot store U+0000 in text: a string holding it would fail deep in a service with a
 * database error. Refused here, for every procedure whose meta does not allow it, with the field
 * that holds it.
 */
const noNulInInput = t.middleware(async ({ getRawInput, meta, next }) => {
  const input = await getRawInput();
  const allowed = meta?.nulAllowedIn;
  const checked = allowed && input && typeof input === "object" ? Object.fromEntries(Object.entries(input).filter(([key]) => !allowed.includes(key))) : input;
  const path = nulPath(checked, []);
  if (path) {
    const cause = new InputFieldError(path, "must not contain NUL characters (U+0000)");
    throw new TRPCError({ code: "BAD_REQUEST", message: cause.message, cause });
  }
  return next();
});

function nulPath(value: unknown, path: (string | number)[]): (string | number)[] | null {
  if (typeof value === "string") return value.includes("\u0000") ? path : null;
  if (path.length > 32 || value === null || typeof value !== "object") return null;
  for (const [key, item] of Array.isArray(value) ? value.entries() : Object.entries(value)) {
    if (typeof key === "string" && key.includes("\u0000")) return [...path, key];
    const found = nulPath(item, [...path, key]);
    if (found) return found;
  }
  return null;
}

export const router = t.router;
export const createCallerFactory = t.createCallerFactory;
export const publicProcedure = t.procedure.use(domainErrors).use(noNulInInput);

/** A caller of any team, authenticated by API key or login cookie. */
export const authedProcedure = publicProcedure.use(async ({ ctx, type, next }) => {
  const principal = await ctx.principal();
  if (!principal) {
    const hasCredential = ctx.request.headers.has("authorization");
    throw new TRPCError({ code: "UNAUTHORIZED", message: hasCredential ? "invalid or revoked API key" : "authentication required" });
  }
  if (principal.via === "session" && type === "mutation") assertSameOrigin(ctx);
  return next({ ctx: { principal } });
});

/** Team-scoped: the procedure receives only services bound to the caller's team. */
export const teamProcedure = authedProcedure.use(({ ctx, next }) =>
  next({ ctx: { team: ctx.services.forTeam(ctx.principal) } }),
);
