import type { BerthClient } from "../../server/client";
import { isTransient } from "./errors";
import type { SessionEvent } from "./render";

export type FollowHandlers = {
  onEvent(event: SessionEvent): void;
  onDelta?(afterSeq: number, text: string): void;
  /** `lost` once when the stream drops, `resumed` once when it is back (with the seq it resumed after). */
  onConnection?(state: "lost" | "resumed", afterSeq: number, error?: unknown): void;
};

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });

/**
 * Follows a session's events after `afterSeq` until `signal` aborts, surviving anything short of a
 * permanent refusal. The tRPC client and its EventSource already reconnect after network errors,
 * sending the last seq they saw (`Last-Event-ID`); this loop covers what they give up on (an HTTP
 * error while the server restarts, a stream the server ended on shutdown) by subscribing again with
 * `lastEventId` = the last seq handed to `onEvent`. Events at or below that seq are dropped, so the
 * caller sees every stored event exactly once, in order. A permanent error (unauthorized, not found)
 * rejects the returned promise.
 */
export async function followSession(client: BerthClient, sessionId: string, afterSeq: number, handlers: FollowHandlers, signal: AbortSignal): Promise<void> {
  let last = afterSeq;
  let connected = true;
  let failures = 0;
  const lost = (error?: unknown) => {
    if (!connected) return;
    connected = false;
    handlers.onConnection?.("lost", last, error);
  };
  while (!signal.aborted) {
    const outcome = await new Promise<{ error?: unknown }>((resolve) => {
      const subscription = client.sessions.follow.subscribe(
        { sessionId, lastEventId: last > 0 ? String(last) : null },
        {
          onStarted() {
            failures = 0;
            if (!connected) {
              connected = true;
              handlers.onConnection?.("resumed", last);
            }
          },
          onData(item) {
            const data = item.data;
            if (data.kind === "event") {
              if (data.event.seq <= last) return;
              last = data.event.seq;
              handlers.onEvent(data.event);
            } else if (data.afterSeq === last) {
              handlers.onDelta?.(data.afterSeq, data.text);
            }
          },
          onConnectionStateChange(state) {
            if (state.state === "connecting" && state.error) lost(state.error);
          },
          onError(error) {
            subscription.unsubscribe();
            resolve({ error });
          },
          onComplete() {
            resolve({});
          },
        },
      );
      signal.addEventListener("abort", () => {
        subscription.unsubscribe();
        resolve({});
      }, { once: true });
    });
    if (signal.aborted) return;
    if (outcome.error !== undefined && !isTransient(outcome.error)) throw outcome.error;
    lost(outcome.error);
    // An EventSource that failed on an HTTP status cannot say why: ask with a plain call, which
    // reports a revoked key or a deleted session as such, and waits out an unreachable server.
    for (;;) {
      await sleep(Math.min(5_000, 250 * 2 ** failures++), signal);
      if (signal.aborted) return;
      try {
        await client.sessions.get.query({ sessionId });
        break;
      } catch (error) {
        if (!isTransient(error)) throw error;
      }
    }
  }
}

/** The events of a turn; `usage` (always written by a completed turn) or `error` ends it. Not `egress`. */
const TURN_TYPES = new Set(["assistant_message", "tool_call", "tool_result", "usage", "error"]);

export type TurnOutcome = { userSeq: number; endSeq: number; status: "completed" | "failed"; events: SessionEvent[] };

/**
 * Works out, from the event log read in seq order, when the turn of each user message ends. Turns
 * run one at a time in the order of their messages, and each ends with exactly one `usage` (a
 * completed turn, or a failed one that used tokens; an `error` right after it in the same commit
 * belongs to the same turn) or `error` event. A session that fails or is terminated drops its open
 * turns without an event. Feed it from seq 1, or from a point where no turn was open.
 */
export class TurnTracker {
  private readonly open: number[] = [];
  private current: { userSeq: number; events: SessionEvent[] } | null = null;
  private lastEnded: TurnOutcome | null = null;
  readonly ended = new Map<number, TurnOutcome>();
  /** Set when the session failed or was terminated: turns still open then never end. */
  dropped: { seq: number; status: string } | null = null;

  constructor(private readonly onEnd?: (outcome: TurnOutcome) => void) {}

  push(event: SessionEvent): void {
    // The gateway records the sandbox's traffic whenever it happens, during a turn or between
    // turns (a background process): it neither belongs to a turn nor ends one.
    if (event.type === "egress") return;
    const payload = (event.payload ?? {}) as Record<string, unknown>;
    if (event.type === "error" && this.lastEnded && this.lastEnded.endSeq === event.seq - 1 && this.lastEnded.events.at(-1)?.type === "usage") {
      // The failure notice of the turn whose usage was just recorded.
      this.lastEnded.events.push(event);
      this.lastEnded.endSeq = event.seq;
      this.lastEnded.status = "failed";
      this.onEnd?.(this.lastEnded);
      return;
    }
    if (event.type === "user_message") {
      this.open.push(event.seq);
    } else if (event.type === "status" && (payload.to === "failed" || payload.to === "terminated")) {
      for (const userSeq of this.open.splice(0)) this.ended.set(userSeq, { userSeq, endSeq: event.seq, status: "failed", events: [] });
      this.current = null;
      this.dropped = { seq: event.seq, status: String(payload.to) };
      this.lastEnded = null;
      return;
    } else if (TURN_TYPES.has(event.type) && this.open.length > 0) {
      const head = this.open[0]!;
      if (this.current?.userSeq !== head) this.current = { userSeq: head, events: [] };
      this.current.events.push(event);
      if (event.type === "usage" || event.type === "error") {
        this.open.shift();
        const outcome: TurnOutcome = { userSeq: head, endSeq: event.seq, status: event.type === "error" ? "failed" : "completed", events: this.current.events };
        this.current = null;
        this.ended.set(head, outcome);
        this.lastEnded = outcome;
        this.onEnd?.(outcome);
        return;
      }
    }
    this.lastEnded = null;
  }

  isOpen(userSeq: number): boolean {
    return !this.ended.has(userSeq);
  }
}
