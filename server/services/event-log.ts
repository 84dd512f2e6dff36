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
  /**
   * A connection (HTTPS tunnel) or request (where the gateway sees HTTP) of the sandbox through the
   * egress gateway. `count` > 1: that many alike within a second, summed (path kept when all shared
   * it). `brokered`: secrets the gateway put into the request; `stubsSeen`: stubs of secrets sent
   * to a host they are not bound to (left as they were).
   */
  egress: z.object({
    host: z.string(),
    port: z.number().int(),
    method: z.string().optional(),
    path: z.string().optional(),
    status: z.number().int().optional(),
    decision: z.enum(["allowed", "denied"]),
    rule: z.string().optional(),
    reason: z.string().optional(),
    bytesOut: z.number().int(),
    bytesIn: z.number().int(),
    durationMs: z.number(),
    count: z.number().int().optional(),
    brokered: z.array(z.string()).optional(),
    stubsSeen: z.array(z.string()).optional(),
  }),
};

export type EventType = keyof typeof eventPayloads;
export type EventInput = { [T in EventType]: { type: T; payload: z.infer<(typeof eventPayloads)[T]>; idempotencyKey?: string } }[EventType];
export type StoredEvent = { seq: number; type: EventType; payload: unknown; createdAt: Date };

/** Channel of the live fan-out: the payload is `<sessionId>:<lastSeq>` (also sent by the SQL functions of db/migrations). */
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
 * The events as `berth_append_events` takes them (db/migrations/0005_turn_functions.sql): a JSON
 * array of {type, payload, key}, each payload checked against its type first.
 */
export function eventBatch(events: EventInput[]): string {
  for (const event of events) eventPayloads[event.type].parse(event.payload);
  const batch = events.map((event) => ({ type: event.type, payload: event.payload, key: event.idempotencyKey ?? null }));
  const json = JSON.stringify(batch);
  // Postgres jsonb cannot hold U+0000 (a command's output can) nor a lone UTF-16 surrogate (a model's
  // JSON can escape one): either would fail the whole step. JSON.stringify escapes both, so the search
  // is cheap; they are stored as U+FFFD instead (the rewrite is rare).
  return UNSTORABLE_ESCAPE.test(json) ? JSON.stringify(storable(batch)) : json;
}

const UNSTORABLE_ESCAPE = /\\u(?:0000|d[89a-f])/;

/** Text as Postgres can store it: NUL and lone surrogates become U+FFFD. */
export function storableText(text: string): string {
  return text.replaceAll("\u0000", "\uFFFD").toWellFormed();
}

function storable(value: unknown): unknown {
  if (typeof value === "string") return storableText(value);
  if (Array.isArray(value)) return value.map(storable);
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([key, item]) => [storable(key), storable(item)]));
  return value;
}

/** A model call's usage as the SQL functions' (prompt, completion, cost) arguments; zeros for none. */
export function usageArguments(usage: SessionChanges["usage"]) {
  return sql`${usage?.promptTokens ?? 0}::bigint, ${usage?.completionTokens ?? 0}::bigint, ${usage?.cost ?? 0}::numeric`;
}

/**
 * Appends events to a session's log in the caller's transaction, in one statement. Sequence numbers
 * come from the session row (locked by the update), so they are gap-free and strictly increasing per
 * session, and the NOTIFY is delivered only if the transaction commits. `changes` are applied to the
 * session row by the same update; with no events, only they are written.
 */
export async function appendEvents(tx: DatabaseOrTransaction, sessionId: string, events: EventInput[], changes: SessionChanges = {}): Promise<StoredEvent[]> {
  if (events.length === 0 && !changes.status && !changes.usage) return [];
  const rows = await tx.execute<{ appended_seq: string; appended_at: string | Date }>(sql`
    select * from berth_append_events(${sessionId}::uuid, ${eventBatch(events)}::jsonb,
      ${changes.status?.to ?? null}::session_status, ${changes.status?.reason ?? null}::text, ${usageArguments(changes.usage)})`);
  if (rows.length !== events.length) throw new Error(`session ${sessionId} does not exist`);
  return storedEvents(rows, events);
}

/** The appended events from the rows an append function returned (one per event, in any order). */
export function storedEvents(rows: readonly { appended_seq: string; appended_at: string | Date }[], events: EventInput[]): StoredEvent[] {
  const ordered = [...rows].sort((a, b) => Number(a.appended_seq) - Number(b.appended_seq));
  return ordered.map((row, index) => ({ seq: Number(row.appended_seq), type: events[index]!.type, payload: events[index]!.payload, createdAt: new Date(row.appended_at) }));
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
