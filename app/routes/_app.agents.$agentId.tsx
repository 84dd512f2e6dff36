import type { MetaFunction } from "@remix-run/node";
import { Link, useNavigate, useParams } from "@remix-run/react";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { AgentForm, changedFields, stableJson } from "../components/agent-form";
import { Badge, ConfirmButton, Detail, Empty, ErrorState, Loading, MutationError, Notice, PageHeader, Pager, useCursorPager, StaleNotice } from "../components/ui";
import { useAppData } from "../lib/app-data";
import { EGRESS_MODE_HINT, egressSummary, type EgressPolicyView } from "../lib/egress";
import { formatAllowRule } from "../lib/egress-rules";
import { errorCode } from "../lib/errors";
import { formatDateTime, formatDuration, timeAgo } from "../lib/format";
import { useNow } from "../lib/hooks";
import { useTRPC } from "../lib/trpc";
import { atLeast, type Agent, type AgentVersion } from "../lib/types";

export const meta: MetaFunction = () => [{ title: "Agent · Berth" }];

function EgressPolicy({ policy }: { policy: EgressPolicyView }) {
  const rules = policy.allow.map(formatAllowRule);
  return (
    <div className="detail span-all" data-testid="egress-policy">
      <dt>Egress</dt>
      <dd>
        <strong>{egressSummary(policy)}</strong> <span className="muted small">{EGRESS_MODE_HINT[policy.mode]}</span>
        {policy.mode === "allowlist" ? (
          rules.length === 0 ? (
            <div className="muted small">No rules: every connection is refused.</div>
          ) : (
            <ul className="rule-list mono small">
              {rules.map((rule) => (
                <li key={rule}>{rule}</li>
              ))}
            </ul>
          )
        ) : rules.length > 0 ? (
          <div className="muted small">
            {rules.length} allow {rules.length === 1 ? "rule" : "rules"} kept for allow-list mode, not applied: {rules.join(", ")}
          </div>
        ) : null}
      </dd>
    </div>
  );
}

function Config({ config }: { config: Agent | AgentVersion }) {
  const env = Object.entries(config.env);
  return (
    <dl className="details details-grid">
      <Detail label="Model">
        <span className="mono">{config.model}</span> {config.model === "demo" ? <Badge tone="info">offline demo</Badge> : null}
      </Detail>
      <Detail label="Harness">{config.harness}</Detail>
      <Detail label="CPU">{config.cpuMillis} millicores</Detail>
      <Detail label="Memory">{config.memoryMb} MiB</Detail>
      <Detail label="Workspace disk">{config.diskMb} MiB</Detail>
      <Detail label="Idle timeout">{formatDuration(config.idleTimeoutSeconds)}</Detail>
      <Detail label="Max steps">{config.maxSteps}</Detail>
      <Detail label="While busy">{config.busyPolicy}</Detail>
      <Detail label="Warm pool">{config.warmPoolSize > 0 ? `${config.warmPoolSize} sandboxes (Kubernetes)` : <span className="muted">none</span>}</Detail>
      <Detail label="Sandbox image">{config.sandboxImage ?? <span className="muted">default</span>}</Detail>
      <Detail label="Environment">
        {env.length === 0 ? (
          <span className="muted">none</span>
        ) : (
          <ul className="plain-list mono small">
            {env.map(([key, value]) => (
              <li key={key}>
                {key}={value}
              </li>
            ))}
          </ul>
        )}
      </Detail>
      <EgressPolicy policy={config.egress} />
      <div className="detail span-all">
        <dt>System prompt</dt>
        <dd>{config.systemPrompt ? <pre className="prompt-text">{config.systemPrompt}</pre> : <span className="muted">none</span>}</dd>
      </div>
    </dl>
  );
}

const FIELD_LABEL: Record<string, string> = {
  model: "model",
  harness: "harness",
  systemPrompt: "system prompt",
  sandboxImage: "sandbox image",
  cpuMillis: "CPU",
  memoryMb: "memory",
  diskMb: "workspace disk",
  network: "network",
  egress: "egress",
  idleTimeoutSeconds: "idle timeout",
  maxSteps: "max steps",
  busyPolicy: "while busy",
  warmPoolSize: "warm pool",
  env: "environment",
};

