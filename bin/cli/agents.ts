import { DISK_MB_MAX, DISK_MB_MIN } from "../../server/services/agent-config";
import { connect, positiveInt, type GlobalOptions } from "./common";
import { CliError, EXIT, toCliError } from "./errors";
import { formatTime, table } from "./output";

type ListOptions = GlobalOptions & { limit?: string; cursor?: string; all?: boolean };

export async function listAgents(options: ListOptions): Promise<void> {
  const { out, client, credentials } = connect(options);
  const limit = options.limit ? positiveInt("--limit", options.limit, { max: 100 }) : 20;
  try {
    const items = [];
    let cursor = options.cursor;
    let nextCursor: string | null = null;
    do {
      const page = await client.agents.list.query({ limit: options.all ? 100 : limit, cursor });
      items.push(...page.items);
      nextCursor = page.nextCursor;
      cursor = nextCursor ?? undefined;
    } while (options.all && nextCursor);
    if (out.json) return out.document({ items, nextCursor });
    if (items.length === 0) return out.notice("No agents yet: `berth agents create --name NAME --model MODEL`.");
    out.line(
      table(
        items.map((agent) => [agent.id, agent.name, agent.isDemo ? `${agent.model} (offline demo)` : agent.model, agent.harness, String(agent.version), formatTime(agent.updatedAt)]),
        ["ID", "NAME", "MODEL", "HARNESS", "VERSION", "UPDATED"],
        out.style,
      ),
    );
    if (nextCursor) out.notice(`More: --cursor ${nextCursor} (or --all).`);
  } catch (error) {
    throw toCliError(error, credentials.url);
  }
}

type CreateOptions = GlobalOptions & {
  name: string;
  model: string;
  systemPrompt?: string;
  network?: string;
  idleTimeout?: string;
  harness?: string;
  maxSteps?: string;
  warmPool?: string;
  diskMb?: string;
};

export async function createAgent(options: CreateOptions): Promise<void> {
  const { out, client, credentials } = connect(options);
  if (options.network !== undefined && options.network !== "none" && options.network !== "egress") {
    throw new CliError(EXIT.usage, `--network must be none or egress (got ${JSON.stringify(options.network)})`);
  }
  const harnesses = ["builtin", "opencode", "claude-code", "codex"] as const;
  if (options.harness !== undefined && !(harnesses as readonly string[]).includes(options.harness)) {
    throw new CliError(EXIT.usage, `--harness must be one of ${harnesses.join(", ")} (got ${JSON.stringify(options.harness)})`);
  }
  const input = {
    name: options.name,
    model: options.model,
    ...(options.systemPrompt !== undefined ? { systemPrompt: options.systemPrompt } : {}),
    ...(options.network !== undefined ? { network: options.network as "none" | "egress" } : {}),
    ...(options.idleTimeout !== undefined ? { idleTimeoutSeconds: positiveInt("--idle-timeout", options.idleTimeout) } : {}),
    ...(options.harness !== undefined ? { harness: options.harness as (typeof harnesses)[number] } : {}),
    ...(options.maxSteps !== undefined ? { maxSteps: positiveInt("--max-steps", options.maxSteps) } : {}),
    ...(options.warmPool !== undefined ? { warmPoolSize: positiveInt("--warm-pool", options.warmPool, { min: 0, max: 50 }) } : {}),
    ...(options.diskMb !== undefined ? { diskMb: positiveInt("--disk-mb", options.diskMb, { min: DISK_MB_MIN, max: DISK_MB_MAX }) } : {}),
  };
  try {
    const agent = await client.agents.create.mutate(input);
    if (out.json) return out.document(agent);
    out.line(`Created agent ${out.style.bold(agent.name)} ${agent.id} (model ${agent.model}${agent.isDemo ? ", offline demo" : ""}).`);
    out.notice(`Start a session: berth sessions new --agent ${agent.id}`);
  } catch (error) {
    throw toCliError(error, credentials.url);
  }
}
