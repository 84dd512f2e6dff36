import type { Logger } from "../logger";
import type { BerthMetrics } from "../metrics";
import type { EventInput } from "../services/event-log";

export type EgressRecord = Extract<EventInput, { type: "egress" }>["payload"];

type Sink = (sessionId: string, events: Array<Extract<EventInput, { type: "egress" }>>) => Promise<void>;

/** Distinct entries a session may gather in one window; beyond, what is new is counted in one overflow entry per decision. */
export const MAX_KEYS_PER_SESSION = 200;
/** Entries of all sessions held at most: beyond, a window is written early. */
const MAX_PENDING = 20_000;
/** A window whose write failed is tried again this many times (the database may be restarting). */
const MAX_WRITE_ATTEMPTS = 5;
/** The host of an overflow entry (no real host has spaces or parentheses). */
export const OVERFLOW_HOST = "(other destinations)";

type Pending = { record: EgressRecord; paths: Set<string | undefined>; reasons: Set<string | undefined> };

/**
 * The `egress` events of the gateway, written to the sessions' logs once a window (a second by
 * default): what is alike within a window (same host, port, method, decision, status, rule) becomes
 * one event with a `count` and summed bytes and durations, so a burst of small requests does not
 * flood the log. Nothing is dropped, denials included: alike denials are counted, not discarded.
 *
 * Bounded whatever a sandbox does: the reason is not part of what makes records alike (a path
 * denial's reason names the path, so requests to many paths would otherwise stay apart); a session
 * holds at most MAX_KEYS_PER_SESSION entries a window, and what does not fit is counted in one
 * overflow entry per decision (host OVERFLOW_HOST, port 0); and one write is under way at a time,
 * the next taking whatever gathered meanwhile, so a slow or failing database makes windows longer
 * rather than queueing batches in memory.
 */
export class EgressLog {
  private readonly pending = new Map<string, Map<string, Pending>>();
  private pendingCount = 0;
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> = Promise.resolve();
  /** A flush waiting behind the write under way: later flushes join it. */
  private queued: Promise<void> | null = null;

  constructor(
    private readonly sink: Sink,
    private readonly options: { windowMs: number; logger: Logger; metrics: BerthMetrics | null },
  ) {}

  record(sessionId: string, record: EgressRecord): void {
    const kind = record.method && record.method !== "CONNECT" ? "http" : "connect";
    this.options.metrics?.egressRequests.inc({ decision: record.decision, kind });
    this.options.metrics?.egressBytes.inc({ direction: "out" }, record.bytesOut);
    this.options.metrics?.egressBytes.inc({ direction: "in" }, record.bytesIn);
    let session = this.pending.get(sessionId);
    if (!session) this.pending.set(sessionId, (session = new Map()));
    let key = JSON.stringify([record.host, record.port, record.method, record.decision, record.status, record.rule]);
    let existing = session.get(key);
    if (!existing && session.size >= MAX_KEYS_PER_SESSION) {
      // Full: counted with the rest of this window's overflow (never dropped).
      key = JSON.stringify(["overflow", record.decision]);
      existing = session.get(key);
      record = {
        host: OVERFLOW_HOST,
        port: 0,
        decision: record.decision,
        reason: `more than ${MAX_KEYS_PER_SESSION} different destinations within one window: the rest are counted here`,
        bytesOut: record.bytesOut,
        bytesIn: record.bytesIn,
        durationMs: record.durationMs,
        ...(record.count === undefined ? {} : { count: record.count }),
        ...(record.brokered ? { brokered: record.brokered } : {}),
        ...(record.stubsSeen ? { stubsSeen: record.stubsSeen } : {}),
      };
    }
    if (existing) {
      const merged = existing.record;
      merged.count = (merged.count ?? 1) + (record.count ?? 1);
      merged.bytesOut += record.bytesOut;
      merged.bytesIn += record.bytesIn;
      merged.durationMs = Math.round((merged.durationMs + record.durationMs) * 1000) / 1000;
      if (record.brokered) merged.brokered = [...new Set([...(merged.brokered ?? []), ...record.brokered])];
      if (record.stubsSeen) merged.stubsSeen = [...new Set([...(merged.stubsSeen ?? []), ...record.stubsSeen])];
      if (existing.paths.size < 2) existing.paths.add(record.path);
      if (existing.reasons.size < 2) existing.reasons.add(record.reason);
    } else {
      session.set(key, { record: { ...record }, paths: new Set([record.path]), reasons: new Set([record.reason]) });
      this.pendingCount++;
    }
    if (this.pendingCount >= MAX_PENDING) void this.flush();
    else this.timer ??= setTimeout(() => void this.flush(), this.options.windowMs).unref();
  }

  /** Writes what is pending (once the write under way, if any, is done; what arrives until then is written too). */
  flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.queued) return this.queued;
    const queued = this.flushing.then(() => {
      this.queued = null;
      const batch = [...this.pending];
      this.pending.clear();
      this.pendingCount = 0;
      return batch.length ? this.write(batch, 1) : undefined;
    });
    this.queued = queued;
    this.flushing = queued;
    return queued;
  }

  private async write(batch: Array<[string, Map<string, Pending>]>, attempt: number): Promise<void> {
    const failed: Array<[string, Map<string, Pending>]> = [];
    await Promise.all(
      batch.map(async ([sessionId, entries]) => {
        const events = [...entries.values()].map(({ record, paths, reasons }) => {
          const event = { ...record };
          // A count of requests to several paths names none of them.
          if (paths.size > 1) delete event.path;
          // Nor, for different reasons, does it pretend the first one's was everyone's.
          if (reasons.size > 1) event.reason = `for different reasons, such as: ${record.reason ?? "(none given)"}`;
          return { type: "egress" as const, payload: event };
        });
        try {
          await this.sink(sessionId, events);
        } catch (error) {
          failed.push([sessionId, entries]);
          this.options.logger.warn({ err: error, sessionId, events: events.length, attempt }, "could not record egress events");
        }
      }),
    );
    if (failed.length === 0) return;
    if (attempt >= MAX_WRITE_ATTEMPTS) {
      this.options.logger.error({ sessions: failed.length }, "gave up recording egress events after repeated failures");
      this.options.metrics?.egressErrors.inc({ kind: "record" }, failed.length);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 500 * attempt).unref());
    await this.write(failed, attempt + 1);
  }
}
