import type { MetaFunction } from "@remix-run/node";
import { Link, useNavigate, useSearchParams } from "@remix-run/react";
import { keepPreviousData, useMutation, useQuery } from "@tanstack/react-query";
import { useState } from "react";
import { Empty, ErrorState, Loading, MutationError, PageHeader, Pager, StatusBadge, useCursorPager, StaleNotice } from "../components/ui";
import { formatCost, formatDateTime, formatNumber, shortId, timeAgo } from "../lib/format";
import { useNow } from "../lib/hooks";
import { useAppData } from "../lib/app-data";
import { useTRPC } from "../lib/trpc";
import { SESSION_STATUSES, type Agent, type SessionStatus } from "../lib/types";

export const meta: MetaFunction = () => [{ title: "Sessions · Berth" }];

const PAGE_SIZE = 20;

function NewSession({ agents }: { agents: Agent[] }) {
  const trpc = useTRPC();
  const navigate = useNavigate();
  const [agentId, setAgentId] = useState("");
  const [title, setTitle] = useState("");
  const create = useMutation(trpc.sessions.create.mutationOptions({ onSuccess: (session) => navigate(`/sessions/${session.id}`) }));
  const chosen = agentId || agents[0]?.id || "";
  if (agents.length === 0) return null;
  return (
    <form
      className="inline-form"
      aria-label="Start a session"
      onSubmit={(event) => {
        event.preventDefault();
        if (chosen) create.mutate({ agentId: chosen, title: title.trim() || undefined });
      }}
    >
      <label className="visually-hidden" htmlFor="new-session-agent">
        Agent
      </label>
      <select id="new-session-agent" value={chosen} onChange={(event) => setAgentId(event.target.value)}>
        {agents.map((agent) => (
          <option key={agent.id} value={agent.id}>
            {agent.name}
            {agent.isDemo ? " (offline demo)" : ""}
          </option>
        ))}
      </select>
      <label className="visually-hidden" htmlFor="new-session-title">
        Title (optional)
      </label>
      <input id="new-session-title" placeholder="Title (optional)" value={title} maxLength={200} onChange={(event) => setTitle(event.target.value)} />
      <button type="submit" className="button button-primary" disabled={create.isPending || !chosen}>
        {create.isPending ? "Starting…" : "Start session"}
      </button>
      <MutationError error={create.error} />
    </form>
  );
}

/**
 * One click from an empty dashboard to a sandbox at work (docs/decisions/024-first-minutes.md): the
 * server makes the team's demo agent if there is none, starts a session and sends it a command, and
 * the session page shows the output as it streams in.
 */
function StartDemo() {
  const trpc = useTRPC();
  const navigate = useNavigate();
  const { sandboxes } = useAppData();
  const start = useMutation(trpc.sessions.startDemo.mutationOptions({ onSuccess: (result) => navigate(`/sessions/${result.session.id}`) }));
  return (
    <div className="demo-start">
      <button type="button" className="button button-primary" disabled={start.isPending || !sandboxes.available} onClick={() => start.mutate()}>
        {start.isPending ? "Starting…" : "Start a demo session"}
      </button>
      <span className="small">
        {sandboxes.available
          ? "Runs a few commands (uname, id, ls) in a fresh sandbox with the offline demo model: no model key, nothing to fill in."
          : "Not until sandboxes are available here (see above)."}
      </span>
      <MutationError error={start.error} />
    </div>
  );
}

