/**
 * Load test: `npm run build && npm run load [-- --sessions 50 --messages 10 --interval-ms 1000 --max-seconds 240]`.
 *
 * The built server (a snapshot of build/, so a concurrent `npm run build` cannot pull it from under
 * the run) on a fresh database, with real jails (warm pool off unless --warm-pool), pointed at the
 * scripted test gateway running in this process. N sessions each send M messages, one per interval
 * (random start offset). The gateway answers every user message with one `bash` tool call
 * (`echo <tag>; ls /workspace | wc -l`) and every tool result with a short text, so each turn is two
 * model calls and one command in the session's sandbox. Each session is also followed over SSE
 * (unless --no-follow).
 *
 * Prints, and writes as JSON to --report: message-accept latency, turn latency (turns.created_at to
 * finished_at), events/s, CPU and RSS per sandbox (host /proc of each jail and its descendants),
 * platform and Postgres CPU/RSS, Postgres connections in use, reconnects and errors. Then checks the
 * event log of every session (seqs 1..n, every acknowledged message stored once and answered once,
 * every turn finished, every tool call with exactly one result, follow streams gap-free) and exits 1
 * when any check fails. Bounded in count (--sessions, --messages) and time (--max-seconds); 127.0.0.1 only.
 *
 * Database: an embedded Postgres in a temporary directory, or, when DATABASE_URL is set, a fresh
 * database `berth_load_<random>` on that server, dropped at the end. The server inherits this
 * process's environment, so `BERTH_WORKER_CONCURRENCY=32 npm run load` tries another setting.
 */
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import type postgres from "postgres";
import { connectPostgres } from "../db/postgres-url";
import { migrateDatabase } from "../db/migrate";
import { createBerthClient, TRPCClientError, type BerthClient } from "../server/client";
import { startTestGateway, type RecordedRequest, type TestGateway, type TestGatewayStep } from "../tests/helpers/test-gateway";
import {
  createCleanups,
  errorText,
  makeTempRoot,
  ms,
  percentile,
  prepareDatabase,
  rate,
  secs,
  serverWarnings,
  sleep,
  startServer,
  waitUntil,
  type RunningServer,
} from "./lib/bench";

// ---------------------------------------------------------------------------------------------- options

const { values } = parseArgs({
  options: {
    sessions: { type: "string", default: "50" },
    messages: { type: "string", default: "10" },
    "interval-ms": { type: "string", default: "1000" },
    "max-seconds": { type: "string", default: "240" },
    "sample-ms": { type: "string", default: "1000" },
    "model-delay-ms": { type: "string", default: "0" },
    "warm-pool": { type: "string", default: "0" },
    "no-follow": { type: "boolean", default: false },
    report: { type: "string", default: "test-artifacts/load-report.json" },
  },
});

function wholeNumber(name: string, min: number, max: number): number {
  const value = Number(values[name as keyof typeof values]);
  if (!Number.isInteger(value) || value < min || value > max) throw new Error(`--${name} must be a whole number from ${min} to ${max}`);
  return value;
}
const sessionCount = wholeNumber("sessions", 1, 500);
const messageCount = wholeNumber("messages", 1, 1000);
const intervalMs = wholeNumber("interval-ms", 0, 60_000);
const maxSeconds = wholeNumber("max-seconds", 10, 3600);
const sampleMs = wholeNumber("sample-ms", 200, 60_000);
const modelDelayMs = wholeNumber("model-delay-ms", 0, 60_000);
const warmPool = wholeNumber("warm-pool", 0, 100);
const follow = !values["no-follow"];
const reportPath = path.resolve(values.report!);

const ADMIN_API_KEY = "berth_load_admin_key_0123456789abcdefghij";
const GATEWAY_KEY = "sk-berth-load";
const MODEL = "load-model";
/** The application_name of this script's own connections, left out of the connection counts. */
const MONITOR = "berth-load-monitor";
const READY_TIMEOUT_MS = 120_000;
const FOLLOW_CATCH_UP_MS = 15_000;
const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

const runStarted = Date.now();
const deadline = runStarted + maxSeconds * 1000;
const remaining = () => deadline - Date.now();
/** Time kept back from sending for the drain, and from draining for shutdown, the checks and the report. */
const SEND_RESERVE_MS = Math.min(20_000, maxSeconds * 250);
const END_RESERVE_MS = Math.min(15_000, maxSeconds * 200);
let timeLimitHit: string | null = null;

// ---------------------------------------------------------------------------------------------- clean-up and the build

const cleanups = createCleanups();
const tempRoot = makeTempRoot("berth-load-", cleanups);

// Whatever happens, the process ends: clean-up gets a minute past the time budget.
setTimeout(() => {
  console.error(`\nload: still running ${maxSeconds + 60} s after the start: cleaning up and exiting`);
  void cleanups.run().finally(() => process.exit(2));
}, (maxSeconds + 60) * 1000).unref();

const BUILD_FILES = ["main.js", "sandboxd.js", "server/index.js"];

/**
 * Copies build/ into the temporary folder (beside a node_modules link and a package.json saying ESM),
 * so the server and its jails run one consistent build even if someone rebuilds build/ meanwhile. Waits
 * for a build that exists and has not changed for two seconds; retries a copy that raced a rebuild.
 */
async function snapshotBuild(attempt: number): Promise<string> {
  const source = path.resolve("build");
  const target = path.join(tempRoot, `build-${attempt}`);
  const stamp = () => BUILD_FILES.map((file) => statSync(path.join(source, file)).mtimeMs).join(",");
  let lastError = "";
  for (let copy = 0; copy < 10; copy++) {
    try {
      await waitUntil("build/ to exist and stay unchanged for 2 s (run `npm run build`)", Math.max(5_000, Math.min(120_000, remaining())), 500, async () => {
        if (!BUILD_FILES.every((file) => existsSync(path.join(source, file)))) return false;
        const before = stamp();
        await sleep(2_000);
        return BUILD_FILES.every((file) => existsSync(path.join(source, file))) && stamp() === before;
      });
      rmSync(target, { recursive: true, force: true });
      const before = stamp();
      cpSync(source, target, { recursive: true });
      if (stamp() !== before || !BUILD_FILES.every((file) => existsSync(path.join(target, file)))) throw new Error("build/ changed during the copy");
      writeFileSync(path.join(target, "package.json"), JSON.stringify({ type: "module" }));
      if (!existsSync(path.join(tempRoot, "node_modules"))) symlinkSync(path.resolve("node_modules"), path.join(tempRoot, "node_modules"), "dir");
      return path.join(target, "main.js");
    } catch (error) {
      lastError = errorText(error);
      if (lastError.startsWith("timed out")) break;
      await sleep(1_000);
    }
  }
  throw new Error(`could not take a snapshot of build/: ${lastError}`);
}

// ---------------------------------------------------------------------------------------------- the scripted model

/** `load <session>.<message>` in the text of every message sent; the tool call and the answer repeat it. */
const tagOf = (session: number, message: number) => `${session}.${message}`;
const messageText = (session: number, message: number) => `load ${tagOf(session, message)}: run one command and tell me what it printed`;
const TAG = /load (\d+\.\d+):/;

type ChatMessage = { role: string; content?: unknown; tool_call_id?: string };

