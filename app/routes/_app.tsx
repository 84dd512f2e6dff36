import type { LoaderFunctionArgs } from "@remix-run/node";
import { NavLink, Outlet, isRouteErrorResponse, redirect, useLoaderData, useRevalidator, useRouteError, type ShouldRevalidateFunction } from "@remix-run/react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { SandboxesUnavailable } from "../components/sandbox-banner";
import { ErrorState, MutationError, Notice } from "../components/ui";
import { useAppData } from "../lib/app-data";
import { markSigningOut } from "../lib/errors";
import { useTRPC } from "../lib/trpc";
import { atLeast, type Role } from "../lib/types";

/**
 * The signed-in part of the dashboard: every page below needs a login. The loader asks the API who
 * is calling (the same procedure the browser would) and sends anyone else to the login page.
 */
export async function loader({ request, context }: LoaderFunctionArgs) {
  const caller = context.trpcCaller(request);
  try {
    const [me, team, sandboxes] = await Promise.all([caller.auth.me(), caller.teams.get(), caller.system.sandboxes()]);
    return { me, team, sandboxes };
  } catch (error) {
    if ((error as { code?: string }).code === "UNAUTHORIZED") {
      const url = new URL(request.url);
      throw redirect(`/login?next=${encodeURIComponent(url.pathname + url.search)}`);
    }
    throw error;
  }
}

/** Who is signed in does not change by moving between pages (a team switch reloads the whole page). */
export const shouldRevalidate: ShouldRevalidateFunction = ({ currentUrl, nextUrl, defaultShouldRevalidate }) =>
  currentUrl.href === nextUrl.href ? defaultShouldRevalidate : false;

const NAV: Array<{ to: string; label: string; role: Role }> = [
  { to: "/sessions", label: "Sessions", role: "member" },
  { to: "/agents", label: "Agents", role: "member" },
  { to: "/secrets", label: "Secrets", role: "member" },
  { to: "/api-keys", label: "API keys", role: "admin" },
  { to: "/members", label: "Members", role: "member" },
  { to: "/audit", label: "Audit log", role: "admin" },
  { to: "/jobs", label: "Jobs", role: "admin" },
  { to: "/system", label: "System", role: "member" },
];

function TeamSwitcher() {
  const { me, team } = useAppData();
  const trpc = useTRPC();
  const [selected, setSelected] = useState(team.id);
  const switchTeam = useMutation(
    trpc.auth.switchTeam.mutationOptions({
      // A full load: every page, query and loader starts over in the new team.
      onSuccess: () => window.location.assign("/sessions"),
    }),
  );
  if (me.teams.length < 2) {
    return (
      <div className="team-name" title={`Team ${team.slug}`}>
        <span className="muted small">Team</span>
        <strong>{team.name}</strong>
      </div>
    );
  }
  return (
    <div className="team-switcher">
      <label htmlFor="team-switcher" className="muted small">
        Team
      </label>
      <select
        id="team-switcher"
        value={selected}
        disabled={switchTeam.isPending}
        onChange={(event) => {
          setSelected(event.target.value);
          switchTeam.mutate({ teamId: event.target.value });
        }}
      >
        {me.teams.map((option) => (
          <option key={option.id} value={option.id}>
            {option.name}
          </option>
        ))}
      </select>
      <MutationError error={switchTeam.error} />
    </div>
  );
}

/**
 * Invitations to other teams for the signed-in person (matched by their account's email): accept or
 * decline. An accepted team appears in the team switcher.
 */
