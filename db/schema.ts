import { sql } from "drizzle-orm";
import {
  bigint,
  bigserial,
  boolean,
  customType,
  index,
  integer,
  jsonb,
  numeric,
  pgEnum,
  pgTable,
  primaryKey,
  serial,
  text,
  timestamp,
  unique,
  uniqueIndex,
  uuid,
} from "drizzle-orm/pg-core";

/**
 * The core model of Berth (see docs/architecture in the README). Every tenant-owned table carries
 * `team_id`, so every query can be, and is, scoped by team.
 */

/** An agent version's egress policy as stored (validated by server/egress/policy.ts before it is written). */
export type StoredEgressPolicy = {
  mode: "none" | "allowlist" | "open";
  allow: Array<{ host: string; ports?: number[]; methods?: string[]; paths?: string[] }>;
};
/** How the egress gateway uses a brokered secret: the header it sets, on requests to these hosts only. */
export type StoredBrokering = { hosts: string[]; header: string; template: string };

const bytea = customType<{ data: Buffer; driverData: Buffer }>({ dataType: () => "bytea" });
const createdAt = () => timestamp("created_at", { withTimezone: true }).notNull().defaultNow();

export const membershipRole = pgEnum("membership_role", ["owner", "admin", "member"]);
export const harness = pgEnum("agent_harness", ["builtin", "opencode", "claude-code", "codex"]);
export const networkPolicy = pgEnum("network_policy", ["none", "egress"]);
export const busyPolicy = pgEnum("busy_policy", ["queue", "reject"]);
export const sessionStatus = pgEnum("session_status", [
  "pending",
  "provisioning",
  "ready",
  "running",
  "idle",
  "suspended",
  "reconnecting",
  "failed",
  "terminated",
]);
export const sessionEventType = pgEnum("session_event_type", [
  "user_message",
  "assistant_message",
  "tool_call",
  "tool_result",
  "status",
  "error",
  "usage",
  "egress",
]);
export const sandboxStatus = pgEnum("sandbox_status", [
  "provisioning",
  "ready",
  "suspended",
  "stopped",
  "lost",
  "failed",
]);
export const actorType = pgEnum("actor_type", ["user", "api_key", "system"]);
export const turnStatus = pgEnum("turn_status", ["queued", "running", "completed", "failed", "aborted"]);
export const invitationStatus = pgEnum("invitation_status", ["pending", "accepted", "declined", "revoked"]);

export const teams = pgTable("teams", {
  id: uuid("id").primaryKey().defaultRandom(),
  slug: text("slug").notNull().unique(),
  name: text("name").notNull(),
  createdAt: createdAt(),
});

export const users = pgTable("users", {
  id: uuid("id").primaryKey().defaultRandom(),
  /** Stored lower-cased. */
  email: text("email").notNull().unique(),
  name: text("name").notNull().default(""),
  /** scrypt, in the self-describing format of server/auth/passwords.ts. */
  passwordHash: text("password_hash"),
  createdAt: createdAt(),
});

export const memberships = pgTable(
  "memberships",
  {
    teamId: uuid("team_id")
      .notNull()
      .references(() => teams.id, { onDelete: "cascade" }),
    userId: uuid("user_id")
      .notNull()
      .references(() => users.id, { onDelete: "cascade" }),
    role: membershipRole("role").notNull().default("member"),
    createdAt: createdAt(),
  },
  (table) => [primaryKey({ columns: [table.teamId, table.userId] }), index().on(table.userId)],
);

export const apiKeys = pgTable(
  "api_keys",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    teamId: uuid("team_id")
      .notNull()
      .references(() => teams.id, { onDelete: "cascade" }),
    name: text("name").notNull(),
    /** The visible start of the key (`berth_xxxxxxxx`), shown in lists so a key can be recognised. */
    prefix: text("prefix").notNull(),
    /** SHA-256 of the whole key: keys are 256-bit random, so a fast hash is the right tool. */
    hash: text("hash").notNull().unique(),
    role: membershipRole("role").notNull().default("admin"),
    createdByUserId: uuid("created_by_user_id").references(() => users.id, { onDelete: "set null" }),
    createdAt: createdAt(),
    lastUsedAt: timestamp("last_used_at", { withTimezone: true }),
    revokedAt: timestamp("revoked_at", { withTimezone: true }),
  },
  (table) => [index().on(table.teamId, table.createdAt)],
);