/** One reply per request, from the conversation: a user message gets a bash call, a tool result a short answer. */
function replyTo(request: RecordedRequest): TestGatewayStep {
  const messages = ((request.body as { messages?: ChatMessage[] }).messages ?? []) as ChatMessage[];
  const last = messages[messages.length - 1];
  const lastUser = [...messages].reverse().find((message) => message.role === "user");
  const tag = typeof lastUser?.content === "string" ? (TAG.exec(lastUser.content)?.[1] ?? "unknown") : "unknown";
  const usage = { prompt: 40 + messages.length * 20, completion: 12, cost: 0.00001 };
  const delay = modelDelayMs > 0 ? { delayMs: modelDelayMs } : {};
  if (last?.role === "user") {
    return { toolCalls: [{ name: "bash", arguments: { command: `echo ${tag}; ls /workspace | wc -l` } }], usage, ...delay };
  }
  if (last?.role === "tool") {
    const output = typeof last.content === "string" ? last.content.split("\n")[0] : "";
    return { text: `done ${tag}: ${output}`, chunks: 2, usage, ...delay };
  }
  return { text: `unexpected conversation end (${last?.role ?? "empty"})`, usage };
}

async function startLoadGateway(): Promise<TestGateway> {
  const gateway = await startTestGateway({ apiKey: GATEWAY_KEY, models: [MODEL] });
  // Entries are consumed one per request: each one queues its successor before answering.
  const entry = (request: RecordedRequest): TestGatewayStep => {
    gateway.script(entry);
    return replyTo(request);
  };
  gateway.script(entry);
  cleanups.push("test gateway", () => gateway.close());
  return gateway;
}

// ---------------------------------------------------------------------------------------------- /proc sampling

type ProcEntry = { pid: number; ppid: number; ticks: number; ownTicks: number };

/** Every process on the host: parent and CPU ticks (utime+stime, and with reaped children's cutime+cstime). */
function readProcTable(): Map<number, ProcEntry> {
  const table = new Map<number, ProcEntry>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      // pid (comm) state ppid ...: comm may hold spaces and parentheses; fields restart after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const utime = Number(fields[11]);
      const stime = Number(fields[12]);
      const cutime = Number(fields[13]);
      const cstime = Number(fields[14]);
      table.set(Number(name), { pid: Number(name), ppid: Number(fields[1]), ownTicks: utime + stime, ticks: utime + stime + cutime + cstime });
    } catch {
      // The process ended while we looked.
    }
  }
  return table;
}

function descendants(table: Map<number, ProcEntry>, root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of table.values()) {
    const list = children.get(entry.ppid);
    if (list) list.push(entry.pid);
    else children.set(entry.ppid, [entry.pid]);
  }
  const found: number[] = [];
  const stack = table.has(root) ? [root] : [];
  while (stack.length > 0) {
    const pid = stack.pop()!;
    found.push(pid);
    stack.push(...(children.get(pid) ?? []));
  }
  return found;
}

/** Resident and proportional set size in kB (0 when the process is gone or unreadable). */
function memoryOf(pid: number): { rssKb: number; pssKb: number } {
  let rssKb = 0;
  let pssKb = 0;
  try {
    rssKb = Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);
  } catch {
    // gone
  }
  try {
    pssKb = Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"))?.[1] ?? 0);
  } catch {
    // gone, or no smaps_rollup
  }
  return { rssKb, pssKb };
}

type TreeReading = { processes: number; ticks: number; rssKb: number; pssKb: number };

function readTree(table: Map<number, ProcEntry>, root: number): TreeReading | null {
  const pids = descendants(table, root);
  if (pids.length === 0) return null;
  let ticks = 0;
  let rssKb = 0;
  let pssKb = 0;
  for (const pid of pids) {
    const entry = table.get(pid)!;
    // A tree's CPU: live processes' own time plus what its members reaped from ended children.
    ticks += entry.ticks;
    const memory = memoryOf(pid);
    rssKb += memory.rssKb;
    pssKb += memory.pssKb;
  }
  return { processes: pids.length, ticks, rssKb, pssKb };
}

function machineTicks(): { busy: number; total: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0]!;
  const numbers = line.trim().split(/\s+/).slice(1).map(Number);
  const total = numbers.slice(0, 8).reduce((sum, value) => sum + value, 0);
  const idle = numbers[3]! + (numbers[4] ?? 0);
  return { busy: total - idle, total };
}

type SandboxKey = string; // `${sessionIndex}#${generation}`
type SandboxSeries = { sessionIndex: number; sessionId: string; generation: number; hostPid: number; readings: Array<{ at: number; reading: TreeReading }> };
type Sample = {
  atMs: number;
  phase: string;
  sandboxes: number;
  sandboxProcesses: number;
  sandboxRssMb: number;
  sandboxPssMb: number;
  sandboxCpuPercent: number | null;
  serverRssMb: number | null;
  serverCpuPercent: number | null;
  postgresRssMb: number | null;
  postgresPssMb: number | null;
  postgresCpuPercent: number | null;
  loadClientCpuPercent: number | null;
  machineCpuPercent: number | null;
  pgConnections: number;
  pgConnectionsActive: number;
  pgConnectionsByApplication: Record<string, number>;
  openTurns: number;
  /** Platform + Postgres (embedded only) + sandboxes + this process: the CPU this test accounts for. */
  testCpuPercent: number | null;
};

class Sampler {
  readonly sandboxes = new Map<SandboxKey, SandboxSeries>();
  readonly samples: Sample[] = [];
  readonly server: Array<{ at: number; reading: TreeReading }> = [];
  readonly postgresTree: Array<{ at: number; reading: TreeReading }> = [];
  private previous: { at: number; sandboxTicks: Map<SandboxKey, number>; server: number | null; postgres: number | null; client: number; machine: { busy: number; total: number } } | null = null;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  phase = "setup";

  constructor(
    private readonly sql: postgres.Sql,
    private readonly serverPid: number,
    private readonly postgresPid: number | null,
    private readonly sessionIndex: Map<string, number>,
  ) {}

  start() {
    const tick = () => {
      this.running = this.sample().catch((error: unknown) => console.error(`sampler: ${errorText(error)}`));
      void this.running.finally(() => {
        if (this.timer !== null) this.timer = setTimeout(tick, sampleMs);
      });
    };
    this.timer = setTimeout(tick, 0);
  }

  async stop() {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.running;
  }

