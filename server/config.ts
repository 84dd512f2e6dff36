import path from "node:path";
import { z } from "zod";
import { postgresTarget } from "../db/postgres-url";
import { parseTrustedProxies, type TrustedProxies } from "./client-address";
import { parseCidrList, parseResolveMap, type Cidr, type ResolveMap } from "./egress/addresses";

/**
 * The whole configuration surface of Berth. Environment variables are read here, once, and nowhere
 * else: every other module receives a typed `Config`.
 */

const SECRET_VARIABLES = new Set([
  "DATABASE_URL",
  "BERTH_SECRET_KEY",
  "BERTH_ADMIN_API_KEY",
  "BERTH_ADMIN_PASSWORD",
  "LITELLM_API_KEY",
  "BERTH_METRICS_TOKEN",
]);

const CONTAINER_ENV_PREFIX = "CONTAINER_ENV_";

const port = (fallback: number) =>
  z
    .string()
    .default(String(fallback))
    .refine((value) => /^\d+$/.test(value) && Number(value) >= 1 && Number(value) <= 65535, {
      message: "must be a whole number from 1 to 65535",
    })
    .transform(Number);

const wholeNumber = (fallback: number, max: number) =>
  z
    .string()
    .default(String(fallback))
    .refine((value) => /^\d+$/.test(value) && Number(value) <= max, { message: `must be a whole number from 0 to ${max}` })
    .transform(Number);

const positiveInt = (fallback: number, max: number) =>
  z
    .string()
    .default(String(fallback))
    .refine((value) => /^\d+$/.test(value) && Number(value) >= 1 && Number(value) <= max, {
      message: `must be a whole number from 1 to ${max}`,
    })
    .transform(Number);

const optionalString = z
  .string()
  .optional()
  .transform((value) => (value === undefined || value.trim() === "" ? undefined : value));

const postgresUrl = z
  .string()
  .refine((value) => /^postgres(ql)?:\/\//.test(value) && URL.canParse(value), {
    message: "must be a postgres:// or postgresql:// URL",
  })
  .refine((value) => !URL.canParse(value) || isSocketDirOrNoHostParameter(value), {
    message: "may name a Unix socket directory in ?host= (an absolute path, such as ?host=/var/run/postgresql), nothing else",
  });

/** What connectPostgres accepts in `?host=` (db/postgres-url.ts), checked where the variable is read. */
function isSocketDirOrNoHostParameter(url: string): boolean {
  try {
    postgresTarget(url);
    return true;
  } catch {
    return false;
  }
}

const httpUrl = z
  .string()
  .refine((value) => /^https?:\/\//.test(value) && URL.canParse(value), {
    message: "must be an http:// or https:// URL",
  })
  .transform((value) => value.replace(/\/+$/, ""));

/** 32 bytes, given as 64 hex characters or as base64. */
const secretKey = z.string().transform((value, ctx) => {
  const bytes = /^[0-9a-fA-F]{64}$/.test(value) ? Buffer.from(value, "hex") : Buffer.from(value, "base64");
  if (bytes.length !== 32) {
    ctx.addIssue({ code: "custom", message: "must be 32 bytes, as 64 hex characters or base64" });
    return z.NEVER;
  }
  return bytes;
});

/** An optional absolute path to a harness binary the local backend binds into jails. */
const binaryPath = (name: string) =>
  optionalString.pipe(
    z
      .string()
      .refine((value) => path.isAbsolute(value), { message: `must be an absolute path to the ${name} binary` })
      .optional(),
  );

/** A setting parsed by a function that throws a readable Error. */
function parsedWith<T>(parse: (value: string) => T, value: string | undefined, ctx: z.RefinementCtx): T | undefined {
  if (value === undefined) return undefined;
  try {
    return parse(value);
  } catch (error) {
    ctx.addIssue({ code: "custom", message: error instanceof Error ? error.message : String(error) });
    return z.NEVER;
  }
}