/** What a version changed from the one before it, in words ("max steps 20 → 12"). */
function changesFrom(previous: AgentVersion, version: AgentVersion): string[] {
  const changes: string[] = [];
  const egressChanged = stableJson(previous.egress) !== stableJson(version.egress);
  for (const key of Object.keys(FIELD_LABEL) as Array<keyof typeof FIELD_LABEL & keyof AgentVersion>) {
    const before = previous[key];
    const after = version[key];
    if (stableJson(before) === stableJson(after)) continue;
    // The shorthand moves with the egress mode: saying so twice adds nothing.
    if (key === "network" && egressChanged) continue;
    if (key === "egress") {
      changes.push(egressChange(previous.egress, version.egress));
      continue;
    }
    const short = (value: unknown) => (typeof value === "number" || (typeof value === "string" && value.length <= 24) ? String(value) : null);
    const [from, to] = [short(before), short(after)];
    changes.push(from !== null && to !== null ? `${FIELD_LABEL[key]} ${from} → ${to}` : `${FIELD_LABEL[key]} changed`);
  }
  return changes;
}

/** "egress open → allow-list (2 rules)", or which rules came and went. */
function egressChange(before: EgressPolicyView, after: EgressPolicyView): string {
  if (before.mode !== after.mode) return `egress ${egressSummary(before)} → ${egressSummary(after)}`;
  const [was, now] = [before.allow.map(formatAllowRule), after.allow.map(formatAllowRule)];
  const added = now.filter((rule) => !was.includes(rule));
  const removed = was.filter((rule) => !now.includes(rule));
  if (added.length + removed.length === 0) return "egress rules reordered";
  if (added.length + removed.length > 3) return `egress rules +${added.length} −${removed.length}`;
  return `egress rules ${[...added.map((rule) => `+${rule}`), ...removed.map((rule) => `−${rule}`)].join(" ")}`;
}

function Versions({ agent }: { agent: Agent }) {
  const trpc = useTRPC();
  const pager = useCursorPager(agent.id);
  const versions = useQuery(trpc.agents.versions.queryOptions({ agentId: agent.id, limit: 10, cursor: pager.cursor }, { placeholderData: keepPreviousData }));
  return (
    <section className="card" aria-labelledby="versions-heading">
      <h2 id="versions-heading" className="card-title">
        Versions
      </h2>
      {versions.isError && versions.data ? <StaleNotice error={versions.error} /> : null}
      {versions.isPending ? (
        <Loading rows={2} />
      ) : versions.data === undefined ? (
        <ErrorState error={versions.error} onRetry={() => void versions.refetch()} />
      ) : (
        <>
          <ol className="versions" reversed>
            {versions.data.items.map((version, index, all) => {
              const previous = all[index + 1];
              const changes = previous ? changesFrom(previous, version) : version.version === 1 ? ["created"] : [];
              return (
              <li key={version.version}>
                <details>
                  <summary>
                    <strong>v{version.version}</strong>
                    {version.version === agent.version ? <Badge tone="ok">current</Badge> : null}
                    <span className="muted small">
                      {formatDateTime(version.createdAt)}
                    </span>
                    {changes.length > 0 ? <span className="version-changes small">{changes.join(" · ")}</span> : null}
                  </summary>
                  <Config config={version} />
                </details>
              </li>
              );
            })}
          </ol>
          <Pager page={pager.page} hasPrevious={pager.hasPrevious} nextCursor={versions.data.nextCursor} onPrevious={pager.previous} onNext={pager.next} />
        </>
      )}
    </section>
  );
}

function AgentSecrets({ agentId }: { agentId: string }) {
  const trpc = useTRPC();
  const secrets = useQuery(trpc.secrets.list.queryOptions({ agentId, limit: 100 }));
  const own = (secrets.data?.items ?? []).filter((secret) => secret.agentId === agentId);
  return (
    <section className="card" aria-labelledby="agent-secrets-heading">
      <h2 id="agent-secrets-heading" className="card-title">
        Secrets of this agent
      </h2>
      {secrets.isError && secrets.data ? <StaleNotice error={secrets.error} /> : null}
      {secrets.isPending ? (
        <Loading rows={1} />
      ) : secrets.data === undefined ? (
        <ErrorState error={secrets.error} />
      ) : own.length === 0 ? (
        <p className="muted">None. Team secrets still apply.</p>
      ) : (
        <ul className="chip-list">
          {own.map((secret) => (
            <li key={secret.id} className="chip mono">
              {secret.name}
            </li>
          ))}
        </ul>
      )}
      <p className="small">
        <Link to={`/secrets?agent=${agentId}`}>Manage secrets</Link>
      </p>
    </section>
  );
}

