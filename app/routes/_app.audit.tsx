import type { MetaFunction } from "@remix-run/node";
import { Link, useSearchParams } from "@remix-run/react";
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { Badge, Empty, ErrorState, Loading, Notice, PageHeader, Pager, useCursorPager, StaleNotice } from "../components/ui";
import { errorCode } from "../lib/errors";
import { formatDateTime, shortId, timeAgo } from "../lib/format";
import { useNow } from "../lib/hooks";
import { useTRPC } from "../lib/trpc";
import type { RouterOutputs } from "../lib/types";

export const meta: MetaFunction = () => [{ title: "Audit log · Berth" }];

type Entry = RouterOutputs["audit"]["list"]["items"][number];

const TARGET_TYPES = ["agent", "api_key", "invitation", "job", "secret", "session", "team", "user"];
const ACTIONS = [
  "agent.create",
  "agent.update",
  "agent.delete",
  "api_key.create",
  "api_key.revoke",
  "invitation.accepted",
  "invitation.declined",
  "invitation.revoked",
  "job.retry",
  "member.add",
  "member.invited",
  "member.remove",
  "member.role",
  "sandbox.lost",
  "sandbox.ready",
  "secret.set",
  "secret.delete",
  "session.create",
  "session.abort",
  "session.restart",
  "session.suspend",
  "session.terminate",
  "session.fail",
  "team.create",
  "user.create",
  "user.login",
  "user.logout",
  "user.password_reset",
];

function Target({ entry }: { entry: Entry }) {
  if (!entry.targetId) return <span>{entry.targetType}</span>;
  const href = entry.targetType === "session" ? `/sessions/${entry.targetId}` : entry.targetType === "agent" ? `/agents/${entry.targetId}` : null;
  const label = (
    <>
      {entry.targetType} <span className="mono">{shortId(entry.targetId)}</span>
    </>
  );
  return href ? <Link to={href}>{label}</Link> : <span title={entry.targetId}>{label}</span>;
}

export default function Audit() {
  const trpc = useTRPC();
  const now = useNow();
  const [params, setParams] = useSearchParams();
  const action = params.get("action") ?? "";
  const targetType = params.get("target") ?? "";
  const pager = useCursorPager(`${action}:${targetType}`);
  const log = useQuery(
    trpc.audit.list.queryOptions({ limit: 50, cursor: pager.cursor, action: action || undefined, targetType: targetType || undefined }, { placeholderData: keepPreviousData, refetchInterval: 15_000 }),
  );
  const members = useQuery(trpc.teams.members.queryOptions({ limit: 100 }));
  const keys = useQuery(trpc.apiKeys.list.queryOptions({ limit: 100, includeRevoked: true }));
  const userName = new Map((members.data?.items ?? []).map((member) => [member.userId, member.email]));
  const keyName = new Map((keys.data?.items ?? []).map((key) => [key.id, key.name]));

  function setFilter(key: "action" | "target", value: string) {
    const next = new URLSearchParams(params);
    if (value) next.set(key, value);
    else next.delete(key);
    setParams(next, { replace: true, preventScrollReset: true });
  }

  function actor(entry: Entry) {
    if (entry.actorType === "system") return <Badge>system</Badge>;
    if (entry.actorType === "user") return <span>{(entry.actorId && userName.get(entry.actorId)) ?? `user ${shortId(entry.actorId ?? "")}`}</span>;
    return (
      <span>
        key <span className="mono">{(entry.actorId && keyName.get(entry.actorId)) ?? shortId(entry.actorId ?? "")}</span>
      </span>
    );
  }

  if (log.isError && errorCode(log.error) === "FORBIDDEN") {
    return (
      <div className="page">
        <PageHeader title="Audit log" />
        <Notice kind="info">Only admins and owners can read the audit log.</Notice>
      </div>
    );
  }

  return (
    <div className="page">
      <PageHeader title="Audit log" description="Who did what to which resource in this team. Append-only; secret values never appear." />
      <div className="toolbar" role="group" aria-label="Filters">
        <div className="field field-inline">
          <label htmlFor="audit-action">Action</label>
          <select id="audit-action" value={action} onChange={(event) => setFilter("action", event.target.value)}>
            <option value="">Any action</option>
            {ACTIONS.map((value) => (
              <option key={value} value={value}>
                {value}
              </option>
            ))}
          </select>
        </div>
        <div className="field field-inline">
          <label htmlFor="audit-target">Target</label>
          <select id="audit-target" value={targetType} onChange={(event) => setFilter("target", event.target.value)}>
            <option value="">Any target</option>
            {TARGET_TYPES.map((value) => (
              <option key={value} value={value}>
                {value}
              </option>
            ))}
          </select>
        </div>
      </div>
      {log.isError && log.data ? <StaleNotice error={log.error} /> : null}
      {log.isPending ? (
        <Loading label="Loading the audit log" rows={6} />
      ) : log.data === undefined ? (
        <ErrorState error={log.error} onRetry={() => void log.refetch()} />
      ) : log.data.items.length === 0 ? (
        <Empty title={action || targetType ? "No entries match these filters" : "Nothing recorded yet"} />
      ) : (
        <>
          <div className={log.isPlaceholderData ? "table-wrap stale" : "table-wrap"} aria-busy={log.isPlaceholderData}>
            <table className="table" aria-label="Audit log">
              <thead>
                <tr>
                  <th scope="col">When</th>
                  <th scope="col">Actor</th>
                  <th scope="col">Action</th>
                  <th scope="col">Target</th>
                  <th scope="col" className="hide-sm">
                    Details
                  </th>
                </tr>
              </thead>
              <tbody>
                {log.data.items.map((entry) => (
                  <tr key={entry.id}>
                    <td title={formatDateTime(entry.createdAt)} className="nowrap">
                      {timeAgo(entry.createdAt, now)}
                    </td>
                    <td>{actor(entry)}</td>
                    <td className="mono small">{entry.action}</td>
                    <td>
                      <Target entry={entry} />
                    </td>
                    <td className="hide-sm mono small metadata">{Object.keys(entry.metadata).length > 0 ? JSON.stringify(entry.metadata) : ""}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <Pager page={pager.page} hasPrevious={pager.hasPrevious} nextCursor={log.data.nextCursor} onPrevious={pager.previous} onNext={pager.next} />
        </>
      )}
    </div>
  );
}
