import type postgres from "postgres";
import type { Database } from "../../db/client";
import type { Config } from "../config";
import type { Logger } from "../logger";
import { ApiKeyService } from "./api-keys";
import { AgentService } from "./agents";
import { AuditService } from "./audit";
import { AuthService } from "./auth";
import { DemoService } from "./demo";
import { LoginThrottle } from "./login-throttle";
import { HealthService } from "./health";
import { JobService } from "./jobs";
import type { Principal } from "./principal";
import type { SecretBox } from "./secret-box";
import type { SandboxBackend } from "../sandbox/port";
import { SandboxLifecycle } from "./sandbox-lifecycle";
import { SessionService } from "./sessions";
import { SecretService } from "./secrets";
import { ReceivedInvitationService, TeamInvitationService } from "./invitations";
import { TeamService } from "./teams";
import { WorkerLiveness } from "./worker-liveness";
import { BuiltinHarness, type ModelResolver } from "../harness/builtin";
import { CodexHarness } from "../harness/codex";
import { OpencodeHarness } from "../harness/opencode";
import { ClaudeCodeHarness } from "../harness/claude-code";
import { API_KEY_REVOKED_CHANNEL, type EventBus } from "./event-bus";
import type { BerthMetrics } from "../metrics";
import { TurnRunner, TurnStore } from "./turns";

export type ServiceDependencies = {
  db: Database;
  sql: postgres.Sql;
  databaseUrl: string;
  config: Config;
  logger: Logger;
  secretBox: SecretBox;
  sandboxBackend: SandboxBackend;
  shippedMigrations: number;
  isWorkerRunning: () => boolean;
  bus: EventBus;
  models: ModelResolver;
  metrics: BerthMetrics;
};

/**
 * Builds the domain services over their dependencies; called only by the composition root.
 * Tenant data is reachable only through `forTeam(principal)`: those services carry the caller's team
 * and scope every query by it, so a router cannot pass, or forget, a team id.
 */
export function createServices(deps: ServiceDependencies) {
  const sandboxes = new SandboxLifecycle({
    db: deps.db,
    backend: deps.sandboxBackend,
    config: deps.config,
    secretBox: deps.secretBox,
    metrics: deps.metrics,
    logger: deps.logger.child({ component: "sandboxes" }),
  });
  const turnStore = new TurnStore(deps.db, deps.metrics);
  const externalHarness = (name: string) => ({
    store: turnStore,
    lifecycle: sandboxes,
    logger: deps.logger.child({ component: `harness-${name}` }),
    unavailable: deps.config.gateway ? null : `the ${name} harness reaches its model through the LiteLLM Gateway, and LITELLM_BASE_URL is not set`,
    turnTimeoutMs: deps.config.harnessTurnTimeoutMs,
  });
  const turns = new TurnRunner({
    store: turnStore,
    bus: deps.bus,
    logger: deps.logger.child({ component: "turns" }),
    harnesses: {
      builtin: new BuiltinHarness({ store: turnStore, lifecycle: sandboxes, bus: deps.bus, models: deps.models, logger: deps.logger.child({ component: "harness-builtin" }) }),
      opencode: new OpencodeHarness(externalHarness("opencode")),
      codex: new CodexHarness(externalHarness("codex")),
      "claude-code": new ClaudeCodeHarness(externalHarness("claude-code")),
    },
  });
  const loginThrottle = new LoginThrottle(deps.db);
  const auth = new AuthService(deps.db, deps.logger.child({ component: "auth" }), { cacheMs: deps.config.authCacheMs, throttle: loginThrottle });
  // Revocations by any replica (including this one, again) drop the key from this one's cache.
  deps.bus.onApiKeyRevoked((keyId) => auth.forgetApiKey(keyId));
  deps.bus.onNotificationsMissed((channel) => {
    if (channel === API_KEY_REVOKED_CHANNEL) auth.forgetAllApiKeys();
  });
  return {
    config: deps.config,
    metrics: deps.metrics,
    turns,
    health: new HealthService({
      sql: deps.sql,
      config: deps.config,
      shippedMigrations: deps.shippedMigrations,
      isWorkerRunning: deps.isWorkerRunning,
      sandboxBackend: () => deps.sandboxBackend.name,
      sandboxIsolation: () => deps.sandboxBackend.describeIsolation?.(),
      sandboxAvailability: () => sandboxes.availability(),
    }),
    auth,
    loginThrottle,
    sandboxes,
    /** Invitations answered by the invited person (signed in, or with the link's token): scoped by their email, not by a team. */
    receivedInvitations: new ReceivedInvitationService(deps.db),
    workerLiveness: new WorkerLiveness(deps.sql, deps.logger.child({ component: "worker-liveness" }), { databaseUrl: deps.databaseUrl }),
    forTeam(principal: Principal) {
      const agents = new AgentService(deps.db, principal);
      const sessions = new SessionService(deps.db, principal, sandboxes, deps.bus);
      return {
        principal,
        team: new TeamService(deps.db, principal),
        invitations: new TeamInvitationService(deps.db, principal),
        apiKeys: new ApiKeyService(deps.db, principal, (keyId) => auth.forgetApiKey(keyId)),
        agents,
        secrets: new SecretService(deps.db, principal, deps.secretBox),
        audit: new AuditService(deps.db, principal),
        sessions,
        demo: new DemoService(deps.db, principal, agents, sessions, sandboxes),
        jobs: new JobService(deps.db, principal),
      };
    },
  };
}

export type Services = ReturnType<typeof createServices>;
export type TeamServices = ReturnType<Services["forTeam"]>;
