import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, startTestBerth, type TestBerth } from "../helpers/berth";
import { waitFor } from "../helpers/processes";

const KEY = "provisioning_failure_key_0123456789abcd";

/**
 * Bounded retries: a sandbox that cannot start is retried a few times with backoff, then the session
 * is `failed` with the reason; `sessions.restart` brings it back once the cause is gone. The daemon
 * here is the real one, made to exit at start while the sandbox env says FAIL_START=1 (a team secret
 * the test sets and then deletes).
 */
describe("provisioning that keeps failing", () => {
  let berth: TestBerth;
  let sql: postgres.Sql;
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "berth-failing-daemon-"));
    const daemon = path.join(dir, "sandboxd.js");
    const real = readFileSync(path.join(ROOT, "build/sandboxd.js"), "utf8").replace(/^#!.*\n/, "");
    writeFileSync(daemon, `if (process.env.FAIL_START === "1") { process.stderr.write("sandboxd: refusing to start (FAIL_START=1)\\n"); process.exit(3); }\n${real}`);
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: KEY }, daemonScript: daemon });
    sql = postgres(berth.databaseUrl, { max: 2, onnotice: () => {} });
  });
  afterAll(async () => {
    await sql?.end();
    await berth?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("fails the session with the reason after its retries, and restart brings it back", async () => {
    const api = berth.client(KEY);
    const secret = await api.secrets.set.mutate({ name: "FAIL_START", value: "1" });
    const agent = await api.agents.create.mutate({ name: "doomed", model: "demo" });
    const { id } = await api.sessions.create.mutate({ agentId: agent.id });

    // graphile-worker backs off e^attempt seconds between tries; move the clock of the retry forward.
    const failed = await waitFor("the session to fail", async () => {
      await sql`update graphile_worker._private_jobs set run_at = now() where locked_at is null and task_id = (select id from graphile_worker._private_tasks where identifier = 'sandbox:provision')`;
      const session = await api.sessions.get.query({ sessionId: id });
      return session.status === "failed" ? session : undefined;
    }, 60_000);
    expect(failed.statusReason).toMatch(/sandbox could not start/);
    const attempts = await sql<{ status: string }[]>`select status::text from sandboxes where session_id = ${id} order by generation`;
    expect(attempts.map((row) => row.status)).toEqual(["failed", "failed", "failed"]);
    const [job] = await sql<{ count: number }[]>`select count(*)::int from graphile_worker.jobs where task_identifier = 'sandbox:provision'`;
    expect(job!.count).toBe(1); // kept, with its last error, for the jobs page
    const send = await api.sessions.send.mutate({ sessionId: id, text: "hello?" }).catch((error: unknown) => error);
    expect(String(send)).toMatch(/failed: restart it/);

    await api.secrets.delete.mutate({ secretId: secret.id });
    await api.sessions.restart.mutate({ sessionId: id });
    await waitFor("the session to be ready again", async () => ((await api.sessions.get.query({ sessionId: id })).status === "ready" ? true : undefined), 30_000);
    expect((await api.sessions.exec.mutate({ sessionId: id, command: "echo back" })).stdout).toBe("back\n");
    const statuses = (await api.sessions.events.query({ sessionId: id, limit: 100 })).items.filter((event) => event.type === "status").map((event) => (event.payload as { to: string }).to);
    expect(statuses).toEqual(["provisioning", "failed", "provisioning", "ready"]);
  });
});
