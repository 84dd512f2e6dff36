/**
 * Domain errors: services throw these; the tRPC layer maps them to error codes in one place.
 * Messages are shown to API callers, so they never contain secret values.
 */
export class DomainError extends Error {
  constructor(
    readonly kind: "not_found" | "conflict" | "forbidden" | "invalid" | "unauthenticated" | "unavailable" | "rate_limited" | "precondition",
    message: string,
  ) {
    super(message);
    this.name = "DomainError";
  }
}

export const notFound = (what: string) => new DomainError("not_found", `${what} not found`);
export const conflict = (message: string) => new DomainError("conflict", message);
export const forbidden = (message: string) => new DomainError("forbidden", message);
export const invalid = (message: string) => new DomainError("invalid", message);
/** The installation cannot do this until an operator fixes something (no sandboxes on this host). */
export const precondition = (message: string) => new DomainError("precondition", message);

/**
 * The Postgres error under a failed query (drizzle wraps the driver's error; the SQLSTATE is on its
 * cause): its code, and the message a PL/pgSQL RAISE gave it.
 */
export function postgresErrorOf(error: unknown): { code?: string; message?: string } {
  return (((error as { cause?: unknown } | null)?.cause ?? error) ?? {}) as { code?: string; message?: string };
}

/** Postgres unique_violation, for turning a lost race into a clear CONFLICT. */
export function isUniqueViolation(error: unknown): boolean {
  return postgresErrorOf(error).code === "23505";
}

/** Connection-level failures (the database is down, restarting or unreachable), as opposed to bad queries. */
const UNAVAILABLE_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "ECONNABORTED",
  "ENOTCONN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EAI_AGAIN", // the database's host name did not resolve, for now
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
  "57P01", // admin_shutdown
  "57P02", // crash_shutdown
  "57P03", // cannot_connect_now (starting up)
  "53300", // too_many_connections (every client reconnecting at once after a restart)
  "08000",
  "08001",
  "08003",
  "08004",
  "08006",
]);

export function isDatabaseUnavailable(error: unknown): boolean {
  for (let current = error, depth = 0; current && depth < 6; current = (current as { cause?: unknown }).cause, depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === "string" && UNAVAILABLE_CODES.has(code)) return true;
    // A Unix socket whose server is gone: its file is removed when Postgres stops.
    if (code === "ENOENT" && (current as { syscall?: unknown }).syscall === "connect") return true;
    if (current instanceof AggregateError && current.errors.some((inner) => isDatabaseUnavailable(inner))) return true;
  }
  return false;
}
