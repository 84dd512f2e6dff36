import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type postgres from "postgres";
import type { ModelGateway } from "./gateway/client";

/**
 * Prometheus metrics of one Berth process (`GET /metrics`). Process-local figures (latencies,
 * reconnect outcomes) are recorded where they happen; figures about the stored data (sessions by
 * status, events, tokens, cost, queue depth) are read from Postgres at scrape time, so every
 * replica reports the same cluster-wide values and nothing is lost across restarts.
 */
export class BerthMetrics {
  readonly registry = new Registry();

  readonly httpDuration = new Histogram({
    name: "berth_http_request_duration_seconds",
    help: "HTTP request latency by route (tRPC procedure) and status code.",
    labelNames: ["method", "route", "status"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });

  readonly sandboxStart = new Histogram({
    name: "berth_sandbox_start_seconds",
    help: "Time from provisioning a sandbox to its daemon answering.",
    labelNames: ["backend", "warm"] as const,
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });

  readonly reconnects = new Counter({
    name: "berth_sandbox_reconnects_total",
    help: "Sandbox losses and how their reconnection ended (started, recovered, failed).",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });

  readonly jobWait = new Histogram({
    name: "berth_job_wait_seconds",
    help: "Time a job waited between becoming runnable and starting.",
    labelNames: ["task"] as const,
    buckets: [0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300],
    registers: [this.registry],
  });

  readonly gatewayDuration = new Histogram({
    name: "berth_gateway_request_duration_seconds",
    help: "Model call latency through the gateway (whole streamed reply, retries included).",
    labelNames: ["outcome"] as const,
    buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
    registers: [this.registry],
  });

  readonly egressRequests = new Counter({
    name: "berth_egress_requests_total",
    help: "Connections (HTTPS tunnels) and requests (plain or inspected HTTP) through the egress gateway, by decision (allowed, denied) and kind (connect, http, model).",
    labelNames: ["decision", "kind"] as const,
    registers: [this.registry],
  });

  readonly egressBytes = new Counter({
    name: "berth_egress_bytes_total",
    help: "Bytes through the egress gateway, by direction (out: from sandboxes, in: to them).",
    labelNames: ["direction"] as const,
    registers: [this.registry],
  });

  readonly egressErrors = new Counter({
    name: "berth_egress_errors_total",
    help: "Egress gateway failures after a connection was allowed: the outside host unreachable or the connection broken (by kind).",
    labelNames: ["kind"] as const,
    registers: [this.registry],
  });

  constructor(sql: postgres.Sql) {
    collectDefaultMetrics({ register: this.registry, prefix: "berth_" });
    const registers = [this.registry];
    new Gauge({
      name: "berth_sessions",
      help: "Sessions by status.",
      labelNames: ["status"] as const,
      registers,
      async collect() {
        const rows = await sql<{ status: string; count: number }[]>`select status::text, count(*)::int as count from sessions group by status`;
        this.reset();
        for (const row of rows) this.set({ status: row.status }, row.count);
      },
    });
    new Gauge({
      name: "berth_session_events_stored",
      help: "Events written to session logs (all sessions).",
      registers,
      async collect() {
        const [row] = await sql<{ total: string }[]>`select coalesce(sum(last_seq), 0)::text as total from sessions`;
        this.set(Number(row!.total));
      },
    });
    new Gauge({
      name: "berth_tokens_used",
      help: "Model tokens used by all sessions, by kind.",
      labelNames: ["kind"] as const,
      registers,
      async collect() {
        const [row] = await sql<{ prompt: string; completion: string }[]>`
          select coalesce(sum(prompt_tokens), 0)::text as prompt, coalesce(sum(completion_tokens), 0)::text as completion from sessions`;
        this.set({ kind: "prompt" }, Number(row!.prompt));
        this.set({ kind: "completion" }, Number(row!.completion));
      },
    });
    new Gauge({
      name: "berth_cost_usd_spent",
      help: "Model cost reported by the gateway, all sessions, in USD.",
      registers,
      async collect() {
        const [row] = await sql<{ cost: string }[]>`select coalesce(sum(cost_usd), 0)::text as cost from sessions`;
        this.set(Number(row!.cost));
      },
    });
    new Gauge({
      name: "berth_job_queue_depth",
      help: "graphile-worker jobs by state: runnable (waiting to start), scheduled (run_at in the future), running, failed (no attempts left).",
      labelNames: ["state"] as const,
      registers,
      async collect() {
        const [row] = await sql<{ runnable: number; scheduled: number; running: number; failed: number }[]>`
          select count(*) filter (where locked_at is null and attempts < max_attempts and run_at <= now())::int as runnable,
                 count(*) filter (where locked_at is null and attempts < max_attempts and run_at > now())::int as scheduled,
                 count(*) filter (where locked_at is not null)::int as running,
                 count(*) filter (where attempts >= max_attempts)::int as failed
          from graphile_worker.jobs`;
        for (const [state, value] of Object.entries(row!)) this.set({ state }, value);
      },
    });
  }

  /** Wraps a model gateway so each call's latency and outcome are recorded. */
  instrumentGateway(gateway: ModelGateway): ModelGateway {
    const histogram = this.gatewayDuration;
    return {
      async complete(request) {
        const end = histogram.startTimer();
        try {
          const completion = await gateway.complete(request);
          end({ outcome: "ok" });
          return completion;
        } catch (error) {
          end({ outcome: (error as { kind?: string }).kind ?? "error" });
          throw error;
        }
      },
      health: () => gateway.health(),
    };
  }
}

/** A bounded label for a request path: the tRPC procedure(s), or the kind of page. */
export function routeLabel(path: string): string {
  if (path.startsWith("/api/trpc/")) {
    const procedures = path.slice("/api/trpc/".length);
    if (!/^[A-Za-z.,]{1,200}$/.test(procedures)) return "/api/trpc/other";
    const list = procedures.split(",");
    return list.length > 3 ? "/api/trpc/batch" : `/api/trpc/${list.join(",")}`;
  }
  if (path === "/healthz" || path === "/readyz" || path === "/metrics") return path;
  if (path.startsWith("/assets/")) return "/assets";
  return "page";
}
