import type { MetaFunction } from "@remix-run/node";
import { Link, useParams } from "@remix-run/react";
import { useMutation, useQuery } from "@tanstack/react-query";
import { useEffect, useLayoutEffect, useMemo, useRef, useState, type FormEvent, type KeyboardEvent } from "react";
import { StreamingMessage, Timeline, buildTimeline, isEgressAlarm } from "../components/session-timeline";
import { Badge, ConfirmButton, Detail, Empty, ErrorState, Loading, Notice, StatusBadge } from "../components/ui";
import { egressSummary, hostPort, summariseEgress, type EgressEventPayload, type EgressSummary } from "../lib/egress";
import { errorCode, errorMessage } from "../lib/errors";
import { formatCost, formatDateTime, formatNumber, shortId, timeAgo } from "../lib/format";
import { useNow } from "../lib/hooks";
import { useTRPC } from "../lib/trpc";
import { SESSION_STATUSES, type SessionDetail, type SessionStatus, type StoredEvent } from "../lib/types";
import { useSessionFollow, type Connection } from "../lib/use-session-follow";

export const meta: MetaFunction = () => [{ title: "Session · Berth" }];

/** The browser's connection to the live stream (not the session's own state). */
const CONNECTION_LABEL: Record<Connection, string> = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Connection lost, retrying…",
  failed: "Disconnected",
};

function ConnectionIndicator({ connection, onRetry }: { connection: Connection; onRetry: () => void }) {
  return (
    <span className={`connection connection-${connection}`} data-testid="connection" data-state={connection} title="Live updates from the server">
      <span className="badge-dot" aria-hidden="true" />
      <span>{CONNECTION_LABEL[connection]}</span>
      {connection === "failed" ? (
        <button type="button" className="button button-small" onClick={onRetry}>
          Retry
        </button>
      ) : null}
    </span>
  );
}

type Pending = { key: string; text: string; seq?: number; error?: unknown };