const environmentSchema = z.object({
  NODE_ENV: z.enum(["development", "production", "test"]).default("production"),
  PORT: port(3000),
  HOST: z.string().min(1).default("0.0.0.0"),
  DATABASE_URL: optionalString.pipe(postgresUrl.optional()),
  BERTH_DATA_DIR: z.string().min(1).default("./.berth"),
  BERTH_SECRET_KEY: optionalString.pipe(secretKey.optional()),
  BERTH_ADMIN_API_KEY: optionalString.pipe(
    z
      .string()
      .regex(/^[A-Za-z0-9_-]{24,200}$/, "must be 24 to 200 characters of letters, digits, '_' or '-'")
      .optional(),
  ),
  BERTH_ADMIN_EMAIL: z.string().email("must be an email address").default("admin@berth.local"),
  BERTH_ADMIN_PASSWORD: optionalString.pipe(z.string().min(12, "must be at least 12 characters").optional()),
  LITELLM_BASE_URL: optionalString.pipe(httpUrl.optional()),
  LITELLM_API_KEY: optionalString,
  BERTH_GATEWAY_TIMEOUT_MS: positiveInt(120_000, 3_600_000),
  BERTH_GATEWAY_IDLE_TIMEOUT_MS: positiveInt(60_000, 3_600_000),
  BERTH_GATEWAY_MAX_RETRIES: z
    .string()
    .default("3")
    .refine((value) => /^\d+$/.test(value) && Number(value) <= 10, { message: "must be a whole number from 0 to 10" })
    .transform(Number),
  BERTH_SANDBOX_BACKEND: z.enum(["local", "kubernetes"]).default("local"),
  BERTH_K8S_NAMESPACE: z
    .string()
    .default("berth")
    .refine((value) => /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(value), { message: "must be a Kubernetes namespace name (DNS label)" }),
  BERTH_SANDBOX_IMAGE: optionalString,
  BERTH_K8S_RUNTIME_CLASS: optionalString.pipe(
    z
      .string()
      .regex(/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/, "must be a RuntimeClass name")
      .optional(),
  ),
  BERTH_SANDBOX_DAEMON_PORT: port(8080),
  BERTH_K8S_WORKSPACE_SIZE: z
    .string()
    .default("5Gi")
    .refine((value) => /^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$/.test(value), { message: "must be a Kubernetes quantity such as 5Gi" }),
  BERTH_K8S_STORAGE_CLASS: optionalString,
  BERTH_K8S_READY_TIMEOUT_MS: positiveInt(180_000, 3_600_000),
  BERTH_WARM_POOL_SIZE: z
    .string()
    .default("2")
    .refine((value) => /^\d+$/.test(value) && Number(value) <= 64, { message: "must be a whole number from 0 to 64" })
    .transform(Number),
  BERTH_WORKSPACE_RETENTION_HOURS: wholeNumber(0, 87_600),
  BERTH_UNSAFE_NO_SANDBOX_ISOLATION: z.enum(["0", "1", "true", "false"]).default("0").transform((value) => value === "1" || value === "true"),
  BERTH_WORKER_CONCURRENCY: positiveInt(32, 256),
  BERTH_DATABASE_POOL_SIZE: positiveInt(20, 500),
  BERTH_SHUTDOWN_TIMEOUT_MS: positiveInt(10_000, 600_000),
  BERTH_OPENCODE_BINARY: binaryPath("opencode"),
  BERTH_CODEX_BINARY: binaryPath("codex"),
  BERTH_CLAUDE_CODE_BINARY: binaryPath("claude"),
  BERTH_HARNESS_TURN_TIMEOUT_MS: positiveInt(1_800_000, 3_600_000),
  BERTH_AUTH_CACHE_MS: wholeNumber(5_000, 60_000),
  BERTH_CLIENT_ADDRESS_HEADER: optionalString
    .pipe(z.string().regex(/^[A-Za-z0-9-]+$/, "must be an HTTP header name, such as x-forwarded-for or fly-client-ip").optional())
    .transform((value) => value?.toLowerCase()),
  BERTH_TRUSTED_PROXIES: optionalString.transform((value, ctx) => {
    if (value === undefined) return undefined;
    try {
      return parseTrustedProxies(value);
    } catch (error) {
      ctx.addIssue({ code: "custom", message: error instanceof Error ? error.message : String(error) });
      return z.NEVER;
    }
  }),
  BERTH_PUBLIC_URL: optionalString.pipe(
    z
      .string()
      .refine((value) => /^https?:\/\//i.test(value) && URL.canParse(value) && new URL(value).host !== "", { message: "must be an http:// or https:// URL, such as https://berth.example.com" })
      .transform((value) => new URL(value).origin)
      .optional(),
  ),
  BERTH_MAX_BODY_BYTES: z
    .string()
    .default(String(16 * 1024 * 1024))
    .refine((value) => /^\d+$/.test(value) && Number(value) >= 65_536 && Number(value) <= 1024 * 1024 * 1024, {
      message: "must be a whole number of bytes from 65536 (64 KiB) to 1073741824 (1 GiB)",
    })
    .transform(Number),
  BERTH_EGRESS_ALLOW_PRIVATE: optionalString.transform((value, ctx) => parsedWith(parseCidrList, value, ctx)),
  BERTH_EGRESS_RESOLVE: optionalString.transform((value, ctx) => parsedWith(parseResolveMap, value, ctx)),
  BERTH_EGRESS_PORT: port(8081),
  BERTH_EGRESS_EXTRA_CA_FILE: optionalString.pipe(
    z
      .string()
      .refine((value) => path.isAbsolute(value), { message: "must be an absolute path to a PEM file of CA certificates" })
      .optional(),
  ),
  BERTH_K8S_EGRESS_ADDRESS: optionalString.pipe(
    z
      .string()
      .regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, "must be HOST:PORT (a name or address the sandbox pods reach the Berth pods' egress port at)")
      .optional(),
  ),
  BERTH_METRICS_TOKEN: optionalString.pipe(z.string().min(16, "must be at least 16 characters").optional()),
  LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
});

