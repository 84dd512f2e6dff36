import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectDatabase } from "../../db/client";
import { createBerthClient } from "../../server/client";
import { appendEvents } from "../../server/services/event-log";
import { ROOT } from "../helpers/berth";
import { createTestDatabase, type TestDatabase } from "../helpers/database";
import { freePort, readyzStatus, startProcess, waitFor, type BerthProcess } from "../helpers/processes";

const KEY = "cli_test_admin_key_0123456789abcdefghij";
const MISSING = "00000000-0000-4000-8000-000000000000";
/** The runtime that runs the CLI: this Node by default; `BERTH_TEST_CLI_RUNTIME=/path/to/bun` checks Bun. */
const RUNTIME = process.env.BERTH_TEST_CLI_RUNTIME || process.execPath;

type Result = { code: number | null; stdout: string; stderr: string };
type Line = { kind: "event"; seq: number; type: string; payload: Record<string, unknown> } | { kind: "delta"; afterSeq: number; text: string };

/**
 * The `berth` CLI as a user runs it: the committed launcher (bin/berth.mjs) running the built bundle,
 * as a child process with its own HOME and XDG_CONFIG_HOME, against the built server (demo model).
 */
describe("the berth CLI", () => {
  let database: TestDatabase;
  let dataDir: string;
  let home: string;
  let port: number;
  let server: BerthProcess | undefined;
  const children: ChildProcess[] = [];

  const configHome = () => path.join(home, "config");
  const configFile = () => path.join(configHome(), "berth", "config.json");
  const url = () => `http://127.0.0.1:${port}`;

  async function startServer() {
    server = startProcess(process.execPath, ["build/main.js"], {
      DATABASE_URL: database.url,
      BERTH_DATA_DIR: dataDir,
      PORT: String(port),
      HOST: "127.0.0.1",
      BERTH_ADMIN_API_KEY: KEY,
      BERTH_WARM_POOL_SIZE: "0",
      BERTH_SHUTDOWN_TIMEOUT_MS: "4000",
      LOG_LEVEL: "warn",
    });
    await waitFor("/readyz", async () => ((await readyzStatus(port)) === 200 ? true : undefined), 60_000);
  }

  async function stopServer() {
    server!.child.kill("SIGTERM");
    expect(await server!.exited).toEqual({ code: 0, signal: null });
    server = undefined;
  }

  function cliEnv(extra: Record<string, string> = {}) {
    return { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: home, XDG_CONFIG_HOME: configHome(), ...extra };
  }

  function spawnCli(args: string[], env: Record<string, string> = {}) {
    const child = spawn(RUNTIME, ["bin/berth.mjs", ...args], { cwd: ROOT, env: cliEnv(env) as unknown as NodeJS.ProcessEnv, stdio: ["pipe", "pipe", "pipe"] });
    children.push(child);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    const done = new Promise<Result>((resolve) => child.once("close", (code) => resolve({ code, stdout, stderr })));
    return { child, done, stdout: () => stdout, stderr: () => stderr };
  }

  /** Runs `berth ARGS…` to the end, with `input` on stdin. */
  async function cli(args: string[], options: { input?: string; env?: Record<string, string> } = {}): Promise<Result> {
    const run = spawnCli(args, options.env);
    run.child.stdin.end(options.input ?? "");
    const result = await run.done;
    // The key is never printed, whatever the command.
    expect(result.stdout + result.stderr).not.toContain(KEY);
    return result;
  }

  async function json<T = Record<string, unknown>>(args: string[]): Promise<T> {
    const result = await cli(["--json", ...args]);
    expect(result, result.stderr).toMatchObject({ code: 0 });
    return JSON.parse(result.stdout) as T;
  }

  /** Logged in, with the demo agent `cli-demo`: what the later tests start from (each also runs alone). */
  async function loggedIn() {
    if ((await cli(["agents", "ls"])).code !== 0) expect((await cli(["login", "--url", url(), "--api-key", KEY])).code).toBe(0);
    const agents = await json<{ items: { name: string }[] }>(["agents", "ls", "--all"]);
    if (!agents.items.some((agent) => agent.name === "cli-demo")) await json(["agents", "create", "--name", "cli-demo", "--model", "demo"]);
  }

  const jsonLines = (text: string) => text.split("\n").filter(Boolean).map((line) => JSON.parse(line) as Line);
  const events = (lines: Line[]) => lines.filter((line): line is Extract<Line, { kind: "event" }> => line.kind === "event");

  beforeAll(async () => {
    database = await createTestDatabase();
    dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-cli-data-"));
    home = mkdtempSync(path.join(os.tmpdir(), "berth-cli-home-"));
    port = await freePort();
    await startServer();
  });
  afterAll(async () => {
    for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
    server?.child.kill("SIGKILL");
    if (server) await server.exited;
    await database?.drop();
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(home, { recursive: true, force: true });
  });

  it("login: refuses without credentials (3) and a bad key (3, nothing stored); stores a good one with mode 0600", async () => {
    const notLoggedIn = await cli(["agents", "ls"]);
    expect(notLoggedIn.code).toBe(3);
    expect(notLoggedIn.stderr).toMatch(/not logged in.*berth login/);

    const badKey = await cli(["login", "--url", url(), "--api-key", "berth_not_a_real_key_000000000000"]);
    expect(badKey.code).toBe(3);
    expect(badKey.stderr).toContain("invalid or revoked API key");
    expect(() => statSync(configFile())).toThrow();

    const unreachable = await cli(["login", "--url", "http://127.0.0.1:1", "--api-key", KEY]);
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toMatch(/cannot reach Berth at http:\/\/127\.0\.0\.1:1/);

    const usage = await cli(["login", "--url", "ftp://example.com", "--api-key", KEY]);
    expect(usage.code).toBe(2);

    // The prompts, answered from a pipe: the URL (without scheme), then the key.
    const prompted = await cli(["login"], { input: `127.0.0.1:${port}\n${KEY}\n` });
    expect(prompted, prompted.stderr).toMatchObject({ code: 0 });
    expect(prompted.stderr).toContain("Berth URL");
    expect(prompted.stdout).toContain("Logged in to http://127.0.0.1:");
    expect(prompted.stdout).toContain("(owner)");
    expect(statSync(configFile()).mode & 0o777).toBe(0o600);
    expect(statSync(path.dirname(configFile())).mode & 0o777).toBe(0o700);
    expect(JSON.parse(readFileSync(configFile(), "utf8"))).toEqual({ url: url(), apiKey: KEY });

    const flags = await json<{ url: string; teamId: string; role: string; configFile: string }>(["login", "--url", url(), "--api-key", KEY]);
    expect(flags).toMatchObject({ url: url(), role: "owner", configFile: configFile() });
    expect(statSync(configFile()).mode & 0o777).toBe(0o600);

    // The environment overrides the file.
    const overridden = await cli(["agents", "ls"], { env: { BERTH_API_KEY: "berth_wrong_key_from_env_0000000000" } });
    expect(overridden.code).toBe(3);
    const viaEnv = await cli(["agents", "ls"], { env: { BERTH_URL: url(), BERTH_API_KEY: KEY, XDG_CONFIG_HOME: path.join(home, "empty") } });
    expect(viaEnv.code).toBe(0);
  });

  it("usage errors exit 2: unknown command or option, missing arguments and required options", async () => {
    for (const args of [
      ["frobnicate"],
      ["agents", "ls", "--bogus"],
      ["agents", "create", "--name", "no-model"],
      ["agents", "create", "--name", "x", "--model", "demo", "--network", "everywhere"],
      ["agents", "create", "--name", "x", "--model", "demo", "--idle-timeout", "soon"],
      ["agents", "create", "--name", "x", "--model", "demo", "--warm-pool", "51"],
      ["agents", "create", "--name", "x", "--model", "demo", "--warm-pool", "-1"],
      ["agents", "create", "--name", "x", "--model", "demo", "--disk-mb", "63"],
      ["agents", "create", "--name", "x", "--model", "demo", "--disk-mb", "2G"],
      ["sessions", "send"],
      ["sessions", "send", MISSING],
      ["sessions", "exec", MISSING],
      ["sessions", "new"],
      ["attach"],
    ]) {
      const result = await cli(args);
      expect({ args, code: result.code }).toEqual({ args, code: 2 });
      expect(result.stdout).toBe("");
    }
    const help = await cli(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("attach");
  });

  it("agents create and ls, in human and JSON form", async () => {
    if ((await cli(["agents", "ls"])).code !== 0) expect((await cli(["login", "--url", url(), "--api-key", KEY])).code).toBe(0);
    const created = await cli(["agents", "create", "--name", "cli-demo", "--model", "demo", "--system-prompt", "Be brief.", "--network", "none", "--idle-timeout", "600"]);
    expect(created, created.stderr).toMatchObject({ code: 0 });
    expect(created.stdout).toMatch(/Created agent cli-demo [0-9a-f-]{36} \(model demo, offline demo\)/);
    const agent = await json<{ id: string; name: string; systemPrompt: string; idleTimeoutSeconds: number; network: string; warmPoolSize: number; diskMb: number }>(["agents", "create", "--name", "cli-json", "--model", "demo", "--idle-timeout", "120", "--warm-pool", "3", "--disk-mb", "256"]);
    expect(agent).toMatchObject({ name: "cli-json", idleTimeoutSeconds: 120, network: "none", warmPoolSize: 3, diskMb: 256 });

    const listed = await cli(["agents", "ls"]);
    expect(listed.code).toBe(0);
    expect(listed.stdout.split("\n")[0]).toMatch(/^ID\s+NAME\s+MODEL/);
    expect(listed.stdout).toContain("cli-demo");
    expect(listed.stdout).toContain(agent.id);
    const page = await json<{ items: { name: string; systemPrompt: string }[]; nextCursor: string | null }>(["agents", "ls"]);
    expect(page.items.map((item) => item.name).sort()).toEqual(["cli-demo", "cli-json"]);
    expect(page.items.find((item) => item.name === "cli-demo")!.systemPrompt).toBe("Be brief.");
    expect((page.items.find((item) => item.name === "cli-demo") as { diskMb?: number }).diskMb).toBe(2048); // the default

    const refused = await cli(["agents", "create", "--name", "x", "--model", "demo", "--idle-timeout", "5"]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("idleTimeoutSeconds");
  });

  it("agents with an egress allow-list: --allow on create, show, update replacing the list; a bad --allow creates nothing", async () => {
    await loggedIn();
    type EgressAgent = { id: string; name: string; network: string; egress: { mode: string; allow: Array<Record<string, unknown>> } };
    const created = await json<EgressAgent>(["agents", "create", "--name", "cli-egress", "--model", "demo", "--allow", "api.example.com", "--allow", "registry.npmjs.org:443 GET /*"]);
    expect(created.egress).toEqual({ mode: "allowlist", allow: [{ host: "api.example.com" }, { host: "registry.npmjs.org", ports: [443], methods: ["GET"], paths: ["/*"] }] });
    expect(created.network).toBe("egress");
    const readBack = await json<EgressAgent>(["agents", "show", "cli-egress"]);
    expect(readBack.egress).toEqual(created.egress);

    const shown = await cli(["agents", "show", created.id]);
    expect(shown, shown.stderr).toMatchObject({ code: 0 });
    expect(shown.stdout).toMatch(/egress\s+allow-list \(2 rules\)/);
    expect(shown.stdout).toMatch(/allow\s+api\.example\.com\n\s+registry\.npmjs\.org:443 GET \/\*\n/);
    expect((await cli(["agents", "ls"])).stdout).toMatch(/cli-egress .*allow-list \(2 rules\)/);

    // --allow on update replaces the whole list; --egress alone keeps it.
    const replaced = await json<EgressAgent & { version: number }>(["agents", "update", "cli-egress", "--allow", "*.github.com:443"]);
    expect(replaced).toMatchObject({ version: 2, egress: { mode: "allowlist", allow: [{ host: "*.github.com", ports: [443] }] } });
    const opened = await json<EgressAgent>(["agents", "update", created.id, "--egress", "open"]);
    expect(opened).toMatchObject({ network: "egress", egress: { mode: "open", allow: [{ host: "*.github.com", ports: [443] }] } });

    // A bad rule is refused before anything is sent: exit 2, the rule and the problem named.
    for (const args of [
      ["agents", "create", "--name", "cli-bad-egress", "--model", "demo", "--allow", "api.example.com", "--allow", "https://evil.example/x"],
      ["agents", "create", "--name", "cli-bad-egress", "--model", "demo", "--allow", "example.com:99999"],
      ["agents", "create", "--name", "cli-bad-egress", "--model", "demo", "--egress", "sometimes"],
    ]) {
      const refused = await cli(args);
      expect({ args, code: refused.code }).toEqual({ args, code: 2 });
      expect(refused.stdout).toBe("");
    }
    const url_ = await cli(["agents", "create", "--name", "cli-bad-egress", "--model", "demo", "--allow", "https://evil.example/x"]);
    expect(url_.stderr).toContain('invalid --allow "https://evil.example/x": "https://evil.example/x" is a URL');
    const port_ = await cli(["agents", "create", "--name", "cli-bad-egress", "--model", "demo", "--allow", "example.com:99999"]);
    expect(port_.stderr).toMatch(/invalid --allow "example\.com:99999": .*port/);
    const badUpdate = await cli(["agents", "update", "cli-egress", "--allow", "*"]);
    expect(badUpdate.code).toBe(2);
    expect(badUpdate.stderr).toContain('invalid --allow "*"');
    const agents = await json<{ items: EgressAgent[] }>(["agents", "ls", "--all"]);
    expect(agents.items.map((agent) => agent.name)).not.toContain("cli-bad-egress");
    expect(agents.items.find((agent) => agent.name === "cli-egress")!.egress.mode).toBe("open");

    const help = await cli(["agents", "update", "--help"]);
    expect(help.stdout).toContain("REPLACES the whole list");
  });

  it("secrets set (brokered with --broker-host), ls and rm; values never printed", async () => {
    await loggedIn();
    const brokered = await cli(["secrets", "set", "GITHUB_TOKEN", "--broker-host", "api.github.com", "--broker-host", "*.githubusercontent.com"], { input: "ghp_cli_secret_value\n" });
    expect(brokered, brokered.stderr).toMatchObject({ code: 0 });
    expect(brokered.stdout).toContain("brokered to api.github.com, *.githubusercontent.com (Authorization: Bearer {{value}})");
    const plain = await json<{ name: string; brokered: unknown }>(["secrets", "set", "PLAIN_TOKEN", "--value", "plain-value", "--agent", "cli-demo"]);
    expect(plain).toMatchObject({ name: "PLAIN_TOKEN", brokered: null });
    const custom = await json<{ brokered: unknown }>(["secrets", "set", "API_KEY", "--value", "k", "--broker-host", "api.example.com", "--broker-header", "X-Api-Key", "--broker-template", "{{value}}"]);
    expect(custom.brokered).toEqual({ hosts: ["api.example.com"], header: "X-Api-Key", template: "{{value}}" });

    const listed = await json<{ items: Array<{ name: string; brokered: { hosts: string[]; header: string } | null }> }>(["secrets", "ls"]);
    expect(listed.items.find((item) => item.name === "GITHUB_TOKEN")!.brokered).toEqual({ hosts: ["api.github.com", "*.githubusercontent.com"], header: "Authorization", template: "Bearer {{value}}" });
    const table = await cli(["secrets", "ls"]);
    expect(table.stdout).toMatch(/GITHUB_TOKEN\s+team\s+brokered to api\.github\.com/);
    expect(table.stdout).toMatch(/PLAIN_TOKEN\s+agent cli-demo\s+environment/);
    expect(table.stdout + brokered.stdout).not.toContain("ghp_cli_secret_value");

    const usage = await cli(["secrets", "set", "X", "--value", "v", "--broker-header", "X-Key"]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain("need --broker-host");

    expect((await cli(["secrets", "rm", "PLAIN_TOKEN"])).code).toBe(4); // team-wide: there is none
    expect((await cli(["secrets", "rm", "PLAIN_TOKEN", "--agent", "cli-demo"])).code).toBe(0);
    for (const name of ["GITHUB_TOKEN", "API_KEY"]) expect((await cli(["secrets", "rm", name])).code).toBe(0);
    expect((await json<{ items: unknown[] }>(["secrets", "ls"])).items).toEqual([]);
  });

  it("logs print egress events one a line, denials and leaked stubs marked in words", async () => {
    await loggedIn();
    const session = await json<{ id: string }>(["sessions", "new", "--agent", "cli-demo"]);
    const db = connectDatabase(database.url, { max: 1 });
    try {
      const base = { port: 443, bytesOut: 1200, bytesIn: 3400, durationMs: 12 };
      await appendEvents(db.db, session.id, [
        { type: "egress", payload: { ...base, host: "registry.npmjs.org", method: "GET", path: "/left-pad", status: 200, decision: "allowed", rule: "registry.npmjs.org:443 GET /*", count: 3 } },
        { type: "egress", payload: { ...base, host: "evil.example", decision: "denied", reason: "no allow rule for host evil.example port 443", bytesOut: 0, bytesIn: 0 } },
        { type: "egress", payload: { ...base, host: "paste.example", decision: "allowed", rule: "open", stubsSeen: ["GITHUB_TOKEN"] } },
      ]);
    } finally {
      await db.close();
    }
    const logs = await cli(["sessions", "logs", session.id]);
    expect(logs, logs.stderr).toMatchObject({ code: 0 });
    expect(logs.stdout).toMatch(/↗ GET registry\.npmjs\.org:443\/left-pad → 200 ×3 · 1\.2 kB out · 3\.4 kB in · 12 ms {2}#\d+/);
    expect(logs.stdout).toMatch(/⊘ DENIED CONNECT evil\.example:443: no allow rule for host evil\.example port 443 {2}#\d+/);
    expect(logs.stdout).toContain("⚠ stub of brokered secret GITHUB_TOKEN sent to paste.example:443");
    const lines = jsonLines((await cli(["--json", "sessions", "logs", session.id])).stdout);
    expect(events(lines).filter((line) => line.type === "egress").map((line) => line.payload.decision)).toEqual(["allowed", "denied", "allowed"]);
    expect((await cli(["sessions", "terminate", session.id])).code).toBe(0);
  });

  it("sessions new, ls, show, send (with --wait), logs, exec and terminate; unknown sessions exit 4", async () => {
    await loggedIn();
    const session = await json<{ id: string; status: string }>(["sessions", "new", "--agent", "cli-demo", "--title", "from the cli", "--wait"]);
    expect(session.status).toBe("ready");
    const unknownAgent = await cli(["sessions", "new", "--agent", "no-such-agent"]);
    expect(unknownAgent.code).toBe(4);

    const listed = await cli(["sessions", "ls"]);
    expect(listed.stdout).toMatch(new RegExp(`${session.id}\\s+ready\\s+cli-demo\\s+from the cli`));
    const page = await json<{ items: { id: string }[] }>(["sessions", "ls", "--status", "ready"]);
    expect(page.items.map((item) => item.id)).toContain(session.id);
    const shown = await cli(["sessions", "show", session.id]);
    expect(shown.stdout).toMatch(/status\s+ready/);
    expect(shown.stdout).toMatch(/sandbox\s+generation 1, ready, local/);

    const sent = await json<{ seq: number; queued: boolean; duplicate: boolean }>(["sessions", "send", session.id, "hello", "there"]);
    expect(sent).toMatchObject({ seq: 3, duplicate: false });
    const waited = await cli(["sessions", "send", session.id, "what", "now?", "--wait"]);
    expect(waited, waited.stderr).toMatchObject({ code: 0 });
    // Queued behind "hello there" or not, --wait prints this message's answer.
    expect(waited.stdout).toContain('You said: "what now?"');
    expect(waited.stdout).not.toContain('You said: "hello there"');
    const ran = await json<{ status: string; answer: string; events: { type: string }[] }>(["sessions", "send", session.id, "run: echo from-the-cli", "--wait"]);
    expect(ran.status).toBe("completed");
    expect(ran.answer).toContain("from-the-cli");
    expect(ran.events.map((event) => event.type)).toEqual(["tool_call", "tool_result", "assistant_message", "usage"]);
    const fromStdin = await cli(["sessions", "send", session.id, "-", "--wait"], { input: "typed into a pipe\n" });
    expect(fromStdin.stdout).toContain('You said: "typed into a pipe"');

    const logs = await cli(["sessions", "logs", session.id]);
    expect(logs.code).toBe(0);
    expect(logs.stdout).toMatch(/you › hello there {2}#3/);
    expect(logs.stdout).toMatch(/⚙ bash \$ echo from-the-cli {2}#\d+/);
    expect(logs.stdout).toMatch(/assistant › The command finished/);
    const logLines = events(jsonLines((await cli(["--json", "sessions", "logs", session.id])).stdout));
    expect(logLines.map((line) => line.seq)).toEqual(logLines.map((_, index) => index + 1));
    const after = events(jsonLines((await cli(["--json", "sessions", "logs", session.id, "--after", "3"])).stdout));
    expect(after[0]!.seq).toBe(4);

    const exec = await cli(["sessions", "exec", session.id, "--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    expect(exec).toMatchObject({ code: 7, stdout: "out\n", stderr: "err\n" });
    const line = await cli(["sessions", "exec", session.id, "--", "echo 'a b' | tr a-z A-Z"]);
    expect(line).toMatchObject({ code: 0, stdout: "A B\n" });
    const execJson = await cli(["--json", "sessions", "exec", session.id, "--", "printf", "%s|", "one two", "three"]);
    expect(execJson.code).toBe(0);
    expect(JSON.parse(execJson.stdout)).toMatchObject({ exitCode: 0, stdout: "one two|three|", stderr: "", timedOut: false });

    for (const args of [
      ["sessions", "show", MISSING],
      ["sessions", "logs", MISSING],
      ["sessions", "logs", MISSING, "--follow"],
      ["sessions", "send", MISSING, "hi"],
      ["sessions", "exec", MISSING, "--", "true"],
      ["sessions", "terminate", MISSING],
      ["sessions", "logs", "not-a-session"],
      ["attach", MISSING],
    ]) {
      const result = await cli(args);
      expect({ args, code: result.code }).toEqual({ args, code: 4 });
      expect(result.stderr).toContain("not found");
    }

    const terminated = await json<{ status: string }>(["sessions", "terminate", session.id]);
    expect(terminated.status).toBe("terminated");
    const refused = await cli(["sessions", "send", session.id, "anyone there?"]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("the session is terminated");
  });

  it("logs --follow streams new events live until interrupted", async () => {
    await loggedIn();
    const session = await json<{ id: string }>(["sessions", "new", "--agent", "cli-demo"]);
    const follow = spawnCli(["--json", "sessions", "logs", session.id, "--follow"]);
    await waitFor("the first events", () => (follow.stdout().includes('"seq":1') ? true : undefined));
    expect((await cli(["sessions", "send", session.id, "live please"])).code).toBe(0);
    await waitFor("the answer", () => (events(jsonLines(follow.stdout())).some((line) => line.type === "assistant_message") ? true : undefined));
    // Deltas the server buffered while reading the log are sent after the events of that read, so
    // they may come after the answer they belong to.
    await waitFor("the live text", () => (jsonLines(follow.stdout()).some((line) => line.kind === "delta") ? true : undefined));
    follow.child.kill("SIGINT");
    const result = await follow.done;
    expect(result.code).toBe(0);
    const lines = jsonLines(result.stdout);
    expect(lines.some((line) => line.kind === "delta")).toBe(true);
    expect(events(lines).map((line) => line.seq)).toEqual(events(lines).map((_, index) => index + 1));
  });

  it("attach sends what is typed, and resumes after the server restarts without gaps or duplicates", async () => {
    await loggedIn();
    const session = await json<{ id: string }>(["sessions", "new", "--agent", "cli-demo", "--wait"]);
    const attach = spawnCli(["--json", "attach", session.id, "--history", "all"]);
    const answers = () => events(jsonLines(attach.stdout())).filter((line) => line.type === "assistant_message").map((line) => String(line.payload.text));

    attach.child.stdin.write("before the restart\n");
    await waitFor("the first answer", () => (answers().length === 1 ? true : undefined));
    expect(answers()[0]).toContain('You said: "before the restart"');

    // A second attach, on a key revoked while it is connected: after the restart it must stop with
    // exit 3 instead of retrying forever.
    const api = createBerthClient({ url: url(), apiKey: KEY });
    const revocable = await api.apiKeys.create.mutate({ name: "cli-revoked" });
    const doomed = spawnCli(["--json", "attach", session.id], { BERTH_URL: url(), BERTH_API_KEY: revocable.key });
    await waitFor("the doomed attach to print", () => (doomed.stdout().includes('"seq":') ? true : undefined));
    await api.apiKeys.revoke.mutate({ keyId: revocable.id });

    await stopServer();
    await waitFor("attach to notice", () => (attach.stderr().includes("connection lost") ? true : undefined));
    // Typed while the server is down: sent once it is back.
    attach.child.stdin.write("run: echo typed-during-the-outage\n");
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    await startServer();
    await waitFor("the second answer", () => (answers().length === 2 ? true : undefined), 30_000);
    expect(answers()[1]).toContain("typed-during-the-outage");
    expect(attach.stderr()).toMatch(/reconnected; resuming after #\d+/);
    const refused = await doomed.done;
    expect(refused.code).toBe(3);
    expect(refused.stderr).toContain("invalid or revoked API key");
    expect(refused.stdout + refused.stderr).not.toContain(revocable.key);

    attach.child.stdin.write("after the restart\n");
    await waitFor("the third answer", () => (answers().length === 3 ? true : undefined), 30_000);
    expect(answers()[2]).toContain('You said: "after the restart"');
    attach.child.stdin.end();
    const result = await attach.done;
    expect(result.code, result.stderr).toBe(0);

    // Every stored event printed exactly once, in order: the same as the log.
    const printed = events(jsonLines(result.stdout));
    expect(printed.map((line) => line.seq)).toEqual(printed.map((_, index) => index + 1));
    const stored = events(jsonLines((await cli(["--json", "sessions", "logs", session.id])).stdout));
    expect(printed).toEqual(stored.map(({ kind, seq, type, payload }) => ({ kind, seq, type, payload, createdAt: expect.any(String) })));
    expect(printed.filter((line) => line.type === "user_message").map((line) => line.payload.text)).toEqual(["before the restart", "run: echo typed-during-the-outage", "after the restart"]);
  });

  it("attach prints in human form: recent history, streamed answers, each event with its seq", async () => {
    await loggedIn();
    const session = await json<{ id: string }>(["sessions", "new", "--agent", "cli-demo", "--wait"]);
    const attach = spawnCli(["attach", session.id, "--history", "1"]);
    attach.child.stdin.end("run: echo human\n");
    const result = await attach.done;
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain(`Attached to session ${session.id}`);
    expect(result.stdout).not.toContain("#1\n");
    expect(result.stdout).toMatch(/you › run: echo human {2}#3/);
    expect(result.stdout).toMatch(/⚙ bash \$ echo human {2}#5/);
    expect(result.stdout).toMatch(/↳ exit 0 {2}#6\n {2}human\n/);
    expect(result.stdout).toMatch(/assistant › The command finished\. Its output:\n[\s\S]*human {2}#7/);
  });
});