export default function Sessions() {
  const trpc = useTRPC();
  const now = useNow();
  const [params, setParams] = useSearchParams();
  const status = (SESSION_STATUSES as string[]).includes(params.get("status") ?? "") ? (params.get("status") as SessionStatus) : undefined;
  const agentFilter = params.get("agent") ?? undefined;
  const pager = useCursorPager(`${status}:${agentFilter}`);
  const agents = useQuery(trpc.agents.list.queryOptions({ limit: 100 }));
  const sessions = useQuery(
    trpc.sessions.list.queryOptions(
      { limit: PAGE_SIZE, cursor: pager.cursor, status, agentId: agentFilter },
      { placeholderData: keepPreviousData, refetchInterval: 5_000 },
    ),
  );
  const agentName = new Map((agents.data?.items ?? []).map((agent) => [agent.id, agent]));

  function setFilter(key: "status" | "agent", value: string) {
    const next = new URLSearchParams(params);
    if (value) next.set(key, value);
    else next.delete(key);
    setParams(next, { replace: true, preventScrollReset: true });
  }

  return (
    <div className="page">
      <PageHeader title="Sessions" description="Every conversation with an agent, each in its own sandbox." actions={<NewSession agents={agents.data?.items ?? []} />} />
      <div className="toolbar" role="group" aria-label="Filters">
        <div className="field field-inline">
          <label htmlFor="filter-status">Status</label>
          <select id="filter-status" value={status ?? ""} onChange={(event) => setFilter("status", event.target.value)}>
            <option value="">Any status</option>
            {SESSION_STATUSES.map((value) => (
              <option key={value} value={value}>
                {value}
              </option>
            ))}
          </select>
        </div>
        <div className="field field-inline">
          <label htmlFor="filter-agent">Agent</label>
          <select id="filter-agent" value={agentFilter ?? ""} onChange={(event) => setFilter("agent", event.target.value)}>
            <option value="">Any agent</option>
            {(agents.data?.items ?? []).map((agent) => (
              <option key={agent.id} value={agent.id}>
                {agent.name}
              </option>
            ))}
          </select>
        </div>
        {status || agentFilter ? (
          <button type="button" className="button button-quiet" onClick={() => setParams(new URLSearchParams(), { replace: true })}>
            Clear filters
          </button>
        ) : null}
      </div>

      {sessions.isError && sessions.data ? <StaleNotice error={sessions.error} /> : null}

      {sessions.isPending ? (
        <Loading label="Loading sessions" rows={5} />
      ) : sessions.data === undefined ? (
        <ErrorState error={sessions.error} onRetry={() => void sessions.refetch()} />
      ) : sessions.data.items.length === 0 ? (
        status || agentFilter ? (
          <Empty title="No sessions match these filters" />
        ) : (
          <Empty title="No sessions yet">
            <StartDemo />
            <p>
              {agents.data && agents.data.items.length === 0 ? (
                <>
                  Or create an <Link to="/agents">agent</Link> of your own, then start a session with it.
                </>
              ) : (
                "Or pick an agent above and start a session."
              )}
            </p>
          </Empty>
        )
      ) : (
        <>
          <div className={sessions.isPlaceholderData ? "table-wrap stale" : "table-wrap"} aria-busy={sessions.isPlaceholderData}>
            <table className="table" aria-label="Sessions">
              <thead>
                <tr>
                  <th scope="col">Session</th>
                  <th scope="col">Agent</th>
                  <th scope="col">Status</th>
                  <th scope="col">Last activity</th>
                  <th scope="col" className="hide-sm">
                    Events
                  </th>
                  <th scope="col" className="hide-sm">
                    Usage
                  </th>
                </tr>
              </thead>
              <tbody>
                {sessions.data.items.map((session) => {
                  const agent = agentName.get(session.agentId);
                  return (
                    <tr key={session.id}>
                      <td>
                        <Link to={`/sessions/${session.id}`} className="row-link">
                          {session.title || "Untitled session"}
                        </Link>
                        <div className="muted small mono">{shortId(session.id)}</div>
                      </td>
                      <td>
                        {agent ? agent.name : <span className="muted">deleted agent</span>}
                        <div className="muted small">v{session.agentVersion}</div>
                      </td>
                      <td>
                        <StatusBadge status={session.status} />
                      </td>
                      <td title={formatDateTime(session.lastActivityAt)}>{timeAgo(session.lastActivityAt, now)}</td>
                      <td className="hide-sm num">{formatNumber(session.lastSeq)}</td>
                      <td className="hide-sm num">
                        {formatNumber(session.promptTokens + session.completionTokens)} tok
                        <div className="muted small">{formatCost(session.costUsd)}</div>
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
          <Pager
            page={pager.page}
            hasPrevious={pager.hasPrevious}
            nextCursor={sessions.data.nextCursor}
            onPrevious={pager.previous}
            onNext={pager.next}
            busy={sessions.isFetching && sessions.isPlaceholderData}
          />
        </>
      )}
    </div>
  );
}
