import type { MetaFunction } from "@remix-run/node";
import { useQuery } from "@tanstack/react-query";
import { ErrorState, Loading, PageHeader, StaleNotice } from "../components/ui";
import { useAppData } from "../lib/app-data";
import { useTRPC } from "../lib/trpc";

export const meta: MetaFunction = () => [{ title: "System · Berth" }];

function Row({ label, value, good, hint }: { label: string; value: string; good: boolean; hint?: string }) {
  return (
    <div className="status-row">
      <dt>{label}</dt>
      <dd>
        <span className={good ? "dot dot-ok" : "dot dot-warn"} aria-hidden="true" />
        <span data-testid={`system-${label.toLowerCase().replace(/\s+/g, "-")}`}>{value}</span>
        {hint ? <span className="muted small"> {hint}</span> : null}
      </dd>
    </div>
  );
}

export default function System() {
  const trpc = useTRPC();
  const { me, team } = useAppData();
  const health = useQuery(trpc.system.health.queryOptions(undefined, { refetchInterval: 10_000 }));
  return (
    <div className="page">
      <PageHeader title="System" description="The state of this Berth installation, refreshed every 10 seconds." />
      <section className="card" aria-labelledby="health-heading">
        <h2 id="health-heading" className="card-title">
          Health
        </h2>
        {health.isError && health.data ? <StaleNotice error={health.error} /> : null}
        {health.isPending ? (
          <Loading rows={5} />
        ) : health.data === undefined ? (
          <ErrorState error={health.error} onRetry={() => void health.refetch()} />
        ) : (
          <dl className="status-list">
            <Row label="Status" value={health.data.ok ? "Healthy" : "Degraded"} good={health.data.ok} />
            <Row label="Database" value={health.data.database} good={health.data.database === "ok"} />
            <Row
              label="Model gateway"
              value={health.data.gateway}
              good={health.data.gateway === "ok"}
              hint={health.data.gateway === "not configured" ? "(set LITELLM_BASE_URL; the offline demo model works without it)" : undefined}
            />
            <Row label="Sandbox backend" value={health.data.sandboxBackend} good={health.data.sandboxBackend !== "not configured"} />
            <Row
              label="Sandboxes"
              value={health.data.sandboxes.available ? "available" : "unavailable"}
              good={health.data.sandboxes.available}
              hint={health.data.sandboxes.available ? undefined : "(sessions cannot start: the banner above says why and what to run)"}
            />
            {health.data.sandboxIsolation ? (
              <>
                <Row label="Sandbox user" value={health.data.sandboxIsolation.hostUser} good hint="(the host user sandboxed processes run as)" />
                <Row
                  label="Seccomp filter"
                  value={health.data.sandboxIsolation.seccomp ? "on" : "off"}
                  good={health.data.sandboxIsolation.seccomp}
                  hint={health.data.sandboxIsolation.seccomp ? undefined : "(no filter for this architecture, or no jail)"}
                />
                <Row
                  label="Disk quotas"
                  value={health.data.sandboxIsolation.diskQuota ? "enforced" : "not enforced"}
                  good={health.data.sandboxIsolation.diskQuota}
                  hint={health.data.sandboxIsolation.diskQuota ? undefined : "(needs Berth as root, loop devices and mkfs.ext4: see docs/security.md)"}
                />
              </>
            ) : null}
            <Row label="Version" value={health.data.version} good />
          </dl>
        )}
      </section>
      <section className="card" aria-labelledby="you-heading">
        <h2 id="you-heading" className="card-title">
          Signed in
        </h2>
        <dl className="status-list">
          <div className="status-row">
            <dt>Team</dt>
            <dd>
              {team.name} <span className="muted mono small">({team.slug})</span>
            </dd>
          </div>
          <div className="status-row">
            <dt>Role</dt>
            <dd>{me.role}</dd>
          </div>
          <div className="status-row">
            <dt>Teams</dt>
            <dd>{me.teams.map((option) => option.name).join(", ") || team.name}</dd>
          </div>
        </dl>
      </section>
    </div>
  );
}
