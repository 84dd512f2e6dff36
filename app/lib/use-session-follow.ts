import { useCallback, useEffect, useReducer, useRef } from "react";
import { errorCode } from "./errors";
import { useTRPCClient } from "./trpc";
import type { StoredEvent } from "./types";

/** One item of `sessions.follow`: a stored event, or live assistant text (not stored) after a seq. */
export type FollowItem = { kind: "event"; event: StoredEvent } | { kind: "delta"; afterSeq: number; text: string };

export type Connection = "connecting" | "live" | "reconnecting" | "failed";

export type FollowState = {
  /** Every stored event received, in seq order, each exactly once. */
  events: StoredEvent[];
  lastSeq: number;
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
  | { type: "connection"; connection: Connection; error?: unknown }
  | { type: "started" }
  | { type: "reset" };

const INITIAL: FollowState = { events: [], lastSeq: 0, started: false, streaming: null, connection: "connecting", error: null };

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
      // The step that streamed this text is now stored (as the answer, a tool call or an error).
      if (streaming && item.event.seq > streaming.afterSeq) streaming = null;
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
 */
export function useSessionFollow(sessionId: string) {
  const client = useTRPCClient();
  const [state, dispatch] = useReducer(reducer, INITIAL);
  const lastSeq = useRef(0);
  const [generation, bump] = useReducer((value: number) => value + 1, 0);

  useEffect(() => {
    dispatch({ type: "reset" });
    lastSeq.current = 0;
  }, [sessionId]);

  useEffect(() => {
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
  }, [client, sessionId, generation]);

  /** After a fatal error: try again from the last seq held. */
  const retry = useCallback(() => {
    dispatch({ type: "connection", connection: "connecting" });
    bump();
  }, []);

  return { ...state, retry };
}
