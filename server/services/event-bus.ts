import type postgres from "postgres";
import type { Logger } from "../logger";
import { EVENTS_CHANNEL } from "./event-log";

/** Live assistant text, broadcast but not stored: `{"s":"<sessionId>","t":"<text>"}`. */
export const DELTAS_CHANNEL = "berth_session_deltas";
/** Abort requests for running turns: the payload is the turn id. */
export const TURN_ABORT_CHANNEL = "berth_turn_abort";

/**
 * A run that took a running turn over (decision 019): the payload is `<turn id>:<run>`. The process
 * still running an older run of that turn stops it at once, its command or model call included,
 * instead of learning at its next write that the turn is no longer its own.
 */
export const TURN_TAKEN_OVER_CHANNEL = "berth_turn_taken_over";

/** Revoked API keys, so every replica drops them from its lookup cache: the payload is the key id. */
export const API_KEY_REVOKED_CHANNEL = "berth_api_key_revoked";

/** pg_notify payloads must stay under 8000 bytes; deltas are cut into pieces below that. */
const MAX_DELTA_CHARS = 1_000;

type SessionListener = { onEvents: (lastSeq: number) => void; onDelta: (text: string) => void };

/**
 * Live fan-out between replicas through Postgres LISTEN/NOTIFY: every process listens on one
 * dedicated connection and dispatches to its local subscribers. Notifications only say "look again";
 * readers always fetch the stored log by seq, so a missed notification costs latency, never events.
 */
export class EventBus {
  private readonly sessions = new Map<string, Set<SessionListener>>();
  private readonly abortListeners = new Set<(turnId: string) => void>();
  private readonly takeoverListeners = new Set<(turnId: string, run: number) => void>();
  private readonly revokedKeyListeners = new Set<(keyId: string) => void>();
  private readonly missedNotificationListeners = new Set<(channel: string) => void>();
  private readonly unlisteners: Array<() => Promise<void>> = [];

  constructor(
    private readonly sql: postgres.Sql,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    const listen = async (channel: string, handler: (payload: string) => void) => {
      let listened = false;
      const { unlisten } = await this.sql.listen(
        channel,
        (payload) => {
          try {
            handler(payload);
          } catch (error) {
            this.logger.error({ err: error, channel }, "a live event listener failed");
          }
        },
        // postgres.js listens again on a new connection after the old one dropped (a database
        // restart, a terminated backend); what was sent in between is lost.
        () => {
          if (!listened) {
            listened = true;
            return;
          }
          this.listeningAgain(channel);
        },
      );
      this.unlisteners.push(unlisten);
    };
    await listen(EVENTS_CHANNEL, (payload) => {
      const separator = payload.lastIndexOf(":");
      const listeners = this.sessions.get(payload.slice(0, separator));
      const lastSeq = Number(payload.slice(separator + 1));
      for (const listener of listeners ?? []) listener.onEvents(lastSeq);
    });
    await listen(DELTAS_CHANNEL, (payload) => {
      const { s, t } = JSON.parse(payload) as { s: string; t: string };
      for (const listener of this.sessions.get(s) ?? []) listener.onDelta(t);
    });
    await listen(TURN_ABORT_CHANNEL, (turnId) => {
      for (const listener of this.abortListeners) listener(turnId);
    });
    await listen(TURN_TAKEN_OVER_CHANNEL, (payload) => {
      const separator = payload.lastIndexOf(":");
      const run = Number(payload.slice(separator + 1));
      if (separator <= 0 || !Number.isInteger(run)) return;
      for (const listener of this.takeoverListeners) listener(payload.slice(0, separator), run);
    });
    await listen(API_KEY_REVOKED_CHANNEL, (keyId) => {
      for (const listener of this.revokedKeyListeners) listener(keyId);
    });
  }

  private listeningAgain(channel: string): void {
    if (channel === EVENTS_CHANNEL) {
      this.logger.info("listening for live notifications again after the connection dropped; reading again what was missed");
      // Every follower reads the log now rather than at its next periodic look.
      for (const listeners of this.sessions.values()) for (const listener of listeners) listener.onEvents(Number.MAX_SAFE_INTEGER);
    }
    for (const listener of this.missedNotificationListeners) {
      try {
        listener(channel);
      } catch (error) {
        this.logger.error({ err: error, channel }, "a listener for missed notifications failed");
      }
    }
  }

  async stop(): Promise<void> {
    await Promise.allSettled(this.unlisteners.splice(0).map((unlisten) => unlisten()));
  }

  /** Calls the listener on every notification for the session until the returned function is called. */
  subscribe(sessionId: string, listener: SessionListener): () => void {
    let listeners = this.sessions.get(sessionId);
    if (!listeners) this.sessions.set(sessionId, (listeners = new Set()));
    listeners.add(listener);
    return () => {
      listeners.delete(listener);
      if (listeners.size === 0 && this.sessions.get(sessionId) === listeners) this.sessions.delete(sessionId);
    };
  }

  onTurnAbort(listener: (turnId: string) => void): () => void {
    this.abortListeners.add(listener);
    return () => this.abortListeners.delete(listener);
  }

  /** Calls the listener with every turn a run took over, on any replica (see TURN_TAKEN_OVER_CHANNEL). */
  onTurnTakenOver(listener: (turnId: string, run: number) => void): () => void {
    this.takeoverListeners.add(listener);
    return () => this.takeoverListeners.delete(listener);
  }

  /** Tells every replica that `run` now holds the turn. */
  async announceTakeover(turnId: string, run: number): Promise<void> {
    await this.sql`select pg_notify(${TURN_TAKEN_OVER_CHANNEL}, ${`${turnId}:${run}`})`;
  }

  /**
   * Calls the listener with a channel each time this process listens on it again after its listening
   * connection dropped: notifications sent on it meanwhile are lost, so the state they would have
   * announced (an abort, a takeover, a revocation) must be read again.
   */
  onNotificationsMissed(listener: (channel: string) => void): () => void {
    this.missedNotificationListeners.add(listener);
    return () => this.missedNotificationListeners.delete(listener);
  }

  /** Calls the listener with the id of every API key revoked by any replica (sent by ApiKeyService.revoke). */
  onApiKeyRevoked(listener: (keyId: string) => void): () => void {
    this.revokedKeyListeners.add(listener);
    return () => this.revokedKeyListeners.delete(listener);
  }

  async publishDelta(sessionId: string, text: string): Promise<void> {
    for (let start = 0; start < text.length; start += MAX_DELTA_CHARS) {
      const payload = JSON.stringify({ s: sessionId, t: text.slice(start, start + MAX_DELTA_CHARS) });
      await this.sql`select pg_notify(${DELTAS_CHANNEL}, ${payload})`;
    }
  }
}
