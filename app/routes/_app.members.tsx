import type { MetaFunction } from "@remix-run/node";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { Badge, ConfirmButton, CopyButton, Empty, ErrorState, Field, Loading, MutationError, PageHeader, Pager, useCursorPager, StaleNotice } from "../components/ui";
import { useAppData } from "../lib/app-data";
import { fieldErrors } from "../lib/errors";
import { formatDateTime, timeAgo } from "../lib/format";
import { useNow } from "../lib/hooks";
import { useTRPC } from "../lib/trpc";
import { atLeast, type Role, type RouterOutputs } from "../lib/types";

export const meta: MetaFunction = () => [{ title: "Members · Berth" }];

const ROLES: Role[] = ["member", "admin", "owner"];

type Invited = RouterOutputs["teams"]["invite"];

function InviteMember({ onInvited }: { onInvited: (invited: Invited) => void }) {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const { me } = useAppData();
  const [email, setEmail] = useState("");
  const [role, setRole] = useState<Role>("member");
  const invite = useMutation(
    trpc.teams.invite.mutationOptions({
      onSuccess: (invited) => {
        setEmail("");
        onInvited(invited);
        void queryClient.invalidateQueries({ queryKey: trpc.teams.invitations.pathKey() });
      },
    }),
  );
  const errors = fieldErrors(invite.error);
  function submit(event: FormEvent) {
    event.preventDefault();
    invite.mutate({ email: email.trim(), role });
  }
  return (
    <section className="card" aria-labelledby="invite-heading">
      <h2 id="invite-heading" className="card-title">
        Invite a person
      </h2>
      <form className="form-row" onSubmit={submit} autoComplete="off">
        <Field label="Email" error={errors.email}>
          {(props) => <input {...props} type="email" value={email} onChange={(event) => setEmail(event.target.value)} required />}
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
        <div className="form-row-submit">
          <button type="submit" className="button button-primary" disabled={invite.isPending || !email.trim()}>
            {invite.isPending ? "Inviting…" : "Invite"}
          </button>
        </div>
      </form>
      <p className="muted small">
        They join when they accept: a person with a Berth account sees the invitation when they sign in; anyone else opens the invitation link and chooses a
        password. Invitations expire after 7 days.
      </p>
      {Object.keys(errors).length === 0 ? <MutationError error={invite.error} /> : null}
    </section>
  );
}

function InvitationLink({ invited, onDismiss }: { invited: Invited; onDismiss: () => void }) {
  const link = typeof window === "undefined" ? invited.path : new URL(invited.path, window.location.origin).href;
  return (
    <section className="card card-highlight" aria-labelledby="invited-heading" data-testid="invitation-link">
      <h2 id="invited-heading" className="card-title">
        {invited.invitation.email} is invited as {invited.invitation.role}
      </h2>
      <p>
        Send them this link privately; <strong>it is shown only now</strong> and works until {formatDateTime(invited.invitation.expiresAt)}. Whoever holds it
        can create the account for this email if it has none. Lost it? Invite again: the old link stops working.
      </p>
      <div className="secret-value">
        <code className="mono" data-testid="invitation-link-value">
          {link}
        </code>
        <CopyButton text={link} />
      </div>
      <button type="button" className="button" onClick={onDismiss}>
        Done
      </button>
    </section>
  );
}

function PendingInvitations() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const now = useNow();
  const invitations = useQuery(trpc.teams.invitations.queryOptions({ limit: 100 }));
  const revoke = useMutation(trpc.teams.revokeInvitation.mutationOptions({ onSuccess: () => void queryClient.invalidateQueries({ queryKey: trpc.teams.invitations.pathKey() }) }));
  if (invitations.isPending) return <Loading label="Loading invitations" rows={1} />;
  if (invitations.data === undefined) return <ErrorState error={invitations.error} onRetry={() => void invitations.refetch()} />;
  if (invitations.data.items.length === 0) return null;
  return (
    <section aria-labelledby="pending-heading" className="pending-invitations">
      <h2 id="pending-heading" className="section-title">
        Pending invitations
      </h2>
      <MutationError error={revoke.error} />
      <div className="table-wrap">
        <table className="table" aria-label="Pending invitations">
          <thead>
            <tr>
              <th scope="col">Email</th>
              <th scope="col">Role</th>
              <th scope="col">Expires</th>
              <th scope="col">
                <span className="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {invitations.data.items.map((invitation) => (
              <tr key={invitation.id}>
                <td>{invitation.email}</td>
                <td>
                  <Badge>{invitation.role}</Badge>
                </td>
                <td title={formatDateTime(invitation.expiresAt)}>
                  {invitation.status === "expired" ? <Badge tone="warn">expired</Badge> : `in ${timeUntil(invitation.expiresAt, now)}`}
                </td>
                <td className="actions-cell">
                  <ConfirmButton
                    label="Revoke"
                    confirmLabel="Confirm revoke"
                    className="button button-small button-danger"
                    pending={revoke.isPending && revoke.variables?.invitationId === invitation.id}
                    onConfirm={() => revoke.mutate({ invitationId: invitation.id })}
                  />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}

/** "3 days", "5 hours", "12 minutes". */
function timeUntil(value: Date | string, now: number): string {
  const minutes = Math.max(1, Math.round((new Date(value).getTime() - now) / 60_000));
  if (minutes >= 48 * 60) return `${Math.round(minutes / 1440)} days`;
  if (minutes >= 120) return `${Math.round(minutes / 60)} hours`;
  return `${minutes} minute${minutes === 1 ? "" : "s"}`;
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
  const [invited, setInvited] = useState<Invited | null>(null);

  return (
    <div className="page">
      <PageHeader title="Members" description="People who can sign in to this team, and their roles: owners manage everything, admins manage agents, keys and secrets and invite people, members use sessions." />
      {invited ? <InvitationLink invited={invited} onDismiss={() => setInvited(null)} /> : canManage ? <InviteMember onInvited={setInvited} /> : null}
      {canManage ? <PendingInvitations /> : null}
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
