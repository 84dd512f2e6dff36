import { createBerthClient, type BerthClient } from "../../server/client";
import { resolveCredentials, type Credentials } from "./config";
import { CliError, EXIT } from "./errors";
import { createOutput, type Output } from "./output";

export type GlobalOptions = { json?: boolean };

export type Context = { out: Output; client: BerthClient; credentials: Credentials };

export function output(options: GlobalOptions): Output {
  return createOutput({ json: Boolean(options.json) });
}

/** The output and a client for the stored (or environment) credentials; exit 3 when there are none. */
export function connect(options: GlobalOptions): Context {
  const out = output(options);
  const credentials = resolveCredentials();
  return { out, client: createBerthClient({ url: credentials.url, apiKey: credentials.apiKey }), credentials };
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isUuid(value: string): boolean {
  return UUID.test(value);
}

/** A session id argument: not a UUID means no such session (exit 4) without asking the server. */
export function sessionId(value: string): string {
  if (!isUuid(value)) throw new CliError(EXIT.notFound, `session not found: ${JSON.stringify(value)} is not a session id (a UUID)`);
  return value.toLowerCase();
}

export function positiveInt(name: string, value: string, options: { min?: number; max?: number } = {}): number {
  const min = options.min ?? 1;
  const parsed = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(parsed) || parsed < min || (options.max !== undefined && parsed > options.max)) {
    throw new CliError(EXIT.usage, `${name} must be a whole number${options.max === undefined ? ` of at least ${min}` : ` from ${min} to ${options.max}`} (got ${JSON.stringify(value)})`);
  }
  return parsed;
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
