import net from "node:net";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../tests/helpers/database";
import { BerthMetrics, routeLabel } from "./metrics";

async function values(metrics: BerthMetrics, name: string): Promise<Array<{ labels: Record<string, string | number>; value: number }>> {
  await metrics.registry.metrics(); // collects, as a scrape does
  const metric = metrics.registry.getSingleMetric(name);
  if (!metric) throw new Error(`no metric ${name}`);
  return (await metric.get()).values as Array<{ labels: Record<string, string | number>; value: number }>;
}

async function value(metrics: BerthMetrics, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  return (await values(metrics, name)).find((v) => Object.entries(labels).every(([key, wanted]) => v.labels[key] === wanted))?.value;
}

describe("BerthMetrics", () => {
  let database: TestDatabase;
  let sql: postgres.Sql;

  beforeAll(async () => {
    database = await createTestDatabase();
    sql = postgres(database.url, { max: 3, onnotice: () => {} });
    const add = (task: string, options: { queue?: string; runAt?: string; maxAttempts?: number } = {}) => sql<{ id: string }[]>`
      select id::text from graphile_worker.add_job(${task}::text, '{}'::json, queue_name => ${options.queue ?? null}::text,
        run_at => now() + ${options.runAt ?? "0 seconds"}::interval, max_attempts => ${options.maxAttempts ?? 25}::int)`;
    const lock = (id: string) => sql`update graphile_worker._private_jobs set locked_at = now(), locked_by = 'test-worker', attempts = attempts + 1 where id = ${id}::bigint`;
    // Due for 90 s, nothing in its way: runnable.
    await add("test:waiting", { runAt: "-90 seconds" });
    // A session's running turn and the next one behind it (due much longer): running and blocked.
    const [running] = await add("test:turn", { queue: "session:a", runAt: "-2000 seconds" });
    await add("test:turn", { queue: "session:a", runAt: "-1000 seconds" });
    await lock(running!.id);
    await sql`update graphile_worker._private_job_queues set locked_at = now(), locked_by = 'test-worker' where queue_name = 'session:a'`;
    // Not due yet, running without a queue, and out of attempts.
    await add("test:later", { runAt: "1 hour" });
    const [alone] = await add("test:alone");
    await lock(alone!.id);
    const [failed] = await add("test:failed", { maxAttempts: 1 });
    await sql`update graphile_worker._private_jobs set attempts = 1 where id = ${failed!.id}::bigint`;
  });
  afterAll(async () => {
    await sql?.end({ timeout: 5 });
    await database?.drop();
  });

  it("reads the job queue by state, and the age of the oldest job a worker could start", async () => {
    const metrics = new BerthMetrics(sql);
    const depth = Object.fromEntries((await values(metrics, "berth_job_queue_depth")).map((v) => [v.labels.state, v.value]));
    expect(depth).toEqual({ runnable: 1, blocked: 1, scheduled: 1, running: 2, failed: 1 });
    // The blocked job waits longer, but behind its session's running turn: not a stalled queue.
    const age = await value(metrics, "berth_job_queue_oldest_runnable_age_seconds");
    expect(age).toBeGreaterThanOrEqual(90);
    expect(age).toBeLessThan(120);
    expect(await value(metrics, "berth_database_up")).toBe(1);
  });

  it("says 0 for the oldest runnable job when none waits", async () => {
    await sql`update graphile_worker._private_jobs set run_at = now() + interval '1 hour' where task_id = (select id from graphile_worker._private_tasks where identifier = 'test:waiting')`;
    try {
      expect(await value(new BerthMetrics(sql), "berth_job_queue_oldest_runnable_age_seconds")).toBe(0);
    } finally {
      await sql`update graphile_worker._private_jobs set run_at = now() - interval '90 seconds' where task_id = (select id from graphile_worker._private_tasks where identifier = 'test:waiting')`;
    }
  });

  it("still answers a scrape when the database is gone: berth_database_up 0, the last figures kept", async () => {
    const own = postgres(database.url, { max: 2, onnotice: () => {} });
    const metrics = new BerthMetrics(own);
    expect(await value(metrics, "berth_job_queue_depth", { state: "runnable" })).toBe(1);
    await own.end({ timeout: 5 });
    // Past the second a database figure is reused for.
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/^berth_database_up 0$/m);
    expect(text).toMatch(/^berth_job_queue_depth\{state="runnable"\} 1$/m);
    expect(text).toContain("berth_process_resident_memory_bytes");
  });

  it("does not wait on a database that never answers longer than a scrape can", async () => {
    const silent = net.createServer(() => {}); // accepts, then says nothing
    const sockets = new Set<net.Socket>();
    silent.on("connection", (socket) => sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const hung = postgres({ host: "127.0.0.1", port: (silent.address() as net.AddressInfo).port, database: "x", username: "x", connect_timeout: 60, onnotice: () => {} });
    try {
      const metrics = new BerthMetrics(hung);
      const started = performance.now();
      const text = await metrics.registry.metrics();
      expect(performance.now() - started).toBeLessThan(5_000);
      expect(text).toMatch(/^berth_database_up 0$/m);
    } finally {
      void hung.end({ timeout: 0 });
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  it("declares the series alerts take rate() of with 0, and none of prom-client's gauges named like counters", async () => {
    const metrics = new BerthMetrics(sql);
    for (const outcome of ["started", "recovered", "failed"]) expect(await value(metrics, "berth_sandbox_reconnects_total", { outcome })).toBe(0);
    for (const kind of ["internal", "policy", "brokering", "upstream", "certificate", "record"]) expect(await value(metrics, "berth_egress_errors_total", { kind })).toBe(0);
    const text = await metrics.registry.metrics();
    for (const outcome of ["completed", "failed", "aborted"]) expect(text).toContain(`berth_turn_duration_seconds_count{outcome="${outcome}"} 0`);
    expect(text).toContain("# TYPE berth_nodejs_active_handles gauge");
    expect(text).not.toMatch(/^# TYPE \S+_total gauge$/m);
  });

  it("reads each database figure once for many scrapes at a time (/metrics may be open to anyone)", async () => {
    let queries = 0;
    const counting = new Proxy(sql, {
      apply(target, thisArg, args) {
        queries += 1;
        return Reflect.apply(target, thisArg, args) as unknown;
      },
    });
    const metrics = new BerthMetrics(counting);
    await Promise.all(Array.from({ length: 20 }, () => metrics.registry.metrics()));
    // One query per figure read from the database (up, sessions, events, tokens, cost, queue depth, oldest job).
    expect(queries).toBe(7);
  });

  it("labels only the API's own procedures by name: anything else anyone sends is one label", () => {
    const procedures = new Set(["agents.list", "sessions.get"]);
    expect(routeLabel("/api/trpc/agents.list", procedures)).toBe("/api/trpc/agents.list");
    expect(routeLabel("/api/trpc/agents.list,sessions.get", procedures)).toBe("/api/trpc/agents.list,sessions.get");
    expect(routeLabel("/api/trpc/aaaa", procedures)).toBe("/api/trpc/other");
    expect(routeLabel("/api/trpc/agents.list,aaab", procedures)).toBe("/api/trpc/other");
    expect(routeLabel("/sessions/1234", procedures)).toBe("page");
  });
});