  async sample(): Promise<void> {
    const at = performance.now();
    // The current sandbox of every session (a reconnect makes a new generation with a new jail).
    const rows = await this.sql<{ session_id: string; generation: number; host_pid: number | null }[]>`
      select distinct on (session_id) session_id, generation, host_pid from sandboxes
      where ended_at is null and host_pid is not null order by session_id, generation desc`;
    const [connections] = await this.sql<{ total: number; active: number; by_app: Record<string, number> | null }[]>`
      select count(*)::int as total, (count(*) filter (where state = 'active'))::int as active,
        (select jsonb_object_agg(app, n) from (select coalesce(nullif(application_name, ''), '(none)') as app, count(*)::int as n
          from pg_stat_activity where datname = current_database() and application_name is distinct from ${MONITOR} group by 1) apps) as by_app
      from pg_stat_activity where datname = current_database() and application_name is distinct from ${MONITOR}`;
    const [open] = await this.sql<{ open: number }[]>`select count(*)::int as open from turns where status in ('queued', 'running')`;

    const table = readProcTable();
    const sandboxTicks = new Map<SandboxKey, number>();
    let sandboxRssKb = 0;
    let sandboxPssKb = 0;
    let sandboxProcesses = 0;
    let sandboxes = 0;
    let sandboxCpuTicks = 0;
    let comparable = 0;
    for (const row of rows) {
      const sessionIndex = this.sessionIndex.get(row.session_id);
      if (sessionIndex === undefined) continue;
      const key = `${sessionIndex}#${row.generation}`;
      const reading = readTree(table, row.host_pid!);
      if (!reading) continue;
      let series = this.sandboxes.get(key);
      if (!series) {
        series = { sessionIndex, sessionId: row.session_id, generation: row.generation, hostPid: row.host_pid!, readings: [] };
        this.sandboxes.set(key, series);
      }
      series.readings.push({ at, reading });
      sandboxes++;
      sandboxProcesses += reading.processes;
      sandboxRssKb += reading.rssKb;
      sandboxPssKb += reading.pssKb;
      sandboxTicks.set(key, reading.ticks);
      const before = this.previous?.sandboxTicks.get(key);
      if (before !== undefined) {
        sandboxCpuTicks += reading.ticks - before;
        comparable++;
      }
    }
    // The platform process alone (its children are the jails); Postgres with all its backends.
    const serverOwn = table.get(this.serverPid)?.ownTicks ?? null;
    const serverMemory = serverOwn !== null ? memoryOf(this.serverPid) : null;
    const pg = this.postgresPid !== null ? readTree(table, this.postgresPid) : null;
    if (serverMemory && serverOwn !== null) this.server.push({ at, reading: { processes: 1, ticks: serverOwn, ...serverMemory } });
    if (pg) this.postgresTree.push({ at, reading: pg });
    const clientUsage = process.cpuUsage();
    const clientTicks = ((clientUsage.user + clientUsage.system) / 1e6) * CLK_TCK;
    const machine = machineTicks();

    const previous = this.previous;
    const seconds = previous ? (at - previous.at) / 1000 : 0;
    const percent = (now: number | null, before: number | null | undefined) =>
      previous && now !== null && before !== null && before !== undefined && seconds > 0 ? ((now - before) / CLK_TCK / seconds) * 100 : null;
    const parts = {
      sandbox: previous && comparable > 0 && seconds > 0 ? (sandboxCpuTicks / CLK_TCK / seconds) * 100 : null,
      server: percent(serverOwn, previous?.server),
      postgres: percent(pg?.ticks ?? null, previous?.postgres),
      client: percent(clientTicks, previous?.client),
    };
    const accounted = Object.values(parts).filter((value): value is number => value !== null);
    this.samples.push({
      atMs: Math.round(Date.now() - runStarted),
      phase: this.phase,
      sandboxes,
      sandboxProcesses,
      sandboxRssMb: round(sandboxRssKb / 1024),
      sandboxPssMb: round(sandboxPssKb / 1024),
      sandboxCpuPercent: roundOrNull(parts.sandbox),
      serverRssMb: serverMemory ? round(serverMemory.rssKb / 1024) : null,
      serverCpuPercent: roundOrNull(parts.server),
      postgresRssMb: pg ? round(pg.rssKb / 1024) : null,
      postgresPssMb: pg ? round(pg.pssKb / 1024) : null,
      postgresCpuPercent: roundOrNull(parts.postgres),
      loadClientCpuPercent: roundOrNull(parts.client),
      machineCpuPercent: previous && machine.total > previous.machine.total ? round(((machine.busy - previous.machine.busy) / (machine.total - previous.machine.total)) * 100 * os.cpus().length) : null,
      pgConnections: connections!.total,
      pgConnectionsActive: connections!.active,
      pgConnectionsByApplication: connections!.by_app ?? {},
      openTurns: open!.open,
      testCpuPercent: previous && accounted.length > 0 ? round(accounted.reduce((sum, value) => sum + value, 0)) : null,
    });
    this.previous = { at, sandboxTicks, server: serverOwn, postgres: pg?.ticks ?? null, client: clientTicks, machine };
  }
}

const round = (value: number, digits = 1) => Math.round(value * 10 ** digits) / 10 ** digits;
const roundOrNull = (value: number | null) => (value === null ? null : round(value));

/** Average and maximum of a series' CPU % between consecutive readings, and of its memory. */
function seriesFigures(readings: Array<{ at: number; reading: TreeReading }>) {
  const cpu: number[] = [];
  for (let index = 1; index < readings.length; index++) {
    const seconds = (readings[index]!.at - readings[index - 1]!.at) / 1000;
    if (seconds > 0) cpu.push(((readings[index]!.reading.ticks - readings[index - 1]!.reading.ticks) / CLK_TCK / seconds) * 100);
  }
  const first = readings[0];
  const last = readings[readings.length - 1];
  const span = first && last ? (last.at - first.at) / 1000 : 0;
  const rss = readings.map((item) => item.reading.rssKb / 1024);
  const pss = readings.map((item) => item.reading.pssKb / 1024);
  const processes = readings.map((item) => item.reading.processes);
  return {
    samples: readings.length,
    cpuPercentAvg: span > 0 ? round(((last!.reading.ticks - first!.reading.ticks) / CLK_TCK / span) * 100) : null,
    cpuPercentMax: cpu.length ? round(Math.max(...cpu)) : null,
    cpuSeconds: first && last ? round((last.reading.ticks - first.reading.ticks) / CLK_TCK, 2) : null,
    rssMbAvg: rss.length ? round(avg(rss)) : null,
    rssMbMax: rss.length ? round(Math.max(...rss)) : null,
    pssMbAvg: pss.length ? round(avg(pss)) : null,
    pssMbMax: pss.length ? round(Math.max(...pss)) : null,
    processesMax: processes.length ? Math.max(...processes) : null,
  };
}

const avg = (list: number[]) => (list.length ? list.reduce((sum, value) => sum + value, 0) / list.length : Number.NaN);
const maxOf = (list: number[]) => (list.length ? Math.max(...list) : Number.NaN);
const numbers = (list: Array<number | null>) => list.filter((value): value is number => value !== null && Number.isFinite(value));

// ---------------------------------------------------------------------------------------------- the run

type Ack = { session: number; message: number; seq: number; turnId: string; queued: boolean; duplicate: boolean; millis: number };
type SendFailure = { session: number; message: number; code: string; message_: string; millis: number };
type FollowState = {
  received: Array<{ seq: number; type: string; lagMs: number | null }>;
  connectedAt: number | null;
  deltas: number;
  errors: string[];
  reconnects: number;
  started: boolean;
  stop: () => void;
};

function failureCode(error: unknown): string {
  if (error instanceof TRPCClientError) {
    const code = (error.data as { code?: string } | undefined)?.code;
    if (code) return code;
    return error.cause ? `NETWORK (${errorText(error.cause)})` : "CLIENT";
  }
  return "UNKNOWN";
}

async function dbNow(sql: postgres.Sql): Promise<Date> {
  const [row] = await sql<{ now: Date }[]>`select clock_timestamp() as now`;
  return row!.now;
}

async function startBerth(databaseUrl: string, gateway: TestGateway): Promise<RunningServer> {
  let lastError: unknown;
  for (let attempt = 1; attempt <= 3; attempt++) {
    if (attempt > 1 && remaining() < 15_000) break;
    const serverScript = await snapshotBuild(attempt);
    try {
      return await startServer({
        serverScript,
        databaseUrl,
        dataDir: path.join(tempRoot, `server-data-${attempt}`),
        adminApiKey: ADMIN_API_KEY,
        cleanups,
        readyTimeoutMs: Math.min(60_000, remaining()),
        env: {
          LITELLM_BASE_URL: gateway.url,
          LITELLM_API_KEY: GATEWAY_KEY,
          BERTH_WARM_POOL_SIZE: String(warmPool),
          LOG_LEVEL: "warn",
        },
      });
    } catch (error) {
      lastError = error;
      console.error(`server start (attempt ${attempt}) failed: ${errorText(error)}${attempt < 3 ? "; retrying with a fresh snapshot of build/" : ""}`);
    }
  }
  throw new Error(`the server did not start: ${errorText(lastError)}`);
}

