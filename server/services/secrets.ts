import { and, desc, eq, isNull, sql } from "drizzle-orm";
import type { Database } from "../../db/client";
import { agents, secrets } from "../../db/schema";
import { recordAudit } from "./audit";
import { notFound } from "./errors";
import { before, cursorAt, toPage, type Page } from "./pagination";
import { requireRole, type Principal } from "./principal";
import type { SecretBox } from "./secret-box";

/** What the API shows of a secret: never its value. */
export type SecretView = { id: string; name: string; agentId: string | null; createdAt: Date; updatedAt: Date };

const view = (row: typeof secrets.$inferSelect): SecretView => ({
  id: row.id,
  name: row.name,
  agentId: row.agentId,
  createdAt: row.createdAt,
  updatedAt: row.updatedAt,
});

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

  async set(input: { name: string; value: string; agentId?: string }): Promise<SecretView> {
    requireRole(this.principal, "admin", "setting secrets");
    const agentId = input.agentId ?? null;
    if (agentId) await this.assertOwnAgent(agentId);
    const ciphertext = this.box.seal(input.value, associatedData(this.principal.teamId, agentId, input.name));
    return this.db.transaction(async (tx) => {
      const [row] = await tx
        .insert(secrets)
        .values({ teamId: this.principal.teamId, agentId, name: input.name, ciphertext })
        .onConflictDoUpdate({ target: [secrets.teamId, secrets.agentId, secrets.name], set: { ciphertext, updatedAt: sql`now()` } })
        .returning();
      await recordAudit(tx, { teamId: this.principal.teamId, actor: this.principal.actor, action: "secret.set", targetType: "secret", targetId: row!.id, metadata: { name: input.name, agentId } });
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
   * The decrypted environment a sandbox of this agent receives from secrets: team-wide ones,
   * overridden by the agent's own. For the sandbox layer only; never returned by the API.
   */
  async environmentFor(agentId: string): Promise<Record<string, string>> {
    const rows = await this.db
      .select()
      .from(secrets)
      .where(and(eq(secrets.teamId, this.principal.teamId), sql`(${secrets.agentId} is null or ${secrets.agentId} = ${agentId})`));
    const env: Record<string, string> = {};
    for (const row of rows.filter((r) => r.agentId === null)) env[row.name] = this.box.open(row.ciphertext, associatedData(row.teamId, null, row.name));
    for (const row of rows.filter((r) => r.agentId !== null)) env[row.name] = this.box.open(row.ciphertext, associatedData(row.teamId, row.agentId, row.name));
    return env;
  }
}
