import { EGRESS_MODE_LABEL, EGRESS_MODES, egressSummary, type EgressMode, type EgressPolicyView, type EgressRule } from "../../app/lib/egress";
import { formatAllowRule, parseAllowFlag, ruleProblem } from "../../app/lib/egress-rules";
import { DISK_MB_MAX, DISK_MB_MIN } from "../../server/services/agent-config";
import { collectPages, connect, positiveInt, resolveAgent, run, type GlobalOptions } from "./common";
import { CliError, EXIT } from "./errors";
import { formatTime, table, type Output } from "./output";

type ListOptions = GlobalOptions & { limit?: string; cursor?: string; all?: boolean };

export async function listAgents(options: ListOptions): Promise<void> {
  const context = connect(options);
  const { out, client } = context;
  const limit = options.limit ? positiveInt("--limit", options.limit, { max: 100 }) : 20;
  await run(context, async () => {
    const { items, nextCursor } = await collectPages(options, limit, (page) => client.agents.list.query(page));
    if (out.json) return out.document({ items, nextCursor });
    if (items.length === 0) return out.notice("No agents yet: `berth agents create --name NAME --model MODEL`.");
    out.line(
      table(
        items.map((agent) => [
          agent.id,
          agent.name,
          agent.isDemo ? `${agent.model} (offline demo)` : agent.model,
          agent.harness,
          egressSummary(agent.egress),
          String(agent.version),
          formatTime(agent.updatedAt),
        ]),
        ["ID", "NAME", "MODEL", "HARNESS", "EGRESS", "VERSION", "UPDATED"],
        out.style,
      ),
    );
    if (nextCursor) out.notice(`More: --cursor ${nextCursor} (or --all).`);
  });
}

/** The options `agents create` and `agents update` share. `allow` is false after `--no-allow`. */
type ConfigOptions = GlobalOptions & {
  model?: string;
  systemPrompt?: string;
  network?: string;
  egress?: string;
  allow?: string[] | false;
  idleTimeout?: string;
  harness?: string;
  maxSteps?: string;
  warmPool?: string;
  diskMb?: string;
};

const HARNESSES = ["builtin", "opencode", "claude-code", "codex"] as const;

/** Every `--allow` parsed, or a usage error naming the first bad one (before anything is sent). */
function allowRules(texts: string[]): EgressRule[] {
  return texts.map((text) => {
    try {
      return parseAllowFlag(text);
    } catch (error) {
      throw new CliError(EXIT.usage, `invalid --allow ${JSON.stringify(text)}: ${ruleProblem(text, error)}`);
    }
  });
}

type EgressFlags = { mode?: EgressMode; allow?: EgressRule[] | false };

/** `--egress` and `--allow`/`--no-allow`, checked and parsed (usage errors before anything is sent). */
function egressFlags(options: ConfigOptions): EgressFlags {
  if (options.egress !== undefined && !(EGRESS_MODES as readonly string[]).includes(options.egress)) {
    throw new CliError(EXIT.usage, `--egress must be one of ${EGRESS_MODES.join(", ")} (got ${JSON.stringify(options.egress)})`);
  }
  return { mode: options.egress as EgressMode | undefined, allow: Array.isArray(options.allow) ? allowRules(options.allow) : options.allow };
}

/**
 * The policy the flags ask for, or undefined when they name none. `--allow` implies the allow-list
 * mode and replaces the whole list; `--egress` alone keeps the list the agent has (`current`),
 * since the policy is sent whole.
 */
function egressPolicy(flags: EgressFlags, current?: EgressPolicyView): EgressPolicyView | undefined {
  if (flags.mode === undefined && flags.allow === undefined) return undefined;
  const allow = flags.allow === undefined ? (current?.allow ?? []) : flags.allow === false ? [] : flags.allow;
  return { mode: flags.mode ?? (flags.allow ? "allowlist" : (current?.mode ?? "none")), allow };
}

/** The configuration fields the flags set (create and update alike). */
function configFromFlags(options: ConfigOptions) {
  if (options.network !== undefined && options.network !== "none" && options.network !== "egress") {
    throw new CliError(EXIT.usage, `--network must be none or egress (got ${JSON.stringify(options.network)})`);
  }
  if (options.harness !== undefined && !(HARNESSES as readonly string[]).includes(options.harness)) {
    throw new CliError(EXIT.usage, `--harness must be one of ${HARNESSES.join(", ")} (got ${JSON.stringify(options.harness)})`);
  }
  return {
    ...(options.model !== undefined ? { model: options.model } : {}),
    ...(options.systemPrompt !== undefined ? { systemPrompt: options.systemPrompt } : {}),
    ...(options.network !== undefined ? { network: options.network as "none" | "egress" } : {}),
    ...(options.idleTimeout !== undefined ? { idleTimeoutSeconds: positiveInt("--idle-timeout", options.idleTimeout) } : {}),
    ...(options.harness !== undefined ? { harness: options.harness as (typeof HARNESSES)[number] } : {}),
    ...(options.maxSteps !== undefined ? { maxSteps: positiveInt("--max-steps", options.maxSteps) } : {}),
    ...(options.warmPool !== undefined ? { warmPoolSize: positiveInt("--warm-pool", options.warmPool, { min: 0, max: 50 }) } : {}),
    ...(options.diskMb !== undefined ? { diskMb: positiveInt("--disk-mb", options.diskMb, { min: DISK_MB_MIN, max: DISK_MB_MAX }) } : {}),
  };
}

