import type { MetaFunction } from "@remix-run/node";
import { Link, useSearchParams } from "@remix-run/react";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { Badge, Empty, ErrorState, Loading, MutationError, Notice, OutputBlock, PageHeader, Pager, useCursorPager, StaleNotice } from "../components/ui";
import { errorCode } from "../lib/errors";
import { formatDateTime, shortId, timeAgo } from "../lib/format";
import { useNow } from "../lib/hooks";
import { useTRPC } from "../lib/trpc";
import type { Job } from "../lib/types";

export const meta: MetaFunction = () => [{ title: "Jobs · Berth" }];

type State = Job["state"];
const TABS: Array<{ state: State | ""; label: string }> = [
  { state: "", label: "All" },
  { state: "queued", label: "Queued" },
  { state: "running", label: "Running" },
  { state: "failed", label: "Failed" },
];

const TONE: Record<State, string> = { queued: "neutral", running: "active", failed: "danger" };

function When({ job, now }: { job: Job; now: number }) {
  if (job.state === "running" && job.lockedAt) return <span title={formatDateTime(job.lockedAt)}>started {timeAgo(job.lockedAt, now)}</span>;
  if (job.state === "queued") return <span title={formatDateTime(job.runAt)}>{job.runAt.getTime() > now ? `due ${timeAgo(job.runAt, now)}` : "due now"}</span>;
  return <span title={formatDateTime(job.updatedAt)}>failed {timeAgo(job.updatedAt, now)}</span>;
}

export default function Jobs() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const now = useNow(5_000);
  const [params, setParams] = useSearchParams();
  const state = (["queued", "running", "failed"] as string[]).includes(params.get("state") ?? "") ? (params.get("state") as State) : undefined;
  const pager = useCursorPager(state ?? "");
  const jobs = useQuery(trpc.jobs.list.queryOptions({ limit: 50, cursor: pager.cursor, state }, { placeholderData: keepPreviousData, refetchInterval: 3_000 }));
  const retry = useMutation(trpc.jobs.retry.mutationOptions({ onSuccess: () => void queryClient.invalidateQueries({ queryKey: trpc.jobs.pathKey() }) }));

  if (jobs.isError && errorCode(jobs.error) === "FORBIDDEN") {
    return (
      <div className="page">
        <PageHeader title="Jobs" />
        <Notice kind="info">Only admins and owners can see background jobs.</Notice>
      </div>
    );
  }

  return (
    <div className="page">
      <PageHeader
        title="Jobs"
        description="Background work in graphile-worker's queue: sandbox provisioning and agent turns of this team's sessions (the admin team also sees platform maintenance). Finished jobs leave the queue."
      />
      <div className="tabs" role="tablist" aria-label="Job state">
        {TABS.map((tab) => {
          const selected = (state ?? "") === tab.state;
          const count = tab.state && jobs.data ? jobs.data.counts[tab.state] : undefined;
          return (
            <button
              key={tab.label}
              type="button"
              role="tab"
              aria-selected={selected}
              className={selected ? "tab active" : "tab"}
              onClick={() => setParams(tab.state ? { state: tab.state } : {}, { replace: true, preventScrollReset: true })}
            >
              {tab.label}
              {count !== undefined ? <span className={`tab-count${tab.state === "failed" && count > 0 ? " tab-count-danger" : ""}`}>{count}</span> : null}
            </button>
          );
        })}
      </div>
      <MutationError error={retry.error} />
      {retry.isSuccess ? <Notice kind="success">Job {retry.data.id} queued again.</Notice> : null}
      {jobs.isError && jobs.data ? <StaleNotice error={jobs.error} /> : null}
      {jobs.isPending ? (
        <Loading label="Loading jobs" rows={4} />
      ) : jobs.data === undefined ? (
        <ErrorState error={jobs.error} onRetry={() => void jobs.refetch()} />
      ) : jobs.data.items.length === 0 ? (
        <Empty title={state ? `No ${state} jobs` : "The queue is empty"}>Jobs appear here while they wait, run, or after they failed for good.</Empty>
      ) : (
        <>
          <div className={jobs.isPlaceholderData ? "table-wrap stale" : "table-wrap"} aria-busy={jobs.isPlaceholderData}>
            <table className="table" aria-label="Jobs">
              <thead>
                <tr>
                  <th scope="col">Job</th>
                  <th scope="col">State</th>
                  <th scope="col" className="hide-sm">
                    Session
                  </th>
                  <th scope="col">Attempts</th>
                  <th scope="col" className="hide-sm">
                    When
                  </th>
                  <th scope="col">
                    <span className="visually-hidden">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {jobs.data.items.map((job) => (
                  <tr key={job.id} className="job-row">
                    <td>
                      <span className="mono">{job.task}</span>
                      <div className="muted small">
                        #{job.id}
                        {job.queue ? ` · ${job.queue.startsWith("session:") ? "session queue" : job.queue}` : ""}
                      </div>
                      {job.lastError ? (
                        <details className="job-error">
                          <summary className="small">{job.state === "failed" ? "Last error" : "Previous attempt failed"}</summary>
                          <OutputBlock text={job.lastError} tone="error" label="error" />
                        </details>
                      ) : null}
                    </td>
                    <td>
                      <Badge tone={TONE[job.state]}>{job.state}</Badge>
                    </td>
                    <td className="hide-sm">{job.sessionId ? <Link to={`/sessions/${job.sessionId}`} className="mono">{shortId(job.sessionId)}</Link> : <span className="muted">platform</span>}</td>
                    <td className="num">
                      {job.attempts} / {job.maxAttempts}
                    </td>
                    <td className="hide-sm nowrap">
                      <When job={job} now={now} />
                    </td>
                    <td className="actions-cell">
                      {job.state === "failed" ? (
                        <button type="button" className="button button-small" disabled={retry.isPending && retry.variables?.jobId === job.id} onClick={() => retry.mutate({ jobId: job.id })}>
                          Retry
                        </button>
                      ) : null}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <Pager page={pager.page} hasPrevious={pager.hasPrevious} nextCursor={jobs.data.nextCursor} onPrevious={pager.previous} onNext={pager.next} />
        </>
      )}
    </div>
  );
}
