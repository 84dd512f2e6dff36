import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isProcessAlive } from "../../db/embedded";
import { createBerthClient } from "../../server/client";
import { createTestDatabase, type TestDatabase } from "../helpers/database";
import { freePort, readyzStatus, startProcess, waitFor, type BerthProcess } from "../helpers/processes";

/**
 * Real Berth processes, signalled and killed like an orchestrator would: the reliability promises of
 * issue 2 (graceful SIGTERM, recovery after SIGKILL, clear configuration errors, embedded start).
 */
const FIXTURE = ["--import", "tsx", "tests/fixtures/berth-with-probe-task.ts"];

describe("a Berth process under signals", () => {
  let database: TestDatabase;
  let sql: postgres.Sql;
  let dataDir: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    sql = postgres(database.url, { max: 2, onnotice: () => {} });
    await sql`create table probe_runs (id serial primary key, label text not null, event text not null, pid int not null, at timestamptz not null default now())`;
    dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-e2e-"));
  });
  afterAll(async () => {
    await sql?.end();
    await database?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  async function startFixture(): Promise<BerthProcess & { port: number }> {
    const port = await freePort();
    const berth = startProcess(process.execPath, FIXTURE, {
      DATABASE_URL: database.url,
      BERTH_DATA_DIR: dataDir,
      PORT: String(port),
      HOST: "127.0.0.1",
      BERTH_SHUTDOWN_TIMEOUT_MS: "8000",
      LOG_LEVEL: "info",
    });
    await waitFor("the fixture to be ready", () => (berth.output().includes("READY") ? true : undefined), 60_000);
    return { ...berth, port };
  }

  async function enqueueProbe(label: string, sleepMs: number) {
    await sql`select graphile_worker.add_job('test:probe', json_build_object('label', ${label}::text, 'sleepMs', ${sleepMs}::int), max_attempts => 5)`;
  }

  async function events(label: string) {
    return sql<{ event: string; pid: number }[]>`select event, pid from probe_runs where label = ${label} order by id`;
  }

  /** Probe jobs only (a cron job, started on the minute, may be running at any moment); all of them, or the locked ones. */
  async function probeJobs(which: "all" | "locked" = "all") {
    const rows = await sql<{ count: number }[]>`
      select count(*)::int as count from graphile_worker.jobs
      where task_identifier = 'test:probe' ${which === "locked" ? sql`and locked_by is not null` : sql``}`;
    return rows[0]!.count;
  }

  it("on SIGTERM lets a short job finish, releases a long one, and exits 0 well within 15 s", async () => {
    const berth = await startFixture();
    await enqueueProbe("short", 1_500);
    await enqueueProbe("long", 120_000);
    await waitFor("both probes to start", async () => ((await events("short")).length && (await events("long")).length ? true : undefined));

    const signalledAt = Date.now();
    berth.child.kill("SIGTERM");
    const exit = await berth.exited;
    const elapsed = Date.now() - signalledAt;

    expect(exit).toEqual({ code: 0, signal: null });
    expect(elapsed).toBeLessThan(15_000);
    expect((await events("short")).map((row) => row.event)).toEqual(["start", "finish"]);
    expect((await events("long")).map((row) => row.event)).toEqual(["start"]);
    expect(await probeJobs("locked")).toBe(0);
    // The released long job stays queued, to run again on the next start, at once (graphile-worker
    // alone would back it off like a failure).
    const pending = await sql<{ attempts: number; due: boolean }[]>`
      select attempts, run_at <= now() as due from graphile_worker.jobs where task_identifier = 'test:probe'`;
    expect(pending).toEqual([{ attempts: 1, due: true }]);
    await sql`delete from graphile_worker._private_jobs`;
  });

  it("after SIGKILL mid-job, a restarted process runs the held job again at once", async () => {
    const first = await startFixture();
    await enqueueProbe("killed", 2_000_000);
    await waitFor("the probe to start", async () => ((await events("killed")).length ? true : undefined));
    expect(await probeJobs("locked")).toBe(1);
    first.child.kill("SIGKILL");
    await first.exited;
    // Make the held job short, so finishing it proves it ran again (graphile-worker would wait 4 hours).
    await sql`update graphile_worker._private_jobs set payload = jsonb_set(payload::jsonb, '{sleepMs}', '200')::json`;

    const restartedAt = Date.now();
    const second = await startFixture();
    await waitFor("the held job to run again and finish", async () => {
      const rows = await events("killed");
      return rows.some((row) => row.event === "finish") ? true : undefined;
    }, 60_000);
    const recoveredInMs = Date.now() - restartedAt;
    const rows = await events("killed");
    expect(rows.map((row) => row.event)).toEqual(["start", "start", "finish"]);
    expect(rows[1]!.pid).toBe(second.child.pid);
    expect(recoveredInMs).toBeLessThan(60_000);
    // The task records "finish" before graphile-worker completes (deletes) the job, a moment later.
    await waitFor("the finished job to be completed and removed", async () => ((await probeJobs()) === 0 ? true : undefined), 10_000);

    second.child.kill("SIGTERM");
    expect(await second.exited, `the server's output:\n${second.output()}`).toEqual({ code: 0, signal: null });
  });

  it("refuses bad configuration with one clear line naming the variable", async () => {
    const berth = startProcess(process.execPath, ["build/main.js"], { PORT: "abc", BERTH_DATA_DIR: dataDir });
    const exit = await berth.exited;
    expect(exit.code).toBe(1);
    expect(berth.output()).toBe('berth: Invalid configuration: PORT must be a whole number from 1 to 65535 (got "abc")\n');
  });

});