/**
 * An invitation to join a team, by email (server/services/invitations.ts). Nobody becomes a member
 * until the invited person accepts: signed in with an account of that email, or, with no account
 * yet, by opening the invitation link and choosing a password. The link holds a random token whose
 * SHA-256 is `token_hash`. At most one pending invitation per team and email: inviting again renews it.
 */
export const invitations = pgTable(
  "invitations",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    teamId: uuid("team_id")
      .notNull()
      .references(() => teams.id, { onDelete: "cascade" }),
    /** Stored lower-cased, like users.email. */
    email: text("email").notNull(),
    role: membershipRole("role").notNull().default("member"),
    tokenHash: text("token_hash").notNull().unique(),
    status: invitationStatus("status").notNull().default("pending"),
    invitedByUserId: uuid("invited_by_user_id").references(() => users.id, { onDelete: "set null" }),
    acceptedByUserId: uuid("accepted_by_user_id").references(() => users.id, { onDelete: "set null" }),
    createdAt: createdAt(),
    expiresAt: timestamp("expires_at", { withTimezone: true }).notNull(),
    /** When it was accepted, declined or revoked. */
    respondedAt: timestamp("responded_at", { withTimezone: true }),
  },
  (table) => [
    uniqueIndex("invitations_pending_team_email").on(table.teamId, table.email).where(sql`${table.status} = 'pending'`),
    index().on(table.email),
    index().on(table.teamId, table.createdAt),
  ],
);

/** Web UI login sessions; the cookie holds a random token whose SHA-256 is the id. */
/**
 * Failed logins counted per key (`pair:<ip> <email>`, `email:<email>`, `ip:<ip>`) in a fixed window
 * from the first failure; server/services/login-throttle.ts. Not team data: logins come before a team.
 */
export const loginFailures = pgTable("login_failures", {
  key: text("key").primaryKey(),
  failures: integer("failures").notNull(),
  windowStartedAt: timestamp("window_started_at", { withTimezone: true }).notNull(),
});

export const loginSessions = pgTable(
  "login_sessions",
  {
    id: text("id").primaryKey(),
    userId: uuid("user_id")
      .notNull()
      .references(() => users.id, { onDelete: "cascade" }),
    teamId: uuid("team_id")
      .notNull()
      .references(() => teams.id, { onDelete: "cascade" }),
    createdAt: createdAt(),
    expiresAt: timestamp("expires_at", { withTimezone: true }).notNull(),
  },
  (table) => [index().on(table.userId)],
);

export const agents = pgTable(
  "agents",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    teamId: uuid("team_id")
      .notNull()
      .references(() => teams.id, { onDelete: "cascade" }),
    name: text("name").notNull(),
    currentVersion: integer("current_version").notNull().default(1),
    createdAt: createdAt(),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
    /** Soft delete: sessions keep pointing at the versions they pinned. */
    deletedAt: timestamp("deleted_at", { withTimezone: true }),
  },
  (table) => [
    uniqueIndex("agents_team_name_live").on(table.teamId, table.name).where(sql`${table.deletedAt} is null`),
    index().on(table.teamId, table.createdAt),
  ],
);

