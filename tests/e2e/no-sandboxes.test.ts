import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import postgres from "postgres";
import { chromium, type Browser } from "playwright-core";
import { TRPCClientError } from "@trpc/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createBerthClient } from "../../server/client";
import { ROOT } from "../helpers/berth";
import { createTestDatabase, type TestDatabase } from "../helpers/database";
import { freePort, startProcess, waitFor, type BerthProcess } from "../helpers/processes";
import { chromiumPath } from "../helpers/system-tools";

/**
 * The built server on a machine without bubblewrap: every program of this one is on its PATH but
 * bwrap (the backend looks it up with `command -v bwrap`). It must start, serve everything but
 * sessions, and say everywhere what is missing and what to run.
 */
const EMAIL = "admin@no-sandboxes.test";
const PASSWORD = "no-sandboxes-password-0123";
const API_KEY = "nosandbox_key_0123456789abcdefghijklmn";
const CHROMIUM = chromiumPath();
const SHOTS = process.env.BERTH_TEST_SCREENSHOTS ?? path.join(ROOT, "test-artifacts/screenshots");

/** A folder of links to every program on this machine's usual PATH except bwrap. */
function pathWithout(program: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), `berth-no-${program}-`));
  const linked = new Set<string>([program]);
  symlinkSync(process.execPath, path.join(dir, "node"));
  linked.add("node");
  for (const source of ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]) {
    if (!existsSync(source)) continue;
    for (const name of readdirSync(source)) {
      if (linked.has(name)) continue;
      linked.add(name);
      symlinkSync(path.join(source, name), path.join(dir, name));
    }
  }
  return dir;
}

function expectFailure(error: unknown, code: string): string {
  expect(error).toBeInstanceOf(TRPCClientError);
  expect((error as TRPCClientError<never>).data).toMatchObject({ code });
  return (error as Error).message;
}