export default function AgentPage() {
  const { agentId = "" } = useParams();
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const navigate = useNavigate();
  const now = useNow();
  const { me } = useAppData();
  const canEdit = atLeast(me.role, "admin");
  const [editing, setEditing] = useState(false);
  const [notice, setNotice] = useState<string | null>(null);
  const agent = useQuery(trpc.agents.get.queryOptions({ agentId }));
  const invalidate = () => queryClient.invalidateQueries({ queryKey: trpc.agents.pathKey() });
  const update = useMutation(
    trpc.agents.update.mutationOptions({
      onSuccess: (updated, changes) => {
        setEditing(false);
        setNotice(
          `Saved as version ${updated.version}. New sessions use it; running sessions keep the version they started with` +
            // The gateway reads the current policy on every connection.
            (changes.egress ? ", except for the egress policy, which applies to them at once." : "."),
        );
        void invalidate();
      },
    }),
  );
  const remove = useMutation(
    trpc.agents.delete.mutationOptions({
      onSuccess: () => {
        void invalidate();
        navigate("/agents");
      },
    }),
  );
  const start = useMutation(trpc.sessions.create.mutationOptions({ onSuccess: (session) => navigate(`/sessions/${session.id}`) }));

  if (agent.isPending) {
    return (
      <div className="page">
        <Loading label="Loading the agent" rows={6} />
      </div>
    );
  }
  if (agent.data === undefined) {
    return (
      <div className="page">
        <p className="breadcrumb">
          <Link to="/agents">Agents</Link>
        </p>
        {errorCode(agent.error) === "NOT_FOUND" ? (
          <Empty title="Agent not found">It was deleted, or it belongs to another team.</Empty>
        ) : (
          <ErrorState error={agent.error} onRetry={() => void agent.refetch()} />
        )}
      </div>
    );
  }
  const data = agent.data;

  return (
    <div className="page">
      <p className="breadcrumb">
        <Link to="/agents">Agents</Link> <span aria-hidden="true">/</span> {data.name}
      </p>
      <PageHeader
        title={
          <>
            {data.name} <span className="muted title-suffix">v{data.version}</span>
          </>
        }
        description={
          <>
            <span className="mono">{data.model}</span> {data.isDemo ? <Badge tone="info">offline demo</Badge> : null} · updated{" "}
            <span title={formatDateTime(data.updatedAt)}>{timeAgo(data.updatedAt, now)}</span>
          </>
        }
        actions={
          <>
            <button type="button" className="button button-primary" disabled={start.isPending} onClick={() => start.mutate({ agentId: data.id })}>
              {start.isPending ? "Starting…" : "Start session"}
            </button>
            {canEdit && !editing ? (
              <button type="button" className="button" onClick={() => setEditing(true)}>
                Edit
              </button>
            ) : null}
            {canEdit ? <ConfirmButton label="Delete" confirmLabel="Confirm delete" pending={remove.isPending} onConfirm={() => remove.mutate({ agentId: data.id })} /> : null}
          </>
        }
      />
      <MutationError error={start.error ?? remove.error} />
      {notice ? <Notice kind="success">{notice}</Notice> : null}
      {data.isDemo ? (
        <Notice kind="info">
          This agent uses the <strong>offline demo model</strong>: no gateway or credentials, deterministic replies. Send <code>run: &lt;command&gt;</code> to run a command in
          the session&apos;s sandbox.
        </Notice>
      ) : null}

      {editing ? (
        <section className="card" aria-labelledby="edit-heading">
          <h2 id="edit-heading" className="card-title">
            Edit (saves version {data.version + 1})
          </h2>
          <AgentForm
            key={data.version}
            agent={data}
            submitLabel="Save new version"
            pending={update.isPending}
            error={update.error}
            onCancel={() => setEditing(false)}
            onSubmit={(input) => {
              const changes = changedFields(data, input);
              if (Object.keys(changes).length === 0) {
                setEditing(false);
                setNotice("Nothing changed; no new version was written.");
                return;
              }
              update.mutate({ agentId: data.id, ...changes });
            }}
          />
        </section>
      ) : (
        <section className="card" aria-labelledby="config-heading">
          <h2 id="config-heading" className="card-title">
            Current version
          </h2>
          <Config config={data} />
          <p className="small">
            <Link to={`/sessions?agent=${data.id}`}>Sessions with this agent →</Link>
          </p>
        </section>
      )}
      <div className="two-columns">
        <Versions agent={data} />
        <AgentSecrets agentId={data.id} />
      </div>
    </div>
  );
}
