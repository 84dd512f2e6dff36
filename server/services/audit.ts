import { and, desc, eq, lt } from "drizzle-orm";
import type { Database, DatabaseOrTransaction } from "../../db/client";
import { auditLog } from "../../db/schema";
import { invalid } from "./errors";
import type { Page } from "./pagination";
import { requireRole, type Principal } from "./principal";

export type Actor = { type: "user" | "api_key" | "system"; id: string | null };

export const SYSTEM_ACTOR: Actor = { type: "system", id: null };

export type AuditEntry = {
  teamId: string;
  actor: Actor;
  action: string;
  targetType: string;
  targetId?: string | null;
  /** Never secret values: names and ids only. */
  metadata?: Record<string, unknown>;
};

/** Appends to the audit log, inside the caller's transaction so the record and the change commit together. */
export async function recordAudit(db: DatabaseOrTransaction, entry: AuditEntry): Promise<void> {
  await db.insert(auditLog).values({
    teamId: entry.teamId,
    actorType: entry.actor.type,
    actorId: entry.actor.id,
    action: entry.action,
    targetType: entry.targetType,
    targetId: entry.targetId ?? null,
    metadata: entry.metadata ?? {},
  });
}

export type AuditView = {
  id: number;
  actorType: Actor["type"];
  actorId: string | null;
  action: string;
  targetType: string;
  targetId: string | null;
  metadata: Record<string, unknown>;
  createdAt: Date;
};

/** The team's audit log, newest first; the cursor is the last id seen. */
export class AuditService {
  constructor(
    private readonly db: Database,
    private readonly principal: Principal,
  ) {}

  async list(input: { cursor?: string; limit: number; action?: string; targetType?: string; targetId?: string }): Promise<Page<AuditView>> {
    requireRole(this.principal, "admin", "reading the audit log");
    const after = input.cursor === undefined ? undefined : Number(input.cursor);
    if (after !== undefined && !Number.isSafeInteger(after)) throw invalid("cursor is not one this API returned");
    const rows = await this.db
      .select()
      .from(auditLog)
      .where(
        and(
          eq(auditLog.teamId, this.principal.teamId),
          after === undefined ? undefined : lt(auditLog.id, after),
          input.action ? eq(auditLog.action, input.action) : undefined,
          input.targetType ? eq(auditLog.targetType, input.targetType) : undefined,
          input.targetId ? eq(auditLog.targetId, input.targetId) : undefined,
        ),
      )
      .orderBy(desc(auditLog.id))
      .limit(input.limit + 1);
    const items = rows.slice(0, input.limit).map(({ teamId: _teamId, ...row }) => row);
    return { items, nextCursor: rows.length > input.limit ? String(items[items.length - 1]!.id) : null };
  }
}
