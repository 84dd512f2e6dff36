import { and, desc, eq, isNull, lt, sql } from "drizzle-orm";
import type { Database } from "../../db/client";
import { agents, agentVersions, secrets } from "../../db/schema";
import { AGENT_DEFAULTS, DEMO_MODEL, withEgressShorthand, type AgentConfig } from "./agent-config";
import { recordAudit } from "./audit";
import { conflict, isUniqueViolation, notFound } from "./errors";
import { enqueueJob } from "./job-queue";
import { before, cursorAt, toPage, type Page } from "./pagination";
import { requireRole, type Principal } from "./principal";

export type AgentView = AgentConfig & {
  id: string;
  name: string;
  version: number;
  /** The offline demo model: no gateway, deterministic replies. */
  isDemo: boolean;
  createdAt: Date;
  updatedAt: Date;
};

export type AgentVersionView = AgentConfig & { version: number; createdAt: Date };

type AgentRow = typeof agents.$inferSelect;
type VersionRow = typeof agentVersions.$inferSelect;

function configOf(version: VersionRow): AgentConfig {
  return {
    harness: version.harness,
    model: version.model,
    systemPrompt: version.systemPrompt,
    sandboxImage: version.sandboxImage,
    cpuMillis: version.cpuMillis,
    memoryMb: version.memoryMb,
    diskMb: version.diskMb,
    network: version.network,
    egress: version.egress,
    idleTimeoutSeconds: version.idleTimeoutSeconds,
    maxSteps: version.maxSteps,
    busyPolicy: version.busyPolicy,
    warmPoolSize: version.warmPoolSize,
    env: version.env,
  };
}

function view(agent: AgentRow, version: VersionRow): AgentView {
  return {
    id: agent.id,
    name: agent.name,
    version: version.version,
    ...configOf(version),
    isDemo: version.model === DEMO_MODEL,
    createdAt: agent.createdAt,
    updatedAt: agent.updatedAt,
  };
}

/** The reconciliation job brings the backend's per-agent warm pools in line (now, not at the next minute). */
function syncWarmPoolsSoon(tx: Parameters<typeof enqueueJob>[0]) {
  return enqueueJob(tx, "sandbox:reconcile", {}, { jobKey: "reconcile" });
}

/** Agents of the caller's team. Every change writes a new immutable version. */
export class AgentService {
  constructor(
    private readonly db: Database,
    private readonly principal: Principal,
  ) {}

  private ownAgent(agentId: string) {
    return and(eq(agents.teamId, this.principal.teamId), eq(agents.id, agentId), isNull(agents.deletedAt));
  }

  async create(input: { name: string } & Partial<AgentConfig> & Pick<AgentConfig, "model">): Promise<AgentView> {
    requireRole(this.principal, "admin", "creating agents");
    const { name, ...config } = input;
    const full: AgentConfig = { ...AGENT_DEFAULTS, ...withEgressShorthand(config) };
    try {
      return await this.db.transaction(async (tx) => {
        const [agent] = await tx.insert(agents).values({ teamId: this.principal.teamId, name, currentVersion: 1 }).returning();
        const [version] = await tx.insert(agentVersions).values({ agentId: agent!.id, teamId: this.principal.teamId, version: 1, ...full }).returning();
        await recordAudit(tx, { teamId: this.principal.teamId, actor: this.principal.actor, action: "agent.create", targetType: "agent", targetId: agent!.id, metadata: { name, model: full.model } });
        if (full.warmPoolSize > 0) await syncWarmPoolsSoon(tx);
        return view(agent!, version!);
      });
    } catch (error) {
      if (isUniqueViolation(error)) throw conflict(`an agent named "${name}" already exists`);
      throw error;
    }
  }

  async list(input: { cursor?: string; limit: number }): Promise<Page<AgentView>> {
    const rows = await this.db
      .select({ agent: agents, version: agentVersions, at: cursorAt(agents.createdAt) })
      .from(agents)
      .innerJoin(agentVersions, and(eq(agentVersions.agentId, agents.id), eq(agentVersions.version, agents.currentVersion)))
      .where(and(eq(agents.teamId, this.principal.teamId), isNull(agents.deletedAt), before(agents.createdAt, agents.id, input.cursor)))
      .orderBy(desc(agents.createdAt), desc(agents.id))
      .limit(input.limit + 1);
    return toPage(rows, input.limit, ({ agent, at }) => ({ at, id: agent.id }), ({ agent, version }) => view(agent, version));
  }

