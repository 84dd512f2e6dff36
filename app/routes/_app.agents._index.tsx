import type { MetaFunction } from "@remix-run/node";
import { Link, useNavigate } from "@remix-run/react";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { AgentForm } from "../components/agent-form";
import { Badge, Empty, ErrorState, Loading, PageHeader, Pager, useCursorPager, StaleNotice } from "../components/ui";
import { useAppData } from "../lib/app-data";
import { egressSummary } from "../lib/egress";
import { formatDateTime, formatDuration, timeAgo } from "../lib/format";
import { useNow } from "../lib/hooks";
import { useTRPC } from "../lib/trpc";
import { atLeast } from "../lib/types";

export const meta: MetaFunction = () => [{ title: "Agents · Berth" }];

export default function Agents() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const navigate = useNavigate();
  const now = useNow();
  const { me } = useAppData();
  const canEdit = atLeast(me.role, "admin");
  const pager = useCursorPager("agents");
  const agents = useQuery(trpc.agents.list.queryOptions({ limit: 20, cursor: pager.cursor }, { placeholderData: keepPreviousData }));
  const [creating, setCreating] = useState(false);
  const create = useMutation(
    trpc.agents.create.mutationOptions({
      onSuccess: (agent) => {
        void queryClient.invalidateQueries({ queryKey: trpc.agents.list.pathKey() });
        navigate(`/agents/${agent.id}`);
      },
    }),
  );

  return (
    <div className="page">
      <PageHeader
        title="Agents"
        description="What an agent is: model, prompt, sandbox size, egress policy. Every change is a new version; sessions pin theirs."
        actions={
          canEdit && !creating ? (
            <button type="button" className="button button-primary" onClick={() => setCreating(true)}>
              New agent
            </button>
          ) : null
        }
      />
      {creating ? (
        <section className="card" aria-labelledby="new-agent-heading">
          <h2 id="new-agent-heading" className="card-title">
            New agent
          </h2>
          <AgentForm submitLabel="Create agent" pending={create.isPending} error={create.error} onSubmit={(input) => create.mutate(input)} onCancel={() => setCreating(false)} />
        </section>
      ) : null}

      {agents.isError && agents.data ? <StaleNotice error={agents.error} /> : null}

      {agents.isPending ? (
        <Loading label="Loading agents" rows={4} />
      ) : agents.data === undefined ? (
        <ErrorState error={agents.error} onRetry={() => void agents.refetch()} />
      ) : agents.data.items.length === 0 ? (
        <Empty title="No agents yet">
          {canEdit ? (
            <>
              Create one with the model <code>demo</code> (the offline demo model) to try sessions without a gateway.
            </>
          ) : (
            "An admin of this team can create one."
          )}
        </Empty>
      ) : (
        <>
          <div className={agents.isPlaceholderData ? "table-wrap stale" : "table-wrap"} aria-busy={agents.isPlaceholderData}>
            <table className="table" aria-label="Agents">
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Model</th>
                  <th scope="col" className="hide-sm">
                    Sandbox
                  </th>
                  <th scope="col" className="hide-sm">
                    Idle timeout
                  </th>
                  <th scope="col">Version</th>
                  <th scope="col" className="hide-sm">
                    Updated
                  </th>
                </tr>
              </thead>
              <tbody>
                {agents.data.items.map((agent) => (
                  <tr key={agent.id}>
                    <td>
                      <Link to={`/agents/${agent.id}`} className="row-link">
                        {agent.name}
                      </Link>
                    </td>
                    <td>
                      <span className="mono">{agent.model}</span> {agent.isDemo ? <Badge tone="info">offline demo</Badge> : null}
                      {agent.harness !== "builtin" ? <Badge tone="neutral">{agent.harness}</Badge> : null}
                    </td>
                    <td className="hide-sm">
                      {agent.cpuMillis / 1000} CPU · {agent.memoryMb} MiB · disk {agent.diskMb} MiB · egress {egressSummary(agent.egress)}
                    </td>
                    <td className="hide-sm">{formatDuration(agent.idleTimeoutSeconds)}</td>
                    <td className="num">v{agent.version}</td>
                    <td className="hide-sm" title={formatDateTime(agent.updatedAt)}>
                      {timeAgo(agent.updatedAt, now)}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <Pager page={pager.page} hasPrevious={pager.hasPrevious} nextCursor={agents.data.nextCursor} onPrevious={pager.previous} onNext={pager.next} />
        </>
      )}
    </div>
  );
}
