import { and, desc, eq, isNull, sql } from "drizzle-orm";
import type { Database } from "../../db/client";
import { agents, secrets, type StoredBrokering } from "../../db/schema";
import { recordAudit } from "./audit";
import { invalid, notFound } from "./errors";
import { before, cursorAt, toPage, type Page } from "./pagination";
import { requireRole, type Principal } from "./principal";
import type { SecretBox } from "./secret-box";

/** How the egress gateway uses a brokered secret (the sandbox sees only its stub). */
export type Brokering = StoredBrokering;

/** What the API shows of a secret: never its value. */
export type SecretView = { id: string; name: string; agentId: string | null; brokered: Brokering | null; createdAt: Date; updatedAt: Date };

const view = (row: typeof secrets.$inferSelect): SecretView => ({
  id: row.id,
  name: row.name,
  agentId: row.agentId,
  brokered: row.brokered ?? null,
  createdAt: row.createdAt,
  updatedAt: row.updatedAt,
});

export const BROKERED_DEFAULT_HEADER = "Authorization";
export const BROKERED_DEFAULT_TEMPLATE = "Bearer {{value}}";
/** Every stub starts so: the gateway finds stubs in requests by it, and a person reading a log knows one. */
export const STUB_PREFIX = "berth-stub-";
export const STUB_PATTERN = /berth-stub-[0-9a-f]{40}/g;

/**
 * The value a sandbox sees for a brokered secret: derived from the secret key and the secret's
 * scope, so it stays the same across rotations (a running sandbox keeps working) and means nothing
 * anywhere but at the egress gateway.
 */
export function brokeredStub(box: SecretBox, teamId: string, agentId: string | null, name: string): string {
  return STUB_PREFIX + box.mac(`berth-brokered-stub:${teamId}:${agentId ?? "team"}:${name}`).slice(0, 40);
}

/** What a secret's ciphertext is bound to (also used by bin/restore.ts to check the secret key). */
export const associatedData = (teamId: string, agentId: string | null, name: string) => `berth-secret:${teamId}:${agentId ?? "team"}:${name}`;

/** Team-wide and per-agent secrets, write-only through the API, encrypted at rest. */
export class SecretService {
  constructor(
    private readonly db: Database,
    private readonly principal: Principal,
    private readonly box: SecretBox,
  ) {}

  private async assertOwnAgent(agentId: string) {
    const [agent] = await this.db
      .select({ id: agents.id })
      .from(agents)
      .where(and(eq(agents.teamId, this.principal.teamId), eq(agents.id, agentId), isNull(agents.deletedAt)));
    if (!agent) throw notFound("agent");
  }

  /**
   * Creates or replaces a secret (value and brokering together: setting one without `brokered`
   * makes it a plain environment secret again). A brokered value goes into an HTTP header, so it
   * may not hold line breaks.
   */
  async set(input: { name: string; value: string; agentId?: string; brokered?: Brokering }): Promise<SecretView> {
    requireRole(this.principal, "admin", "setting secrets");
    const agentId = input.agentId ?? null;
    const brokered = input.brokered ?? null;
    // What an HTTP header can carry as it is: tabs and printable ASCII (a line break would split it).
    if (brokered && !/^[\t\x20-\x7e]*$/.test(brokered.template.replaceAll("{{value}}", () => input.value))) {
      throw invalid("a brokered secret's value goes into an HTTP header: it may hold only printable ASCII characters and tabs (no line breaks, control or non-ASCII characters)");
    }
    if (agentId) await this.assertOwnAgent(agentId);
    const ciphertext = this.box.seal(input.value, associatedData(this.principal.teamId, agentId, input.name));
    return this.db.transaction(async (tx) => {
      const [row] = await tx
        .insert(secrets)
        .values({ teamId: this.principal.teamId, agentId, name: input.name, ciphertext, brokered })
        .onConflictDoUpdate({ target: [secrets.teamId, secrets.agentId, secrets.name], set: { ciphertext, brokered, updatedAt: sql`now()` } })
        .returning();
      await recordAudit(tx, {
        teamId: this.principal.teamId,
        actor: this.principal.actor,
        action: "secret.set",
        targetType: "secret",
        targetId: row!.id,
        metadata: { name: input.name, agentId, ...(brokered ? { brokeredHosts: brokered.hosts, header: brokered.header } : {}) },
      });
      return view(row!);
    });
  }

  async list(input: { agentId?: string; cursor?: string; limit: number }): Promise<Page<SecretView>> {
    if (input.agentId) await this.assertOwnAgent(input.agentId);
    const rows = await this.db
      .select({ row: secrets, at: cursorAt(secrets.createdAt) })
      .from(secrets)
      .where(
        and(
          eq(secrets.teamId, this.principal.teamId),
          input.agentId ? eq(secrets.agentId, input.agentId) : undefined,
          before(secrets.createdAt, secrets.id, input.cursor),
        ),
      )
      .orderBy(desc(secrets.createdAt), desc(secrets.id))
      .limit(input.limit + 1);
    return toPage(rows, input.limit, ({ row, at }) => ({ at, id: row.id }), ({ row }) => view(row));
  }

  async delete(input: { secretId: string }): Promise<{ id: string }> {
    requireRole(this.principal, "admin", "deleting secrets");
    return this.db.transaction(async (tx) => {
      const [row] = await tx.delete(secrets).where(and(eq(secrets.teamId, this.principal.teamId), eq(secrets.id, input.secretId))).returning();
      if (!row) throw notFound("secret");
      await recordAudit(tx, { teamId: this.principal.teamId, actor: this.principal.actor, action: "secret.delete", targetType: "secret", targetId: row.id, metadata: { name: row.name, agentId: row.agentId } });
      return { id: row.id };
    });
  }

  /**
   * The environment a sandbox of this agent receives from secrets: team-wide ones, overridden by
   * the agent's own; decrypted, except brokered ones, which the sandbox sees as their stub. For the
   * sandbox layer only; never returned by the API.
   */
  async environmentFor(agentId: string): Promise<Record<string, string>> {
    const rows = await this.db
      .select()
      .from(secrets)
      .where(and(eq(secrets.teamId, this.principal.teamId), sql`(${secrets.agentId} is null or ${secrets.agentId} = ${agentId})`));
    const env: Record<string, string> = {};
    const valueOf = (row: (typeof rows)[number]) =>
      row.brokered ? brokeredStub(this.box, row.teamId, row.agentId, row.name) : this.box.open(row.ciphertext, associatedData(row.teamId, row.agentId, row.name));
    for (const row of rows.filter((r) => r.agentId === null)) env[row.name] = valueOf(row);
    for (const row of rows.filter((r) => r.agentId !== null)) env[row.name] = valueOf(row);
    return env;
  }
}
