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
 * What changes on the session row together with the events appended to it: its status, and the
 * token usage of a model call. Writing them in the same statement as the events saves a round trip
 * per step, which is most of a turn's cost (see docs/decisions/015-turn-round-trips.md).
 */
export type SessionChanges = {
  status?: { to: SessionStatus; reason: string | null };
  usage?: { promptTokens: number; completionTokens: number; cost: number } | null;
};

type SessionStatus = (typeof sessions.$inferSelect)["status"];

/**
 * Appends events to a session's log in the caller's transaction. Sequence numbers come from the
 * session row (locked by the update), so they are gap-free and strictly increasing per session, and
 * the NOTIFY is delivered only if the transaction commits. `changes` are applied to the session row
 * by the same update.
 */
export async function appendEvents(tx: DatabaseOrTransaction, sessionId: string, events: EventInput[], changes: SessionChanges = {}): Promise<StoredEvent[]> {
  const status = changes.status ? sql`, status = ${changes.status.to}::session_status, status_reason = ${changes.status.reason}::text` : sql``;
  const usage = changes.usage
    ? sql`, prompt_tokens = prompt_tokens + ${changes.usage.promptTokens}::bigint, completion_tokens = completion_tokens + ${changes.usage.completionTokens}::bigint, cost_usd = cost_usd + ${changes.usage.cost}::numeric`
    : sql``;
  if (events.length === 0) {
    // A model step with nothing to record (an external harness reports a step's usage on its own).
    if (changes.status || changes.usage) await tx.execute(sql`update sessions set updated_at = now()${status}${usage} where id = ${sessionId}::uuid`);
    return [];
  }
  for (const event of events) eventPayloads[event.type].parse(event.payload);
  const batch = JSON.stringify(events.map((event) => ({ type: event.type, payload: event.payload, key: event.idempotencyKey ?? null })));
  // One statement: take the seqs, apply the session changes, insert the rows, queue the notification (sent at commit).
  const rows = await tx.execute<{ seq: string; created_at: string | Date }>(sql`
    with advanced as (
      update sessions set last_seq = last_seq + ${events.length}, updated_at = now(), last_activity_at = now()${status}${usage}
      where id = ${sessionId}::uuid returning last_seq, team_id
    ), notified as (
      select pg_notify(${EVENTS_CHANNEL}, ${sessionId} || ':' || (select last_seq from advanced)::text)
    )
    insert into session_events (session_id, team_id, seq, type, payload, idempotency_key)
    select ${sessionId}::uuid, advanced.team_id, advanced.last_seq - ${events.length} + batch.ord,
           (batch.item->>'type')::session_event_type, batch.item->'payload', batch.item->>'key'
    from advanced, notified, jsonb_array_elements(${batch}::jsonb) with ordinality as batch(item, ord)
    returning seq, created_at`);
  if (rows.length !== events.length) throw new Error(`session ${sessionId} does not exist`);
  const ordered = [...rows].sort((a, b) => Number(a.seq) - Number(b.seq));
  return ordered.map((row, index) => ({ seq: Number(row.seq), type: events[index]!.type, payload: events[index]!.payload, createdAt: new Date(row.created_at) }));
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
