import { TRPCClientError } from "@trpc/client";

type ErrorData = { code?: string; httpStatus?: number; fieldErrors?: Record<string, string> };

/** The tRPC error code of a failed call (UNAUTHORIZED, NOT_FOUND, …), if it was one. */
export function errorCode(error: unknown): string | undefined {
  return error instanceof TRPCClientError ? (error.data as ErrorData | undefined)?.code : undefined;
}

/** Field-level messages of invalid input, keyed by the field's dotted path. */
export function fieldErrors(error: unknown): Record<string, string> {
  return (error instanceof TRPCClientError ? (error.data as ErrorData | undefined)?.fieldErrors : undefined) ?? {};
}

/** One sentence for a person: the server's message for known errors, a plain one for network trouble. */
export function errorMessage(error: unknown): string {
  if (!error) return "";
  if (error instanceof TRPCClientError) {
    const fields = fieldErrors(error);
    const entries = Object.entries(fields);
    if (entries.length > 0) return entries.map(([field, message]) => (field === "input" ? message : `${field}: ${message}`)).join("; ");
    if (!(error.data as ErrorData | undefined)?.code) return "Could not reach the server. Check the connection and try again.";
    return capitalise(error.message);
  }
  if (error instanceof Error) return capitalise(error.message);
  return "Something went wrong.";
}

function capitalise(text: string): string {
  return text.length > 0 ? text[0]!.toUpperCase() + text.slice(1) : text;
}

let signingOut = false;

/** Set while the user signs out, so the queries failing with UNAUTHORIZED meanwhile send nobody anywhere. */
export function markSigningOut(): void {
  signingOut = true;
}

export function isSigningOut(): boolean {
  return signingOut;
}