function ReceivedInvitations() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const revalidator = useRevalidator();
  const [joined, setJoined] = useState<{ teamId: string; name: string } | null>(null);
  const invitations = useQuery(trpc.invitations.mine.queryOptions());
  const onDone = () => void queryClient.invalidateQueries({ queryKey: trpc.invitations.mine.pathKey() });
  const accept = useMutation(
    trpc.invitations.accept.mutationOptions({
      onSuccess: (result, variables) => {
        setJoined({ teamId: result.teamId, name: invitations.data?.find((item) => item.id === variables.invitationId)?.team.name ?? "the team" });
        onDone();
        // The layout's loader lists the person's teams: load it again for the team switcher.
        revalidator.revalidate();
      },
    }),
  );
  const decline = useMutation(trpc.invitations.decline.mutationOptions({ onSuccess: onDone }));
  const switchTeam = useMutation(trpc.auth.switchTeam.mutationOptions({ onSuccess: () => window.location.assign("/sessions") }));
  const items = invitations.data ?? [];
  if (items.length === 0 && !joined) return null;
  return (
    <section className="invitations-banner" aria-label="Invitations">
      {joined ? (
        <Notice kind="success">
          You joined {joined.name}.{" "}
          <button type="button" className="button button-small" onClick={() => switchTeam.mutate({ teamId: joined.teamId })} disabled={switchTeam.isPending}>
            Switch to {joined.name}
          </button>
        </Notice>
      ) : null}
      {items.map((invitation) => (
        <div key={invitation.id} className="invitation-row" data-testid="received-invitation">
          <span>
            <strong>{invitation.team.name}</strong> invited you to join as <strong>{invitation.role}</strong>.
          </span>
          <span className="invitation-row-actions">
            <button
              type="button"
              className="button button-small button-primary"
              disabled={accept.isPending || decline.isPending}
              onClick={() => accept.mutate({ invitationId: invitation.id })}
            >
              Accept
            </button>
            <button type="button" className="button button-small" disabled={accept.isPending || decline.isPending} onClick={() => decline.mutate({ invitationId: invitation.id })}>
              Decline
            </button>
          </span>
        </div>
      ))}
      <MutationError error={accept.error ?? decline.error ?? switchTeam.error} />
    </section>
  );
}

function SignOut() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const logout = useMutation(
    trpc.auth.logout.mutationOptions({
      onMutate: () => markSigningOut(),
      onSettled: () => {
        queryClient.clear();
        window.location.assign("/login");
      },
    }),
  );
  return (
    <button type="button" className="button button-quiet" onClick={() => logout.mutate()} disabled={logout.isPending}>
      {logout.isPending ? "Signing out…" : "Sign out"}
    </button>
  );
}

export default function AppLayout() {
  const { me, team, sandboxes } = useLoaderData<typeof loader>();
  return (
    <div className="shell">
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <aside className="sidebar">
        <NavLink to="/sessions" className="brand" aria-label="Berth: sessions">
          <span className="brand-mark" aria-hidden="true">
            ⚓
          </span>
          <span>Berth</span>
        </NavLink>
        <nav aria-label="Dashboard" className="nav">
          <ul>
            {NAV.filter((item) => atLeast(me.role, item.role)).map((item) => (
              <li key={item.to}>
                <NavLink to={item.to} prefetch="intent" className={({ isActive }) => (isActive ? "nav-link active" : "nav-link")}>
                  {item.label}
                </NavLink>
              </li>
            ))}
          </ul>
        </nav>
        <div className="sidebar-account">
          <TeamSwitcher />
          <span className="badge badge-neutral role-badge" title={`Your role in ${team.name}`}>
            {me.role}
          </span>
          <SignOut />
        </div>
      </aside>
      <main id="main" className="content" tabIndex={-1}>
        {sandboxes.available ? null : (
          <div className="layout-banner">
            <SandboxesUnavailable sandboxes={sandboxes} />
          </div>
        )}
        {me.via === "session" ? <ReceivedInvitations /> : null}
        <Outlet />
      </main>
    </div>
  );
}

export function ErrorBoundary() {
  const error = useRouteError();
  return (
    <main className="page">
      <ErrorState
        title="This page could not be shown"
        error={isRouteErrorResponse(error) ? new Error(`${error.status} ${error.statusText}`) : error}
        onRetry={() => window.location.reload()}
      />
    </main>
  );
}
