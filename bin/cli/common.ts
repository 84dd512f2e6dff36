import { createBerthClient, type BerthClient } from "../../server/client";
import { resolveCredentials, type Credentials } from "./config";
import { CliError, EXIT, toCliError } from "./errors";
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

/** Runs a command body, turning whatever it throws into the CLI's message and exit code. */
export async function run<T>(context: Context, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (error) {
    throw toCliError(error, context.credentials.url);
  }
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

/** One page of a list (`--limit`, `--cursor`), or every page after the cursor (`--all`, 100 at a time). */
export async function collectPages<T>(
  options: { all?: boolean; cursor?: string },
  limit: number,
  fetchPage: (page: { limit: number; cursor: string | undefined }) => Promise<{ items: T[]; nextCursor: string | null }>,
): Promise<{ items: T[]; nextCursor: string | null }> {
  const items: T[] = [];
  let cursor = options.cursor;
  let nextCursor: string | null = null;
  do {
    const page = await fetchPage({ limit: options.all ? 100 : limit, cursor });
    items.push(...page.items);
    nextCursor = page.nextCursor;
    cursor = nextCursor ?? undefined;
  } while (options.all && nextCursor);
  return { items, nextCursor };
}

/** Agent names by id (first pages only: a name is a nicety in a table, the id is the fallback). */
export async function agentNames(client: BerthClient): Promise<Map<string, string>> {
  const names = new Map<string, string>();
  let cursor: string | undefined;
  for (let page = 0; page < 5; page++) {
    const result = await client.agents.list.query({ limit: 100, cursor });
    for (const agent of result.items) names.set(agent.id, agent.name);
    if (!result.nextCursor) break;
    cursor = result.nextCursor;
  }
  return names;
}

/** `--agent` takes an agent id or an agent's exact name. */
export async function resolveAgent(client: BerthClient, value: string): Promise<string> {
  if (isUuid(value)) return value.toLowerCase();
  const matches: string[] = [];
  let cursor: string | undefined;
  for (;;) {
    const page = await client.agents.list.query({ limit: 100, cursor });
    matches.push(...page.items.filter((agent) => agent.name === value).map((agent) => agent.id));
    if (!page.nextCursor) break;
    cursor = page.nextCursor;
  }
  if (matches.length === 0) throw new CliError(EXIT.notFound, `agent not found: no agent is named ${JSON.stringify(value)}`);
  if (matches.length > 1) throw new CliError(EXIT.usage, `${matches.length} agents are named ${JSON.stringify(value)}: use the id (${matches.join(", ")})`);
  return matches[0]!;
}
