import type { Logger } from "../logger";
import type { BerthMetrics } from "../metrics";
import type { EventInput } from "../services/event-log";

export type EgressRecord = Extract<EventInput, { type: "egress" }>["payload"];

type Sink = (sessionId: string, events: Array<Extract<EventInput, { type: "egress" }>>) => Promise<void>;

/** Distinct entries a session may gather in one window before it is written early. */
const MAX_KEYS_PER_SESSION = 200;
/** Entries of all sessions held at most: beyond, a window is written early. */
const MAX_PENDING = 20_000;
/** A window whose write failed is tried again this many times (the database may be restarting). */
const MAX_WRITE_ATTEMPTS = 5;

type Pending = { record: EgressRecord; paths: Set<string | undefined> };

/**
 * The `egress` events of the gateway, written to the sessions' logs once a window (a second by
 * default): what is alike within a window (same host, port, method, decision, status, rule) becomes
 * one event with a `count` and summed bytes and durations, so a burst of small requests does not
 * flood the log. Nothing is dropped, denials included: alike denials are counted, not discarded.
 */
export class EgressLog {
  private readonly pending = new Map<string, Map<string, Pending>>();
  private pendingCount = 0;
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> = Promise.resolve();

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
    const key = JSON.stringify([record.host, record.port, record.method, record.decision, record.status, record.rule, record.reason]);
    const existing = session.get(key);
    if (existing) {
      const merged = existing.record;
      merged.count = (merged.count ?? 1) + (record.count ?? 1);
      merged.bytesOut += record.bytesOut;
      merged.bytesIn += record.bytesIn;
      merged.durationMs = Math.round((merged.durationMs + record.durationMs) * 1000) / 1000;
      if (record.brokered) merged.brokered = [...new Set([...(merged.brokered ?? []), ...record.brokered])];
      if (record.stubsSeen) merged.stubsSeen = [...new Set([...(merged.stubsSeen ?? []), ...record.stubsSeen])];
      if (existing.paths.size < 2) existing.paths.add(record.path);
    } else {
      session.set(key, { record: { ...record }, paths: new Set([record.path]) });
      this.pendingCount++;
    }
    if (session.size >= MAX_KEYS_PER_SESSION || this.pendingCount >= MAX_PENDING) void this.flush();
    else this.timer ??= setTimeout(() => void this.flush(), this.options.windowMs).unref();
  }

  /** Writes what is pending now (and waits for writes already under way). */
  flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const batch = [...this.pending];
    this.pending.clear();
    this.pendingCount = 0;
    this.flushing = this.flushing.then(() => this.write(batch, 1));
    return this.flushing;
  }

  private async write(batch: Array<[string, Map<string, Pending>]>, attempt: number): Promise<void> {
    const failed: Array<[string, Map<string, Pending>]> = [];
    await Promise.all(
      batch.map(async ([sessionId, entries]) => {
        const events = [...entries.values()].map(({ record, paths }) => {
          const event = { ...record };
          // A count of requests to several paths names none of them.
          if (paths.size > 1) delete event.path;
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