describe("a machine without bubblewrap", () => {
  let database: TestDatabase;
  let sql: postgres.Sql;
  let dataDir: string;
  let binDir: string;
  let server: BerthProcess;
  let base: string;
  const api = () => createBerthClient({ url: base, apiKey: API_KEY });

  /** The server's JSON log lines at `level` or above (pino: 40 warn, 50 error). */
  const logLines = (level: number) =>
    server
      .output()
      .split("\n")
      .filter((line) => line.startsWith("{"))
      .map((line) => JSON.parse(line) as { level: number; msg: string })
      .filter((line) => line.level >= level);

  beforeAll(async () => {
    database = await createTestDatabase();
    sql = postgres(database.url, { max: 2, onnotice: () => {} });
    dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-no-bwrap-data-"));
    binDir = pathWithout("bwrap");
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    server = startProcess(process.execPath, ["build/main.js"], {
      PATH: binDir,
      DATABASE_URL: database.url,
      BERTH_DATA_DIR: dataDir,
      PORT: String(port),
      HOST: "127.0.0.1",
      BERTH_ADMIN_EMAIL: EMAIL,
      BERTH_ADMIN_PASSWORD: PASSWORD,
      BERTH_ADMIN_API_KEY: API_KEY,
      // A pool that would try to fill itself, if anything tried.
      BERTH_WARM_POOL_SIZE: "2",
      LOG_LEVEL: "info",
    });
    await waitFor(
      "the server to be ready",
      async () => {
        if (server.child.exitCode !== null) throw new Error(`the server exited:\n${server.output()}`);
        const response = await fetch(`${base}/readyz`).catch(() => null);
        return response?.status === 200 ? true : undefined;
      },
      90_000,
    );
  });

  afterAll(async () => {
    if (server && server.child.exitCode === null) {
      server.child.kill("SIGTERM");
      await server.exited;
    }
    await sql?.end();
    await database?.drop();
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(binDir, { recursive: true, force: true });
  });

  it("is ready, and its health is ok with sandboxes unavailable, naming the problem and the fix", async () => {
    const readyz = await (await fetch(`${base}/readyz`)).json();
    expect(readyz).toMatchObject({ ready: true, sandboxes: "unavailable" });

    // What ../shared/tools/fresh-machine.sh reads: the raw answer, `"ok":true`.
    const raw = await (await fetch(`${base}/api/trpc/system.health`)).text();
    expect(raw).toContain('"ok":true');
    const health = await api().system.health.query();
    expect(health.ok).toBe(true);
    expect(health.sandboxBackend).toBe("local");
    expect(health.sandboxes.available).toBe(false);
    if (health.sandboxes.available) return;
    expect(health.sandboxes.reason).toContain("bubblewrap is not installed");
    expect(health.sandboxes.fix).toMatch(/`(sudo )?(apt-get|dnf) install bubblewrap`/);
    expect(health.sandboxes.fix).toContain("npm start");
    expect(health).not.toHaveProperty("sandboxIsolation");

    expect(server.output()).toContain("Sandboxes are unavailable: bubblewrap is not installed");

    // What the BerthSandboxesUnavailable alert reads (the process itself stays ready).
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/^berth_sandboxes_available\{backend="local"\} 0$/m);
  });

  it("says so on the home page and on every dashboard page, in the HTML the server sends", async () => {
    const home = await (await fetch(`${base}/`)).text();
    expect(home).toContain("Sandboxes are unavailable");
    expect(home).toContain("bubblewrap is not installed");
    expect(home).toContain("install bubblewrap</code>");

    const login = await fetch(`${base}/api/trpc/auth.login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ json: { email: EMAIL, password: PASSWORD } }),
    });
    expect(login.status).toBe(200);
    const cookie = login.headers.get("set-cookie")!.split(";")[0]!;
    for (const page of ["/sessions", "/agents", "/system"]) {
      const html = await (await fetch(`${base}${page}`, { headers: { cookie } })).text();
      expect(html, page).toContain('data-testid="sandboxes-unavailable"');
      expect(html, page).toContain("bubblewrap is not installed");
    }
  });

  it("shows the banner in a browser (screenshots), with the demo button held back", async () => {
    let browser: Browser | undefined;
    try {
      mkdirSync(SHOTS, { recursive: true });
      browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
      const page = await browser.newPage({ viewport: { width: 1366, height: 860 } });
      await page.goto(`${base}/`);
      await page.getByTestId("sandboxes-unavailable").waitFor();
      await page.screenshot({ path: path.join(SHOTS, "no-sandboxes-home.png"), fullPage: true });
      await page.goto(`${base}/login`);
      await page.getByLabel("Email").fill(EMAIL);
      await page.getByLabel("Password").fill(PASSWORD);
      await page.getByRole("button", { name: "Sign in" }).click();
      await page.waitForURL(/\/sessions$/);
      // The layout's banner, above this page's own "no sessions" state.
      await page.getByTestId("sandboxes-unavailable").getByText("bubblewrap is not installed").waitFor();
      const demo = page.getByRole("button", { name: "Start a demo session" });
      await demo.waitFor();
      expect(await demo.isDisabled()).toBe(true);
      await page.screenshot({ path: path.join(SHOTS, "no-sandboxes-sessions.png"), fullPage: true });
      await page.setViewportSize({ width: 390, height: 844 });
      await page.screenshot({ path: path.join(SHOTS, "no-sandboxes-sessions-phone.png"), fullPage: true });
      await page.setViewportSize({ width: 1366, height: 860 });
      await page.goto(`${base}/system`);
      await page.getByTestId("system-sandboxes").filter({ hasText: "unavailable" }).waitFor();
      await page.screenshot({ path: path.join(SHOTS, "no-sandboxes-system.png"), fullPage: true });
    } finally {
      await browser?.close();
    }
  });

  it("refuses to create a session with the reason, writing nothing, while agents, secrets and keys work", async () => {
    const client = api();
    const agent = await client.agents.create.mutate({ name: "no-sandbox-agent", model: "demo" });
    expect(agent.isDemo).toBe(true);
    expect((await client.agents.list.query({ limit: 10 })).items.map((item) => item.name)).toEqual(["no-sandbox-agent"]);
    await client.secrets.set.mutate({ name: "TOKEN", value: "s3cret" });
    expect((await client.secrets.list.query({ limit: 10 })).items.map((secret) => secret.name)).toContain("TOKEN");
    expect((await client.apiKeys.list.query({ limit: 10 })).items.length).toBeGreaterThan(0);

    const message = expectFailure(await client.sessions.create.mutate({ agentId: agent.id }).catch((error: unknown) => error), "PRECONDITION_FAILED");
    expect(message).toContain("sandboxes are unavailable on this host: bubblewrap is not installed");
    expect(message).toMatch(/install bubblewrap/);
    // The demo button's procedure too, and it makes no demo agent on the way.
    expectFailure(await client.sessions.startDemo.mutate().catch((error: unknown) => error), "PRECONDITION_FAILED");

    const [rows] = await sql<{ sessions: number; agents: number; jobs: number }[]>`
      select (select count(*)::int from sessions) as sessions, (select count(*)::int from agents) as agents,
             (select count(*)::int from graphile_worker.jobs where task_identifier = 'sandbox:provision') as jobs`;
    expect(rows).toEqual({ sessions: 0, agents: 1, jobs: 0 });
  });

  it("fails a session that was waiting for a sandbox at once, ends its turn with the reason, and reconciles, without retrying or logging errors", async () => {
    // Sessions from before bubblewrap went away, still waiting for their sandboxes: one's provisioning
    // is due, the other has a command queued (its turn runs first).
    const [agent] = await sql<{ id: string; team_id: string }[]>`select id, team_id from agents limit 1`;
    const [session, waiting] = await sql<{ id: string }[]>`
      insert into sessions (team_id, agent_id, agent_version, title)
      values (${agent!.team_id}, ${agent!.id}, 1, 'from before'), (${agent!.team_id}, ${agent!.id}, 1, 'with a command') returning id`;
    await sql`select * from berth_accept_message(${agent!.team_id}::uuid, ${waiting!.id}::uuid, 'run: echo hello', null)`;
    await sql`select graphile_worker.add_job('sandbox:provision', json_build_object('sessionId', ${session!.id}::text, 'reason', 'create'), max_attempts => 3)`;
    await sql`select graphile_worker.add_job('sandbox:reconcile', '{}'::json)`;
    const failed = await waitFor("the session to fail", async () => {
      const [row] = await sql<{ status: string; status_reason: string | null }[]>`select status, status_reason from sessions where id = ${session!.id}`;
      return row?.status === "failed" ? row : undefined;
    });
    expect(failed.status_reason).toContain("bubblewrap is not installed");
    await waitFor("the jobs to be done", async () => {
      const [row] = await sql<{ count: number }[]>`
        select count(*)::int as count from graphile_worker.jobs where task_identifier in ('sandbox:provision', 'sandbox:reconcile', 'turn:run')`;
      return row!.count === 0 ? true : undefined;
    });
    // The command's result is the reason; the turn ended rather than being run again.
    const [turn] = await sql<{ status: string; runs: number }[]>`select status, run as runs from turns where session_id = ${waiting!.id}`;
    expect(turn).toEqual({ status: "completed", runs: 1 });
    const [result] = await sql<{ payload: { output: string; isError: boolean } }[]>`
      select payload from session_events where session_id = ${waiting!.id} and type = 'tool_result'`;
    expect(result!.payload.isError).toBe(true);
    expect(result!.payload.output).toContain("sandboxes are unavailable on this host: bubblewrap is not installed");
    // Not retried: a retry would have left the job (and its error) behind. No sandbox row was made.
    const [sandboxes] = await sql<{ count: number }[]>`select count(*)::int as count from sandboxes`;
    expect(sandboxes!.count).toBe(0);
    // The one error of the whole run is the start-up's "sandboxes are unavailable".
    const errors = logLines(50);
    expect(errors.map((line) => line.msg)).toEqual([expect.stringContaining("sandboxes are unavailable: bubblewrap is not installed")]);
    expect(logLines(40).filter((line) => /warm sandbox pool|provisioning failed|could not/.test(line.msg))).toEqual([]);
  });

  it("stops cleanly on SIGTERM", async () => {
    server.child.kill("SIGTERM");
    expect(await server.exited, server.output()).toEqual({ code: 0, signal: null });
  });
});
