import { z } from "zod";
import { egressPolicy, networkOf, policyFromNetwork, type EgressPolicy } from "../egress/policy";
import { invalid } from "./errors";

/** Environment variable names: what a sandbox can receive (secrets and agent env alike). */
export const envName = z
  .string()
  .min(1)
  .max(100)
  .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "must be letters, digits and '_', not starting with a digit");

/** Bounds of an agent's workspace disk quota, in MiB. */
export const DISK_MB_MIN = 64;
export const DISK_MB_MAX = 1_048_576;
/** Also the database column's default, so versions written before the field existed read as this. */
export const DISK_MB_DEFAULT = 2048;

/** Everything an agent version fixes. Limits keep one row from becoming a denial of service. */
export const agentConfigFields = {
  harness: z.enum(["builtin", "opencode", "claude-code", "codex"]),
  model: z.string().trim().min(1).max(200),
  systemPrompt: z.string().max(100_000),
  sandboxImage: z.string().trim().min(1).max(300).nullable(),
  cpuMillis: z.number().int().min(100).max(64_000),
  memoryMb: z.number().int().min(128).max(262_144),
  /** Workspace disk quota in MiB (Kubernetes: the workspace claim's requested storage). */
  diskMb: z
    .number({ error: "must be a whole number of MiB" })
    .int("must be a whole number of MiB")
    .min(DISK_MB_MIN, `must be at least ${DISK_MB_MIN} MiB`)
    .max(DISK_MB_MAX, `must be at most ${DISK_MB_MAX} MiB (1 TiB)`),
  /** Shorthand of `egress`: none = mode none, egress = mode open. Kept in step with `egress`. */
  network: z.enum(["none", "egress"]),
  /** What the egress gateway lets this agent's sandboxes reach; read per connection, so edits apply at once. */
  egress: egressPolicy,
  idleTimeoutSeconds: z.number().int().min(30).max(7 * 24 * 3600),
  maxSteps: z.number().int().min(1).max(500),
  busyPolicy: z.enum(["queue", "reject"]),
  /** Kubernetes backend: ready sandboxes kept in a SandboxWarmPool for this version (0 = none). The local backend ignores it. */
  warmPoolSize: z.number().int().min(0).max(50),
  env: z
    .record(envName, z.string().max(8_192))
    .refine((env) => Object.keys(env).length <= 100, "at most 100 variables"),
};

export const agentName = z.string().trim().min(1).max(100);

export const AGENT_DEFAULTS = {
  harness: "builtin",
  systemPrompt: "",
  sandboxImage: null,
  cpuMillis: 1000,
  memoryMb: 1024,
  diskMb: DISK_MB_DEFAULT,
  network: "none",
  egress: { mode: "none", allow: [] } as EgressPolicy,
  idleTimeoutSeconds: 900,
  maxSteps: 20,
  busyPolicy: "queue",
  warmPoolSize: 0,
  env: {},
} as const;

export type AgentConfig = {
  [K in keyof typeof agentConfigFields]: z.infer<(typeof agentConfigFields)[K]>;
};

/** The offline model that needs no gateway (for evaluation and tests). */
export const DEMO_MODEL = "demo";

/**
 * Fills `egress` from the `network` shorthand (or `network` from `egress`) in a set of changes;
 * both given must agree. An update that names neither leaves both as they were.
 */
export function withEgressShorthand<T extends Partial<Pick<AgentConfig, "network" | "egress">>>(changes: T): T {
  if (changes.egress) {
    const implied = networkOf(changes.egress);
    if (changes.network && changes.network !== implied) {
      throw invalid(`network "${changes.network}" contradicts egress mode "${changes.egress.mode}" (network is a shorthand: none = mode none, egress = mode open); give only egress`);
    }
    return { ...changes, network: implied };
  }
  if (changes.network) return { ...changes, egress: policyFromNetwork(changes.network) };
  return changes;
}
