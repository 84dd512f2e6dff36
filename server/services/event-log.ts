import { and, asc, eq, gt, sql } from "drizzle-orm";
import { z } from "zod";
import type { DatabaseOrTransaction } from "../../db/client";
import { sessionEvents, sessions } from "../../db/schema";

/** The typed payloads of the public event shape (see the README's API section). */
export const eventPayloads = {
  user_message: z.object({ text: z.string() }),
  assistant_message: z.object({ text: z.string() }),
  tool_call: z.object({ id: z.string(), name: z.string(), input: z.unknown() }),
  tool_result: z.object({ callId: z.string(), output: z.string(), exitCode: z.number().int().nullable().optional(), isError: z.boolean() }),
  status: z.object({ from: z.string(), to: z.string(), reason: z.string().optional() }),
  error: z.object({ message: z.string() }),
  usage: z.object({ promptTokens: z.number().int(), completionTokens: z.number().int(), cost: z.number().optional() }),
};

export type EventType = keyof typeof eventPayloads;
export type EventInput = { [T in EventType]: { type: T; payload: z.infer<(typeof eventPayloads)[T]>; idempotencyKey?: string } }[EventType];
export type StoredEvent = { seq: number; type: EventType; payload: unknown; createdAt: Date };

/** Channel of the live fan-out: the payload is `<sessionId>:<lastSeq>`. */
export const EVENTS_CHANNEL = "berth_session_events";

/**
 * Appends events to a session's log in the caller's transaction. Sequence numbers come from the
 * session row (locked by the update), so they are gap-free and strictly increasing per session, and
 * the NOTIFY is delivered only if the transaction commits.
 */
export async function appendEvents(tx: DatabaseOrTransaction, sessionId: string, events: EventInput[]): Promise<StoredEvent[]> {
  if (events.length === 0) return [];
  for (const event of events) eventPayloads[event.type].parse(event.payload);
  const [row] = await tx
    .update(sessions)
    .set({ lastSeq: sql`${sessions.lastSeq} + ${events.length}`, updatedAt: sql`now()`, lastActivityAt: sql`now()` })
    .where(eq(sessions.id, sessionId))
    .returning({ lastSeq: sessions.lastSeq, teamId: sessions.teamId });
  if (!row) throw new Error(`session ${sessionId} does not exist`);
  const first = row.lastSeq - events.length + 1;
  const inserted = await tx
    .insert(sessionEvents)
    .values(events.map((event, index) => ({ sessionId, teamId: row.teamId, seq: first + index, type: event.type, payload: event.payload, idempotencyKey: event.idempotencyKey ?? null })))
    .returning({ seq: sessionEvents.seq, type: sessionEvents.type, payload: sessionEvents.payload, createdAt: sessionEvents.createdAt });
  await tx.execute(sql`select pg_notify(${EVENTS_CHANNEL}, ${`${sessionId}:${row.lastSeq}`})`);
  return inserted;
}

/** A page of the stored log, oldest first, after a seq. Memory is bounded by `limit`, not by the log. */
export async function readEvents(db: DatabaseOrTransaction, input: { teamId: string; sessionId: string; afterSeq: number; limit: number }) {
  const rows = await db
    .select({ seq: sessionEvents.seq, type: sessionEvents.type, payload: sessionEvents.payload, createdAt: sessionEvents.createdAt })
    .from(sessionEvents)
    .where(and(eq(sessionEvents.teamId, input.teamId), eq(sessionEvents.sessionId, input.sessionId), gt(sessionEvents.seq, input.afterSeq)))
    .orderBy(asc(sessionEvents.seq))
    .limit(input.limit + 1);
  const items = rows.slice(0, input.limit);
  return { items, nextCursor: rows.length > input.limit ? items[items.length - 1]!.seq : null };
}
