import type { DatabaseOrTransaction } from "../../db/client";
import { auditLog } from "../../db/schema";

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