export type Config = {
  nodeEnv: "development" | "production" | "test";
  port: number;
  host: string;
  /** Unset: Berth starts and owns an embedded Postgres in `<dataDir>/pg`. */
  databaseUrl: string | undefined;
  dataDir: string;
  secretKey: Buffer | undefined;
  adminApiKey: string | undefined;
  adminEmail: string;
  adminPassword: string | undefined;
  gateway: { baseUrl: string; apiKey: string | undefined } | undefined;
  /** Per model call: whole-attempt timeout, silence between streamed chunks, retries before the stream starts. */
  gatewayTimeouts: { requestMs: number; idleMs: number; maxRetries: number };
  sandboxBackend: "local" | "kubernetes";
  /** Kubernetes backend (agent-sandbox). `image` is required when sandboxBackend is kubernetes. */
  kubernetes: {
    namespace: string;
    image: string | undefined;
    runtimeClassName: string | undefined;
    daemonPort: number;
    workspaceSize: string;
    storageClassName: string | undefined;
    readyTimeoutMs: number;
  };
  /** Local backend: idle pre-started jails kept per network mode. */
  warmPoolSize: number;
  /** How long a terminated session's workspace is kept before it is deleted; 0 = deleted at termination. */
  workspaceRetentionHours: number;
  /** Local backend without bubblewrap: no isolation at all. For machines where bwrap cannot run. */
  unsafeNoSandboxIsolation: boolean;
  workerConcurrency: number;
  databasePoolSize: number;
  shutdownTimeoutMs: number;
  /**
   * How long this process reuses an API key lookup (0: never). Revocations reach this process and,
   * through NOTIFY, every replica at once; the lifetime bounds a missed notification (decision 013).
   */
  authCacheMs: number;
  /**
   * The header a proxy in front of Berth sets to the client's address (for the login limits); unset:
   * the connection's peer. `x-forwarded-for`: its last entry, the address the nearest proxy saw.
   */
  clientAddressHeader: string | undefined;
  /**
   * The proxies whose connections may set clientAddressHeader (unset: any sender, server/client-address.ts)
   * and X-Forwarded-Host / X-Forwarded-Proto for the same-origin check (unset: nobody).
   */
  trustedProxies: TrustedProxies | undefined;
  /** The origin (`https://berth.example.com`) browsers reach Berth at; when set, the only one cookie-authenticated mutations may come from. */
  publicUrl: string | undefined;
  /** The egress gateway: address ranges it may connect to after all, the test-only name map, and (Kubernetes) its port. */
  egress: {
    allowPrivate: Cidr[];
    resolveMap: ResolveMap;
    port: number;
    /** HOST:PORT the sandbox pods dial (Kubernetes). */
    podAddress: string;
    /** PEM file of CAs trusted (besides the system's) for the outside hosts the gateway inspects: a company's own CA. */
    extraCaFile: string | undefined;
  };
  /** Largest request body of a caller with a valid credential; anonymous callers get ANONYMOUS_BODY_BYTES (server/body-limit.ts). */
  maxBodyBytes: number;
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  /** Local backend: the opencode binary bound into jails (default: the one npm installed, opencode-linux-x64[-baseline]). */
  opencodeBinary: string | undefined;
  /** Local backend: the codex binary bound into jails (default: the one the `@openai/codex` package installed). */
  codexBinary: string | undefined;
  /** Local backend: the Claude Code binary bound into jails (default: the one the `@anthropic-ai/claude-code` package installed). */
  claudeCodeBinary: string | undefined;
  /** Longest an external harness (opencode) may run one turn before it is stopped. */
  harnessTurnTimeoutMs: number;
  /** When set, GET /metrics requires `Authorization: Bearer <token>`. */
  metricsToken: string | undefined;
  /** `CONTAINER_ENV_X=v` on the platform becomes `X=v` in every sandbox. */
  containerEnv: Record<string, string>;
};

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration: ${problems.join("; ")}`);
    this.name = "ConfigError";
  }
}

/** Parses the environment; throws a ConfigError whose message is one line naming each bad variable. */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const result = environmentSchema.safeParse(env);
  const problems: string[] = [];
  if (!result.success) {
    for (const issue of result.error.issues) {
      const variable = String(issue.path[0] ?? "environment");
      const raw = env[variable];
      const shown = SECRET_VARIABLES.has(variable) || raw === undefined ? "" : ` (got ${JSON.stringify(raw)})`;
      problems.push(`${variable} ${issue.message}${shown}`);
    }
  }
  const containerEnv: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith(CONTAINER_ENV_PREFIX) || value === undefined) continue;
    const innerName = name.slice(CONTAINER_ENV_PREFIX.length);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(innerName)) {
      problems.push(`${name} must name a variable of letters, digits and '_' after ${CONTAINER_ENV_PREFIX}`);
      continue;
    }
    containerEnv[innerName] = value;
  }
  if (problems.length > 0 || !result.success) throw new ConfigError(problems);

  const parsed = result.data;
  if (parsed.LITELLM_API_KEY && !parsed.LITELLM_BASE_URL) {
    throw new ConfigError(["LITELLM_API_KEY is set but LITELLM_BASE_URL is not"]);
  }
  if (parsed.BERTH_SANDBOX_BACKEND === "kubernetes" && !parsed.BERTH_SANDBOX_IMAGE) {
    throw new ConfigError(["BERTH_SANDBOX_IMAGE is required when BERTH_SANDBOX_BACKEND=kubernetes (the Berth image, which carries the sandbox daemon)"]);
  }
  return {
    nodeEnv: parsed.NODE_ENV,
    port: parsed.PORT,
    host: parsed.HOST,
    databaseUrl: parsed.DATABASE_URL,
    dataDir: path.resolve(parsed.BERTH_DATA_DIR),
    secretKey: parsed.BERTH_SECRET_KEY,
    adminApiKey: parsed.BERTH_ADMIN_API_KEY,
    adminEmail: parsed.BERTH_ADMIN_EMAIL.toLowerCase(),
    adminPassword: parsed.BERTH_ADMIN_PASSWORD,
    gateway: parsed.LITELLM_BASE_URL ? { baseUrl: parsed.LITELLM_BASE_URL, apiKey: parsed.LITELLM_API_KEY } : undefined,
    gatewayTimeouts: { requestMs: parsed.BERTH_GATEWAY_TIMEOUT_MS, idleMs: parsed.BERTH_GATEWAY_IDLE_TIMEOUT_MS, maxRetries: parsed.BERTH_GATEWAY_MAX_RETRIES },
    sandboxBackend: parsed.BERTH_SANDBOX_BACKEND,
    kubernetes: {
      namespace: parsed.BERTH_K8S_NAMESPACE,
      image: parsed.BERTH_SANDBOX_IMAGE,
      runtimeClassName: parsed.BERTH_K8S_RUNTIME_CLASS,
      daemonPort: parsed.BERTH_SANDBOX_DAEMON_PORT,
      workspaceSize: parsed.BERTH_K8S_WORKSPACE_SIZE,
      storageClassName: parsed.BERTH_K8S_STORAGE_CLASS,
      readyTimeoutMs: parsed.BERTH_K8S_READY_TIMEOUT_MS,
    },
    warmPoolSize: parsed.BERTH_WARM_POOL_SIZE,
    workspaceRetentionHours: parsed.BERTH_WORKSPACE_RETENTION_HOURS,
    unsafeNoSandboxIsolation: parsed.BERTH_UNSAFE_NO_SANDBOX_ISOLATION,
    workerConcurrency: parsed.BERTH_WORKER_CONCURRENCY,
    databasePoolSize: parsed.BERTH_DATABASE_POOL_SIZE,
    shutdownTimeoutMs: parsed.BERTH_SHUTDOWN_TIMEOUT_MS,
    authCacheMs: parsed.BERTH_AUTH_CACHE_MS,
    clientAddressHeader: parsed.BERTH_CLIENT_ADDRESS_HEADER,
    trustedProxies: parsed.BERTH_TRUSTED_PROXIES,
    publicUrl: parsed.BERTH_PUBLIC_URL,
    egress: {
      allowPrivate: parsed.BERTH_EGRESS_ALLOW_PRIVATE ?? [],
      resolveMap: parsed.BERTH_EGRESS_RESOLVE ?? new Map(),
      port: parsed.BERTH_EGRESS_PORT,
      extraCaFile: parsed.BERTH_EGRESS_EXTRA_CA_FILE,
      podAddress: parsed.BERTH_K8S_EGRESS_ADDRESS ?? `berth-egress.${parsed.BERTH_K8S_NAMESPACE}.svc:${parsed.BERTH_EGRESS_PORT}`,
    },
    maxBodyBytes: parsed.BERTH_MAX_BODY_BYTES,
    logLevel: parsed.LOG_LEVEL,
    metricsToken: parsed.BERTH_METRICS_TOKEN,
    opencodeBinary: parsed.BERTH_OPENCODE_BINARY,
    codexBinary: parsed.BERTH_CODEX_BINARY,
    claudeCodeBinary: parsed.BERTH_CLAUDE_CODE_BINARY,
    harnessTurnTimeoutMs: parsed.BERTH_HARNESS_TURN_TIMEOUT_MS,
    containerEnv,
  };
}