  /** The current version, or the one asked for (sessions pin versions). */
  async get(input: { agentId: string; version?: number }): Promise<AgentView> {
    const [row] = await this.db
      .select({ agent: agents, version: agentVersions })
      .from(agents)
      .innerJoin(
        agentVersions,
        and(eq(agentVersions.agentId, agents.id), eq(agentVersions.version, input.version ?? sql`${agents.currentVersion}`)),
      )
      .where(this.ownAgent(input.agentId));
    if (!row) throw notFound(input.version ? `agent version ${input.version}` : "agent");
    return view(row.agent, row.version);
  }

  async versions(input: { agentId: string; cursor?: number; limit: number }): Promise<Page<AgentVersionView>> {
    await this.get({ agentId: input.agentId });
    const rows = await this.db
      .select()
      .from(agentVersions)
      .where(and(eq(agentVersions.teamId, this.principal.teamId), eq(agentVersions.agentId, input.agentId), input.cursor ? lt(agentVersions.version, input.cursor) : undefined))
      .orderBy(desc(agentVersions.version))
      .limit(input.limit + 1);
    const items = rows.slice(0, input.limit).map((row) => ({ version: row.version, createdAt: row.createdAt, ...configOf(row) }));
    return { items, nextCursor: rows.length > input.limit ? String(items[items.length - 1]!.version) : null };
  }

  async update(input: { agentId: string; name?: string } & Partial<AgentConfig>): Promise<AgentView> {
    requireRole(this.principal, "admin", "updating agents");
    const { agentId, name, ...given } = input;
    const changes = withEgressShorthand(given);
    try {
      return await this.db.transaction(async (tx) => {
        const [agent] = await tx.select().from(agents).where(this.ownAgent(agentId)).for("update");
        if (!agent) throw notFound("agent");
        const [current] = await tx
          .select()
          .from(agentVersions)
          .where(and(eq(agentVersions.agentId, agentId), eq(agentVersions.version, agent.currentVersion)));
        const next = agent.currentVersion + 1;
        const [version] = await tx
          .insert(agentVersions)
          .values({ agentId, teamId: this.principal.teamId, version: next, ...configOf(current!), ...changes })
          .returning();
        if (current!.warmPoolSize > 0 || version!.warmPoolSize > 0) await syncWarmPoolsSoon(tx);
        const [updated] = await tx
          .update(agents)
          .set({ currentVersion: next, updatedAt: new Date(), ...(name === undefined ? {} : { name }) })
          .where(eq(agents.id, agentId))
          .returning();
        await recordAudit(tx, {
          teamId: this.principal.teamId,
          actor: this.principal.actor,
          action: "agent.update",
          targetType: "agent",
          targetId: agentId,
          metadata: { version: next, fields: [...(name === undefined ? [] : ["name"]), ...Object.keys(changes)] },
        });
        return view(updated!, version!);
      });
    } catch (error) {
      if (isUniqueViolation(error)) throw conflict(`an agent named "${name}" already exists`);
      throw error;
    }
  }

  /** Soft delete: sessions keep the versions they pinned; the agent's own secrets are destroyed. */
  async delete(input: { agentId: string }): Promise<{ id: string }> {
    requireRole(this.principal, "admin", "deleting agents");
    return this.db.transaction(async (tx) => {
      const [agent] = await tx.update(agents).set({ deletedAt: new Date() }).where(this.ownAgent(input.agentId)).returning();
      if (!agent) throw notFound("agent");
      await syncWarmPoolsSoon(tx);
      await tx.delete(secrets).where(and(eq(secrets.teamId, this.principal.teamId), eq(secrets.agentId, agent.id)));
      await recordAudit(tx, { teamId: this.principal.teamId, actor: this.principal.actor, action: "agent.delete", targetType: "agent", targetId: agent.id, metadata: { name: agent.name } });
      return { id: agent.id };
    });
  }
}
