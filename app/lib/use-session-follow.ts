import { useCallback, useEffect, useReducer, useRef, useState } from "react";
import { errorCode } from "./errors";
import { useTRPCClient } from "./trpc";
import type { StoredEvent } from "./types";

/** One item of `sessions.follow`: a stored event, or live assistant text (not stored) after a seq. */
export type FollowItem = { kind: "event"; event: StoredEvent } | { kind: "delta"; afterSeq: number; text: string };

export type Connection = "connecting" | "live" | "reconnecting" | "failed";

export type FollowState = {
  /** Every stored event held, in seq order, each exactly once: those after `windowStart`. */
  events: StoredEvent[];
  lastSeq: number;
  /**
   * Events up to this seq are not held: a long session opens on its newest events, and earlier pages
   * are loaded on request (`loadEarlier`). 0 once the log is held from its start.
   */
  windowStart: number;
  /** Whether the first page of history has arrived (the stream said it started). */
  started: boolean;
  /** Live assistant text of the step running after `afterSeq`; replaced by the stored event that follows. */
  streaming: { afterSeq: number; text: string } | null;
  connection: Connection;
  /** Why following stopped for good (not found, signed out…). */
  error: unknown;
};

type Action =
  | { type: "items"; items: FollowItem[] }
  | { type: "window"; afterSeq: number }
  | { type: "earlier"; events: StoredEvent[]; windowStart: number }
  | { type: "connection"; connection: Connection; error?: unknown }
  | { type: "started" }
  | { type: "reset" };

const INITIAL: FollowState = { events: [], lastSeq: 0, windowStart: 0, started: false, streaming: null, connection: "connecting", error: null };

/** Events a session page opens on; a longer log starts this far back, with earlier pages on request. */
export const HISTORY_WINDOW = 200;

/**
 * Adds an earlier page (events after `windowStart`, below the first held one) in front of the held
 * events. Seqs are dense per session (each comes from the session's counter), so the page fills the
 * gap exactly; anything already held is not added twice.
 */
export function prependEvents(state: FollowState, older: StoredEvent[], windowStart: number): FollowState {
  const firstHeld = state.events[0]?.seq ?? state.lastSeq + 1;
  const added = older.filter((event) => event.seq > windowStart && event.seq < firstHeld);
  return { ...state, events: added.length > 0 ? [...added, ...state.events] : state.events, windowStart: Math.min(state.windowStart, windowStart) };
}

/** Applies received items: events at or below the last seq are duplicates (a resumed stream) and dropped. */
export function applyItems(state: FollowState, items: FollowItem[]): FollowState {
  let { events, lastSeq, streaming } = state;
  let copied = false;
  for (const item of items) {
    if (item.kind === "event") {
      if (item.event.seq <= lastSeq) continue;
      if (!copied) {
        events = events.slice();
        copied = true;
      }
      events.push(item.event);
      lastSeq = item.event.seq;
      // The gateway records the sandbox's traffic whenever it happens, also while a step streams:
      // such an event does not end the step, and the step's further deltas come after its seq.
      if (streaming && item.event.type === "egress") streaming = { afterSeq: item.event.seq, text: streaming.text };
      // The step that streamed this text is now stored (as the answer, a tool call or an error).
      else if (streaming && item.event.seq > streaming.afterSeq) streaming = null;
    } else {
      if (item.afterSeq < lastSeq) continue;
      streaming = streaming && streaming.afterSeq === item.afterSeq ? { afterSeq: item.afterSeq, text: streaming.text + item.text } : { afterSeq: item.afterSeq, text: item.text };
    }
  }
  return events === state.events && streaming === state.streaming ? state : { ...state, events, lastSeq, streaming };
}

function reducer(state: FollowState, action: Action): FollowState {
  switch (action.type) {
    case "items":
      return applyItems(state, action.items);
    case "window":
      return state.lastSeq === 0 && state.events.length === 0 ? { ...state, lastSeq: action.afterSeq, windowStart: action.afterSeq } : state;
    case "earlier":
      return prependEvents(state, action.events, action.windowStart);
    case "started":
      return { ...state, started: true, connection: "live", error: null };
    case "connection":
      if (state.connection === action.connection && !action.error) return state;
      return { ...state, connection: action.connection, error: action.error ?? null };
    case "reset":
      return INITIAL;
  }
}

const FATAL = new Set(["NOT_FOUND", "UNAUTHORIZED", "FORBIDDEN", "BAD_REQUEST"]);

/**
 * Follows a session over SSE (`sessions.follow`, the browser's EventSource through
 * httpSubscriptionLink). Items are tracked by seq: the link resumes from the last one by itself, and
 * when the stream fails for good (server gone, then back) this hook subscribes again with
 * `lastEventId` = the last seq it holds. Items are applied once per animation frame, so replaying a
 * long history is one render, not one per event.
 *
 * `lastSeqAtOpen` is the session's last seq when the page opened (from `sessions.get`): following
 * starts once it is known, `HISTORY_WINDOW` events before it, so the browser never holds a whole long
 * log; `loadEarlier` pages back through `sessions.events`.
 */
