import type { LoaderFunctionArgs, MetaFunction } from "@remix-run/node";
import { useLoaderData } from "@remix-run/react";
import { useQuery } from "@tanstack/react-query";
import { useTRPC } from "../lib/trpc";

export const meta: MetaFunction = () => [{ title: "Berth" }];

export async function loader({ request, context }: LoaderFunctionArgs) {
  return { health: await context.trpcCaller(request).system.health() };
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
    <main className="page">
      <header className="masthead">
        <h1>Berth</h1>
        <p className="tagline">Self-hosted orchestration for stateful AI agents</p>
      </header>
      <section className="card" aria-labelledby="system-heading">
        <h2 id="system-heading">System</h2>
        <dl className="status-list">
          <StatusRow label="Status" value={health.ok ? "Healthy" : "Degraded"} good={health.ok} />
          <StatusRow label="Database" value={health.database} good={health.database === "ok"} />
          <StatusRow label="Model gateway" value={health.gateway} good={health.gateway === "ok"} />
          <StatusRow label="Sandbox backend" value={health.sandboxBackend} good={health.sandboxBackend !== "not configured"} />
          <StatusRow label="Version" value={health.version} good />
        </dl>
      </section>
    </main>
  );
}
