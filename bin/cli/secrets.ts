import { text as readStream } from "node:stream/consumers";
import type { BerthClient } from "../../server/client";
import { agentNames, collectPages, connect, isUuid, positiveInt, resolveAgent, run, type GlobalOptions } from "./common";
import { CliError, EXIT } from "./errors";
import { readHidden } from "./login";
import { formatTime, table } from "./output";

const DEFAULT_HEADER = "Authorization";
const DEFAULT_TEMPLATE = "Bearer {{value}}";

type Brokered = { hosts: string[]; header: string; template: string };

function delivery(brokered: Brokered | null): string {
  return brokered ? `brokered to ${brokered.hosts.join(", ")} (${brokered.header}: ${brokered.template})` : "environment";
}

type ListOptions = GlobalOptions & { agent?: string; limit?: string; cursor?: string; all?: boolean };

export async function listSecrets(options: ListOptions): Promise<void> {
  const context = connect(options);
  const { out, client } = context;
  const limit = options.limit ? positiveInt("--limit", options.limit, { max: 100 }) : 50;
  await run(context, async () => {
    const agentId = options.agent ? await resolveAgent(client, options.agent) : undefined;
    const { items, nextCursor } = await collectPages(options, limit, (page) => client.secrets.list.query({ ...page, agentId }));
    if (out.json) return out.document({ items, nextCursor });
    if (items.length === 0) return out.notice("No secrets: `berth secrets set NAME`.");
    const names = await agentNames(client);
    out.line(
      table(
        items.map((secret) => [secret.name, secret.agentId ? `agent ${names.get(secret.agentId) ?? secret.agentId}` : "team", delivery(secret.brokered), formatTime(secret.updatedAt)]),
        ["NAME", "SCOPE", "DELIVERY", "UPDATED"],
        out.style,
      ),
    );
    if (nextCursor) out.notice(`More: --cursor ${nextCursor} (or --all).`);
  });
}

type SetOptions = GlobalOptions & { agent?: string; value?: string; brokerHost?: string[]; brokerHeader?: string; brokerTemplate?: string };

/** The value: `--value`, else typed without echo on a terminal, else all of stdin (one final newline dropped). */
async function readValue(name: string, options: SetOptions): Promise<string> {
  if (options.value !== undefined) return options.value;
  if (process.stdin.isTTY) return readHidden(`Value of ${name}: `);
  return (await readStream(process.stdin)).replace(/\r?\n$/, "");
}

export async function setSecret(name: string, options: SetOptions): Promise<void> {
  const hosts = (options.brokerHost ?? []).flatMap((host) => host.split(",")).map((host) => host.trim()).filter(Boolean);
  if (hosts.length === 0 && (options.brokerHeader !== undefined || options.brokerTemplate !== undefined)) {
    throw new CliError(EXIT.usage, "--broker-header and --broker-template need --broker-host (the hosts the secret may be sent to)");
  }
  if (options.brokerTemplate !== undefined && !options.brokerTemplate.includes("{{value}}")) {
    throw new CliError(EXIT.usage, `--broker-template must contain {{value}}, where the secret goes (got ${JSON.stringify(options.brokerTemplate)})`);
  }
  const context = connect(options);
  const { out, client } = context;
  const value = await readValue(name, options);
  if (value === "") throw new CliError(EXIT.usage, "the value is empty (give --value, type it when asked, or pipe it on stdin)");
  const brokered = hosts.length > 0 ? { hosts, header: options.brokerHeader ?? DEFAULT_HEADER, template: options.brokerTemplate ?? DEFAULT_TEMPLATE } : undefined;
  await run(context, async () => {
    const agentId = options.agent ? await resolveAgent(client, options.agent) : undefined;
    const secret = await client.secrets.set.mutate({ name, value, ...(agentId ? { agentId } : {}), ...(brokered ? { brokered } : {}) });
    if (out.json) return out.document(secret);
    out.line(`Set ${out.style.bold(secret.name)} (${secret.agentId ? `agent ${options.agent}` : "team"}, ${delivery(secret.brokered)}).`);
    out.notice(
      secret.brokered
        ? "Sandboxes started from now on see a stub; the egress gateway puts the value into HTTPS requests to those hosts only."
        : "Sandboxes started from now on get the new value.",
    );
  });
}

/** The secret called `name` in the given scope (team-wide without `--agent`), or an id. */
async function findSecret(client: BerthClient, name: string, agentId: string | undefined): Promise<string> {
  if (isUuid(name)) return name.toLowerCase();
  let cursor: string | undefined;
  for (;;) {
    const page = await client.secrets.list.query({ limit: 100, cursor, agentId });
    const found = page.items.find((secret) => secret.name === name && secret.agentId === (agentId ?? null));
    if (found) return found.id;
    if (!page.nextCursor) break;
    cursor = page.nextCursor;
  }
  throw new CliError(EXIT.notFound, `secret not found: no ${agentId ? "secret of that agent" : "team-wide secret"} is named ${JSON.stringify(name)}${agentId ? "" : " (an agent's own secret needs --agent)"}`);
}

export async function deleteSecret(name: string, options: GlobalOptions & { agent?: string }): Promise<void> {
  const context = connect(options);
  const { out, client } = context;
  await run(context, async () => {
    const agentId = options.agent ? await resolveAgent(client, options.agent) : undefined;
    const secretId = await findSecret(client, name, agentId);
    await client.secrets.delete.mutate({ secretId });
    if (out.json) return out.document({ deleted: secretId });
    out.line(`Deleted ${name}.`);
  });
}