/** Immutable: every update of an agent writes a new version; a session pins the one it started with. */
export const agentVersions = pgTable(
  "agent_versions",
  {
    agentId: uuid("agent_id")
      .notNull()
      .references(() => agents.id, { onDelete: "cascade" }),
    version: integer("version").notNull(),
    teamId: uuid("team_id")
      .notNull()
      .references(() => teams.id, { onDelete: "cascade" }),
    harness: harness("harness").notNull().default("builtin"),
    model: text("model").notNull(),
    systemPrompt: text("system_prompt").notNull().default(""),
    sandboxImage: text("sandbox_image"),
    cpuMillis: integer("cpu_millis").notNull().default(1000),
    memoryMb: integer("memory_mb").notNull().default(1024),
    /** Workspace disk quota in MiB; versions written before it existed got the default (agent-config.ts DISK_MB_DEFAULT). */
    diskMb: integer("disk_mb").notNull().default(2048),
    /** Shorthand kept in step with `egress` (none = mode none, egress = any other mode). */
    network: networkPolicy("network").notNull().default("none"),
    /** What the egress gateway lets this agent's sandboxes reach (server/egress/policy.ts). */
    egress: jsonb("egress").$type<StoredEgressPolicy>().notNull().default({ mode: "none", allow: [] }),
    idleTimeoutSeconds: integer("idle_timeout_seconds").notNull().default(900),
    maxSteps: integer("max_steps").notNull().default(20),
    busyPolicy: busyPolicy("busy_policy").notNull().default("queue"),
    /** Kubernetes backend: SandboxWarmPool replicas for this version (0 = no pool). */
    warmPoolSize: integer("warm_pool_size").notNull().default(0),
    /** Non-secret environment; secrets live in `secrets`, encrypted. */
    env: jsonb("env").$type<Record<string, string>>().notNull().default({}),
    createdAt: createdAt(),
  },
  (table) => [primaryKey({ columns: [table.agentId, table.version] })],
);

export const secrets = pgTable(
  "secrets",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    teamId: uuid("team_id")
      .notNull()
      .references(() => teams.id, { onDelete: "cascade" }),
    /** Null: team-wide. */
    agentId: uuid("agent_id").references(() => agents.id, { onDelete: "cascade" }),
    name: text("name").notNull(),
    /** AES-256-GCM: 12-byte IV, ciphertext, 16-byte tag, concatenated. */
    ciphertext: bytea("ciphertext").notNull(),
    /** Set: the sandbox sees a stub; the egress gateway puts the value into this header for these hosts only. */
    brokered: jsonb("brokered").$type<StoredBrokering>(),
    createdAt: createdAt(),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (table) => [unique("secrets_scope_name").on(table.teamId, table.agentId, table.name).nullsNotDistinct()],
);

export const sessions = pgTable(
  "sessions",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    teamId: uuid("team_id")
      .notNull()
      .references(() => teams.id, { onDelete: "cascade" }),
    agentId: uuid("agent_id")
      .notNull()
      .references(() => agents.id, { onDelete: "restrict" }),
    agentVersion: integer("agent_version").notNull(),
    title: text("title").notNull().default(""),
    status: sessionStatus("status").notNull().default("pending"),
    statusReason: text("status_reason"),
    /** The highest seq written to session_events; the next event takes last_seq + 1. */
    lastSeq: bigint("last_seq", { mode: "number" }).notNull().default(0),
    promptTokens: bigint("prompt_tokens", { mode: "number" }).notNull().default(0),
    completionTokens: bigint("completion_tokens", { mode: "number" }).notNull().default(0),
    costUsd: numeric("cost_usd", { precision: 14, scale: 6 }).notNull().default("0"),
    /**
     * What an external harness keeps between turns, by harness name (opencode: its own session id),
     * so a reconnect onto the same workspace resumes the harness's session.
     */
    harnessState: jsonb("harness_state").$type<Record<string, unknown>>().notNull().default({}),
    createdAt: createdAt(),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
    lastActivityAt: timestamp("last_activity_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (table) => [
    index().on(table.teamId, table.createdAt, table.id),
    index().on(table.teamId, table.status),
  ],
);

export const sessionEvents = pgTable(
  "session_events",
  {
    sessionId: uuid("session_id")
      .notNull()
      .references(() => sessions.id, { onDelete: "cascade" }),
    seq: bigint("seq", { mode: "number" }).notNull(),
    teamId: uuid("team_id").notNull(),
    type: sessionEventType("type").notNull(),
    payload: jsonb("payload").notNull(),
    idempotencyKey: text("idempotency_key"),
    createdAt: createdAt(),
  },
  (table) => [
    primaryKey({ columns: [table.sessionId, table.seq] }),
    unique("session_events_idempotency").on(table.sessionId, table.idempotencyKey),
  ],
);

