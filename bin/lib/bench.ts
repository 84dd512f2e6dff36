/**
 * Shared pieces of the benchmark and load scripts in bin/ (bench-turns.ts, load.ts): formatting,
 * polling, clean-up on exit and on signals, a throwaway database (embedded Postgres, or a fresh
 * database on the DATABASE_URL server), and the built server (`node build/main.js`) as a child process.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { appendFileSync, chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { connectPostgres } from "../../db/postgres-url";
import { ensureApplicationDatabase, startEmbeddedPostgres, type EmbeddedPostgres } from "../../db/embedded";

// ---------------------------------------------------------------------------------------------- figures

/** Nearest-rank percentile; NaN for no samples. */
export function percentile(samples: number[], p: number): number {
  if (samples.length === 0) return Number.NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

export const ms = (value: number) => (Number.isFinite(value) ? `${value.toFixed(1)} ms` : "n/a");
export const secs = (value: number) => `${(value / 1000).toFixed(2)} s`;
export const rate = (value: number) => `${Math.round(value).toLocaleString("en-US")}/s`;
export const sleep = (millis: number) => new Promise<void>((resolve) => setTimeout(resolve, millis));
export const errorText = (error: unknown) => (error instanceof Error ? error.message : String(error));

// ---------------------------------------------------------------------------------------------- CPU accounting

/**
 * CPU time (ms) used so far by the server process, every `postgres` process on the machine, this
 * process, and the whole machine (busy and elapsed over all cores). Linux only (/proc); null elsewhere.
 * Two snapshots around a phase tell where its CPU went.
 */
export type CpuSnapshot = { serverMs: number; postgresMs: number; benchMs: number; machineBusyMs: number; machineTotalMs: number; serverMainThread: MainThreadSchedule | null };

/**
 * The server's main thread (its event loop) as the kernel scheduled it: time on a CPU, time it was
 * ready to run but waited for one, and how often it was preempted. A request waits for all three.
 */
type MainThreadSchedule = { runMs: number; waitMs: number; preemptions: number };

function mainThreadSchedule(pid: number): MainThreadSchedule | null {
  try {
    // schedstat: "<ns on CPU> <ns waiting on a run queue> <timeslices>"
    const [runNs, waitNs] = readFileSync(`/proc/${pid}/task/${pid}/schedstat`, "utf8").trim().split(" ").map(Number);
    const preemptions = /nonvoluntary_ctxt_switches:\s*(\d+)/.exec(readFileSync(`/proc/${pid}/task/${pid}/status`, "utf8"))?.[1];
    if (runNs === undefined || waitNs === undefined || preemptions === undefined) return null;
    return { runMs: runNs / 1e6, waitMs: waitNs / 1e6, preemptions: Number(preemptions) };
  } catch {
    return null;
  }
}

export function cpuSnapshot(serverPid: number | undefined): CpuSnapshot | null {
  if (process.platform !== "linux" || !existsSync("/proc/stat")) return null;
  const tickMs = 1000 / clockTicksPerSecond();
  const processMs = (pid: string) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after "pid (comm) ".
      return { comm: stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")), ms: (Number(fields[11]) + Number(fields[12])) * tickMs };
    } catch {
      return null;
    }
  };
  let postgresMs = 0;
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const usage = processMs(entry);
    if (usage?.comm === "postgres") postgresMs += usage.ms;
  }
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  const machineTotalMs = cpu.reduce((sum, value) => sum + value, 0) * tickMs;
  const machineIdleMs = (cpu[3]! + cpu[4]!) * tickMs;
  const own = process.cpuUsage();
  return {
    serverMs: serverPid === undefined ? 0 : (processMs(String(serverPid))?.ms ?? 0),
    postgresMs,
    benchMs: (own.user + own.system) / 1000,
    machineBusyMs: machineTotalMs - machineIdleMs,
    machineTotalMs,
    serverMainThread: serverPid === undefined ? null : mainThreadSchedule(serverPid),
  };
}

/** The server main thread's scheduling between two snapshots, per `perCount` item. */
export function mainThreadFigures(before: CpuSnapshot | null, after: CpuSnapshot | null, perCount: number, perLabel: string): string {
  const start = before?.serverMainThread;
  const end = after?.serverMainThread;
  if (!start || !end) return "n/a (needs Linux /proc schedstat)";
  const per = (value: number) => (value / perCount).toFixed(2);
  return (
    `on a CPU ${per(end.runMs - start.runMs)} ms/${perLabel} · waiting for a CPU ${per(end.waitMs - start.waitMs)} ms/${perLabel} · ` +
    `preempted ${per(end.preemptions - start.preemptions)} times/${perLabel}`
  );
}

