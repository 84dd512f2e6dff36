import type { MetaFunction } from "@remix-run/node";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { Badge, ConfirmButton, Empty, ErrorState, Field, Loading, MutationError, Notice, PageHeader, Pager, useCursorPager, StaleNotice } from "../components/ui";
import { useAppData } from "../lib/app-data";
import { fieldErrors } from "../lib/errors";
import { formatDateTime, timeAgo } from "../lib/format";
import { useNow } from "../lib/hooks";
import { useTRPC } from "../lib/trpc";
import { atLeast, type Role } from "../lib/types";

export const meta: MetaFunction = () => [{ title: "Members · Berth" }];

const ROLES: Role[] = ["member", "admin", "owner"];

function AddMember() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const { me } = useAppData();
  const [email, setEmail] = useState("");
  const [name, setName] = useState("");
  const [role, setRole] = useState<Role>("member");
  const [password, setPassword] = useState("");
  const [added, setAdded] = useState<string | null>(null);
  const add = useMutation(
    trpc.teams.addMember.mutationOptions({
      onSuccess: (member) => {
        setAdded(`${member.email} added as ${member.role}.`);
        setEmail("");
        setName("");
        setPassword("");
        void queryClient.invalidateQueries({ queryKey: trpc.teams.pathKey() });
      },
    }),
  );
  const errors = fieldErrors(add.error);
  function submit(event: FormEvent) {
    event.preventDefault();
    setAdded(null);
    add.mutate({ email: email.trim(), role, name: name.trim() || undefined, password: password || undefined });
  }
  return (
    <section className="card" aria-labelledby="add-member-heading">
      <h2 id="add-member-heading" className="card-title">
        Add a member
      </h2>
      <form className="form-row" onSubmit={submit} autoComplete="off">
        <Field label="Email" error={errors.email}>
          {(props) => <input {...props} type="email" value={email} onChange={(event) => setEmail(event.target.value)} required />}
        </Field>
        <Field label="Name" error={errors.name}>
          {(props) => <input {...props} value={name} maxLength={200} onChange={(event) => setName(event.target.value)} />}
        </Field>
        <Field label="Role" error={errors.role}>
          {(props) => (
            <select {...props} value={role} onChange={(event) => setRole(event.target.value as Role)}>
              {ROLES.filter((option) => atLeast(me.role, option)).map((option) => (
                <option key={option} value={option}>
                  {option}
                </option>
              ))}
            </select>
          )}
        </Field>
        <Field label="Password" error={errors.password} hint="Only for a person with no account yet (12+ characters).">
          {(props) => <input {...props} type="password" autoComplete="new-password" value={password} onChange={(event) => setPassword(event.target.value)} />}
        </Field>
        <div className="form-row-submit">
          <button type="submit" className="button button-primary" disabled={add.isPending || !email.trim()}>
            {add.isPending ? "Adding…" : "Add member"}
          </button>
        </div>
      </form>
      {Object.keys(errors).length === 0 ? <MutationError error={add.error} /> : null}
      {added ? <Notice kind="success">{added}</Notice> : null}
    </section>
  );
}

export default function Members() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const now = useNow();
  const { me } = useAppData();
  const canManage = atLeast(me.role, "admin");
  const pager = useCursorPager("members");
  const members = useQuery(trpc.teams.members.queryOptions({ limit: 50, cursor: pager.cursor }, { placeholderData: keepPreviousData }));
  const invalidate = () => void queryClient.invalidateQueries({ queryKey: trpc.teams.pathKey() });
  const setRole = useMutation(trpc.teams.setMemberRole.mutationOptions({ onSettled: invalidate }));
  const remove = useMutation(trpc.teams.removeMember.mutationOptions({ onSuccess: invalidate }));

  return (
    <div className="page">
      <PageHeader title="Members" description="People who can sign in to this team, and their roles: owners manage everything, admins manage agents, keys and secrets, members use sessions." />
      {canManage ? <AddMember /> : null}
      <MutationError error={setRole.error ?? remove.error} />
      {members.isError && members.data ? <StaleNotice error={members.error} /> : null}
      {members.isPending ? (
        <Loading label="Loading members" />
      ) : members.data === undefined ? (
        <ErrorState error={members.error} onRetry={() => void members.refetch()} />
      ) : members.data.items.length === 0 ? (
        <Empty title="No members" />
      ) : (
        <>
          <div className={members.isPlaceholderData ? "table-wrap stale" : "table-wrap"} aria-busy={members.isPlaceholderData}>
            <table className="table" aria-label="Members">
              <thead>
                <tr>
                  <th scope="col">Member</th>
                  <th scope="col">Role</th>
                  <th scope="col" className="hide-sm">
                    Joined
                  </th>
                  {canManage ? (
                    <th scope="col">
                      <span className="visually-hidden">Actions</span>
                    </th>
                  ) : null}
                </tr>
              </thead>
              <tbody>
                {members.data.items.map((member) => {
                  const isMe = member.userId === me.userId;
                  const canChange = canManage && !isMe && (member.role !== "owner" || me.role === "owner");
                  return (
                    <tr key={member.userId}>
                      <td>
                        {member.name || member.email} {isMe ? <Badge tone="info">you</Badge> : null}
                        {member.name ? <div className="muted small">{member.email}</div> : null}
                      </td>
                      <td>
                        {canChange ? (
                          <>
                            <label className="visually-hidden" htmlFor={`role-${member.userId}`}>
                              Role of {member.email}
                            </label>
                            <select
                              id={`role-${member.userId}`}
                              value={member.role}
                              disabled={setRole.isPending}
                              onChange={(event) => setRole.mutate({ userId: member.userId, role: event.target.value as Role })}
                            >
                              {ROLES.filter((option) => option !== "owner" || me.role === "owner").map((option) => (
                                <option key={option} value={option}>
                                  {option}
                                </option>
                              ))}
                            </select>
                          </>
                        ) : (
                          <Badge>{member.role}</Badge>
                        )}
                      </td>
                      <td className="hide-sm" title={formatDateTime(member.joinedAt)}>
                        {timeAgo(member.joinedAt, now)}
                      </td>
                      {canManage ? (
                        <td className="actions-cell">
                          {canChange ? (
                            <ConfirmButton
                              label="Remove"
                              confirmLabel="Confirm remove"
                              className="button button-small button-danger"
                              pending={remove.isPending && remove.variables?.userId === member.userId}
                              onConfirm={() => remove.mutate({ userId: member.userId })}
                            />
                          ) : null}
                        </td>
                      ) : null}
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
          <Pager page={pager.page} hasPrevious={pager.hasPrevious} nextCursor={members.data.nextCursor} onPrevious={pager.previous} onNext={pager.next} />
        </>
      )}
    </div>
  );
}
