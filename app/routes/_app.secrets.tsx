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

const DEFAULT_HEADER = "Authorization";
const DEFAULT_TEMPLATE = "Bearer {{value}}";

/** `api.github.com, *.example.com` or one a line, to a list. */
function hostsOf(text: string): string[] {
  return text.split(/[\s,]+/).filter(Boolean);
}

/** The server's message for a field or anything under it (`brokered.hosts.1`). */
function errorAt(errors: Record<string, string>, key: string): string | undefined {
  if (errors[key]) return errors[key];
  const found = Object.entries(errors).find(([path]) => path.startsWith(`${key}.`));
  if (!found) return undefined;
  const index = /^[^.]+\.[^.]+\.(\d+)/.exec(found[0])?.[1];
  return index === undefined ? found[1] : `host ${Number(index) + 1}: ${found[1]}`;
}

function SetSecret({ agents, defaultAgentId }: { agents: Agent[]; defaultAgentId: string }) {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const [name, setName] = useState("");
  const [value, setValue] = useState("");
  const [agentId, setAgentId] = useState(defaultAgentId);
  const [brokered, setBrokered] = useState(false);
  const [hosts, setHosts] = useState("");
  const [header, setHeader] = useState(DEFAULT_HEADER);
  const [template, setTemplate] = useState(DEFAULT_TEMPLATE);
  const [hostsError, setHostsError] = useState<string | null>(null);
  const [saved, setSaved] = useState<string | null>(null);
  const set = useMutation(
    trpc.secrets.set.mutationOptions({
      onSuccess: (secret) => {
        setSaved(
          secret.brokered
            ? `${secret.name} saved, brokered to ${secret.brokered.hosts.join(", ")}. Sandboxes started from now on get its stub; the gateway adds the value to their requests to those hosts.`
            : `${secret.name} saved. Sandboxes started from now on get the new value.`,
        );
        setName("");
        setValue("");
        setHosts("");
        void queryClient.invalidateQueries({ queryKey: trpc.secrets.list.pathKey() });
      },
    }),
  );
  const errors = fieldErrors(set.error);
  const fieldsShowError = Object.keys(errors).some((key) => ["name", "value", "agentId"].includes(key) || (brokered && key.startsWith("brokered.")));

  function submit(event: FormEvent) {
    event.preventDefault();
    setSaved(null);
    const hostList = hostsOf(hosts);
    if (brokered && hostList.length === 0) {
      setHostsError("Name at least one host the secret may be sent to.");
      return;
    }
    setHostsError(null);
    set.mutate({
      name: name.trim(),
      value,
      agentId: agentId || undefined,
      ...(brokered ? { brokered: { hosts: hostList, header: header.trim() || DEFAULT_HEADER, template: template || DEFAULT_TEMPLATE } } : {}),
    });
  }

  return (
    <section className="card" aria-labelledby="set-secret-heading">
      <h2 id="set-secret-heading" className="card-title">
        Set a secret
      </h2>
      <form onSubmit={submit} className="stack" autoComplete="off">
        <div className="form-row">
          <Field label="Name" error={errors.name} hint={brokered ? "An environment variable in the sandbox, holding a stub." : "Becomes an environment variable in the sandbox."}>
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
        </div>
        <div className="brokered-choice">
          <label className="checkbox">
            <input type="checkbox" checked={brokered} onChange={(event) => setBrokered(event.target.checked)} aria-describedby="brokered-hint" />
            <span>Brokered: keep it out of the sandbox</span>
          </label>
          <small id="brokered-hint" className="muted">
            The sandbox gets a stub (<code>berth-stub-…</code>) instead. The egress gateway puts the real secret into a header of HTTPS requests to the hosts named here, and
            nowhere else; a stub sent anywhere else is reported on the session.
          </small>
        </div>
        {brokered ? (
          <div className="form-row brokered-fields">
            <Field label="Hosts" error={hostsError ?? errorAt(errors, "brokered.hosts")} hint="Where the secret may go: exact names or *.example.com, separated by commas.">
              {(props) => (
                <input
                  {...props}
                  value={hosts}
                  className="mono"
                  placeholder="api.github.com, *.githubusercontent.com"
                  spellCheck={false}
                  autoCapitalize="off"
                  onChange={(event) => {
                    setHosts(event.target.value);
                    setHostsError(null);
                  }}
                />
              )}
            </Field>
            <Field label="Header" error={errorAt(errors, "brokered.header")} hint={`The request header it goes into (default ${DEFAULT_HEADER}).`}>
              {(props) => <input {...props} value={header} className="mono" placeholder={DEFAULT_HEADER} spellCheck={false} onChange={(event) => setHeader(event.target.value)} />}
            </Field>
            <Field label="Template" error={errorAt(errors, "brokered.template")} hint={<>The header&apos;s content; {"{{value}}"} is replaced by the secret (default {DEFAULT_TEMPLATE}).</>}>
              {(props) => <input {...props} value={template} className="mono" placeholder={DEFAULT_TEMPLATE} spellCheck={false} onChange={(event) => setTemplate(event.target.value)} />}
            </Field>
          </div>
        ) : null}
        <div className="button-row">
          <button type="submit" className="button button-primary" disabled={set.isPending || !name.trim()}>
            {set.isPending ? "Saving…" : "Save secret"}
          </button>
        </div>
      </form>
      {fieldsShowError ? null : <MutationError error={set.error} />}
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
        description="Encrypted at rest and injected into sandboxes as environment variables, or brokered: the sandbox holds a stub and the egress gateway adds the secret to requests to the hosts it is bound to. Only names are ever shown. A changed secret reaches a session's next sandbox generation."
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
                  <th scope="col">Delivery</th>
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
                    <td data-testid="secret-delivery">
                      {secret.brokered ? (
                        <div className="brokered-cell">
                          <Badge tone="active" title="The sandbox sees a stub; the gateway adds the secret to requests to these hosts">
                            brokered
                          </Badge>{" "}
                          <span className="mono small">{secret.brokered.hosts.join(", ")}</span>
                          <div className="muted small mono">
                            {secret.brokered.header}: {secret.brokered.template}
                          </div>
                        </div>
                      ) : (
                        <span className="muted">environment variable</span>
                      )}
                    </td>
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