/** `before` to `after` as "server 41% · postgres 30% · …" of one core over `wallMs`, and per `perCount` item. */
export function cpuFigures(before: CpuSnapshot | null, after: CpuSnapshot | null, wallMs: number, perCount: number, perLabel: string): string {
  if (!before || !after) return "n/a (needs Linux /proc)";
  const part = (label: string, used: number) => `${label} ${((used / wallMs) * 100).toFixed(0)}% (${(used / perCount).toFixed(1)} ms/${perLabel})`;
  const machine = after.machineBusyMs - before.machineBusyMs;
  const cores = (after.machineTotalMs - before.machineTotalMs) / wallMs;
  return [
    part("server", after.serverMs - before.serverMs),
    part("postgres", after.postgresMs - before.postgresMs),
    part("bench client", after.benchMs - before.benchMs),
    `machine ${((machine / (after.machineTotalMs - before.machineTotalMs)) * 100).toFixed(0)}% busy of ${cores.toFixed(1)} cores`,
  ].join(" · ");
}

let clockTicks: number | undefined;
function clockTicksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

// ---------------------------------------------------------------------------------------------- waiting

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}

/** Polls `check` until it returns true; throws after `timeoutMs`. */
export async function waitUntil(label: string, timeoutMs: number, intervalMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${label}`);
    await sleep(intervalMs);
  }
}

export function withTimeout<T>(label: string, timeoutMs: number, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs / 1000} s: ${label}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------------------- clean-up

export type Cleanups = {
  push(label: string, run: () => Promise<void>): void;
  /** Runs the registered clean-ups, last registered first; safe to call twice. */
  run(): Promise<void>;
};

/** A clean-up list that also runs on SIGINT/SIGTERM (then exits 130). */
export function createCleanups(): Cleanups {
  const entries: Array<{ label: string; run: () => Promise<void> }> = [];
  let done: Promise<void> | null = null;
  const cleanups: Cleanups = {
    push: (label, run) => void entries.push({ label, run }),
    run: () => {
      done ??= (async () => {
        for (const { label, run } of [...entries].reverse()) {
          try {
            await run();
          } catch (error) {
            console.error(`clean-up (${label}) failed: ${errorText(error)}`);
          }
        }
      })();
      return done;
    },
  };
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      console.error(`\n${signal}: cleaning up`);
      void cleanups.run().finally(() => process.exit(130));
    });
  }
  return cleanups;
}

/** A temporary folder removed at clean-up; traversable (0711) so an embedded Postgres run as `postgres` can reach its data. */
export function makeTempRoot(prefix: string, cleanups: Cleanups): string {
  const tempRoot = mkdtempSync(path.join(os.tmpdir(), prefix));
  // As root the embedded Postgres runs as the `postgres` user, which must traverse this folder.
  chmodSync(tempRoot, 0o711);
  cleanups.push("temporary directory", async () => rmSync(tempRoot, { recursive: true, force: true }));
  return tempRoot;
}

// ---------------------------------------------------------------------------------------------- database

export type PreparedDatabase = { url: string; description: string; embedded: EmbeddedPostgres | null };

/**
 * An embedded Postgres in `<tempRoot>/pg-data`, or, when DATABASE_URL is set, a fresh database
 * `<namePrefix><random>` on that server, dropped at clean-up.
 */
export async function prepareDatabase(options: { tempRoot: string; namePrefix: string; cleanups: Cleanups }): Promise<PreparedDatabase> {
  const { tempRoot, namePrefix, cleanups } = options;
  const external = process.env.DATABASE_URL;
  if (external) {
    const name = `${namePrefix}${randomBytes(6).toString("hex")}`;
    const admin = connectPostgres(external, { max: 1, onnotice: () => {} });
    try {
      await admin.unsafe(`create database "${name}"`);
    } finally {
      await admin.end({ timeout: 5 });
    }
    cleanups.push(`drop database ${name}`, async () => {
      const again = connectPostgres(external, { max: 1, onnotice: () => {} });
      try {
        await again.unsafe(`drop database if exists "${name}" with (force)`);
      } finally {
        await again.end({ timeout: 5 });
      }
    });
    const url = new URL(external);
    url.pathname = `/${name}`;
    return { url: url.toString(), description: `DATABASE_URL server, fresh database ${name}`, embedded: null };
  }
  const pgDataDir = path.join(tempRoot, "pg-data");
  mkdirSync(pgDataDir, { mode: 0o700 });
  const embedded: EmbeddedPostgres = await startEmbeddedPostgres({ dataDir: pgDataDir, logger: pino({ level: "warn" }) });
  cleanups.push("embedded Postgres", () => embedded.stop());
  await ensureApplicationDatabase(embedded.url);
  // Over its Unix socket when it has one, as `npm start` runs it (server/main.ts).
  return { url: embedded.socketUrl ?? embedded.url, description: `embedded Postgres on ${embedded.socketUrl ? "its Unix socket" : `127.0.0.1:${embedded.port}`}`, embedded };
}

// ---------------------------------------------------------------------------------------------- server

export type ServerStop = { exitCode: number | null; signal: string | null; millis: number };
export type RunningServer = { child: ChildProcess; url: string; logLines: string[]; stop(): Promise<ServerStop> };

/**
 * Spawns the built server on a free 127.0.0.1 port with a fresh data dir and waits for /readyz.
 * `env` is added to (and overrides) the defaults: LOG_LEVEL=warn, BERTH_WARM_POOL_SIZE=0.
 */
export async function startServer(options: {
  serverScript: string;
  databaseUrl: string;
  dataDir: string;
  adminApiKey: string;
  cleanups: Cleanups;
  env?: Record<string, string>;
  readyTimeoutMs?: number;
}): Promise<RunningServer> {
  const port = await freePort();
  mkdirSync(options.dataDir, { mode: 0o700 });
  // BENCH_SERVER_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" profiles the server under load;
  // BENCH_SERVER_RUNTIME=/path/to/bun runs it on another runtime (default: this Node);
  // BENCH_SERVER_LOG=/tmp/server.log keeps all of its output (e.g. with --trace-gc).
  const nodeArgs = (process.env.BENCH_SERVER_NODE_ARGS ?? "").split(" ").filter(Boolean);
  const runtime = process.env.BENCH_SERVER_RUNTIME || process.execPath;
  const child = spawn(runtime, [...nodeArgs, options.serverScript], {
    env: {
      ...process.env,
      DATABASE_URL: options.databaseUrl,
      BERTH_DATA_DIR: options.dataDir,
      PORT: String(port),
      HOST: "127.0.0.1",
      BERTH_ADMIN_API_KEY: options.adminApiKey,
      LOG_LEVEL: "warn",
      BERTH_WARM_POOL_SIZE: "0",
      ...options.env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logLines: string[] = [];
  const logFile = process.env.BENCH_SERVER_LOG;
  const collect = (chunk: string) => {
    if (logFile) appendFileSync(logFile, chunk);
    for (const line of chunk.split("\n")) if (line.trim() && logLines.length < 5000) logLines.push(line);
  };
  child.stdout!.setEncoding("utf8").on("data", collect);
  child.stderr!.setEncoding("utf8").on("data", collect);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));

  let stopped: Promise<ServerStop> | null = null;
  const stop = () => {
    stopped ??= (async () => {
      const started = performance.now();
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const inTime = await Promise.race([exited.then(() => true), sleep(20_000).then(() => false)]);
        if (!inTime) {
          console.error("the server did not exit within 20 s of SIGTERM: killing it");
          child.kill("SIGKILL");
          await exited;
        }
      }
      return { exitCode: child.exitCode, signal: child.signalCode, millis: performance.now() - started };
    })();
    return stopped;
  };
  options.cleanups.push("server", async () => void (await stop()));

  const url = `http://127.0.0.1:${port}`;
  try {
    await waitUntil("GET /readyz to answer 200", options.readyTimeoutMs ?? 60_000, 100, async () => {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the server exited during start-up (${child.signalCode ?? `code ${child.exitCode}`})`);
      const response = await fetch(`${url}/readyz`).catch(() => null);
      return response?.status === 200;
    });
  } catch (error) {
    console.error(`server output:\n${logLines.slice(-30).join("\n")}`);
    throw error;
  }
  return { child, url, logLines, stop };
}

/** The server's log lines at level warn or above (and non-JSON lines other than the printed-once admin credentials). */
export function serverWarnings(logLines: string[]): string[] {
  return logLines.filter((line) => {
    try {
      return (JSON.parse(line) as { level?: number }).level! >= 40;
    } catch {
      return !line.includes("Admin password") && !line.includes("shown once");
    }
  });
}
