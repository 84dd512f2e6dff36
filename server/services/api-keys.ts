import { and, desc, eq, isNull, sql } from "drizzle-orm";
import type { Database } from "../../db/client";
import { apiKeys } from "../../db/schema";
import { generateApiKey, hashApiKey, visiblePrefix } from "../auth/api-keys";
import { recordAudit } from "./audit";
import { API_KEY_REVOKED_CHANNEL } from "./event-bus";
import { notFound } from "./errors";
import { before, cursorAt, toPage, type Page } from "./pagination";
import { hasRole, requireRole, type Principal, type Role } from "./principal";
import { forbidden } from "./errors";

export type ApiKeyView = {
  id: string;
  name: string;
  prefix: string;
  role: Role;
  createdAt: Date;
  lastUsedAt: Date | null;
  revokedAt: Date | null;
};

const view = (row: typeof apiKeys.$inferSelect): ApiKeyView => ({
  id: row.id,
  name: row.name,
  prefix: row.prefix,
  role: row.role,
  createdAt: row.createdAt,
  lastUsedAt: row.lastUsedAt,
  revokedAt: row.revokedAt,
});

export class ApiKeyService {
  constructor(
    private readonly db: Database,
    private readonly principal: Principal,
    /** Drops a revoked key from this process's lookup cache (other replicas hear the NOTIFY). */
    private readonly forgetKey: (keyId: string) => void = () => {},
  ) {}

  /** The key itself is in this return value and nowhere else, ever. */
  async create(input: { name: string; role: Role }): Promise<ApiKeyView & { key: string }> {
    requireRole(this.principal, "admin", "creating API keys");
    if (!hasRole(this.principal, input.role)) throw forbidden(`cannot create a key with the ${input.role} role, above your own`);
    const key = generateApiKey();
    return this.db.transaction(async (tx) => {
      const [row] = await tx
        .insert(apiKeys)
        .values({ teamId: this.principal.teamId, name: input.name, prefix: visiblePrefix(key), hash: hashApiKey(key), role: input.role, createdByUserId: this.principal.userId })
        .returning();
      await recordAudit(tx, { teamId: this.principal.teamId, actor: this.principal.actor, action: "api_key.create", targetType: "api_key", targetId: row!.id, metadata: { name: input.name, role: input.role } });
      return { ...view(row!), key };
    });
  }

  async list(input: { cursor?: string; limit: number; includeRevoked: boolean }): Promise<Page<ApiKeyView>> {
    requireRole(this.principal, "admin", "listing API keys");
    const rows = await this.db
      .select({ row: apiKeys, at: cursorAt(apiKeys.createdAt) })
      .from(apiKeys)
      .where(
        and(
          eq(apiKeys.teamId, this.principal.teamId),
          input.includeRevoked ? undefined : isNull(apiKeys.revokedAt),
          before(apiKeys.createdAt, apiKeys.id, input.cursor),
        ),
      )
      .orderBy(desc(apiKeys.createdAt), desc(apiKeys.id))
      .limit(input.limit + 1);
    return toPage(rows, input.limit, ({ row, at }) => ({ at, id: row.id }), ({ row }) => view(row));
  }

  async revoke(input: { keyId: string }): Promise<ApiKeyView> {
    requireRole(this.principal, "admin", "revoking API keys");
    try {
      return await this.revokeInTransaction(input.keyId);
    } finally {
      // Also after a failure: a commit whose reply was lost may have revoked it.
      this.forgetKey(input.keyId);
    }
  }

  private async revokeInTransaction(keyId: string): Promise<ApiKeyView> {
    return this.db.transaction(async (tx) => {
      const [row] = await tx
        .select()
        .from(apiKeys)
        .where(and(eq(apiKeys.teamId, this.principal.teamId), eq(apiKeys.id, keyId)))
        .for("update");
      if (!row) throw notFound("API key");
      if (row.revokedAt) return view(row);
      const [revoked] = await tx.update(apiKeys).set({ revokedAt: new Date() }).where(eq(apiKeys.id, row.id)).returning();
      // Delivered at commit: every replica drops the key from its lookup cache.
      await tx.execute(sql`select pg_notify(${API_KEY_REVOKED_CHANNEL}, ${row.id}::text)`);
      await recordAudit(tx, { teamId: this.principal.teamId, actor: this.principal.actor, action: "api_key.revoke", targetType: "api_key", targetId: row.id, metadata: { name: row.name } });
      return view(revoked!);
    });
  }
}