describe("the built server on its embedded database", () => {
  it("starts with no DATABASE_URL, serves the home page and /readyz, and reuses its data on the next start", async () => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-embedded-"));
    try {
      const port = await freePort();
      const env = { BERTH_DATA_DIR: dataDir, PORT: String(port), HOST: "127.0.0.1" };

      const first = startProcess(process.execPath, ["build/main.js"], env);
      await waitFor("/readyz to answer 200", async () => ((await readyzStatus(port)) === 200 ? true : undefined), 60_000);
      const home = await fetch(`http://127.0.0.1:${port}/`);
      expect(home.status).toBe(200);
      expect(await home.text()).toContain("<h1>Berth</h1>");
      const apiKey = readFileSync(path.join(dataDir, "admin-api-key"), "utf8").trim();
      expect(first.output()).toContain(apiKey); // printed once, on first start
      first.child.kill("SIGTERM");
      expect(await first.exited, `the server's output:\n${first.output()}`).toEqual({ code: 0, signal: null });

      const second = startProcess(process.execPath, ["build/main.js"], env);
      await waitFor("/readyz after restart", async () => ((await readyzStatus(port)) === 200 ? true : undefined), 60_000);
      expect(second.output()).not.toContain("initialising the embedded Postgres cluster");
      expect(second.output()).not.toContain(apiKey);
      expect(readFileSync(path.join(dataDir, "admin-api-key"), "utf8").trim()).toBe(apiKey);
      second.child.kill("SIGINT");
      expect(await second.exited, `the server's output:\n${second.output()}`).toEqual({ code: 0, signal: null });
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it("after SIGKILL of its owner, takes over the orphaned database server on the next start", async () => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-embedded-"));
    try {
      const port = await freePort();
      const env = { BERTH_DATA_DIR: dataDir, PORT: String(port), HOST: "127.0.0.1" };
      const first = startProcess(process.execPath, ["build/main.js"], env);
      await waitFor("/readyz", async () => ((await readyzStatus(port)) === 200 ? true : undefined), 60_000);
      const orphanPid = Number(readFileSync(path.join(dataDir, "pg", "postmaster.pid"), "utf8").split("\n")[0]);
      first.child.kill("SIGKILL");
      await first.exited;
      expect(isProcessAlive(orphanPid)).toBe(true); // Postgres outlives a SIGKILLed parent

      const second = startProcess(process.execPath, ["build/main.js"], env);
      await waitFor("/readyz after the crash", async () => ((await readyzStatus(port)) === 200 ? true : undefined), 60_000);
      expect(isProcessAlive(orphanPid)).toBe(false);
      expect(second.output()).toContain("stopping an embedded Postgres left running by a previous Berth process");
      second.child.kill("SIGTERM");
      expect(await second.exited, `the server's output:\n${second.output()}`).toEqual({ code: 0, signal: null });
      // A clean database shutdown removes its pid file: nothing is left running.
      expect(existsSync(path.join(dataDir, "pg", "postmaster.pid"))).toBe(false);
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  // Root's runs (the other tests) have left the cgroup roots behind: they exist, but nobody cannot
  // create groups in them, so the sandboxes must go without cgroups instead of failing to start.
  it.runIf(process.getuid?.() === 0)("also runs as an unprivileged user, sandboxes included", async () => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-embedded-user-"));
    const nobody = 65534;
    chownSync(dataDir, nobody, nobody);
    try {
      const port = await freePort();
      const apiKey = "nobody_admin_key_0123456789abcdef";
      const berth = startProcess(
        process.execPath,
        ["build/main.js"],
        { BERTH_DATA_DIR: dataDir, PORT: String(port), HOST: "127.0.0.1", HOME: dataDir, BERTH_ADMIN_API_KEY: apiKey, BERTH_WARM_POOL_SIZE: "0" },
        { uid: nobody, gid: nobody },
      );
      await waitFor("/readyz as nobody", async () => ((await readyzStatus(port)) === 200 ? true : undefined), 60_000);
      const api = createBerthClient({ url: `http://127.0.0.1:${port}`, apiKey });
      const agent = await api.agents.create.mutate({ name: "as-nobody", model: "demo" });
      const { id: sessionId } = await api.sessions.create.mutate({ agentId: agent.id });
      await waitFor("the session's sandbox", async () => ((await api.sessions.get.query({ sessionId })).status === "ready" ? true : undefined), 60_000);
      await api.sessions.send.mutate({ sessionId, text: "run: echo as-$(id -un)" });
      const result = await waitFor(
        "the command's result",
        async () => (await api.sessions.events.query({ sessionId, limit: 1000 })).items.find((event) => event.type === "tool_result"),
        60_000,
      );
      expect(String((result.payload as { output: unknown }).output), berth.output()).toContain("as-sandbox");
      berth.child.kill("SIGTERM");
      expect(await berth.exited, `the server's output:\n${berth.output()}`).toEqual({ code: 0, signal: null });
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