function noteUnusedRules(out: Output, egress: EgressPolicyView | undefined): void {
  if (egress && egress.mode !== "allowlist" && egress.allow.length > 0) {
    out.notice(`The ${egress.allow.length} allow ${egress.allow.length === 1 ? "rule is" : "rules are"} kept, but not applied while egress is ${egress.mode}.`);
  }
}

/** `egress allow-list (2 rules): api.example.com, *.github.com:443` */
function egressLine(policy: EgressPolicyView): string {
  const rules = policy.allow.map(formatAllowRule);
  if (policy.mode === "allowlist") return `egress ${egressSummary(policy)}${rules.length > 0 ? `: ${rules.join(", ")}` : ": nothing is allowed"}`;
  return `egress ${EGRESS_MODE_LABEL[policy.mode]}`;
}

type CreateOptions = ConfigOptions & { name: string; model: string };

export async function createAgent(options: CreateOptions): Promise<void> {
  const context = connect(options);
  const { out, client } = context;
  const egress = egressPolicy(egressFlags(options));
  const input = { name: options.name, ...configFromFlags(options), model: options.model, ...(egress ? { egress } : {}) };
  await run(context, async () => {
    const agent = await client.agents.create.mutate(input);
    if (out.json) return out.document(agent);
    out.line(`Created agent ${out.style.bold(agent.name)} ${agent.id} (model ${agent.model}${agent.isDemo ? ", offline demo" : ""}); ${egressLine(agent.egress)}.`);
    noteUnusedRules(out, agent.egress);
    out.notice(`Start a session: berth sessions new --agent ${agent.id}`);
  });
}

type UpdateOptions = ConfigOptions & { name?: string };

export async function updateAgent(agent: string, options: UpdateOptions): Promise<void> {
  const context = connect(options);
  const { out, client } = context;
  const config = configFromFlags(options);
  const flags = egressFlags(options);
  if (Object.keys(config).length === 0 && options.name === undefined && flags.mode === undefined && flags.allow === undefined) {
    throw new CliError(EXIT.usage, "nothing to change: give at least one option (see berth agents update --help)");
  }
  await run(context, async () => {
    const agentId = await resolveAgent(client, agent);
    const current = flags.mode !== undefined && flags.allow === undefined ? (await client.agents.get.query({ agentId })).egress : undefined;
    const egress = egressPolicy(flags, current);
    const updated = await client.agents.update.mutate({ agentId, ...(options.name !== undefined ? { name: options.name } : {}), ...config, ...(egress ? { egress } : {}) });
    if (out.json) return out.document(updated);
    out.line(`Updated agent ${out.style.bold(updated.name)} to version ${updated.version}; ${egressLine(updated.egress)}.`);
    noteUnusedRules(out, updated.egress);
    out.notice("New sessions use it; running sessions keep their version, except for egress, which applies to them at once.");
  });
}

export async function showAgent(agent: string, options: GlobalOptions): Promise<void> {
  const context = connect(options);
  const { out, client } = context;
  await run(context, async () => {
    const agentId = await resolveAgent(client, agent);
    const shown = await client.agents.get.query({ agentId });
    if (out.json) return out.document(shown);
    const rules = shown.egress.allow.map(formatAllowRule);
    const env = Object.entries(shown.env).map(([key, value]) => `${key}=${value}`);
    const rows: Array<[string, string]> = [
      ["id", shown.id],
      ["name", shown.name],
      ["version", String(shown.version)],
      ["model", shown.isDemo ? `${shown.model} (offline demo)` : shown.model],
      ["harness", shown.harness],
      ["egress", egressSummary(shown.egress) + (shown.egress.mode !== "allowlist" && rules.length > 0 ? ` (${rules.length} allow rules kept, not applied)` : "")],
      ...rules.map((rule, index): [string, string] => [index === 0 ? "  allow" : "", rule]),
      ...(shown.egress.mode === "allowlist" && rules.length === 0 ? [["  allow", "(none: every connection is refused)"] as [string, string]] : []),
      ["resources", `${shown.cpuMillis / 1000} CPU, ${shown.memoryMb} MiB memory, ${shown.diskMb} MiB disk`],
      ["idle timeout", `${shown.idleTimeoutSeconds} s`],
      ["max steps", String(shown.maxSteps)],
      ["while busy", shown.busyPolicy],
      ["warm pool", String(shown.warmPoolSize)],
      ["sandbox image", shown.sandboxImage ?? "default"],
      ["env", env.length > 0 ? env.join(" ") : "-"],
      ["system prompt", shown.systemPrompt ? shown.systemPrompt.replace(/\n/g, "\n" + " ".repeat(15)) : "-"],
      ["updated", formatTime(shown.updatedAt)],
    ];
    for (const [key, value] of rows) out.line(`${out.style.dim(key.padEnd(15))}${value}`);
  });
}
