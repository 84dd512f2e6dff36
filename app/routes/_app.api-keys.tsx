import type { MetaFunction } from "@remix-run/node";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { Badge, ConfirmButton, CopyButton, Empty, ErrorState, Field, Loading, MutationError, Notice, PageHeader, Pager, useCursorPager, StaleNotice } from "../components/ui";
import { useAppData } from "../lib/app-data";
import { errorCode, fieldErrors } from "../lib/errors";
import { formatDateTime, timeAgo } from "../lib/format";
import { useNow } from "../lib/hooks";
import { useTRPC } from "../lib/trpc";
import { atLeast, type Role, type RouterOutputs } from "../lib/types";

export const meta: MetaFunction = () => [{ title: "API keys · Berth" }];

type CreatedKey = RouterOutputs["apiKeys"]["create"];

function NewKey({ onCreated }: { onCreated: (key: CreatedKey) => void }) {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const { me } = useAppData();
  const [name, setName] = useState("");
  const [role, setRole] = useState<Role>("member");
  const create = useMutation(
    trpc.apiKeys.create.mutationOptions({
      onSuccess: (key) => {
        setName("");
        onCreated(key);
        void queryClient.invalidateQueries({ queryKey: trpc.apiKeys.list.pathKey() });
      },
    }),
  );
  const errors = fieldErrors(create.error);
  function submit(event: FormEvent) {
    event.preventDefault();
    create.mutate({ name: name.trim(), role });
  }
  const roles: Role[] = (["member", "admin", "owner"] as Role[]).filter((option) => atLeast(me.role, option));
  return (
    <section className="card" aria-labelledby="new-key-heading">
      <h2 id="new-key-heading" className="card-title">
        Create an API key
      </h2>
      <form className="form-row" onSubmit={submit}>
        <Field label="Name" error={errors.name} hint="Who or what uses it, e.g. ci-deploy.">
          {(props) => <input {...props} value={name} maxLength={100} onChange={(event) => setName(event.target.value)} required />}
        </Field>
        <Field label="Role" error={errors.role}>
          {(props) => (
            <select {...props} value={role} onChange={(event) => setRole(event.target.value as Role)}>
              {roles.map((option) => (
                <option key={option} value={option}>
                  {option}
                </option>
              ))}
            </select>
          )}
        </Field>
        <div className="form-row-submit">
          <button type="submit" className="button button-primary" disabled={create.isPending || !name.trim()}>
            {create.isPending ? "Creating…" : "Create key"}
          </button>
        </div>
      </form>
      {Object.keys(errors).length === 0 ? <MutationError error={create.error} /> : null}
    </section>
  );
}

function ShownOnce({ created, onDismiss }: { created: CreatedKey; onDismiss: () => void }) {
  return (
    <section className="card card-highlight" aria-labelledby="created-key-heading" data-testid="created-key">
      <h2 id="created-key-heading" className="card-title">
        Key “{created.name}” created
      </h2>
      <p>
        <strong>Copy it now: this is the only time it is shown.</strong> Berth keeps only a hash of it.
      </p>
      <div className="secret-value">
        <code className="mono" data-testid="created-key-value">
          {created.key}
        </code>
        <CopyButton text={created.key} />
      </div>
      <p className="muted small">
        Use it as <code>Authorization: Bearer &lt;key&gt;</code>, or <code>createBerthClient(&#123; url, apiKey &#125;)</code>.
      </p>
      <button type="button" className="button" onClick={onDismiss}>
        I have copied it
      </button>
    </section>
  );
}

export default function ApiKeys() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const now = useNow();
  const [includeRevoked, setIncludeRevoked] = useState(false);
  const [created, setCreated] = useState<CreatedKey | null>(null);
  const pager = useCursorPager(String(includeRevoked));
  const keys = useQuery(trpc.apiKeys.list.queryOptions({ limit: 50, cursor: pager.cursor, includeRevoked }, { placeholderData: keepPreviousData }));
  const revoke = useMutation(trpc.apiKeys.revoke.mutationOptions({ onSuccess: () => void queryClient.invalidateQueries({ queryKey: trpc.apiKeys.list.pathKey() }) }));

  if (keys.isError && errorCode(keys.error) === "FORBIDDEN") {
    return (
      <div className="page">
        <PageHeader title="API keys" />
        <Notice kind="info">Only admins and owners manage API keys.</Notice>
      </div>
    );
  }

  return (
    <div className="page">
      <PageHeader title="API keys" description="Keys for services and scripts that call the API. A key acts with its role in this team." />
      {created ? <ShownOnce created={created} onDismiss={() => setCreated(null)} /> : null}
      <NewKey onCreated={setCreated} />
      <div className="toolbar">
        <label className="checkbox">
          <input type="checkbox" checked={includeRevoked} onChange={(event) => setIncludeRevoked(event.target.checked)} /> Show revoked keys
        </label>
      </div>
      <MutationError error={revoke.error} />
      {keys.isError && keys.data ? <StaleNotice error={keys.error} /> : null}
      {keys.isPending ? (
        <Loading label="Loading API keys" />
      ) : keys.data === undefined ? (
        <ErrorState error={keys.error} onRetry={() => void keys.refetch()} />
      ) : keys.data.items.length === 0 ? (
        <Empty title="No API keys" />
      ) : (
        <>
          <div className={keys.isPlaceholderData ? "table-wrap stale" : "table-wrap"} aria-busy={keys.isPlaceholderData}>
            <table className="table" aria-label="API keys">
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Key</th>
                  <th scope="col">Role</th>
                  <th scope="col" className="hide-sm">
                    Created
                  </th>
                  <th scope="col" className="hide-sm">
                    Last used
                  </th>
                  <th scope="col">
                    <span className="visually-hidden">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {keys.data.items.map((key) => (
                  <tr key={key.id} className={key.revokedAt ? "row-muted" : undefined}>
                    <td>{key.name}</td>
                    <td className="mono small">{key.prefix}…</td>
                    <td>
                      <Badge>{key.role}</Badge>
                    </td>
                    <td className="hide-sm" title={formatDateTime(key.createdAt)}>
                      {timeAgo(key.createdAt, now)}
                    </td>
                    <td className="hide-sm">{key.lastUsedAt ? <span title={formatDateTime(key.lastUsedAt)}>{timeAgo(key.lastUsedAt, now)}</span> : <span className="muted">never</span>}</td>
                    <td className="actions-cell">
                      {key.revokedAt ? (
                        <span className="muted small" title={formatDateTime(key.revokedAt)}>
                          revoked {timeAgo(key.revokedAt, now)}
                        </span>
                      ) : (
                        <ConfirmButton
                          label="Revoke"
                          confirmLabel="Confirm revoke"
                          className="button button-small button-danger"
                          pending={revoke.isPending && revoke.variables?.keyId === key.id}
                          onConfirm={() => revoke.mutate({ keyId: key.id })}
                        />
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <Pager page={pager.page} hasPrevious={pager.hasPrevious} nextCursor={keys.data.nextCursor} onPrevious={pager.previous} onNext={pager.next} />
        </>
      )}
    </div>
  );
}
