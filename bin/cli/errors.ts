/** Exit codes scripts can rely on (README, "CLI"). */
export const EXIT = {
  ok: 0,
  /** The server refused or failed the request (its message is printed), or it could not be reached. */
  error: 1,
  /** Bad command line: unknown command or option, missing or malformed argument. */
  usage: 2,
  /** Not logged in, or the API key is invalid, revoked or lacks the role. */
  unauthorized: 3,
  /** The agent or session does not exist (for this team). */
  notFound: 4,
} as const;

export class CliError extends Error {
  constructor(
    readonly exitCode: number,
    message: string,
  ) {
    super(message);
  }
}

type TrpcErrorLike = {
  message: string;
  data?: { code?: string; httpStatus?: number; fieldErrors?: Record<string, string> } | null;
  cause?: unknown;
};

function isTrpcError(error: unknown): error is TrpcErrorLike {
  return error instanceof Error && error.name === "TRPCClientError";
}

/** The tRPC error code of a failed call, when the server answered with one. */
export function trpcCode(error: unknown): string | undefined {
  return isTrpcError(error) ? (error.data?.code ?? undefined) : undefined;
}

/**
 * True when the call failed before the server answered (refused, reset, DNS, timeout) or the server
 * said it cannot serve now: worth retrying.
 */
export function isTransient(error: unknown): boolean {
  const code = trpcCode(error);
  if (code) return ["SERVICE_UNAVAILABLE", "INTERNAL_SERVER_ERROR", "TIMEOUT", "BAD_GATEWAY", "GATEWAY_TIMEOUT", "CLIENT_CLOSED_REQUEST"].includes(code);
  if (isTrpcError(error)) return true;
  return error instanceof TypeError || (error as NodeJS.ErrnoException | undefined)?.code !== undefined;
}

/** Turns anything a command threw into the message and exit code to end with. */
export function toCliError(error: unknown, url?: string): CliError {
  if (error instanceof CliError) return error;
  if (isTrpcError(error)) {
    const code = error.data?.code;
    if (!code) {
      const reason = causeMessage(error.cause) ?? error.message;
      return new CliError(EXIT.error, `cannot reach Berth${url ? ` at ${url}` : ""}: ${reason}`);
    }
    const fields = Object.entries(error.data?.fieldErrors ?? {}).map(([field, message]) => `${field}: ${message}`);
    const message = fields.length > 0 ? `invalid input: ${fields.join("; ")}` : error.message;
    if (code === "UNAUTHORIZED") return new CliError(EXIT.unauthorized, `${message} (run \`berth login\`)`);
    if (code === "FORBIDDEN") return new CliError(EXIT.unauthorized, message);
    if (code === "NOT_FOUND") return new CliError(EXIT.notFound, message);
    return new CliError(EXIT.error, message);
  }
  return new CliError(EXIT.error, error instanceof Error ? error.message : String(error));
}

function causeMessage(cause: unknown): string | undefined {
  if (!(cause instanceof Error)) return undefined;
  const inner = (cause as { cause?: unknown }).cause;
  if (inner instanceof Error) return `${cause.message} (${(inner as NodeJS.ErrnoException).code ?? inner.message})`;
  return cause.message;
}
