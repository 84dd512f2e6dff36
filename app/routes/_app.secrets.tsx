import type { MetaFunction } from "@remix-run/node";
import { useSearchParams } from "@remix-run/react";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { Badge, ConfirmButton, Empty, ErrorState, Field, Loading, MutationError, Notice, PageHeader, Pager, useCursorPager, StaleNotice } from "../components/ui";
import { useAppData } from "../lib/app-data";
import { fieldErrors } from "../lib/errors";
import { formatDateTime, timeAgo } from "../lib/format";
import { useNow } from "../lib/hooks";
import { useTRPC } from "../lib/trpc";
import { atLeast, type Agent } from "../lib/types";

export const meta: MetaFunction = () => [{ title: "Secrets · Berth" }];

function SetSecret({ agents, defaultAgentId }: { agents: Agent[]; defaultAgentId: string }) {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const [name, setName] = useState("");
  const [value, setValue] = useState("");
  const [agentId, setAgentId] = useState(defaultAgentId);
  const [saved, setSaved] = useState<string | null>(null);
  const set = useMutation(
    trpc.secrets.set.mutationOptions({
      onSuccess: (secret) => {
        setSaved(`${secret.name} saved. Sandboxes started from now on get the new value.`);
        setName("");
        setValue("");
        void queryClient.invalidateQueries({ queryKey: trpc.secrets.list.pathKey() });
      },
    }),
  );
  const errors = fieldErrors(set.error);

  function submit(event: FormEvent) {
    event.preventDefault();
    setSaved(null);
    set.mutate({ name: name.trim(), value, agentId: agentId || undefined });
  }

  return (
    <section className="card" aria-labelledby="set-secret-heading">
      <h2 id="set-secret-heading" className="card-title">
        Set a secret
      </h2>
      <form onSubmit={submit} className="form-row" autoComplete="off">
        <Field label="Name" error={errors.name} hint="Becomes an environment variable in the sandbox.">
          {(props) => (
            <input {...props} value={name} className="mono" placeholder="GITHUB_TOKEN" maxLength={100} spellCheck={false} onChange={(event) => setName(event.target.value)} required />
          )}
        </Field>
        <Field label="Value" error={errors.value} hint="Write-only: it can be replaced, never read back.">
          {(props) => <input {...props} type="password" autoComplete="new-password" value={value} onChange={(event) => setValue(event.target.value)} />}
        </Field>
        <Field label="Scope" error={errors.agentId}>
          {(props) => (
            <select {...props} value={agentId} onChange={(event) => setAgentId(event.target.value)}>
              <option value="">Whole team</option>
              {agents.map((agent) => (
                <option key={agent.id} value={agent.id}>
                  Agent {agent.name}
                </option>
              ))}
            </select>
          )}
        </Field>
        <div className="form-row-submit">
          <button type="submit" className="button button-primary" disabled={set.isPending || !name.trim()}>
            {set.isPending ? "Saving…" : "Save secret"}
          </button>
        </div>
      </form>
      {Object.keys(errors).length === 0 ? <MutationError error={set.error} /> : null}
      {saved ? <Notice kind="success">{saved}</Notice> : null}
    </section>
  );
}

export default function Secrets() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const now = useNow();
  const { me } = useAppData();
  const canEdit = atLeast(me.role, "admin");
  const [params, setParams] = useSearchParams();
  const agentFilter = params.get("agent") ?? "";
  const pager = useCursorPager(agentFilter);
  const agents = useQuery(trpc.agents.list.queryOptions({ limit: 100 }));
  const secrets = useQuery(trpc.secrets.list.queryOptions({ limit: 50, cursor: pager.cursor, agentId: agentFilter || undefined }, { placeholderData: keepPreviousData }));
  const remove = useMutation(trpc.secrets.delete.mutationOptions({ onSuccess: () => void queryClient.invalidateQueries({ queryKey: trpc.secrets.list.pathKey() }) }));
  const agentById = new Map((agents.data?.items ?? []).map((agent) => [agent.id, agent]));

  return (
    <div className="page">
      <PageHeader
        title="Secrets"
        description="Encrypted at rest and injected into sandboxes as environment variables. Only names are ever shown. A changed secret reaches a session's next sandbox generation."
      />
      {canEdit ? <SetSecret agents={agents.data?.items ?? []} defaultAgentId={agentFilter} /> : <Notice kind="info">Only admins and owners can set or delete secrets.</Notice>}

      <div className="toolbar">
        <div className="field field-inline">
          <label htmlFor="secrets-scope">Show</label>
          <select
            id="secrets-scope"
            value={agentFilter}
            onChange={(event) => setParams(event.target.value ? { agent: event.target.value } : {}, { replace: true, preventScrollReset: true })}
          >
            <option value="">All secrets</option>
            {(agents.data?.items ?? []).map((agent) => (
              <option key={agent.id} value={agent.id}>
                Agent {agent.name}
              </option>
            ))}
          </select>
        </div>
      </div>
      {secrets.isError && secrets.data ? <StaleNotice error={secrets.error} /> : null}
      {secrets.isPending ? (
        <Loading label="Loading secrets" />
      ) : secrets.data === undefined ? (
        <ErrorState error={secrets.error} onRetry={() => void secrets.refetch()} />
      ) : secrets.data.items.length === 0 ? (
        <Empty title={agentFilter ? "No secrets for this agent" : "No secrets yet"} />
      ) : (
        <>
          <MutationError error={remove.error} />
          <div className={secrets.isPlaceholderData ? "table-wrap stale" : "table-wrap"} aria-busy={secrets.isPlaceholderData}>
            <table className="table" aria-label="Secrets">
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Scope</th>
                  <th scope="col" className="hide-sm">
                    Updated
                  </th>
                  {canEdit ? (
                    <th scope="col">
                      <span className="visually-hidden">Actions</span>
                    </th>
                  ) : null}
                </tr>
              </thead>
              <tbody>
                {secrets.data.items.map((secret) => (
                  <tr key={secret.id}>
                    <td className="mono">{secret.name}</td>
                    <td>{secret.agentId ? <Badge tone="info">agent {agentById.get(secret.agentId)?.name ?? "…"}</Badge> : <Badge>team</Badge>}</td>
                    <td className="hide-sm" title={formatDateTime(secret.updatedAt)}>
                      {timeAgo(secret.updatedAt, now)}
                    </td>
                    {canEdit ? (
                      <td className="actions-cell">
                        <ConfirmButton
                          label="Delete"
                          confirmLabel={`Delete ${secret.name}?`}
                          className="button button-small button-danger"
                          pending={remove.isPending && remove.variables?.secretId === secret.id}
                          onConfirm={() => remove.mutate({ secretId: secret.id })}
                        />
                      </td>
                    ) : null}
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <Pager page={pager.page} hasPrevious={pager.hasPrevious} nextCursor={secrets.data.nextCursor} onPrevious={pager.previous} onNext={pager.next} />
        </>
      )}
    </div>
  );
}