export function useSessionFollow(sessionId: string, lastSeqAtOpen: number | undefined) {
  const client = useTRPCClient();
  const [state, dispatch] = useReducer(reducer, INITIAL);
  const lastSeq = useRef(0);
  const [generation, bump] = useReducer((value: number) => value + 1, 0);
  // Latched once per session: later values of the session row must not restart the stream.
  const opened = useRef<{ sessionId: string; lastSeq: number } | null>(null);
  if (opened.current?.sessionId !== sessionId) opened.current = lastSeqAtOpen === undefined ? null : { sessionId, lastSeq: lastSeqAtOpen };
  const canStart = opened.current !== null;
  const [earlier, setEarlier] = useState<{ loading: boolean; error: unknown }>({ loading: false, error: null });

  useEffect(() => {
    dispatch({ type: "reset" });
    lastSeq.current = 0;
    setEarlier({ loading: false, error: null });
  }, [sessionId]);

  useEffect(() => {
    if (!opened.current) return;
    if (lastSeq.current === 0) {
      const windowStart = Math.max(0, opened.current.lastSeq - HISTORY_WINDOW);
      lastSeq.current = windowStart;
      dispatch({ type: "window", afterSeq: windowStart });
    }
    let stopped = false;
    let subscription: { unsubscribe(): void } | undefined;
    let retryTimer: ReturnType<typeof setTimeout> | undefined;
    let retries = 0;
    let queue: FollowItem[] = [];
    let frame: { cancel(): void } | undefined;
    let wasLive = false;

    const flush = () => {
      frame = undefined;
      if (queue.length === 0) return;
      const items = queue;
      queue = [];
      dispatch({ type: "items", items });
    };
    const schedule = () => {
      if (frame !== undefined) return;
      if (document.visibilityState === "visible") {
        const id = requestAnimationFrame(flush);
        frame = { cancel: () => cancelAnimationFrame(id) };
      } else {
        // Hidden tabs get no animation frames; keep the state current anyway.
        const id = setTimeout(flush, 100);
        frame = { cancel: () => clearTimeout(id) };
      }
    };

    const connect = () => {
      if (stopped) return;
      const resumeFrom = lastSeq.current;
      subscription = client.sessions.follow.subscribe(
        { sessionId, lastEventId: resumeFrom > 0 ? String(resumeFrom) : null },
        {
          onStarted: () => {
            retries = 0;
            wasLive = true;
            dispatch({ type: "started" });
          },
          onData: (tracked) => {
            const item = tracked.data as FollowItem;
            if (item.kind === "event") {
              if (item.event.seq <= lastSeq.current) return;
              lastSeq.current = item.event.seq;
            }
            queue.push(item);
            schedule();
          },
          onConnectionStateChange: (connection) => {
            if (connection.state === "connecting" && wasLive) dispatch({ type: "connection", connection: "reconnecting" });
            else if (connection.state === "pending") dispatch({ type: "connection", connection: "live" });
          },
          onError: (error) => {
            subscription?.unsubscribe();
            const code = errorCode(error);
            if (code && FATAL.has(code)) {
              dispatch({ type: "connection", connection: "failed", error });
              return;
            }
            dispatch({ type: "connection", connection: wasLive ? "reconnecting" : "connecting" });
            retries += 1;
            retryTimer = setTimeout(connect, Math.min(10_000, 500 * 2 ** Math.min(retries, 5)));
          },
          onComplete: () => {
            // follow never ends by itself while the page is open: the server went away. Resume.
            if (stopped) return;
            dispatch({ type: "connection", connection: "reconnecting" });
            retryTimer = setTimeout(connect, 1_000);
          },
        },
      );
    };

    // Back online: do not wait for the backoff.
    const online = () => {
      if (retryTimer === undefined) return;
      clearTimeout(retryTimer);
      retryTimer = undefined;
      retries = 0;
      connect();
    };
    window.addEventListener("online", online);
    connect();
    return () => {
      stopped = true;
      window.removeEventListener("online", online);
      clearTimeout(retryTimer);
      subscription?.unsubscribe();
      frame?.cancel();
      flush();
    };
  }, [client, sessionId, generation, canStart]);

  /** After a fatal error: try again from the last seq held. */
  const retry = useCallback(() => {
    dispatch({ type: "connection", connection: "connecting" });
    bump();
  }, []);

  const windowStartRef = useRef(state.windowStart);
  windowStartRef.current = state.windowStart;
  /** Loads the page of events before the first one held. */
  const loadEarlier = useCallback(async () => {
    const before = windowStartRef.current;
    if (before <= 0) return;
    const afterSeq = Math.max(0, before - HISTORY_WINDOW);
    setEarlier({ loading: true, error: null });
    const outcome = await client.sessions.events.query({ sessionId, afterSeq, limit: before - afterSeq }).then(
      (page) => ({ page, error: null }),
      (error: unknown) => ({ page: null, error }),
    );
    // The page may have moved to another session meanwhile: nothing of this one goes there.
    if (opened.current?.sessionId !== sessionId) return;
    if (outcome.page) dispatch({ type: "earlier", events: outcome.page.items, windowStart: afterSeq });
    setEarlier({ loading: false, error: outcome.error });
  }, [client, sessionId]);

  /** The session's last seq when the page opened: later events happened while it was open. */
  const openedAtSeq = opened.current?.lastSeq ?? null;
  return { ...state, retry, loadEarlier, earlier, openedAtSeq };
}