function newKey(): string {
  return typeof crypto.randomUUID === "function" ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

/** What a demo agent's session offers to send in one click: each shows a side of the sandbox. */
const DEMO_SUGGESTIONS = ["run: ps aux", "run: echo hello > hello.txt && ls -la", "run: curl -sS -m 5 https://example.com"];

function Composer({ status, onSend, suggestions = [] }: { status: SessionStatus | undefined; onSend: (text: string) => void; suggestions?: string[] }) {
  const [text, setText] = useState("");
  const closed = status === "terminated" || status === "failed";

  function submit(event?: FormEvent) {
    event?.preventDefault();
    const message = text.trim();
    if (!message || closed) return;
    onSend(message);
    setText("");
  }

  function onKeyDown(event: KeyboardEvent<HTMLTextAreaElement>) {
    if (event.key === "Enter" && !event.shiftKey && !event.nativeEvent.isComposing) {
      event.preventDefault();
      submit();
    }
  }

  return (
    <form className={suggestions.length > 0 && !closed ? "composer composer-with-suggestions" : "composer"} onSubmit={submit} aria-label="Send a message">
      {suggestions.length > 0 && !closed ? (
        <div className="demo-suggestions" role="group" aria-label="Try with the demo model">
          <span className="muted small">Try:</span>
          {suggestions.map((suggestion) => (
            <button key={suggestion} type="button" className="button button-small mono" onClick={() => onSend(suggestion)}>
              {suggestion}
            </button>
          ))}
        </div>
      ) : null}
      <label htmlFor="composer-text" className="visually-hidden">
        Message
      </label>
      <textarea
        id="composer-text"
        rows={2}
        value={text}
        disabled={closed}
        placeholder={closed ? (status === "failed" ? "This session failed: restart it to send messages." : "This session is terminated.") : "Message the agent…"}
        onChange={(event) => setText(event.target.value)}
        onKeyDown={onKeyDown}
        aria-describedby="composer-hint"
      />
      <div className="composer-side">
        <button type="submit" className="button button-primary" disabled={closed || text.trim().length === 0}>
          Send
        </button>
        <small id="composer-hint" className="muted hide-sm">
          Enter sends · Shift+Enter: new line
        </small>
      </div>
    </form>
  );
}

const SUMMARY_HOSTS = 8;

/** Where the session's sandbox connected to (denials first), from the events the page holds. */
function EgressFacts({ summary, partial }: { summary: EgressSummary; partial: boolean }) {
  if (summary.allowed + summary.denied === 0) return <span className="muted">no connections{partial ? " in the events loaded" : ""}</span>;
  const hosts = summary.hosts.slice(0, SUMMARY_HOSTS);
  return (
    <div data-testid="egress-summary">
      <div>
        {summary.denied > 0 ? <strong className="egress-denied-text">{formatNumber(summary.denied)} denied</strong> : <span>0 denied</span>} · {formatNumber(summary.allowed)} allowed
      </div>
      <ul className="egress-hosts plain-list small">
        {hosts.map((host) => (
          <li key={hostPort(host.host, host.port)} className={host.denied > 0 ? "egress-host egress-host-denied" : "egress-host"} title={host.reasons.join("\n") || undefined}>
            <span className="egress-icon" aria-hidden="true">
              {host.denied > 0 ? "⊘" : "↗"}
            </span>
            <span className="mono egress-host-name">{hostPort(host.host, host.port)}</span>
            <span className="egress-host-counts">
              {host.denied > 0 ? <span className="egress-denied-text">{host.denied} denied</span> : null}
              {host.denied > 0 && host.allowed > 0 ? " · " : null}
              {host.allowed > 0 ? <span className="muted">{host.allowed}</span> : null}
            </span>
          </li>
        ))}
      </ul>
      {summary.hosts.length > hosts.length ? <div className="muted small">and {summary.hosts.length - hosts.length} more hosts</div> : null}
      {summary.stubs.map((stub) => (
        <div key={`${stub.secret} ${stub.host} ${stub.port}`} className="egress-stub-fact small">
          ⚠ stub of <span className="mono">{stub.secret}</span> sent to <span className="mono">{hostPort(stub.host, stub.port)}</span>
        </div>
      ))}
      {partial ? <div className="muted small">In the events loaded (earlier ones are not counted).</div> : null}
    </div>
  );
}

function SessionFacts({ session, status, egress }: { session: SessionDetail; status: SessionStatus; egress: { summary: EgressSummary; partial: boolean } }) {
  const trpc = useTRPC();
  const now = useNow();
  // On narrow screens the details sit above the conversation, folded away until asked for.
  const [open, setOpen] = useState(false);
  const agent = useQuery(trpc.agents.get.queryOptions({ agentId: session.agentId, version: session.agentVersion }, { staleTime: Infinity }));
  // The gateway applies the agent's current policy, not the version the session pinned.
  const current = useQuery(trpc.agents.get.queryOptions({ agentId: session.agentId }));
  const sandbox = session.sandbox;
  return (
    <aside className={open ? "session-side card open" : "session-side card"} aria-label="Session details">
      <div className="session-side-head">
        <h2 className="card-title">Details</h2>
        <button type="button" className="button button-small session-side-toggle" aria-expanded={open} aria-controls="session-details" onClick={() => setOpen((value) => !value)}>
          {open ? "Hide" : "Show"}
        </button>
      </div>
      <p className="session-side-summary muted small">
        {sandbox ? `Sandbox generation ${sandbox.generation} · ${sandbox.status}` : "No sandbox yet"} · {formatNumber(session.promptTokens + session.completionTokens)} tokens ·{" "}
        {formatCost(session.costUsd)}
      </p>
      <dl className="details" id="session-details">
        <Detail label="Agent">
          {agent.data ? (
            <>
              <Link to={`/agents/${session.agentId}`}>{agent.data.name}</Link> <span className="muted">v{session.agentVersion}</span>
              <div className="small">
                <span className="mono">{agent.data.model}</span> {agent.data.isDemo ? <Badge tone="info">offline demo</Badge> : null}
              </div>
            </>
          ) : agent.isError ? (
            <span className="muted">{errorCode(agent.error) === "NOT_FOUND" ? "deleted agent" : "unavailable"}</span>
          ) : (
            <span className="muted">…</span>
          )}
        </Detail>
        <Detail label="Status">
          <StatusBadge status={status} />
          {session.statusReason ? <div className="muted small">{session.statusReason}</div> : null}
        </Detail>
        <Detail label="Sandbox">
          {sandbox ? (
            <div data-testid="sandbox-facts">
              <div>
                generation <strong data-testid="sandbox-generation">{sandbox.generation}</strong> · <span data-testid="sandbox-state">{sandbox.status}</span>
              </div>
              <div className="muted small mono" title={sandbox.name}>
                {sandbox.backend} · {sandbox.name}
              </div>
              {sandbox.hostPid ? <div className="muted small">host PID {sandbox.hostPid}</div> : null}
              {sandbox.readyAt ? <div className="muted small">ready {timeAgo(sandbox.readyAt, now)}{sandbox.fromWarmPool ? " (warm pool)" : ""}</div> : null}
              {sandbox.endReason ? <div className="muted small">ended: {sandbox.endReason}</div> : null}
            </div>
          ) : (
            <span className="muted">not provisioned yet</span>
          )}
        </Detail>
        <Detail label="Usage">
          <div data-testid="usage">
            {formatNumber(session.promptTokens)} prompt · {formatNumber(session.completionTokens)} completion
          </div>
          <div className="muted small">cost {formatCost(session.costUsd)}</div>
        </Detail>
        <Detail label="Egress">
          <EgressFacts summary={egress.summary} partial={egress.partial} />
          {current.data ? (
            <div className="muted small">
              policy: <Link to={`/agents/${session.agentId}`}>{egressSummary(current.data.egress)}</Link>
            </div>
          ) : null}
        </Detail>
        <Detail label="Started">
          <span title={formatDateTime(session.createdAt)}>{timeAgo(session.createdAt, now)}</span>
        </Detail>
        <Detail label="Last activity">
          <span title={formatDateTime(session.lastActivityAt)}>{timeAgo(session.lastActivityAt, now)}</span>
        </Detail>
        <Detail label="ID">
          <span className="mono small">{session.id}</span>
        </Detail>
      </dl>
    </aside>
  );
}

function SessionActions({ session, status }: { session: SessionDetail; status: SessionStatus }) {
  const trpc = useTRPC();
  const [notice, setNotice] = useState<string | null>(null);
  const options = { onSuccess: () => setNotice(null) };
  const abort = useMutation(trpc.sessions.abort.mutationOptions({ onSuccess: (result) => setNotice(result.aborted ? "Abort requested." : "Nothing was running.") }));
  const restart = useMutation(trpc.sessions.restart.mutationOptions(options));
  const terminate = useMutation(trpc.sessions.terminate.mutationOptions(options));
  const final = status === "terminated";
  const error = abort.error ?? restart.error ?? terminate.error;
  return (
    <div className="session-actions">
      <div className="button-row" role="group" aria-label="Session controls">
        <button type="button" className="button" disabled={status !== "running" || abort.isPending} onClick={() => abort.mutate({ sessionId: session.id })}>
          Abort
        </button>
        <button type="button" className="button" disabled={final || restart.isPending} onClick={() => restart.mutate({ sessionId: session.id })} title="Start a new sandbox generation (the workspace is kept)">
          {restart.isPending ? "Restarting…" : "Restart"}
        </button>
        <ConfirmButton label="Terminate" confirmLabel="Confirm terminate" disabled={final} pending={terminate.isPending} onConfirm={() => terminate.mutate({ sessionId: session.id })} />
      </div>
      <div className="session-actions-message" aria-live="polite">
        {error ? <span className="field-error">{errorMessage(error)}</span> : notice ? <span className="muted small">{notice}</span> : null}
      </div>
    </div>
  );
}

type TimelineFilter = "all" | "egress" | "denied";

const FILTER_LABEL: Record<TimelineFilter, string> = { all: "All", egress: "Network", denied: "Denials & warnings" };

/** Shown once the sandbox has made connections: what the timeline shows, and any leaked-stub warning. */
function EgressToolbar({ summary, alarms, filter, onFilter }: { summary: EgressSummary; alarms: number; filter: TimelineFilter; onFilter: (filter: TimelineFilter) => void }) {
  return (
    <div className="egress-toolbar">
      {summary.stubs.length > 0 ? (
        <Notice kind="error">
          <strong>Possible secret exfiltration.</strong> The stub of a brokered secret was sent to a host it is not bound to:{" "}
          {summary.stubs.map((stub, index) => (
            <span key={`${stub.secret} ${stub.host} ${stub.port}`}>
              {index > 0 ? ", " : ""}
              <span className="mono">{stub.secret}</span> → <span className="mono">{hostPort(stub.host, stub.port)}</span>
              {stub.count > 1 ? ` (${stub.count}×)` : ""}
            </span>
          ))}
          . The gateway left the stub as it was, so the secret itself did not leave; the agent tried to send it somewhere else.
        </Notice>
      ) : null}
      <div className="segmented" role="group" aria-label="Show in the timeline">
        {(Object.keys(FILTER_LABEL) as TimelineFilter[]).map((value) => (
          <button key={value} type="button" className={filter === value ? "segment active" : "segment"} aria-pressed={filter === value} onClick={() => onFilter(value)}>
            {FILTER_LABEL[value]}
            {value === "denied" ? <span className={alarms > 0 ? "tab-count tab-count-danger" : "tab-count"}>{alarms}</span> : null}
          </button>
        ))}
      </div>
    </div>
  );
}

/** The top of a long session's timeline: how many earlier events are not shown, and a button to load the page before. */
function EarlierEvents({ count, loading, error, onLoad }: { count: number; loading: boolean; error: unknown; onLoad: () => void }) {
  return (
    <div className="timeline-earlier" data-testid="earlier-events">
      <button type="button" className="button button-small" disabled={loading} onClick={onLoad}>
        {loading ? "Loading…" : `Show earlier events (${count.toLocaleString("en")} before these)`}
      </button>
      {error ? <span className="field-error">{errorMessage(error)}</span> : null}
    </div>
  );
}

const HOLD_RECONNECTING_MS = 1_500;

/**
 * A reconnect can be over in a few hundred milliseconds, its status events landing in one frame: the
 * header then says "reconnecting" for a moment after a fresh (under 10 s old) reconnect, so it is seen.
 * Only one that happened while the page was open (after `openedAtSeq`): a page opened after it shows
 * the session as it is, and the timeline has the reconnect.
 */
function useRecentReconnect(sessionId: string, events: StoredEvent[], openedAtSeq: number | null): boolean {
  const [until, setUntil] = useState(0);
  const checkedSeq = useRef(0);
  const checkedFor = useRef<string | null>(null);
  useEffect(() => {
    if (openedAtSeq === null) return;
    const opening = `${sessionId}@${openedAtSeq}`;
    if (checkedFor.current !== opening) {
      checkedFor.current = opening;
      checkedSeq.current = openedAtSeq;
    }
    for (let index = events.length - 1; index >= 0 && events[index]!.seq > checkedSeq.current; index--) {
      const event = events[index]!;
      if (event.type === "status" && (event.payload as { to: string }).to === "reconnecting" && Date.now() - new Date(event.createdAt).getTime() < 10_000) {
        setUntil(Date.now() + HOLD_RECONNECTING_MS);
        break;
      }
    }
    checkedSeq.current = Math.max(checkedSeq.current, events[events.length - 1]?.seq ?? 0);
  }, [sessionId, events, openedAtSeq]);
  useEffect(() => {
    if (until === 0) return;
    const timer = setTimeout(() => setUntil(0), Math.max(0, until - Date.now()));
    return () => clearTimeout(timer);
  }, [until]);
  return until > 0;
}

/** useLayoutEffect in the browser (before paint, so no visible jump); nothing to do on the server. */
const useBrowserLayoutEffect = typeof document === "undefined" ? useEffect : useLayoutEffect;

/** Keeps the page scrolled to the newest entry while the reader is at the bottom; leaves it alone otherwise. */
function usePinnedToBottom(dependencies: unknown[]) {
  const pinned = useRef(true);
  const [showJump, setShowJump] = useState(false);
  useEffect(() => {
    const onScroll = () => {
      const atBottom = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 120;
      pinned.current = atBottom;
      if (atBottom) setShowJump(false);
    };
    window.addEventListener("scroll", onScroll, { passive: true });
    return () => window.removeEventListener("scroll", onScroll);
  }, []);
  useBrowserLayoutEffect(() => {
    if (pinned.current) window.scrollTo({ top: document.documentElement.scrollHeight });
    else setShowJump(true);
  }, dependencies);
  // Content that grows without new entries (details loading, an output expanding) keeps a pinned reader at the bottom.
  useEffect(() => {
    if (typeof ResizeObserver === "undefined") return;
    const observer = new ResizeObserver(() => {
      if (pinned.current) window.scrollTo({ top: document.documentElement.scrollHeight });
    });
    observer.observe(document.body);
    return () => observer.disconnect();
  }, []);
  return {
    showJump,
    jump: () => {
      pinned.current = true;
      setShowJump(false);
      window.scrollTo({ top: document.documentElement.scrollHeight, behavior: "smooth" });
    },
  };
}

export default function SessionPage() {
  const { sessionId = "" } = useParams();
  const trpc = useTRPC();
  const session = useQuery(trpc.sessions.get.queryOptions({ sessionId }, { refetchInterval: 15_000 }));
  const follow = useSessionFollow(sessionId, session.data?.lastSeq);
  const [pending, setPending] = useState<Pending[]>([]);
  const send = useMutation(trpc.sessions.send.mutationOptions());
  // The same query as the details panel's (shared): a demo agent's session offers messages to try.
  const agent = useQuery(
    trpc.agents.get.queryOptions({ agentId: session.data?.agentId ?? "", version: session.data?.agentVersion }, { enabled: Boolean(session.data), staleTime: Infinity }),
  );

  const [filter, setFilter] = useState<TimelineFilter>("all");
  const egressEvents = useMemo(() => follow.events.filter((event) => event.type === "egress"), [follow.events]);
  const egressSummary = useMemo(() => summariseEgress(egressEvents.map((event) => event.payload as EgressEventPayload)), [egressEvents]);
  const entries = useMemo(() => {
    if (filter === "all") return buildTimeline(follow.events);
    return buildTimeline(filter === "egress" ? egressEvents : egressEvents.filter((event) => isEgressAlarm(event.payload as EgressEventPayload)));
  }, [filter, follow.events, egressEvents]);
  const alarms = useMemo(() => egressEvents.filter((event) => isEgressAlarm(event.payload as EgressEventPayload)).length, [egressEvents]);
  /** From the header (always in view): show the denials and warnings from the top. */
  const showAlarms = () => {
    setFilter("denied");
    window.scrollTo({ top: 0 });
  };

  // Status and usage come from the log as they happen; the session row (sandbox, totals) follows them.
  const latest = useMemo(() => {
    let status: { seq: number; to: string } | null = null;
    let usage = 0;
    for (let index = follow.events.length - 1; index >= 0 && (!status || !usage); index--) {
      const event = follow.events[index]!;
      if (!status && event.type === "status") status = { seq: event.seq, to: (event.payload as { to: string }).to };
      if (!usage && event.type === "usage") usage = event.seq;
    }
    return { status, usage };
  }, [follow.events]);
  const { refetch } = session;
  useEffect(() => {
    if (latest.status || latest.usage) void refetch();
  }, [latest.status?.seq, latest.usage, refetch]);

  // A sent message stays shown as pending until the stream delivers it (no flicker, no gap).
  useEffect(() => {
    setPending((current) => {
      const kept = current.filter((item) => item.seq === undefined || item.seq > follow.lastSeq);
      return kept.length === current.length ? current : kept;
    });
  }, [follow.lastSeq]);
  const lastSeqRef = useRef(follow.lastSeq);
  lastSeqRef.current = follow.lastSeq;
  const upsert = (item: Pending) =>
    setPending((current) => {
      if (item.seq !== undefined && item.seq <= lastSeqRef.current) return current.filter((other) => other.key !== item.key);
      return current.some((other) => other.key === item.key) ? current.map((other) => (other.key === item.key ? item : other)) : [...current, item];
    });
  /** Sends (or re-sends) a message; the idempotency key makes a retry land once. */
  const deliver = (item: Pending) => {
    upsert({ key: item.key, text: item.text });
    send.mutateAsync({ sessionId, text: item.text, idempotencyKey: item.key }).then(
      (result) => upsert({ key: item.key, text: item.text, seq: result.seq }),
      (error: unknown) => upsert({ key: item.key, text: item.text, error }),
    );
  };

  // Keyed on the newest entry: an earlier page loaded above is not news below.
  const jump = usePinnedToBottom([entries[entries.length - 1]?.seq, follow.streaming?.text.length, pending.length, follow.started]);

  // Loading an earlier page keeps what the reader was looking at in place (the timeline does not anchor scrolling).
  const fromBottom = useRef<number | null>(null);
  const loadEarlier = () => {
    fromBottom.current = document.documentElement.scrollHeight - window.scrollY;
    void follow.loadEarlier();
  };
  useBrowserLayoutEffect(() => {
    if (fromBottom.current === null) return;
    window.scrollTo({ top: document.documentElement.scrollHeight - fromBottom.current });
    fromBottom.current = null;
  }, [follow.windowStart]);

  const statusFromLog = latest.status && (SESSION_STATUSES as string[]).includes(latest.status.to) ? (latest.status.to as SessionStatus) : undefined;
  const status = statusFromLog ?? session.data?.status;
  const recentReconnect = useRecentReconnect(sessionId, follow.events, follow.openedAtSeq);
  const headerStatus = recentReconnect && status !== "terminated" && status !== "failed" ? "reconnecting" : status;

  if (session.isError && !session.data) {
    return (
      <div className="page">
        <p className="breadcrumb">
          <Link to="/sessions">Sessions</Link>
        </p>
        {errorCode(session.error) === "NOT_FOUND" ? (
          <Empty title="Session not found">It does not exist, or it belongs to another team.</Empty>
        ) : (
          <ErrorState error={session.error} onRetry={() => void session.refetch()} />
        )}
      </div>
    );
  }

  return (
    <div className="page page-wide session-page">
      <header className="session-header">
        <div className="session-title">
          <p className="breadcrumb">
            <Link to="/sessions">Sessions</Link> <span aria-hidden="true">/</span> <span className="mono">{shortId(sessionId)}</span>
          </p>
          <h1>{session.data ? session.data.title || "Untitled session" : "Session"}</h1>
          <div className="session-status-row">
            <span data-testid="session-status">{headerStatus ? <StatusBadge status={headerStatus} /> : <span className="badge badge-neutral">…</span>}</span>
            <ConnectionIndicator connection={follow.connection} onRetry={follow.retry} />
            {egressSummary.stubs.length > 0 ? (
              <button type="button" className="badge badge-danger egress-alert" onClick={showAlarms} data-testid="egress-alert">
                ⚠ Possible secret exfiltration
              </button>
            ) : egressSummary.denied > 0 ? (
              <button type="button" className="badge badge-warn egress-alert" onClick={showAlarms}>
                ⊘ {formatNumber(egressSummary.denied)} denied {egressSummary.denied === 1 ? "connection" : "connections"}
              </button>
            ) : null}
            <span className="sr-only-live visually-hidden" aria-live="polite">
              {headerStatus ? `Session ${headerStatus}` : ""}
            </span>
          </div>
        </div>
        {session.data && status ? <SessionActions session={session.data} status={status} /> : null}
      </header>

      <div className="session-body">
        <section className="timeline" aria-label="Conversation" data-testid="timeline" data-last-seq={follow.lastSeq} data-events={follow.events.length}>
          {egressEvents.length > 0 ? <EgressToolbar summary={egressSummary} alarms={alarms} filter={filter} onFilter={setFilter} /> : null}
          {!follow.started && follow.events.length === 0 ? (
            follow.connection === "failed" ? (
              <ErrorState error={follow.error} onRetry={follow.retry} title="Could not follow this session" />
            ) : (
              <Loading label="Loading the conversation" rows={4} />
            )
          ) : filter !== "all" && entries.length === 0 ? (
            <Empty title={filter === "denied" ? "No denied connections" : "No connections"}>{follow.windowStart > 0 ? "None in the events loaded." : null}</Empty>
          ) : entries.length === 0 && pending.length === 0 ? (
            <Empty title="Nothing here yet">Send a message below. With the offline demo model, <code>run: echo hello</code> runs a command in the sandbox.</Empty>
          ) : null}
          {follow.started && follow.windowStart > 0 ? <EarlierEvents count={follow.windowStart} loading={follow.earlier.loading} error={follow.earlier.error} onLoad={loadEarlier} /> : null}
          <Timeline entries={entries} running={status === "running"} />
          {follow.streaming && filter === "all" ? <StreamingMessage text={follow.streaming.text} /> : null}
          {pending.map((item) => (
            <article key={item.key} className="message message-user message-pending" aria-busy={!item.error}>
              <header className="message-head">
                <span>You</span>
                <span className="muted small">{item.error ? "not sent" : "sending…"}</span>
              </header>
              <div className="message-text">{item.text}</div>
              {item.error ? (
                <div className="pending-error">
                  <Notice kind="error">{errorMessage(item.error)}</Notice>
                  <div className="button-row">
                    <button type="button" className="button button-small" onClick={() => deliver(item)}>
                      Retry
                    </button>
                    <button type="button" className="button button-small button-quiet" onClick={() => setPending((current) => current.filter((other) => other.key !== item.key))}>
                      Discard
                    </button>
                  </div>
                </div>
              ) : null}
            </article>
          ))}
          {follow.connection === "reconnecting" ? (
            <p className="timeline-note muted small" role="status">
              Connection lost; resuming from event {follow.lastSeq}…
            </p>
          ) : null}
        </section>
        {session.data && status ? <SessionFacts session={session.data} status={status} egress={{ summary: egressSummary, partial: follow.windowStart > 0 }} /> : session.isPending ? <aside className="session-side card"><Loading rows={4} /></aside> : null}
      </div>

      {jump.showJump ? (
        <button type="button" className="button jump-latest" onClick={jump.jump}>
          ↓ Latest
        </button>
      ) : null}
      <Composer
        status={status}
        suggestions={agent.data?.isDemo && agent.data.harness === "builtin" ? DEMO_SUGGESTIONS : []}
        onSend={(text) => {
          // The message and its answer are what the sender wants to see next.
          setFilter("all");
          deliver({ key: newKey(), text });
        }}
      />
    </div>
  );
}
