import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type postgres from "postgres";
import type { ModelGateway } from "./gateway/client";

/**
 * Longest a scrape waits for one figure read from Postgres. Prometheus gives up on the whole scrape
 * after its scrape_timeout (10 s by default), and the process's own figures (event-loop lag,
 * memory, berth_database_up itself) matter most exactly while the database does not answer.
 */
const DATABASE_SCRAPE_TIMEOUT_MS = 1_500;

/** The figure, or undefined when the database did not give it within DATABASE_SCRAPE_TIMEOUT_MS. */
async function fromDatabase<T>(query: () => Promise<T>): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), DATABASE_SCRAPE_TIMEOUT_MS).unref()));
  try {
    return await Promise.race([query().catch(() => undefined), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** How long a database figure is reused by later scrapes (and any scrape while it is being read). */
const DATABASE_SCRAPE_REUSE_MS = 1_000;

/**
 * A database figure read at most once a second, however often /metrics is asked (it may be open to
 * anyone): a flood of scrapes cannot take the application's connections or make the database look
 * down (berth_database_up).
 */
function sharedRead<T>(query: () => Promise<T>): () => Promise<T | undefined> {
  let last: { at: number; result: Promise<T | undefined> } | null = null;
  return () => {
    if (last && performance.now() - last.at < DATABASE_SCRAPE_REUSE_MS) return last.result;
    const result = fromDatabase(query);
    last = { at: performance.now(), result };
    return result;
  };
}

/**
 * prom-client's default gauges that promtool check metrics flags (a gauge must not end in _total).
 * Each is the sum over the `type` label of the gauge of the same name without the suffix, which stays.
 */
const MISNAMED_DEFAULT_GAUGES = ["nodejs_active_handles_total", "nodejs_active_requests_total", "nodejs_active_resources_total"];

/**
 * Prometheus metrics of one Berth process (`GET /metrics`). Process-local figures (latencies,
 * reconnect outcomes) are recorded where they happen; figures about the stored data (sessions by
 * status, events, tokens, cost, queue depth) are read from Postgres at scrape time, so every
 * replica reports the same cluster-wide values and nothing is lost across restarts. When the
 * database does not answer, those keep their last values, berth_database_up says 0, and the scrape
 * still succeeds: an outage must not look like the process being down.
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
    // Up to BERTH_K8S_READY_TIMEOUT_MS's default (180 s): a pod start waits on image pulls and volumes.
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 180],
    registers: [this.registry],
  });

  readonly sandboxStartFailures = new Counter({
    name: "berth_sandbox_start_failures_total",
    help: "Sandbox provisioning attempts that failed (the backend could not start the sandbox or its daemon did not answer), by backend.",
    labelNames: ["backend"] as const,
    registers: [this.registry],
  });

  readonly sandboxesAvailable = new Gauge({
    name: "berth_sandboxes_available",
    help: "Whether sandboxes can start on this backend here (1) or not (0: bubblewrap missing, user namespaces off; system.health says why).",
    labelNames: ["backend"] as const,
    registers: [this.registry],
  });

  readonly reconnects = new Counter({
    name: "berth_sandbox_reconnects_total",
    help: "Sandbox losses and how their reconnection ended (started, recovered, failed).",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });

  readonly turnDuration = new Histogram({
    name: "berth_turn_duration_seconds",
    help: "Time from accepting a message to the end of the turn that answers it (queueing, sandbox start, model calls, tools), by outcome (completed, failed, aborted).",
    labelNames: ["outcome"] as const,
    buckets: [0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600],
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
    for (const name of MISNAMED_DEFAULT_GAUGES) this.registry.removeSingleMetric(`berth_${name}`);
    // A labelled counter has no series before its first increment, and rate() or increase() never
    // count that first one: alerts on these would miss the first failure.
    for (const outcome of ["started", "recovered", "failed"]) this.reconnects.inc({ outcome }, 0);
    for (const kind of ["internal", "policy", "brokering", "upstream", "certificate", "record"]) this.egressErrors.inc({ kind }, 0);
    for (const outcome of ["completed", "failed", "aborted"]) this.turnDuration.zero({ outcome });
    const registers = [this.registry];
    const databaseAnswers = sharedRead(() => sql`select 1`);
    new Gauge({
      name: "berth_database_up",
      help: "Whether the database answered a query within 1.5 s at this scrape (1) or not (0).",
      registers,
      async collect() {
        this.set((await databaseAnswers()) ? 1 : 0);
      },
    });
    const sessionsByStatus = sharedRead(() => sql<{ status: string; count: number }[]>`select status::text, count(*)::int as count from sessions group by status`);
    new Gauge({
      name: "berth_sessions",
      help: "Sessions by status.",
      labelNames: ["status"] as const,
      registers,
      async collect() {
        const rows = await sessionsByStatus();
        if (!rows) return;
        this.reset();
        for (const row of rows) this.set({ status: row.status }, row.count);
      },
    });
    const eventsStored = sharedRead(() => sql<{ total: string }[]>`select coalesce(sum(last_seq), 0)::text as total from sessions`);
    new Gauge({
      name: "berth_session_events_stored",
      help: "Events written to session logs (all sessions).",
      registers,
      async collect() {
        const [row] = (await eventsStored()) ?? [];
        if (row) this.set(Number(row.total));
      },
    });
    const tokensUsed = sharedRead(() => sql<{ prompt: string; completion: string }[]>`
        select coalesce(sum(prompt_tokens), 0)::text as prompt, coalesce(sum(completion_tokens), 0)::text as completion from sessions`,);
    new Gauge({
      name: "berth_tokens_used",
      help: "Model tokens used by all sessions, by kind.",
      labelNames: ["kind"] as const,
      registers,
      async collect() {
        const [row] =
          (await tokensUsed()) ?? [];
        if (!row) return;
        this.set({ kind: "prompt" }, Number(row.prompt));
        this.set({ kind: "completion" }, Number(row.completion));
      },
    });
    const costSpent = sharedRead(() => sql<{ cost: string }[]>`select coalesce(sum(cost_usd), 0)::text as cost from sessions`);
    new Gauge({
      name: "berth_cost_usd_spent",
      help: "Model cost reported by the gateway, all sessions, in USD.",
      registers,
      async collect() {
        const [row] = (await costSpent()) ?? [];
        if (row) this.set(Number(row.cost));
      },
    });
    const jobQueueDepth = sharedRead(() => sql<{ runnable: number; blocked: number; scheduled: number; running: number; failed: number }[]>`
        select count(*) filter (where j.locked_at is null and j.attempts < j.max_attempts and j.run_at <= now() and q.locked_at is null)::int as runnable,
               count(*) filter (where j.locked_at is null and j.attempts < j.max_attempts and j.run_at <= now() and q.locked_at is not null)::int as blocked,
               count(*) filter (where j.locked_at is null and j.attempts < j.max_attempts and j.run_at > now())::int as scheduled,
               count(*) filter (where j.locked_at is not null)::int as running,
               count(*) filter (where j.locked_at is null and j.attempts >= j.max_attempts)::int as failed
        from graphile_worker._private_jobs j left join graphile_worker._private_job_queues q on q.id = j.job_queue_id`,);
    new Gauge({
      name: "berth_job_queue_depth",
      help: "graphile-worker jobs by state: runnable (due, waiting for a worker), blocked (due, waiting behind a running job of its queue: a session's next turn), scheduled (run_at in the future, retries in their backoff too), running, failed (no attempts left).",
      labelNames: ["state"] as const,
      registers,
      async collect() {
        const [row] =
          (await jobQueueDepth()) ?? [];
        if (!row) return;
        for (const [state, value] of Object.entries(row)) this.set({ state }, value);
      },
    });
    const oldestRunnableAge = sharedRead(() => sql<{ age: number }[]>`
        select coalesce(extract(epoch from now() - min(j.run_at)), 0)::float8 as age
        from graphile_worker._private_jobs j left join graphile_worker._private_job_queues q on q.id = j.job_queue_id
        where j.locked_at is null and j.attempts < j.max_attempts and j.run_at <= now() and q.locked_at is null`,);
    new Gauge({
      name: "berth_job_queue_oldest_runnable_age_seconds",
      help: "How long the oldest runnable job (due, its queue free, not started) has waited since its run_at; 0 when none waits.",
      registers,
      async collect() {
        // Blocked jobs are left out: a session's next turn waits for the running one, which can take
        // as long as a harness turn may (30 minutes by default) without anything being wrong.
        const [row] =
          (await oldestRunnableAge()) ?? [];
        if (row) this.set(Math.max(0, row.age));
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

/**
 * A bounded label for a request path: the tRPC procedure(s), or the kind of page. `procedures`, the
 * API's procedure names: a path naming any other is `/api/trpc/other` (anyone may send such paths, and
 * each label value is a new series).
 */
export function routeLabel(path: string, procedures?: ReadonlySet<string>): string {
  if (path.startsWith("/api/trpc/")) {
    const named = path.slice("/api/trpc/".length);
    if (!/^[A-Za-z.,]{1,200}$/.test(named)) return "/api/trpc/other";
    const list = named.split(",");
    if (procedures && list.some((name) => !procedures.has(name))) return "/api/trpc/other";
    return list.length > 3 ? "/api/trpc/batch" : `/api/trpc/${list.join(",")}`;
  }
  if (path === "/healthz" || path === "/readyz" || path === "/metrics") return path;
  if (path.startsWith("/assets/")) return "/assets";
  return "page";
}