async function main(): Promise<boolean> {
  console.log(
    `Load test: ${sessionCount} sessions x ${messageCount} messages, one per ${intervalMs} ms per session (random start offset), ` +
      `each turn = 2 model calls + 1 bash command in the session's sandbox; warm pool ${warmPool}; follow ${follow ? "on" : "off"}; ` +
      `at most ${maxSeconds} s; ${os.cpus().length} CPUs, ${process.release.name} ${process.version}`,
  );
  const database = await prepareDatabase({ tempRoot, namePrefix: "berth_load_", cleanups });
  const migrateStarted = performance.now();
  await migrateDatabase(database.url);
  console.log(`database: ${database.description}; migrated in ${secs(performance.now() - migrateStarted)}`);
  const sql = connectPostgres(database.url, { max: 2, onnotice: () => {}, connection: { application_name: MONITOR } });
  cleanups.push("monitor connection", () => sql.end({ timeout: 5 }));

  const gateway = await startLoadGateway();
  const serverStarted = performance.now();
  const server = await startBerth(database.url, gateway);
  console.log(`server up (snapshot of build/main.js, pid ${server.child.pid}) at ${server.url} in ${secs(performance.now() - serverStarted)}; gateway ${gateway.url}`);

  // ------------------------------------------------------------------ sessions
  const admin = createBerthClient({ url: server.url, apiKey: ADMIN_API_KEY });
  const agent = await admin.agents.create.mutate({ name: `load-${Date.now().toString(36)}`, model: MODEL, systemPrompt: "You are a load-test agent." });
  // One client per session: httpBatchLink would otherwise merge concurrent calls of different sessions.
  const clients: BerthClient[] = Array.from({ length: sessionCount }, () => createBerthClient({ url: server.url, apiKey: ADMIN_API_KEY }));
  const sessionIds = await Promise.all(clients.map(async (client, index) => (await client.sessions.create.mutate({ agentId: agent.id, title: `load ${index}` })).id));
  const sessionIndex = new Map(sessionIds.map((id, index) => [id, index]));
  const sampler = new Sampler(sql, server.child.pid!, database.embedded?.pid ?? null, sessionIndex);
  sampler.start();
  const createdAt = performance.now();

  const hostPids: Array<number | null> = Array.from({ length: sessionCount }, () => null);
  const pending = new Set(sessionIds.map((_, index) => index));
  await waitUntil(`${sessionCount} sessions to be ready`, Math.min(READY_TIMEOUT_MS, Math.max(1_000, remaining() - SEND_RESERVE_MS)), 250, async () => {
    await Promise.all(
      [...pending].map(async (index) => {
        const session = await clients[index]!.sessions.get.query({ sessionId: sessionIds[index]! });
        if (session.status === "failed" || session.status === "terminated") throw new Error(`session ${index} is ${session.status}: ${session.statusReason ?? "no reason"}`);
        if (session.status === "ready") {
          hostPids[index] = session.sandbox?.hostPid ?? null;
          pending.delete(index);
        }
      }),
    );
    return pending.size === 0;
  }).catch((error: unknown) => {
    throw new Error(`${errorText(error)} (${sessionCount - pending.size} of ${sessionCount} ready)`);
  });
  const readyMillis = performance.now() - createdAt;
  const withPid = hostPids.filter((pid) => pid !== null).length;
  console.log(`${sessionCount} sessions ready in ${secs(readyMillis)} (${warmPool === 0 ? "cold sandboxes, warm pool off" : `warm pool ${warmPool}`}); ${withPid} report a jail host PID`);

  // ------------------------------------------------------------------ followers
  const follows: FollowState[] = [];
  if (follow) {
    for (const [index, sessionId] of sessionIds.entries()) {
      const state: FollowState = { received: [], connectedAt: null, deltas: 0, errors: [], reconnects: 0, started: false, stop: () => {} };
      const subscription = clients[index]!.sessions.follow.subscribe(
        { sessionId },
        {
          onData(tracked) {
            const item = tracked.data;
            if (item.kind !== "event") {
              state.deltas++;
              return;
            }
            // Delivery lag of live events only: those stored before the stream connected are history.
            const createdAt = new Date(item.event.createdAt).getTime();
            state.received.push({ seq: item.event.seq, type: item.event.type, lagMs: state.connectedAt !== null && createdAt >= state.connectedAt ? Date.now() - createdAt : null });
          },
          onError(error) {
            state.errors.push(errorText(error));
          },
          onConnectionStateChange(connection) {
            if (connection.state === "pending" && !state.started) {
              state.started = true;
              state.connectedAt = Date.now();
            }
            if (connection.state === "connecting" && state.started) state.reconnects++;
          },
        },
      );
      state.stop = () => subscription.unsubscribe();
      follows.push(state);
    }
    cleanups.push("followers", async () => follows.forEach((state) => state.stop()));
  }

  // ------------------------------------------------------------------ send
  sampler.phase = "send";
  const dbSendStart = await dbNow(sql);
  const acks: Ack[] = [];
  const failures: SendFailure[] = [];
  let notSent = 0;
  const sendStarted = performance.now();
  await Promise.all(
    sessionIds.map(async (sessionId, index) => {
      const client = clients[index]!;
      if (intervalMs > 0) await sleep(Math.random() * intervalMs);
      let next = performance.now();
      for (let message = 0; message < messageCount; message++) {
        if (message > 0 && intervalMs > 0) {
          next += intervalMs;
          const wait = next - performance.now();
          if (wait > 0) await sleep(wait);
        }
        if (remaining() < SEND_RESERVE_MS) {
          timeLimitHit ??= "the send phase ran into --max-seconds";
          notSent += messageCount - message;
          return;
        }
        const started = performance.now();
        try {
          const accepted = await client.sessions.send.mutate({ sessionId, text: messageText(index, message) });
          acks.push({ session: index, message, seq: accepted.seq, turnId: accepted.turnId, queued: accepted.queued, duplicate: accepted.duplicate, millis: performance.now() - started });
        } catch (error) {
          failures.push({ session: index, message, code: failureCode(error), message_: errorText(error), millis: performance.now() - started });
        }
      }
    }),
  );
  const lastSendAt = performance.now();
  const sendWallMillis = lastSendAt - sendStarted;
  console.log(`${acks.length} messages accepted in ${secs(sendWallMillis)} (${failures.length} failed, ${notSent} not sent)`);

  // ------------------------------------------------------------------ drain
  sampler.phase = "drain";
  let open = -1;
  await waitUntil("every turn to finish", Math.max(1_000, remaining() - END_RESERVE_MS), 100, async () => {
    const [row] = await sql<{ open: number }[]>`select count(*)::int as open from turns where status in ('queued', 'running')`;
    open = row!.open;
    return open === 0;
  }).catch((error: unknown) => {
    timeLimitHit ??= `${errorText(error)} (${open} turns still queued or running)`;
  });
  const drainedAt = performance.now();
  const dbDrainEnd = await dbNow(sql);
  console.log(open === 0 ? `all turns finished ${secs(drainedAt - lastSendAt)} after the last send` : `stopped waiting: ${open} turns still open`);

  // Followers catch up with the stored log, then stop.
  let followCaughtUp = true;
  let followTargets = new Map<string, number>();
  if (follow) {
    const lastSeqs = new Map((await sql<{ id: string; last_seq: number }[]>`select id, last_seq::int from sessions`).map((row) => [row.id, row.last_seq]));
    followTargets = lastSeqs;
    await waitUntil("followers to receive every stored event", Math.max(1_000, Math.min(FOLLOW_CATCH_UP_MS, remaining() - END_RESERVE_MS / 2)), 100, async () =>
      sessionIds.every((id, index) => (follows[index]!.received.at(-1)?.seq ?? 0) >= (lastSeqs.get(id) ?? 0)),
    ).catch(() => {
      followCaughtUp = false;
    });
    follows.forEach((state) => state.stop());
  }
  sampler.phase = "end";
  await sampler.stop();
  await sampler.sample().catch((error: unknown) => console.error(`sampler: ${errorText(error)}`));

  const shutdown = await server.stop();
  console.log(`server stopped (${shutdown.signal ?? `exit ${shutdown.exitCode}`}) in ${secs(shutdown.millis)}`);

  // ------------------------------------------------------------------ figures from SQL
  const turnStatus = await sql<{ status: string; count: number }[]>`select status::text as status, count(*)::int as count from turns group by 1 order by 1`;
  const [turnLatency] = await sql<{ n: number; avg: number; p50: number; p95: number; p99: number; max: number; queue_avg: number; queue_p95: number; run_avg: number; run_p50: number; run_p95: number }[]>`
    select count(*)::int as n,
      avg(extract(epoch from finished_at - created_at) * 1000)::float8 as avg,
      percentile_cont(0.5) within group (order by extract(epoch from finished_at - created_at) * 1000)::float8 as p50,
      percentile_cont(0.95) within group (order by extract(epoch from finished_at - created_at) * 1000)::float8 as p95,
      percentile_cont(0.99) within group (order by extract(epoch from finished_at - created_at) * 1000)::float8 as p99,
      max(extract(epoch from finished_at - created_at) * 1000)::float8 as max,
      avg(extract(epoch from started_at - created_at) * 1000)::float8 as queue_avg,
      percentile_cont(0.95) within group (order by extract(epoch from started_at - created_at) * 1000)::float8 as queue_p95,
      avg(extract(epoch from finished_at - started_at) * 1000)::float8 as run_avg,
      percentile_cont(0.5) within group (order by extract(epoch from finished_at - started_at) * 1000)::float8 as run_p50,
      percentile_cont(0.95) within group (order by extract(epoch from finished_at - started_at) * 1000)::float8 as run_p95
    from turns where finished_at is not null`;
  const [eventFigures] = await sql<{ during: number; total: number }[]>`
    select (count(*) filter (where created_at >= ${dbSendStart} and created_at <= ${dbDrainEnd}))::int as during, count(*)::int as total from session_events`;
  const perSecond = await sql<{ second: Date; n: number }[]>`
    select date_trunc('second', created_at) as second, count(*)::int as n from session_events
    where created_at >= ${dbSendStart} and created_at <= ${dbDrainEnd} group by 1 order by 1`;
  const eventTypes = await sql<{ type: string; n: number }[]>`select type::text as type, count(*)::int as n from session_events group by 1 order by 1`;
  const [reconnects] = await sql<{ n: number; sessions: number }[]>`
    select count(*)::int as n, count(distinct session_id)::int as sessions from session_events where type = 'status' and payload->>'to' = 'reconnecting'`;
  const errorEvents = await sql<{ message: string; n: number }[]>`
    select coalesce(payload->>'message', payload::text) as message, count(*)::int as n from session_events where type = 'error' group by 1 order by 2 desc`;
  const failedTurns = await sql<{ error: string; n: number }[]>`
    select coalesce(error, '(no error text)') as error, count(*)::int as n from turns where status <> 'completed' and finished_at is not null group by 1 order by 2 desc`;
  const sandboxStarts = await sql<{ ms: number; from_warm_pool: boolean; generation: number }[]>`
    select extract(epoch from ready_at - created_at)::float8 * 1000 as ms, from_warm_pool, generation from sandboxes where ready_at is not null`;
  const sessionStatuses = await sql<{ status: string; n: number }[]>`select status::text as status, count(*)::int as n from sessions group by 1 order by 1`;
  const [usage] = await sql<{ prompt: number; completion: number; cost: string }[]>`
    select coalesce(sum(prompt_tokens), 0)::int as prompt, coalesce(sum(completion_tokens), 0)::int as completion, coalesce(sum(cost_usd), 0)::text as cost from sessions`;

  // ------------------------------------------------------------------ integrity
  type LogRow = { session_id: string; seq: number; type: string; payload: Record<string, unknown> };
  const log = await sql<LogRow[]>`select session_id, seq::int, type::text as type, payload from session_events order by session_id, seq`;
  const turnRows = await sql<{ id: string; session_id: string; user_seq: number; status: string; finished: boolean }[]>`
    select id, session_id, user_seq::int, status::text as status, finished_at is not null as finished from turns`;
  const sessionRows = await sql<{ id: string; last_seq: number }[]>`select id, last_seq::int from sessions`;
  const lastSeqOf = new Map(sessionRows.map((row) => [row.id, row.last_seq]));
  const bySession = new Map<string, LogRow[]>(sessionIds.map((id) => [id, []]));
  for (const row of log) bySession.get(row.session_id)?.push(row);

  const integrity = {
    sessions: sessionCount,
    events: log.length,
    seqGaps: 0,
    seqDuplicates: 0,
    seqBeyondLastSeq: 0,
    acknowledged: acks.length,
    lost: 0,
    duplicatedMessages: 0,
    duplicateAcks: acks.filter((ack) => ack.duplicate).length,
    presentThoughSendFailed: 0,
    turns: turnRows.length,
    turnsMissing: 0,
    turnsExtra: 0,
    turnsUnfinished: 0,
    turnsNotCompleted: 0,
    toolCalls: 0,
    toolResults: 0,
    toolCallsWithoutResult: 0,
    toolCallsWithSeveralResults: 0,
    orphanToolResults: 0,
    misroutedToolResults: 0,
    turnsWithoutExactlyOneToolCall: 0,
    answers: 0,
    unanswered: 0,
    answeredTwice: 0,
    followStreams: follows.length,
    followGaps: 0,
    followDuplicates: 0,
    followMismatched: 0,
    followIncomplete: 0,
    gatewayViolations: gateway.violations.length,
  };
  const turnById = new Map(turnRows.map((row) => [row.id, row]));
  const ackedTurnIds = new Set(acks.map((ack) => ack.turnId));
  for (const row of turnRows) {
    if (!row.finished) integrity.turnsUnfinished++;
    else if (row.status !== "completed") integrity.turnsNotCompleted++;
    if (!ackedTurnIds.has(row.id)) integrity.turnsExtra++;
  }
  for (const ack of acks) if (!turnById.has(ack.turnId)) integrity.turnsMissing++;

  for (const [index, sessionId] of sessionIds.entries()) {
    const events = bySession.get(sessionId)!;
    // Seqs: exactly 1..last_seq.
    const seen = new Set<number>();
    for (const event of events) {
      if (seen.has(event.seq)) integrity.seqDuplicates++;
      seen.add(event.seq);
    }
    const lastSeq = lastSeqOf.get(sessionId) ?? 0;
    for (let seq = 1; seq <= lastSeq; seq++) if (!seen.has(seq)) integrity.seqGaps++;
    integrity.seqBeyondLastSeq += [...seen].filter((seq) => seq > lastSeq || seq < 1).length;

    // Acknowledged messages: stored at their seq, once.
    const bySeq = new Map(events.map((event) => [event.seq, event]));
    const userTexts = new Map<string, number>();
    for (const event of events) if (event.type === "user_message") userTexts.set(String(event.payload.text), (userTexts.get(String(event.payload.text)) ?? 0) + 1);
    const sessionAcks = acks.filter((ack) => ack.session === index);
    for (const ack of sessionAcks) {
      const stored = bySeq.get(ack.seq);
      if (!stored || stored.type !== "user_message" || stored.payload.text !== messageText(index, ack.message)) integrity.lost++;
    }
    for (const count of userTexts.values()) if (count > 1) integrity.duplicatedMessages += count - 1;
    for (const failure of failures.filter((item) => item.session === index)) if (userTexts.has(messageText(index, failure.message))) integrity.presentThoughSendFailed++;

    // Tool calls and results: one result per call; the command ran for the message that asked for it.
    const calls = events.filter((event) => event.type === "tool_call");
    const results = events.filter((event) => event.type === "tool_result");
    integrity.toolCalls += calls.length;
    integrity.toolResults += results.length;
    const resultsByCall = new Map<string, LogRow[]>();
    for (const result of results) {
      const callId = String(result.payload.callId);
      resultsByCall.set(callId, [...(resultsByCall.get(callId) ?? []), result]);
    }
    const callIds = new Set(calls.map((call) => String(call.payload.id)));
    const callTags = new Map<string, number>();
    for (const call of calls) {
      const matching = resultsByCall.get(String(call.payload.id)) ?? [];
      if (matching.length === 0) integrity.toolCallsWithoutResult++;
      if (matching.length > 1) integrity.toolCallsWithSeveralResults++;
      const command = String((call.payload.input as { command?: string } | null)?.command ?? "");
      const tag = /^echo (\S+);/.exec(command)?.[1] ?? "?";
      callTags.set(tag, (callTags.get(tag) ?? 0) + 1);
      for (const result of matching) if (String(result.payload.output).split("\n")[0] !== tag || result.payload.isError === true) integrity.misroutedToolResults++;
    }
    for (const callId of resultsByCall.keys()) if (!callIds.has(callId)) integrity.orphanToolResults++;
    // Answers: every acknowledged message answered exactly once, after its own command.
    const answers = events.filter((event) => event.type === "assistant_message");
    integrity.answers += answers.length;
    const answerTags = new Map<string, number>();
    for (const answer of answers) {
      const tag = /^done (\S+):/.exec(String(answer.payload.text))?.[1] ?? "?";
      answerTags.set(tag, (answerTags.get(tag) ?? 0) + 1);
    }
    for (const ack of sessionAcks) {
      const tag = tagOf(index, ack.message);
      if ((callTags.get(tag) ?? 0) !== 1) integrity.turnsWithoutExactlyOneToolCall++;
      const answered = answerTags.get(tag) ?? 0;
      if (answered === 0) integrity.unanswered++;
      if (answered > 1) integrity.answeredTwice++;
    }

    // The follow stream: strictly 1, 2, 3… and the same events as the log.
    const stream = follows[index];
    if (stream) {
      let expected = 1;
      const streamSeen = new Set<number>();
      for (const item of stream.received) {
        if (streamSeen.has(item.seq)) integrity.followDuplicates++;
        else if (item.seq !== expected) integrity.followGaps++;
        streamSeen.add(item.seq);
        expected = Math.max(expected, item.seq + 1);
        if (bySeq.get(item.seq)?.type !== item.type) integrity.followMismatched++;
      }
      // Every event stored before the streams were stopped; later ones (the server's shutdown) are not expected.
      const lastReceived = stream.received.at(-1)?.seq ?? 0;
      if (lastReceived < (followTargets.get(sessionId) ?? 0)) integrity.followIncomplete++;
    }
  }

  // ------------------------------------------------------------------ summary
  const sendMillis = acks.map((ack) => ack.millis);
  const failuresByCode: Record<string, number> = {};
  for (const failure of failures) failuresByCode[failure.code] = (failuresByCode[failure.code] ?? 0) + 1;
  const lags = numbers(follows.flatMap((state) => state.received.map((item) => item.lagMs)));
  const followedEvents = follows.reduce((sum, state) => sum + state.received.length, 0);
  const runSeconds = (dbDrainEnd.getTime() - dbSendStart.getTime()) / 1000;
  const peak = perSecond.reduce((best, row) => Math.max(best, row.n), 0);
  const sandboxSeries = [...sampler.sandboxes.values()].sort((a, b) => a.sessionIndex - b.sessionIndex || a.generation - b.generation);
  const perSandbox = sandboxSeries.map((series) => ({ session: series.sessionIndex, sessionId: series.sessionId, generation: series.generation, hostPid: series.hostPid, ...seriesFigures(series.readings) }));
  const runSamples = sampler.samples.filter((sample) => sample.phase === "send" || sample.phase === "drain" || sample.phase === "end");
  const serverFigures = seriesFigures(sampler.server);
  const postgresFigures = sampler.postgresTree.length ? seriesFigures(sampler.postgresTree) : null;
  const starts = sandboxStarts.map((row) => row.ms);
  const warnLines = serverWarnings(server.logLines);
  const followErrors = follows.flatMap((state) => state.errors);
  const followReconnects = follows.reduce((sum, state) => sum + state.reconnects, 0);
  const completions = gateway.completions.length;

  const checks: Array<{ name: string; ok: boolean; detail: string }> = [
    { name: "seqs", ok: integrity.seqGaps + integrity.seqDuplicates + integrity.seqBeyondLastSeq === 0, detail: `gaps: ${integrity.seqGaps}, duplicated: ${integrity.seqDuplicates}, beyond last_seq: ${integrity.seqBeyondLastSeq} (${integrity.events} events in ${sessionCount} sessions)` },
    { name: "messages", ok: integrity.lost + integrity.duplicatedMessages === 0, detail: `acknowledged: ${integrity.acknowledged}, lost: ${integrity.lost}, duplicated: ${integrity.duplicatedMessages}` },
    { name: "turns", ok: integrity.turnsMissing + integrity.turnsUnfinished + integrity.turnsNotCompleted + integrity.turnsExtra === 0, detail: `${integrity.turns} turns, unfinished: ${integrity.turnsUnfinished}, failed or aborted: ${integrity.turnsNotCompleted}, missing: ${integrity.turnsMissing}, extra: ${integrity.turnsExtra}` },
    { name: "tool results", ok: integrity.toolCallsWithoutResult + integrity.toolCallsWithSeveralResults + integrity.orphanToolResults + integrity.misroutedToolResults + integrity.turnsWithoutExactlyOneToolCall === 0, detail: `calls: ${integrity.toolCalls}, results: ${integrity.toolResults}, lost: ${integrity.toolCallsWithoutResult}, duplicated: ${integrity.toolCallsWithSeveralResults}, orphan: ${integrity.orphanToolResults}, wrong output: ${integrity.misroutedToolResults}, turns without exactly one call: ${integrity.turnsWithoutExactlyOneToolCall}` },
    { name: "answers", ok: integrity.unanswered + integrity.answeredTwice === 0, detail: `answers: ${integrity.answers}, lost: ${integrity.unanswered}, duplicated: ${integrity.answeredTwice}` },
    ...(follow
      ? [{ name: "follow streams", ok: integrity.followGaps + integrity.followDuplicates + integrity.followMismatched + integrity.followIncomplete === 0 && followCaughtUp, detail: `${integrity.followStreams} streams, ${followedEvents} events, lost: ${integrity.followGaps + integrity.followIncomplete}, duplicated: ${integrity.followDuplicates}, mismatched: ${integrity.followMismatched}` }]
      : []),
    { name: "send errors", ok: failures.length === 0 && notSent === 0, detail: `failed: ${failures.length}${failures.length ? ` (${Object.entries(failuresByCode).map(([code, n]) => `${code}=${n}`).join(" ")})` : ""}, not sent: ${notSent}, present in the log though the send failed: ${integrity.presentThoughSendFailed}` },
    { name: "error events", ok: errorEvents.length === 0, detail: `${errorEvents.reduce((sum, row) => sum + row.n, 0)}` },
    { name: "gateway", ok: gateway.violations.length === 0, detail: `violations: ${gateway.violations.length}, completions: ${completions} (expected ${acks.length * 2})` },
    { name: "time limit", ok: timeLimitHit === null, detail: timeLimitHit ?? `within ${maxSeconds} s` },
  ];
  const passed = checks.every((check) => check.ok);

  const pct = (value: number | null | undefined) => (value === null || value === undefined || !Number.isFinite(value) ? "n/a" : `${value.toFixed(1)}%`);
  const mb = (value: number | null | undefined) => (value === null || value === undefined || !Number.isFinite(value) ? "n/a" : `${value.toFixed(1)} MB`);
  const cpuAvgs = numbers(perSandbox.map((item) => item.cpuPercentAvg));
  const cpuMaxes = numbers(perSandbox.map((item) => item.cpuPercentMax));
  const rssAvgs = numbers(perSandbox.map((item) => item.rssMbAvg));
  const rssMaxes = numbers(perSandbox.map((item) => item.rssMbMax));
  const pssAvgs = numbers(perSandbox.map((item) => item.pssMbAvg));
  const totalRss = numbers(runSamples.map((sample) => sample.sandboxRssMb));
  const totalPss = numbers(runSamples.map((sample) => sample.sandboxPssMb));
  const totalCpu = numbers(runSamples.map((sample) => sample.sandboxCpuPercent));
  const connections = sampler.samples.map((sample) => sample.pgConnections);
  const activeConnections = sampler.samples.map((sample) => sample.pgConnectionsActive);
  const byApp: Record<string, number> = {};
  for (const sample of sampler.samples) for (const [app, n] of Object.entries(sample.pgConnectionsByApplication)) byApp[app] = Math.max(byApp[app] ?? 0, n);
  const machineCpu = numbers(runSamples.map((sample) => sample.machineCpuPercent));
  const clientCpu = numbers(runSamples.map((sample) => sample.loadClientCpuPercent));
  const testCpu = numbers(runSamples.map((sample) => sample.testCpuPercent));
  const openTurns = runSamples.map((sample) => sample.openTurns);
  const turnsByStatus = turnStatus.map((row) => `${row.status}=${row.count}`).join(" ");
  const f1 = (value: number | undefined) => ms(value ?? Number.NaN);

  const lines = [
    "",
    "================================ load test ================================",
    `machine            ${os.cpus().length} CPUs, ${Math.round(os.totalmem() / 2 ** 30)} GB, ${process.release.name} ${process.version}; ${database.description}`,
    `workload           ${sessionCount} sessions x ${messageCount} messages, 1 per ${intervalMs} ms per session; 2 model calls + 1 bash per turn; follow ${follow ? "on" : "off"}`,
    `sessions ready     ${sessionCount} in ${secs(readyMillis)}; sandbox start p50 ${ms(percentile(starts, 50))} p95 ${ms(percentile(starts, 95))} max ${ms(maxOf(starts))}`,
    `message accept     n=${sendMillis.length}  p50 ${ms(percentile(sendMillis, 50))}  p95 ${ms(percentile(sendMillis, 95))}  p99 ${ms(percentile(sendMillis, 99))}  max ${ms(maxOf(sendMillis))}` +
      `  (${acks.filter((ack) => ack.queued).length} queued behind a running turn)`,
    `send phase         ${secs(sendWallMillis)} wall, ${rate((acks.length / sendWallMillis) * 1000)} messages; all turns done ${secs(drainedAt - lastSendAt)} after the last send`,
    `turns              ${turnsByStatus}`,
    `turn latency       n=${turnLatency?.n ?? 0}  avg ${f1(turnLatency?.avg)}  p50 ${f1(turnLatency?.p50)}  p95 ${f1(turnLatency?.p95)}  p99 ${f1(turnLatency?.p99)}  max ${f1(turnLatency?.max)}`,
    `  of which         queued avg ${f1(turnLatency?.queue_avg)} (p95 ${f1(turnLatency?.queue_p95)}); running avg ${f1(turnLatency?.run_avg)} (p50 ${f1(turnLatency?.run_p50)}, p95 ${f1(turnLatency?.run_p95)})`,
    `open turns         max ${maxOf(openTurns)} queued or running at a sample`,
    `events written     ${eventFigures!.during} during the run (${runSeconds.toFixed(1)} s): avg ${rate(eventFigures!.during / runSeconds)}, peak ${rate(peak)} (1 s bucket); ${eventFigures!.total} in all`,
    `  by type          ${eventTypes.map((row) => `${row.type}=${row.n}`).join(" ")}`,
    ...(follow ? [`follow delivery    ${followedEvents} events to ${follows.length} SSE followers; live lag (created_at to received, ${lags.length} events) p50 ${ms(percentile(lags, 50))} p95 ${ms(percentile(lags, 95))} p99 ${ms(percentile(lags, 99))} max ${ms(maxOf(lags))}; ${followReconnects} stream reconnects, ${followErrors.length} errors`] : []),
    `sandbox CPU        per sandbox avg ${pct(avg(cpuAvgs))} (highest avg ${pct(maxOf(cpuAvgs))}), max ${pct(maxOf(cpuMaxes))} at a sample; all sandboxes avg ${pct(avg(totalCpu))} max ${pct(maxOf(totalCpu))} (100% = one core)`,
    `sandbox RSS        per sandbox avg ${mb(avg(rssAvgs))} max ${mb(maxOf(rssMaxes))} (PSS avg ${mb(avg(pssAvgs))}); all sandboxes RSS avg ${mb(avg(totalRss))} max ${mb(maxOf(totalRss))}, PSS avg ${mb(avg(totalPss))} max ${mb(maxOf(totalPss))}`,
    `  sampled          ${perSandbox.length} sandboxes (jail + descendants), ${sampler.samples.length} samples every ${sampleMs} ms, up to ${maxOf(numbers(perSandbox.map((item) => item.processesMax)))} processes per sandbox`,
    `platform           RSS avg ${mb(serverFigures.rssMbAvg)} max ${mb(serverFigures.rssMbMax)}; CPU avg ${pct(serverFigures.cpuPercentAvg)} max ${pct(serverFigures.cpuPercentMax)} (${serverFigures.cpuSeconds ?? "n/a"} CPU s)`,
    ...(postgresFigures
      ? [`postgres           RSS avg ${mb(postgresFigures.rssMbAvg)} max ${mb(postgresFigures.rssMbMax)} (PSS max ${mb(postgresFigures.pssMbMax)}); CPU avg ${pct(postgresFigures.cpuPercentAvg)} max ${pct(postgresFigures.cpuPercentMax)}`]
      : []),
    `machine CPU        avg ${pct(avg(machineCpu))} max ${pct(maxOf(machineCpu))} of ${os.cpus().length * 100}%, of which this test avg ${pct(avg(testCpu))} ` +
      `(platform + ${postgresFigures ? "Postgres + " : ""}sandboxes + load client; the rest is other work on the machine)`,
    `load client        this process (clients, followers, the gateway) CPU avg ${pct(avg(clientCpu))} max ${pct(maxOf(clientCpu))}`,
    `pg connections     max ${maxOf(connections)} (max ${maxOf(activeConnections)} active) besides the monitor; by application (max): ${Object.entries(byApp).map(([app, n]) => `${app}=${n}`).join(" ")}`,
    `reconnects         ${reconnects!.n} (status to=reconnecting, ${reconnects!.sessions} sessions)`,
    `errors             send: ${failures.length}${failures.length ? ` (${Object.entries(failuresByCode).map(([code, n]) => `${code}=${n}`).join(" ")})` : ""}; turns failed/aborted: ${failedTurns.reduce((sum, row) => sum + row.n, 0)}; error events: ${errorEvents.reduce((sum, row) => sum + row.n, 0)}; gateway violations: ${gateway.violations.length}; server warn/error lines: ${warnLines.length}`,
    `model calls        ${completions} completions; tokens ${usage!.prompt} prompt + ${usage!.completion} completion, cost $${Number(usage!.cost).toFixed(4)}`,
    `sessions at end    ${sessionStatuses.map((row) => `${row.status}=${row.n}`).join(" ")}`,
    `server shutdown    ${shutdown.signal ?? `exit ${shutdown.exitCode}`} after ${secs(shutdown.millis)}`,
    "--------------------------------- integrity ---------------------------------",
    ...checks.map((check) => `${check.ok ? "ok  " : "FAIL"} ${check.name.padEnd(15)}${check.detail}`),
    `RESULT             ${passed ? "PASS" : "FAIL"} (total ${secs(Date.now() - runStarted)})`,
    "===========================================================================",
  ];
  console.log(lines.join("\n"));
  if (failures.length > 0) console.log(`\nsend failures (first 5 distinct):\n  ${[...new Set(failures.map((item) => `${item.code}: ${item.message_}`))].slice(0, 5).join("\n  ")}`);
  if (failedTurns.length > 0) console.log(`\nturn errors:\n  ${failedTurns.slice(0, 5).map((row) => `${row.n}x ${row.error}`).join("\n  ")}`);
  if (errorEvents.length > 0) console.log(`\nerror events:\n  ${errorEvents.slice(0, 5).map((row) => `${row.n}x ${row.message}`).join("\n  ")}`);
  if (gateway.violations.length > 0) console.log(`\ngateway violations (first 5):\n  ${gateway.violations.slice(0, 5).join("\n  ")}`);
  if (followErrors.length > 0) console.log(`\nfollow errors (first 5 distinct):\n  ${[...new Set(followErrors)].slice(0, 5).join("\n  ")}`);
  if (warnLines.length > 0) console.log(`\nserver warn/error log lines (first 5 of ${warnLines.length}):\n  ${warnLines.slice(0, 5).join("\n  ")}`);

  const report = {
    generatedAt: new Date().toISOString(),
    passed,
    config: { sessions: sessionCount, messages: messageCount, intervalMs, maxSeconds, sampleMs, modelDelayMs, warmPool, follow, model: MODEL },
    machine: { cpus: os.cpus().length, memoryGb: round(os.totalmem() / 2 ** 30), runtime: `${process.release.name} ${process.version}`, database: database.description, clkTck: CLK_TCK },
    timings: { readyMs: round(readyMillis), sendWallMs: round(sendWallMillis), drainAfterLastSendMs: round(drainedAt - lastSendAt), totalMs: Date.now() - runStarted, shutdown },
    sandboxStartMs: { n: starts.length, p50: round(percentile(starts, 50)), p95: round(percentile(starts, 95)), max: round(maxOf(starts)) },
    messageAcceptMs: { n: sendMillis.length, p50: round(percentile(sendMillis, 50)), p95: round(percentile(sendMillis, 95)), p99: round(percentile(sendMillis, 99)), max: round(maxOf(sendMillis)), queued: acks.filter((ack) => ack.queued).length },
    turnLatencyMs: turnLatency ? Object.fromEntries(Object.entries(turnLatency).map(([key, value]) => [key, round(Number(value))])) : null,
    turnsByStatus: Object.fromEntries(turnStatus.map((row) => [row.status, row.count])),
    events: { duringRun: eventFigures!.during, total: eventFigures!.total, runSeconds: round(runSeconds, 2), perSecondAvg: round(eventFigures!.during / runSeconds), perSecondPeak: peak, byType: Object.fromEntries(eventTypes.map((row) => [row.type, row.n])), perSecond: perSecond.map((row) => row.n) },
    follow: follow ? { streams: follows.length, events: followedEvents, liveEvents: lags.length, lagMs: { p50: round(percentile(lags, 50)), p95: round(percentile(lags, 95)), p99: round(percentile(lags, 99)), max: round(maxOf(lags)) }, deltas: follows.reduce((sum, state) => sum + state.deltas, 0), reconnects: followReconnects, errors: [...new Set(followErrors)].slice(0, 20) } : null,
    sandboxes: {
      cpuPercentAvg: round(avg(cpuAvgs)),
      cpuPercentMax: round(maxOf(cpuMaxes)),
      rssMbAvg: round(avg(rssAvgs)),
      rssMbMax: round(maxOf(rssMaxes)),
      pssMbAvg: round(avg(pssAvgs)),
      totalRssMb: { avg: round(avg(totalRss)), max: round(maxOf(totalRss)) },
      totalPssMb: { avg: round(avg(totalPss)), max: round(maxOf(totalPss)) },
      totalCpuPercent: { avg: round(avg(totalCpu)), max: round(maxOf(totalCpu)) },
      perSandbox,
    },
    platform: { pid: server.child.pid, ...serverFigures },
    postgres: postgresFigures,
    cpuPercent: { machineAvg: round(avg(machineCpu)), machineMax: round(maxOf(machineCpu)), testAvg: round(avg(testCpu)), loadClientAvg: round(avg(clientCpu)), loadClientMax: round(maxOf(clientCpu)) },
    postgresConnections: { max: maxOf(connections), maxActive: maxOf(activeConnections), maxByApplication: byApp },
    reconnects: { count: reconnects!.n, sessions: reconnects!.sessions },
    errors: {
      sendFailures: failures.length,
      sendFailuresByCode: failuresByCode,
      sendFailureSamples: [...new Set(failures.map((item) => `${item.code}: ${item.message_}`))].slice(0, 20),
      notSent,
      turnsFailed: failedTurns,
      errorEvents,
      gatewayViolations: gateway.violations.slice(0, 50),
      serverWarnLines: warnLines.length,
      serverWarnSamples: warnLines.slice(0, 20),
    },
    modelCalls: { completions, promptTokens: usage!.prompt, completionTokens: usage!.completion, costUsd: Number(usage!.cost) },
    sessionsAtEnd: Object.fromEntries(sessionStatuses.map((row) => [row.status, row.n])),
    integrity,
    checks,
    samples: sampler.samples,
  };
  mkdirSync(path.dirname(reportPath), { recursive: true });
  writeFileSync(reportPath, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`\nreport: ${path.relative(process.cwd(), reportPath) || reportPath}`);
  return passed;
}

let passed = false;
try {
  passed = await main();
} catch (error) {
  console.error(`\nload failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
} finally {
  await cleanups.run();
}
process.exit(passed ? 0 : 1);