/**
 * One agent turn per user message: the durable state of the loop (status, steps, usage so far). The
 * conversation itself lives in session_events; `startSeq` marks where the turn's own events begin,
 * so a turn queued behind another is replayed in the order the agent answered, not the order sent.
 */
export const turns = pgTable(
  "turns",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    sessionId: uuid("session_id")
      .notNull()
      .references(() => sessions.id, { onDelete: "cascade" }),
    teamId: uuid("team_id").notNull(),
    /** The seq of the user_message this turn answers. */
    userSeq: bigint("user_seq", { mode: "number" }).notNull(),
    /** The session's last seq when the turn started; its events follow it. */
    startSeq: bigint("start_seq", { mode: "number" }),
    status: turnStatus("status").notNull().default("queued"),
    steps: integer("steps").notNull().default(0),
    /**
     * Counts the turn's starts and resumes. Only the run that holds the current number records steps
     * (a fencing token): a run that another one has since resumed is refused its next write.
     */
    run: integer("run").notNull().default(0),
    promptTokens: bigint("prompt_tokens", { mode: "number" }).notNull().default(0),
    completionTokens: bigint("completion_tokens", { mode: "number" }).notNull().default(0),
    costUsd: numeric("cost_usd", { precision: 14, scale: 6 }).notNull().default("0"),
    /** Set by sessions.abort; the loop stops at its next check. */
    abortRequestedAt: timestamp("abort_requested_at", { withTimezone: true }),
    error: text("error"),
    createdAt: createdAt(),
    startedAt: timestamp("started_at", { withTimezone: true }),
    finishedAt: timestamp("finished_at", { withTimezone: true }),
  },
  (table) => [unique().on(table.sessionId, table.userSeq), index("turns_open").on(table.sessionId, table.status)],
);

export const sandboxes = pgTable(
  "sandboxes",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    sessionId: uuid("session_id")
      .notNull()
      .references(() => sessions.id, { onDelete: "cascade" }),
    teamId: uuid("team_id").notNull(),
    generation: integer("generation").notNull(),
    backend: text("backend").notNull(),
    name: text("name").notNull(),
    address: text("address"),
    /** Local backend: the host PID of the bubblewrap jail. */
    hostPid: integer("host_pid"),
    status: sandboxStatus("status").notNull().default("provisioning"),
    fromWarmPool: boolean("from_warm_pool").notNull().default(false),
    createdAt: createdAt(),
    readyAt: timestamp("ready_at", { withTimezone: true }),
    endedAt: timestamp("ended_at", { withTimezone: true }),
    endReason: text("end_reason"),
  },
  // By name: the egress gateway finds a sandbox's session from the name in its token, per connection.
  (table) => [unique().on(table.sessionId, table.generation), index().on(table.status), index().on(table.name)],
);

export const auditLog = pgTable(
  "audit_log",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    teamId: uuid("team_id")
      .notNull()
      .references(() => teams.id, { onDelete: "cascade" }),
    actorType: actorType("actor_type").notNull(),
    actorId: text("actor_id"),
    action: text("action").notNull(),
    targetType: text("target_type").notNull(),
    targetId: text("target_id"),
    metadata: jsonb("metadata").$type<Record<string, unknown>>().notNull().default({}),
    createdAt: createdAt(),
  },
  (table) => [index().on(table.teamId, table.id)],
);

/**
 * One row per running Berth process. The process holds a session-level advisory lock on its row's id
 * for as long as it lives, so any other process can tell, exactly and at once, that it died.
 */
export const workerInstances = pgTable("worker_instances", {
  id: serial("id").primaryKey(),
  hostname: text("hostname").notNull(),
  pid: integer("pid").notNull(),
  /** graphile-worker pool and worker ids this process has created; their locks die with it. */
  workerIds: text("worker_ids").array().notNull().default(sql`'{}'::text[]`),
  startedAt: createdAt(),
  /**
   * When the process last took its liveness lock. A free lock taken before Postgres last started may
   * belong to a live process that has not taken it again yet (server/services/worker-liveness.ts).
   */
  lockTakenAt: timestamp("lock_taken_at", { withTimezone: true }).notNull().defaultNow(),
});
