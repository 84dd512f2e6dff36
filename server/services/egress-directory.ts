import { and, desc, eq, inArray, sql } from "drizzle-orm";
import type { Database } from "../../db/client";
import { agents, agentVersions, sandboxes, sessions, type StoredBrokering, type StoredEgressPolicy } from "../../db/schema";
import { appendEvents, type EventInput } from "./event-log";
import type { SecretBox } from "./secret-box";
import { associatedData, brokeredStub } from "./secrets";

/** A secret the gateway puts into requests to its hosts; the sandbox only holds `stub`. */
export type BrokeredCredential = StoredBrokering & {
  name: string;
  stub: string;
  /** Decrypted when a request needs it, so a rotation applies to the next request. */
  value(): string;
};

/** What the egress gateway needs to know about the sandbox behind a connection. */
export type SandboxEgressContext = {
  sandboxName: string;
  sessionId: string;
  teamId: string;
  agentId: string;
  policy: StoredEgressPolicy;
  brokered: BrokeredCredential[];
};

type ContextRow = {
  session_id: string;
  team_id: string;
  agent_id: string;
  egress: StoredEgressPolicy;
  /** Every secret the sandbox's environment is made of: an agent's own one hides a team-wide one of its name. */
  secrets: Array<{ name: string; agent_id: string | null; ciphertext: string | null; brokered: StoredBrokering | null }> | null;
};

/**
 * The egress gateway's view of the database: which session and agent a sandbox serves, the agent's
 * *current* egress policy (not the version the session pinned: an edit applies at once to running
 * sandboxes) and the brokered secrets it may use; and the `egress` events it records. The sandbox
 * is identified by the name in its gateway token; the team comes from the session row.
 */
export class EgressDirectory {
  constructor(
    private readonly db: Database,
    private readonly box: SecretBox,
  ) {
    // Built once and prepared on each connection: the gateway asks for every connection and plain
    // HTTP request, and planning this join costs several times what running it does.
    this.contextQuery = db
      .select({
        session_id: sessions.id,
        team_id: sessions.teamId,
        agent_id: sessions.agentId,
        egress: agentVersions.egress,
        secrets: sql<ContextRow["secrets"]>`(
          select json_agg(json_build_object('name', x.name, 'agent_id', x.agent_id, 'brokered', x.brokered,
                   'ciphertext', case when x.brokered is not null then encode(x.ciphertext, 'base64') end))
            from secrets x
           where x.team_id = ${sessions.teamId} and (x.agent_id is null or x.agent_id = ${sessions.agentId}))`,
      })
      .from(sandboxes)
      .innerJoin(sessions, and(eq(sessions.id, sandboxes.sessionId), eq(sessions.teamId, sandboxes.teamId)))
      .innerJoin(agents, and(eq(agents.id, sessions.agentId), eq(agents.teamId, sessions.teamId)))
      .innerJoin(agentVersions, and(eq(agentVersions.agentId, agents.id), eq(agentVersions.version, agents.currentVersion)))
      .where(and(eq(sandboxes.name, sql.placeholder("name")), inArray(sandboxes.status, ["provisioning", "ready"])))
      .orderBy(desc(sandboxes.generation))
      .limit(1)
      .prepare("berth_egress_for_sandbox");
  }

  private readonly contextQuery;

  async forSandbox(sandboxName: string): Promise<SandboxEgressContext | null> {
    const rows: ContextRow[] = await this.contextQuery.execute({ name: sandboxName });
    const row = rows[0];
    if (!row) return null;
    // An agent's own secret overrides a team-wide one of the same name.
    const byName = new Map<string, NonNullable<ContextRow["secrets"]>[number]>();
    for (const secret of row.secrets ?? []) if (!byName.has(secret.name) || secret.agent_id !== null) byName.set(secret.name, secret);
    const brokered = [...byName.values()].flatMap((secret) => (secret.brokered && secret.ciphertext ? [{ ...secret, brokered: secret.brokered, ciphertext: secret.ciphertext }] : [])).map((secret) => ({
      ...secret.brokered,
      name: secret.name,
      stub: brokeredStub(this.box, row.team_id, secret.agent_id, secret.name),
      value: () => this.box.open(Buffer.from(secret.ciphertext, "base64"), associatedData(row.team_id, secret.agent_id, secret.name)),
    }));
    return { sandboxName, sessionId: row.session_id, teamId: row.team_id, agentId: row.agent_id, policy: row.egress, brokered };
  }

  /** Appends `egress` events to a session's log (the gateway batches them). */
  async record(sessionId: string, events: Array<Extract<EventInput, { type: "egress" }>>): Promise<void> {
    if (events.length > 0) await appendEvents(this.db, sessionId, events);
  }
}
