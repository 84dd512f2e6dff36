import { randomBytes } from "node:crypto";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { gunzipSync, gzipSync } from "node:zlib";
import postgres from "postgres";
import { afterAll, describe, expect, inject, it } from "vitest";
import { startTestBerth, type TestBerth } from "../helpers/berth";
import { startProcess, waitFor } from "../helpers/processes";

const ADMIN_KEY = "backup_test_key_0123456789abcdefghijkl";
/** The same key for the source and the restored Berth: secrets travel encrypted. */
const SECRET_KEY = randomBytes(32).toString("hex");
const SECRET_VALUE = "s3cret-value-that-survives-a-restore";

type Event = { seq: number; type: string; payload: Record<string, unknown> };

/** An empty database (no schema at all) on the test run's server. */
async function createEmptyDatabase(): Promise<{ url: string; drop(): Promise<void> }> {
  const adminUrl = inject("postgresAdminUrl");
  const name = `berth_restore_${randomBytes(5).toString("hex")}`;
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database ${name}`);
  } finally {
    await admin.end({ timeout: 5 });
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const sql = postgres(adminUrl, { max: 1, onnotice: () => {} });
      try {
        await sql.unsafe(`drop database if exists ${name} with (force)`);
      } finally {
        await sql.end({ timeout: 5 });
      }
    },
  };
}

/** Runs an npm script (as an operator would) with only the given environment; resolves with its exit code and output. */
async function runScript(script: "backup" | "restore", args: string[], env: Record<string, string>) {
  const child = startProcess("npm", ["run", "--silent", script, "--", ...args], { LOG_LEVEL: "warn", ...env });
  const timeout = setTimeout(() => child.child.kill("SIGKILL"), 90_000);
  const { code } = await child.exited;
  clearTimeout(timeout);
  return { code, output: child.output() };
}

async function schemaTables(url: string): Promise<number> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const [row] = await sql<{ count: number }[]>`
      select count(*)::int as count from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname in ('public', 'drizzle', 'graphile_worker') and c.relkind = 'r'`;
    return row!.count;
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/**
 * Backup and restore end to end: a real Berth with an agent, a secret and a session that ran a turn
 * in a real sandbox is backed up with `npm run backup`, restored with `npm run restore` into a new,
 * empty database, and a second Berth on that database continues the same session.
 */
describe("backup and restore", () => {
  const workDir = mkdtempSync(path.join(os.tmpdir(), "berth-backup-test-"));
  const backupFile = path.join(workDir, "berth.jsonl.gz");
  const targets: Array<{ url: string; drop(): Promise<void> }> = [];
  const cleanups: Array<() => void> = [];
  let source: TestBerth | undefined;
  let restored: TestBerth | undefined;
  let restoredUrl: string;
  /** Sessions the restore moves to `suspended`, each with one `status` event appended. */
  let liveInBackup: number;

  async function events(api: ReturnType<TestBerth["client"]>, sessionId: string): Promise<Event[]> {
    const all: Event[] = [];
    let afterSeq = 0;
    for (;;) {
      const page = await api.sessions.events.query({ sessionId, afterSeq, limit: 100 });
      all.push(...(page.items as Event[]));
      if (page.nextCursor === null) return all;
      afterSeq = page.nextCursor;
    }
  }

  async function turnsSettled(databaseUrl: string, sessionId: string, count: number) {
    const sql = postgres(databaseUrl, { max: 1, onnotice: () => {} });
    try {
      await waitFor(`${count} finished turns`, async () => {
        const [row] = await sql<{ open: number; done: number }[]>`
          select count(*) filter (where status in ('queued', 'running'))::int as open,
                 count(*) filter (where status = 'completed')::int as done
          from turns where session_id = ${sessionId}`;
        return row!.open === 0 && row!.done >= count ? true : undefined;
      }, 60_000);
    } finally {
      await sql.end({ timeout: 5 });
    }
  }

  afterAll(async () => {
    await restored?.close();
    await source?.close();
    for (const target of targets) await target.drop();
    rmSync(workDir, { recursive: true, force: true });
    for (const cleanup of cleanups) cleanup();
  });

  it("restores into a fresh database and a second Berth continues the same session with its history, secret and API key", async () => {
    // --- The source installation: an agent, a secret, a session with one finished turn, a pending job.
    source = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: ADMIN_KEY, BERTH_SECRET_KEY: SECRET_KEY } });
    const api = source.client(ADMIN_KEY);
    const agent = await api.agents.create.mutate({ name: "survivor", model: "demo" });
    await api.secrets.set.mutate({ name: "SURVIVING_SECRET", value: SECRET_VALUE, agentId: agent.id });
    const ciKey = await api.apiKeys.create.mutate({ name: "ci", role: "admin" });
    await api.teams.invite.mutate({ email: "pending@example.com", role: "member" });
    const { id: sessionId } = await api.sessions.create.mutate({ agentId: agent.id });
    await waitFor("the session to be ready", async () => ((await api.sessions.get.query({ sessionId })).status === "ready" ? true : undefined), 30_000);
    await api.sessions.send.mutate({ sessionId, text: "run: echo before-backup" });
    await turnsSettled(source.databaseUrl, sessionId, 1);
    const before = await events(api, sessionId);
    expect(before.find((event) => event.type === "tool_result")?.payload).toMatchObject({ output: "before-backup\n" });

    // A second session in the middle of a turn: its command runs while the backup is taken.
    const { id: busyId } = await api.sessions.create.mutate({ agentId: agent.id });
    await waitFor("the second session to be ready", async () => ((await api.sessions.get.query({ sessionId: busyId })).status === "ready" ? true : undefined), 30_000);
    await api.sessions.send.mutate({ sessionId: busyId, text: "run: sleep 15; echo too-late" });
    await waitFor("the long command to start", async () => ((await events(api, busyId)).some((event) => event.type === "tool_call") ? true : undefined), 20_000);

    const sourceSql = postgres(source.databaseUrl, { max: 1, onnotice: () => {} });
    let sourceAuditMax: number;
    let sourceCounts: Record<string, number>;
    try {
      // A job that must come back as it was: queue, run_at, key, attempts, payload.
      await sourceSql`select graphile_worker.add_job('backup-test:probe', '{"n": 12345678901234567890}'::json, queue_name => 'probe-queue',
                        run_at => '2099-01-02T03:04:05.678901Z', max_attempts => 7, job_key => 'backup-probe')`;
      await sourceSql`update graphile_worker._private_jobs set attempts = 2, last_error = 'earlier failure' where key = 'backup-probe'`;
      [{ max: sourceAuditMax }] = await sourceSql<[{ max: number }]>`select max(id)::int as max from audit_log`;
      const [counts] = await sourceSql<[Record<string, number>]>`
        select (select count(*)::int from teams) as teams, (select count(*)::int from users) as users,
               (select count(*)::int from api_keys) as api_keys, (select count(*)::int from agents) as agents,
               (select count(*)::int from agent_versions) as agent_versions, (select count(*)::int from secrets) as secrets,
               (select count(*)::int from sessions) as sessions, (select count(*)::int from session_events) as session_events,
               (select count(*)::int from turns) as turns, (select count(*)::int from sandboxes) as sandboxes,
               (select count(*)::int from audit_log) as audit_log, (select count(*)::int from invitations) as invitations`;
      sourceCounts = counts;
    } finally {
      await sourceSql.end({ timeout: 5 });
    }

    // --- Online backup of the running installation.
    const backup = await runScript("backup", ["--out", backupFile], { DATABASE_URL: source.databaseUrl });
    expect(backup.output).toContain("berth backup: wrote");
    expect(backup.code).toBe(0);
    expect(statSync(backupFile).mode & 0o777).toBe(0o600);
    const text = gunzipSync(readFileSync(backupFile)).toString("utf8");
    expect(text).not.toContain(SECRET_VALUE); // secrets stay encrypted
    expect(text.split("\n")[0]).toContain('"format":"berth-backup"');
    const backedUpSessions = text
      .split("\n")
      .filter((line) => line.startsWith('{"t":"sessions"'))
      .map((line) => (JSON.parse(line) as { r: { id: string; status: string } }).r);
    expect(backedUpSessions.find((session) => session.id === busyId)?.status).toBe("running");
    liveInBackup = backedUpSessions.filter((session) => ["pending", "provisioning", "ready", "running", "idle", "reconnecting"].includes(session.status)).length;

    // The source is gone (its database dropped, its sandboxes stopped): the restore depends on the file alone.
    await source.close();
    source = undefined;

    // --- Restore into a new, empty database.
    const target = await createEmptyDatabase();
    targets.push(target);
    restoredUrl = target.url;
    const restore = await runScript("restore", ["--in", backupFile], { DATABASE_URL: target.url, BERTH_SECRET_KEY: SECRET_KEY });
    expect(restore.output).toContain("berth restore: restored");
    expect(restore.output).not.toContain("warning");
    expect(restore.code).toBe(0);

    const sql = postgres(target.url, { max: 1, onnotice: () => {} });
    try {
      for (const [table, count] of Object.entries(sourceCounts)) {
        const [row] = await sql.unsafe<[{ count: number }]>(`select count(*)::int as count from ${table}`);
        // The restore appends one `status` event per live session (ready or running -> suspended).
        expect({ table, count: row.count }).toEqual({ table, count: table === "session_events" ? count + liveInBackup : count });
      }
      const [session] = await sql<[{ status: string; status_reason: string }]>`select status::text, status_reason from sessions where id = ${sessionId}`;
      expect(session).toEqual({ status: "suspended", status_reason: "restored from a backup" });
      const live = await sql`select 1 from sandboxes where status in ('ready', 'provisioning')`;
      expect(live).toHaveLength(0);
      const [job] = await sql`
        select j.queue_name, j.run_at, j.attempts, j.max_attempts, j.last_error, p.payload::text as payload
        from graphile_worker.jobs j join graphile_worker._private_jobs p on p.id = j.id where j.key = 'backup-probe'`;
      expect(job).toMatchObject({ queue_name: "probe-queue", attempts: 2, max_attempts: 7, last_error: "earlier failure", payload: '{"n": 12345678901234567890}' });
      expect((job!.run_at as Date).toISOString()).toBe("2099-01-02T03:04:05.678Z");
      const [precise] = await sql<[{ run_at: string }]>`select run_at::text from graphile_worker.jobs where key = 'backup-probe'`;
      expect(precise.run_at).toContain("03:04:05.678901");
    } finally {
      await sql.end({ timeout: 5 });
    }

    // --- A second Berth on the restored database, with the same secret key.
    restored = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: ADMIN_KEY, BERTH_SECRET_KEY: SECRET_KEY, DATABASE_URL: target.url } });
    expect(restored.databaseUrl).toBe(target.url);
    const again = restored.client(ciKey.key); // an API key created before the backup still works
    const history = await events(again, sessionId);
    expect(history.slice(0, before.length)).toEqual(before);
    expect(history[before.length]).toMatchObject({ seq: before.at(-1)!.seq + 1, type: "status", payload: { to: "suspended", reason: "restored from a backup" } });

    await again.sessions.send.mutate({ sessionId, text: "run: echo after-restore" });
    await turnsSettled(target.url, sessionId, 2);
    const after = await events(again, sessionId);
    expect(after.slice(0, before.length)).toEqual(before);
    const added = after.slice(before.length);
    expect(added.every((event, index) => event.seq === before.at(-1)!.seq + 1 + index)).toBe(true);
    const conversation = added.filter((event) => event.type !== "status");
    expect(conversation.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    expect(conversation[2]!.payload).toMatchObject({ output: "after-restore\n", exitCode: 0 });

    // The secret, restored as ciphertext, reaches the new sandbox generation.
    const result = await again.sessions.exec.mutate({ sessionId, command: "echo $SURVIVING_SECRET", timeoutMs: 20_000 });
    expect(result).toMatchObject({ exitCode: 0, stdout: `${SECRET_VALUE}\n` });
    const view = await again.sessions.get.query({ sessionId });
    expect(view.sandbox!.generation).toBeGreaterThan(1);

    // The turn interrupted by the move resumes from the log: its command gets an `interrupted`
    // result (it is not run again), and the turn ends with an answer.
    await turnsSettled(target.url, busyId, 1);
    const resumed = (await events(again, busyId)).filter((event) => event.type !== "status");
    expect(resumed.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    expect(resumed[2]!.payload).toMatchObject({ isError: true, output: expect.stringMatching(/^interrupted/) });
    expect(JSON.stringify(resumed)).not.toContain("too-late\n");

    // Sequences continue after the restored rows.
    const check = postgres(target.url, { max: 1, onnotice: () => {} });
    try {
      const [{ max }] = await check<[{ max: number }]>`select max(id)::int as max from audit_log`;
      expect(max).toBeGreaterThan(sourceAuditMax);
    } finally {
      await check.end({ timeout: 5 });
    }
  });

  it("refuses to restore into a database that already holds Berth data, and changes nothing", async () => {
    const sql = postgres(restoredUrl, { max: 1, onnotice: () => {} });
    try {
      const [before] = await sql<[{ events: number; teams: number }]>`select (select count(*)::int from session_events) as events, (select count(*)::int from teams) as teams`;
      const refused = await runScript("restore", ["--in", backupFile], { DATABASE_URL: restoredUrl, BERTH_SECRET_KEY: SECRET_KEY });
      expect(refused.code).toBe(1);
      expect(refused.output).toMatch(/already holds Berth data \(rows in .*teams/);
      expect(refused.output).toContain("Nothing was restored");
      const [after] = await sql<[{ events: number; teams: number }]>`select (select count(*)::int from session_events) as events, (select count(*)::int from teams) as teams`;
      expect(after).toEqual(before);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  it("fails with a clear message on a truncated, damaged or wrong file and leaves the target empty", async () => {
    const target = await createEmptyDatabase();
    targets.push(target);
    const bytes = readFileSync(backupFile);
    const plain = gunzipSync(bytes).toString("utf8");
    const lines = plain.split("\n");

    const truncated = path.join(workDir, "truncated.jsonl.gz");
    writeFileSync(truncated, bytes.subarray(0, Math.floor(bytes.length / 2)));
    const cutAtLine = path.join(workDir, "cut.jsonl.gz");
    writeFileSync(cutAtLine, gzipSync(lines.slice(0, Math.floor(lines.length / 2)).join("\n") + "\n"));
    const damaged = path.join(workDir, "damaged.jsonl.gz");
    copyFileSync(backupFile, damaged);
    const damagedBytes = readFileSync(damaged);
    for (let offset = Math.floor(damagedBytes.length / 3); offset < Math.floor(damagedBytes.length / 3) + 16; offset++) damagedBytes[offset]! ^= 0xa5;
    writeFileSync(damaged, damagedBytes);
    const edited = path.join(workDir, "edited.jsonl.gz");
    writeFileSync(edited, gzipSync(plain.replace("before-backup", "BEFORE-BACKUP")));
    const wrong = path.join(workDir, "wrong.txt");
    writeFileSync(wrong, "just some text\n");

    const cases: Array<[string, RegExp]> = [
      [truncated, /the file is truncated/],
      [cutAtLine, /the file is truncated: it ends at line \d+ without its end marker/],
      [damaged, /the file is damaged/],
      [edited, /the file is damaged: its checksum does not match/],
      [wrong, /this is not a Berth backup/],
      [path.join(workDir, "missing.jsonl.gz"), /cannot open .*no such file/],
    ];
    for (const [file, expected] of cases) {
      const result = await runScript("restore", ["--in", file], { DATABASE_URL: target.url, BERTH_SECRET_KEY: SECRET_KEY });
      expect({ file: path.basename(file), code: result.code }).toEqual({ file: path.basename(file), code: 1 });
      expect(result.output).toMatch(expected);
      expect(result.output).toContain("Nothing was restored");
      expect(await schemaTables(target.url)).toBe(0);
    }
  });

  it("restores into and backs up from the embedded database of a data dir, refusing while a server owns it", async () => {
    // Its own folder under the temp dir: as root the database runs as `postgres`, which must reach it.
    const dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-backup-embedded-"));
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const env = { BERTH_DATA_DIR: dataDir, BERTH_SECRET_KEY: SECRET_KEY };
    const missing = await runScript("backup", ["--out", path.join(workDir, "never.jsonl.gz")], env);
    expect(missing.code).toBe(1);
    expect(missing.output).toMatch(/no embedded database in .*berth-backup-embedded-.*\/pg/);

    const restore = await runScript("restore", ["--in", backupFile], env);
    expect(restore.output).toContain("berth restore: restored");
    expect(restore.code).toBe(0);

    const again = path.join(workDir, "again.jsonl.gz");
    const backup = await runScript("backup", ["--out", again], env);
    expect(backup.code).toBe(0);
    const rowsOf = (file: string) => (JSON.parse(gunzipSync(readFileSync(file)).toString("utf8").trim().split("\n").at(-1)!) as { end: { rows: Record<string, number> } }).end.rows;
    const original = rowsOf(backupFile);
    expect(rowsOf(again)).toEqual({ ...original, session_events: original.session_events! + liveInBackup });

    // A live process holding the data dir (this test process stands in for a server).
    writeFileSync(path.join(dataDir, "berth.pid"), `${process.pid}\n`);
    const busy = await runScript("backup", ["--out", path.join(workDir, "busy.jsonl.gz")], env);
    expect(busy.code).toBe(1);
    expect(busy.output).toMatch(/is using the data directory.*stop the Berth server first/s);
    rmSync(path.join(dataDir, "berth.pid"));
  });

  it("refuses a restore whose secret key cannot decrypt the secrets, unless told to ignore it", async () => {
    const target = await createEmptyDatabase();
    targets.push(target);
    const otherKey = randomBytes(32).toString("hex");
    const refused = await runScript("restore", ["--in", backupFile], { DATABASE_URL: target.url, BERTH_SECRET_KEY: otherKey });
    expect(refused.code).toBe(1);
    expect(refused.output).toMatch(/does not decrypt 1 of 1 restored secrets/);
    const sql = postgres(target.url, { max: 1, onnotice: () => {} });
    try {
      const [row] = await sql<[{ teams: number }]>`select count(*)::int as teams from teams`;
      expect(row.teams).toBe(0); // rolled back; the schema stays, so a retry works
      const forced = await runScript("restore", ["--in", backupFile, "--ignore-secret-key"], { DATABASE_URL: target.url, BERTH_SECRET_KEY: otherKey });
      expect(forced.code).toBe(0);
      expect(forced.output).toMatch(/warning: .*restored anyway/);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });
});
