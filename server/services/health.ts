import type postgres from "postgres";
import { pendingMigrationCount } from "../../db/migrate";
import type { Config } from "../config";
import type { SandboxAvailability, SandboxIsolation } from "../sandbox/port";
import { BERTH_VERSION } from "../version";

export type ComponentState = "ok" | "unreachable" | "not configured";

export type Health = {
  /**
   * The process serves (its database answers). Sandboxes being unavailable does not make it false:
   * the API, the dashboard and everything but sessions work, and `sandboxes` says what is missing.
   */
  ok: boolean;
  version: string;
  database: "ok" | "unreachable";
  gateway: ComponentState;
  sandboxBackend: string;
  /** Whether sessions can get sandboxes here; when not, why and what to run (decided at start-up). */
  sandboxes: SandboxAvailability;
  /** What isolates sandboxes, where the backend says (local: host user, seccomp, disk quotas); absent while they are unavailable. */
  sandboxIsolation?: SandboxIsolation;
};

export type Readiness = {
  ready: boolean;
  database: "ok" | "unreachable";
  pendingMigrations: number | null;
  worker: "running" | "stopped";
  /** Informational: readiness does not depend on it (see HealthService.readiness). */
  sandboxes: "available" | "unavailable";
};

const GATEWAY_CHECK_TTL_MS = 10_000;

export class HealthService {
  private gatewayCache: { at: number; state: ComponentState } | undefined;

  constructor(
    private readonly deps: {
      sql: postgres.Sql;
      config: Pick<Config, "gateway">;
      shippedMigrations: number;
      isWorkerRunning: () => boolean;
      /** Name of the sandbox backend in use, or undefined until one is wired. */
      sandboxBackend: () => string | undefined;
      sandboxIsolation?: () => SandboxIsolation | undefined;
      sandboxAvailability?: () => SandboxAvailability;
      fetch?: typeof fetch;
    },
  ) {}

  private async databaseState(): Promise<"ok" | "unreachable"> {
    // A probe must answer quickly even when connecting hangs (a firewalled or restarting database).
    const probe = this.deps.sql`select 1`.then(() => "ok" as const, () => "unreachable" as const);
    const timeout = new Promise<"unreachable">((resolve) => setTimeout(() => resolve("unreachable"), 1_500).unref());
    return Promise.race([probe, timeout]);
  }

  /** Whether the LiteLLM Gateway answers an authenticated model listing (cached for 10 s). */
  async gatewayState(): Promise<ComponentState> {
    const gateway = this.deps.config.gateway;
    if (!gateway) return "not configured";
    if (this.gatewayCache && Date.now() - this.gatewayCache.at < GATEWAY_CHECK_TTL_MS) return this.gatewayCache.state;
    let state: ComponentState = "unreachable";
    try {
      const response = await (this.deps.fetch ?? fetch)(`${gateway.baseUrl}/v1/models`, {
        headers: gateway.apiKey ? { authorization: `Bearer ${gateway.apiKey}` } : {},
        signal: AbortSignal.timeout(3_000),
      });
      state = response.ok ? "ok" : "unreachable";
      await response.body?.cancel();
    } catch {
      state = "unreachable";
    }
    this.gatewayCache = { at: Date.now(), state };
    return state;
  }

  /** No database or gateway call: cheap enough for every dashboard page's loader. */
  sandboxes(): SandboxAvailability {
    return this.deps.sandboxAvailability?.() ?? { available: true };
  }

  async health(): Promise<Health> {
    const [database, gateway] = await Promise.all([this.databaseState(), this.gatewayState()]);
    const sandboxes = this.sandboxes();
    // Without a jail there is no isolation to describe.
    const sandboxIsolation = sandboxes.available ? this.deps.sandboxIsolation?.() : undefined;
    return {
      ok: database === "ok",
      version: BERTH_VERSION,
      database,
      gateway,
      sandboxBackend: this.deps.sandboxBackend() ?? "not configured",
      sandboxes,
      ...(sandboxIsolation ? { sandboxIsolation } : {}),
    };
  }

  /**
   * Whether this process can serve requests. Unavailable sandboxes do not make it unready: the
   * process serves everything else, and a load balancer or orchestrator that took it out of
   * rotation would hide the dashboard banner that says what to fix (and restarting it would not fix
   * the host). The field is there for whoever reads the answer.
   */
  async readiness(): Promise<Readiness> {
    const database = await this.databaseState();
    const pendingMigrations =
      database === "ok" ? await pendingMigrationCount(this.deps.sql, this.deps.shippedMigrations).catch(() => null) : null;
    const worker = this.deps.isWorkerRunning() ? "running" : "stopped";
    const sandboxes = this.sandboxes().available ? "available" : "unavailable";
    return { ready: database === "ok" && pendingMigrations === 0 && worker === "running", database, pendingMigrations, worker, sandboxes };
  }
}
