import type { LoaderFunctionArgs, MetaFunction } from "@remix-run/node";
import { Link, redirect, useLoaderData } from "@remix-run/react";
import { useQuery } from "@tanstack/react-query";
import { SandboxesUnavailable } from "../components/sandbox-banner";
import { useTRPC } from "../lib/trpc";

export const meta: MetaFunction = () => [{ title: "Berth" }];

/** The public front page: the system's health, and the way in. Signed-in users go to their sessions. */
export async function loader({ request, context }: LoaderFunctionArgs) {
  const caller = context.trpcCaller(request);
  const signedIn = await caller.auth
    .me()
    .then(() => true)
    .catch(() => false);
  if (signedIn) throw redirect("/sessions");
  return { health: await caller.system.health() };
}

function StatusRow({ label, value, good }: { label: string; value: string; good: boolean }) {
  return (
    <div className="status-row">
      <dt>{label}</dt>
      <dd>
        <span className={good ? "dot dot-ok" : "dot dot-warn"} aria-hidden="true" />
        {value}
      </dd>
    </div>
  );
}

export default function Home() {
  const initial = useLoaderData<typeof loader>();
  const trpc = useTRPC();
  const { data: health } = useQuery(
    trpc.system.health.queryOptions(undefined, { initialData: initial.health, refetchInterval: 10_000 }),
  );
  return (
    <main className="page page-narrow">
      <header className="masthead">
        <h1>Berth</h1>
        <p className="tagline">Self-hosted orchestration for stateful AI agents</p>
      </header>
      <SandboxesUnavailable sandboxes={health.sandboxes} className="home-banner" />
      <p>
        <Link to="/login" className="button button-primary">
          Sign in to the dashboard
        </Link>
      </p>
      {health.sandboxes.available ? (
        <p className="muted">
          The first start printed the admin&rsquo;s email and where its password is. Once signed in, <strong>Start a demo session</strong> runs a command in a
          fresh sandbox with the offline demo model: no model key, nothing to fill in.
        </p>
      ) : null}
      <section className="card" aria-labelledby="system-heading">
        <h2 id="system-heading">System</h2>
        <dl className="status-list">
          <StatusRow label="Status" value={health.ok ? "Healthy" : "Degraded"} good={health.ok} />
          <StatusRow label="Database" value={health.database} good={health.database === "ok"} />
          <StatusRow label="Model gateway" value={health.gateway} good={health.gateway === "ok"} />
          <StatusRow label="Sandbox backend" value={health.sandboxBackend} good={health.sandboxBackend !== "not configured"} />
          <StatusRow label="Sandboxes" value={health.sandboxes.available ? "available" : "unavailable"} good={health.sandboxes.available} />
          <StatusRow label="Version" value={health.version} good />
        </dl>
      </section>
    </main>
  );
}
