/**
 * Domain errors: services throw these; the tRPC layer maps them to error codes in one place.
 * Messages are shown to API callers, so they never contain secret values.
 */
export class DomainError extends Error {
  constructor(
    readonly kind: "not_found" | "conflict" | "forbidden" | "invalid" | "unauthenticated" | "unavailable",
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

/** Postgres unique_violation, for turning a lost race into a clear CONFLICT. */
export function isUniqueViolation(error: unknown): boolean {
  const cause = (error as { cause?: unknown })?.cause ?? error;
  return (cause as { code?: string })?.code === "23505";
}
