/**
 * Egress gateway benchmark: `npm run build && npm run bench:egress [-- --requests 2000 --rounds 4 --megabytes 100]`
 * (the build for build/sandboxd.js, the jail's daemon; the gateway and Berth run from this tree's source).
 *
 * What a sandbox pays for going out through the egress gateway, beside the same traffic sent
 * straight to the same server, all measured in one run on this machine, everything on 127.0.0.1:
 *   - a target HTTP server (a worker thread of this process, its own event loop): a 200-byte answer,
 *     a --megabytes download and an upload sink;
 *   - a real Berth (startBerth in this process; its web app is never loaded) on a throwaway database
 *     (embedded Postgres, or a fresh database on DATABASE_URL's server), BERTH_EGRESS_RESOLVE mapping
 *     api.example.test to the target, an agent whose egress policy allow-lists api.example.test,
 *     and one ready session in a local jail;
 *   - one client for every figure, curl (the same binary on the host and, through the jail's /usr,
 *     inside it): each loop is one curl process sending its requests one after another on one
 *     keep-alive connection, the first --warm-up of them untimed; curl's own `time_total` per request.
 *
 * Direct: curl on the host to the target. Through the gateway, the way a sandbox uses it: curl in the
 * session's jail (sessions.exec) with the jail's proxy variables, so each connection goes
 * curl -> the daemon's loopback forwarder -> the gateway's Unix socket of this sandbox -> the target:
 *   (a) plain HTTP as absolute-form proxy requests (`GET http://api.example.test/...`, Basic auth);
 *   (b) a CONNECT tunnel (curl --proxytunnel): one CONNECT, then every request inside it;
 *   (c) a new CONNECT per request (`Connection: close`), beside direct with a new connection per request.
 * Where the added time goes, in the same rounds: a bare byte relay on this process's main thread (the
 * floor of any proxy here); host curl straight to a second EgressGateway of this process on TCP (no
 * jail, no forwarder) with the real EgressDirectory, and one with the policy lookup stubbed; and
 * EgressDirectory.forSandbox alone beside a `select 1`. Every way is measured once per round, in
 * turn, so that load from other processes falls on all of them alike; the big transfers likewise.
 *
 * Targets (the issue): at most 1 ms added at p50 per small request, at least 80% of the direct
 * throughput for the big transfer. Figures only, no assertions.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { parseArgs, promisify } from "node:util";
import { Worker } from "node:worker_threads";
import { connectDatabase } from "../db/client";
import { createBerthClient } from "../server/client";
import { loadConfig } from "../server/config";
import { AddressRules } from "../server/egress/addresses";
import { EgressLog } from "../server/egress/egress-log";
import { EgressGateway } from "../server/egress/gateway";
import { createGatewayTokens } from "../server/egress/tokens";
import { createLogger } from "../server/logger";
import { startBerth } from "../server/main";
import { EgressDirectory, type SandboxEgressContext } from "../server/services/egress-directory";
import { SecretBox } from "../server/services/secret-box";
import { cpuSnapshot, createCleanups, errorText, makeTempRoot, percentile, prepareDatabase, secs, waitUntil, withTimeout } from "./lib/bench";

// ---------------------------------------------------------------------------------------------- options

const { values } = parseArgs({
  options: {
    /** Timed small requests per way of sending them, spread over the rounds. */
    requests: { type: "string", default: "2000" },
    /** Untimed requests at the start of every loop (a new curl, a new connection). */
    "warm-up": { type: "string", default: "50" },
    /** Timed requests per way for the new-connection-per-request loops (each a connection, through the gateway a CONNECT). */
    "connection-requests": { type: "string", default: "500" },
    /** Every way is measured once per round, in turn, so that load from elsewhere falls on all of them alike. */
    rounds: { type: "string", default: "4" },
    megabytes: { type: "string", default: "100" },
    /** Each big transfer is made this many times (interleaved like the rounds); its median counts. */
    repeats: { type: "string", default: "3" },
  },
});
const requests = wholeNumber("requests", 10, 20_000);
const warmUp = wholeNumber("warm-up", 0, 1_000);
const connectionRequests = wholeNumber("connection-requests", 10, 5_000);
const rounds = wholeNumber("rounds", 1, 20);
const megabytes = wholeNumber("megabytes", 1, 1_000);
const repeats = wholeNumber("repeats", 1, 9);

function wholeNumber(name: keyof typeof values, min: number, max: number): number {
  const value = Number(values[name]);
  if (!Number.isInteger(value) || value < min || value > max) throw new Error(`--${name} must be a whole number from ${min} to ${max}`);
  return value;
}

const BIG_BYTES = megabytes * 1024 * 1024;
const SMALL_BYTES = 200;
const HOST = "api.example.test";
const ADMIN_API_KEY = "berth_bench_egress_admin_key_0123456789abcdef";
const TARGET_ADDED_P50_MS = 1;
const TARGET_THROUGHPUT_RATIO = 0.8;
/** The whole run stops (and cleans up) past this. */
const RUN_DEADLINE_MS = 4 * 60_000;
const LOOP_TIMEOUT_MS = 60_000;

const daemonScript = path.resolve("build/sandboxd.js");
if (!existsSync(daemonScript)) {
  console.error("bench:egress: build/sandboxd.js is missing: run `npm run build` first");
  process.exit(1);
}

const benchStarted = performance.now();
const phase = (label: string) => console.log(`  ${label} (${secs(performance.now() - benchStarted)})`);
const cleanups = createCleanups();
const tempRoot = makeTempRoot("berth-bench-egress-", cleanups);
const execFileAsync = promisify(execFile);

// ---------------------------------------------------------------------------------------------- the target

/** The outside server, on a thread of its own (so it never waits for the gateway's event loop, nor the gateway for it). */
const TARGET_SOURCE = `
const http = require("node:http");
const { parentPort, workerData } = require("node:worker_threads");
const small = Buffer.alloc(workerData.smallBytes, "s");
const chunk = Buffer.alloc(1024 * 1024, "b");
const server = http.createServer({ noDelay: true, keepAliveTimeout: 120000 }, (req, res) => {
  if (req.url === "/small") {
    res.writeHead(200, { "content-type": "text/plain", "content-length": small.length });
    return res.end(small);
  }
  if (req.url === "/big") {
    const total = workerData.bigBytes;
    res.writeHead(200, { "content-type": "application/octet-stream", "content-length": total });
    let sent = 0;
    const more = () => {
      while (sent < total) {
        const length = Math.min(chunk.length, total - sent);
        sent += length;
        if (!res.write(length === chunk.length ? chunk : chunk.subarray(0, length))) return void res.once("drain", more);
      }
      res.end();
    };
    return more();
  }
  if (req.url === "/sink") {
    let received = 0;
    req.on("data", (data) => (received += data.length));
    req.on("end", () => {
      const body = String(received);
      res.writeHead(200, { "content-type": "text/plain", "content-length": body.length });
      res.end(body);
    });
    return;
  }
  res.writeHead(404, { "content-length": 0 });
  res.end();
});
server.keepAliveTimeout = 120000;
server.listen(0, "127.0.0.1", () => parentPort.postMessage(server.address().port));
`;

async function startTarget(): Promise<number> {
  const worker = new Worker(TARGET_SOURCE, { eval: true, workerData: { smallBytes: SMALL_BYTES, bigBytes: BIG_BYTES } });
  cleanups.push("target server", async () => void (await worker.terminate()));
  return new Promise((resolve, reject) => {
    worker.once("message", (port: number) => resolve(port));
    worker.once("error", reject);
  });
}

// ---------------------------------------------------------------------------------------------- floors

/**
 * The least any proxy in this process can cost: a bare byte pipe on the gateway's thread from a
 * 127.0.0.1 port to the target (what a CONNECT tunnel is once it is open), no HTTP, no policy.
 */
async function startBareRelay(targetPort: number): Promise<number> {
  const server = net.createServer({ noDelay: true }, (client) => {
    const upstream = net.connect({ host: "127.0.0.1", port: targetPort, noDelay: true });
    for (const socket of [client, upstream]) socket.on("error", () => (client.destroy(), upstream.destroy()));
    client.pipe(upstream);
    upstream.pipe(client);
  });
  cleanups.push("bare relay", () => new Promise((resolve) => server.close(() => resolve())));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as net.AddressInfo).port;
}

/** CPU time (ms) this process's main thread, where Berth and its gateway run, has been on a CPU (Linux; NaN elsewhere). */
function mainThreadCpuMs(): number {
  return cpuSnapshot(process.pid)?.serverMainThread?.runMs ?? Number.NaN;
}

/** How busy the machine was (all cores) over `millis` while this benchmark did nothing: other work competes with every figure. */
async function idleLoad(millis: number): Promise<string> {
  const before = cpuSnapshot(undefined);
  await new Promise((resolve) => setTimeout(resolve, millis));
  const after = cpuSnapshot(undefined);
  if (!before || !after) return "n/a";
  return `${(((after.machineBusyMs - before.machineBusyMs) / (after.machineTotalMs - before.machineTotalMs)) * 100).toFixed(0)}% busy`;
}

// ---------------------------------------------------------------------------------------------- curl loops

/**
 * A shell command: one curl process fetching `url` count times in a row (one keep-alive connection
 * unless `Connection: close`), printing `<status> <bytes> <time_total>` per request.
 */
function loopCommand(url: string, count: number, curlOptions: string): string {
  const config = `url = "${url}"\\noutput = "/dev/null"\\n`;
  return `i=0; while [ $i -lt ${count} ]; do printf '${config}'; i=$((i+1)); done | curl -sS -K - ${curlOptions} -w '%{http_code} %{size_download} %{time_total}\\n'`;
}

/** One big transfer (GET `/big`, or PUT of the body to `/sink`), printing `<status> <time_total> <bytes/s>`. */
function transferCommand(url: string, direction: "download" | "upload", curlOptions: string): string {
  return direction === "download"
    ? `curl -sS -o /dev/null ${curlOptions} -w '%{http_code} %{time_total} %{speed_download}\\n' ${url}/big`
    : `head -c ${BIG_BYTES} /dev/zero | curl -sS -o /dev/null -T - ${curlOptions} -w '%{http_code} %{time_total} %{speed_upload}\\n' ${url}/sink`;
}

type Runner = (command: string) => Promise<string>;

/** On the host, without any proxy variable. */
const onHost: Runner = async (command) => {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (/_proxy$/i.test(name)) delete env[name];
  const { stdout } = await execFileAsync("sh", ["-c", command], { env, timeout: LOOP_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 });
  return stdout;
};

/** Parses a loop's lines, checks every answer, drops the warm-up, returns milliseconds. */
function loopSamples(output: string, expected: number, skip: number): number[] {
  const lines = output.trim().split("\n");
  if (lines.length !== expected) throw new Error(`expected ${expected} answers, got ${lines.length}: ${lines.slice(-3).join(" | ")}`);
  const samples = lines.map((line) => {
    const [status, size, seconds] = line.split(" ");
    if (status !== "200" || Number(size) !== SMALL_BYTES) throw new Error(`unexpected answer: ${line}`);
    return Number(seconds) * 1000;
  });
  return samples.slice(skip);
}

/** One way of sending: where curl runs, the base URL, curl's options. */
type Way = { run: Runner; url: string; options: string };
/** Or a call of this process, timed here (the database lookups). */
type Call = { call: () => Promise<unknown> };

async function timeCalls(call: () => Promise<unknown>, count: number, skip: number): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < skip + count; i++) {
    const started = performance.now();
    await call();
    if (i >= skip) samples.push(performance.now() - started);
  }
  return samples;
}

/**
 * Small-request latency of every way, in ms: `rounds` rounds, each running every way's loop once
 * (in a rotating order), `count / rounds` timed requests per loop after `skip` untimed ones.
 */
async function smallLoops<K extends string>(ways: Record<K, Way | Call>, count: number, skip: number, label: string): Promise<Record<K, Latency>> {
  const keys = Object.keys(ways) as K[];
  const samples = Object.fromEntries(keys.map((key) => [key, [] as number[]])) as Record<K, number[]>;
  const perLoop = Math.ceil(count / rounds);
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < keys.length; i++) {
      const key = keys[(i + round) % keys.length]!;
      const way = ways[key];
      if ("call" in way) {
        samples[key].push(...(await timeCalls(way.call, perLoop, skip)));
        continue;
      }
      const output = await way.run(loopCommand(`${way.url}/small`, perLoop + skip, way.options));
      samples[key].push(...loopSamples(output, perLoop + skip, skip));
    }
    phase(`${label}: round ${round + 1} of ${rounds}`);
  }
  return Object.fromEntries(keys.map((key) => [key, latency(samples[key])])) as Record<K, Latency>;
}

type Throughput = { mbps: number; mainThreadMsPerMb: number };

/** MB/s (MiB) of every way (median of `repeats`, interleaved), and this process's main thread's CPU per MB meanwhile. */
async function transfers<K extends string>(ways: Record<K, Way>, direction: "download" | "upload"): Promise<Record<K, Throughput>> {
  const keys = Object.keys(ways) as K[];
  const rates = Object.fromEntries(keys.map((key) => [key, [] as number[]])) as Record<K, number[]>;
  const cpu = Object.fromEntries(keys.map((key) => [key, 0])) as Record<K, number>;
  for (let repeat = 0; repeat < repeats; repeat++) {
    for (let i = 0; i < keys.length; i++) {
      const key = keys[(i + repeat) % keys.length]!;
      const { run, url, options } = ways[key];
      const cpuBefore = mainThreadCpuMs();
      const line = (await run(transferCommand(url, direction, options))).trim();
      cpu[key] += mainThreadCpuMs() - cpuBefore;
      const [status, , bytesPerSecond] = line.split(" ");
      if (status !== "200") throw new Error(`${direction} (${key}) answered: ${line}`);
      rates[key].push(Number(bytesPerSecond) / (1024 * 1024));
    }
  }
  phase(`${megabytes} MB ${direction}s`);
  return Object.fromEntries(keys.map((key) => [key, { mbps: percentile(rates[key], 50), mainThreadMsPerMb: cpu[key] / (repeats * megabytes) }])) as Record<K, Throughput>;
}

// ---------------------------------------------------------------------------------------------- figures

const ms2 = (value: number) => `${value.toFixed(3)} ms`;
const signedMs = (value: number) => `${value >= 0 ? "+" : ""}${ms2(value)}`;
const mbps = (value: number) => `${value.toFixed(0)} MB/s`;
type Latency = { p50: number; p99: number; n: number };
const latency = (samples: number[]): Latency => ({ p50: percentile(samples, 50), p99: percentile(samples, 99), n: samples.length });

type Row = { figure: string; direct: string; gateway: string; added: string; target: string; verdict: string };

function printTable(title: string, rows: Row[]): void {
  const header: Row = { figure: "figure", direct: "direct", gateway: "gateway", added: "added / ratio", target: "target", verdict: "" };
  const all = [header, ...rows];
  const width = (key: keyof Row) => Math.max(...all.map((row) => row[key].length));
  const line = (row: Row) =>
    [row.figure.padEnd(width("figure")), row.direct.padStart(width("direct")), row.gateway.padStart(width("gateway")), row.added.padStart(width("added")), row.target.padEnd(width("target")), row.verdict].join("  ").trimEnd();
  console.log(`\n${title}`);
  console.log(line(header));
  console.log("-".repeat(line(header).length + 8));
  for (const row of rows) console.log(line(row));
}

function latencyRows(label: string, direct: Latency, gateway: Latency, target: boolean): Row[] {
  const added50 = gateway.p50 - direct.p50;
  return [
    {
      figure: `${label} p50`,
      direct: ms2(direct.p50),
      gateway: ms2(gateway.p50),
      added: signedMs(added50),
      target: target ? `<= +${TARGET_ADDED_P50_MS} ms` : "(figure only)",
      verdict: target ? (added50 <= TARGET_ADDED_P50_MS ? "met" : "NOT MET") : "",
    },
    { figure: `${label} p99`, direct: ms2(direct.p99), gateway: ms2(gateway.p99), added: signedMs(gateway.p99 - direct.p99), target: "(figure only)", verdict: "" },
  ];
}

function throughputRow(label: string, direct: number, gateway: number): Row {
  const ratio = gateway / direct;
  return {
    figure: label,
    direct: mbps(direct),
    gateway: mbps(gateway),
    added: `${(ratio * 100).toFixed(0)}%`,
    target: `>= ${TARGET_THROUGHPUT_RATIO * 100}%`,
    verdict: ratio >= TARGET_THROUGHPUT_RATIO ? "met" : "NOT MET",
  };
}

// ---------------------------------------------------------------------------------------------- main

const deadline = setTimeout(() => {
  console.error(`\nbench:egress: still running after ${RUN_DEADLINE_MS / 60_000} minutes: stopping`);
  void cleanups.run().finally(() => process.exit(1));
}, RUN_DEADLINE_MS);
deadline.unref();

let failed = false;
try {
  console.log(
    `Egress gateway benchmark: ${requests} small requests per way (${connectionRequests} with a new connection each) in ${rounds} rounds, ` +
      `${warmUp} untimed first in every loop; ${megabytes} MB transfers x ${repeats} (median); ${os.cpus().length} CPUs, ${process.release.name} ${process.version}`,
  );
  const loadBefore = await idleLoad(1_000);
  const { stdout: curlVersion } = await execFileAsync("curl", ["--version"]);

  const targetPort = await startTarget();
  const direct = `http://127.0.0.1:${targetPort}`;
  const viaName = `http://${HOST}`;
  const relay = `http://127.0.0.1:${await startBareRelay(targetPort)}`;

  const database = await prepareDatabase({ tempRoot, namePrefix: "berth_bench_", cleanups });
  const secretKey = randomBytes(32);
  const config = loadConfig({
    DATABASE_URL: database.url,
    BERTH_DATA_DIR: path.join(tempRoot, "berth-data"),
    HOST: "127.0.0.1",
    PORT: "1",
    LOG_LEVEL: "warn",
    BERTH_ADMIN_API_KEY: ADMIN_API_KEY,
    BERTH_SECRET_KEY: secretKey.toString("hex"),
    BERTH_WARM_POOL_SIZE: "0",
    BERTH_EGRESS_RESOLVE: `${HOST}=127.0.0.1:${targetPort}`,
  });
  config.port = 0;
  // Warnings only; the one that BERTH_EGRESS_RESOLVE is set is expected here.
  const logger = createLogger("error");
  const berthStarted = performance.now();
  const berth = await startBerth({
    config,
    logger,
    // The web app is never asked for.
    remixBuild: () => Promise.reject(new Error("bench:egress serves no web pages")),
    daemonScript,
  });
  cleanups.push("Berth", () => berth.stop());
  console.log(`database: ${database.description}; Berth (this tree's source) up in ${secs(performance.now() - berthStarted)}`);

  const api = createBerthClient({ url: berth.url, apiKey: ADMIN_API_KEY });
  // Its CPU limit is the whole machine: the jail's curl and forwarder should not be what is throttled.
  const cpuMillis = os.cpus().length * 1000;
  const agent = await api.agents.create.mutate({ name: `bench-egress-${randomBytes(3).toString("hex")}`, model: "demo", cpuMillis, egress: { mode: "allowlist", allow: [{ host: HOST }] } });
  const session = await api.sessions.create.mutate({ agentId: agent.id });
  await waitUntil(`session ${session.id} to be ready`, 60_000, 100, async () => {
    const { status, statusReason } = await api.sessions.get.query({ sessionId: session.id });
    if (status === "failed" || status === "terminated") throw new Error(`session ${session.id} is ${status}: ${statusReason ?? "no reason"}`);
    return status === "ready";
  });
  const inJail: Runner = async (command) => {
    const result = await withTimeout("a command in the jail", LOOP_TIMEOUT_MS + 5_000, api.sessions.exec.mutate({ sessionId: session.id, command, timeoutMs: LOOP_TIMEOUT_MS }));
    if (result.exitCode !== 0) throw new Error(`in the jail, exit ${result.exitCode}: ${result.stderr.slice(0, 500)}`);
    return result.stdout;
  };
  const proxyCheck = await inJail(`curl -sS ${viaName}/small -o /dev/null -w '%{http_code}'; echo " via $http_proxy" | sed 's/berth:[^@]*@/berth:***@/'`);
  console.log(`session ready (local jail, cpuMillis ${cpuMillis}); from the jail: ${proxyCheck.trim()}`);

  // The bench's own view of the database and gateway: same database, same secret key, same classes as Berth's.
  const bench = connectDatabase(database.url, { max: 2, applicationName: "berth-bench-egress" });
  cleanups.push("bench database pool", () => bench.close());
  const [sandbox] = await bench.sql<{ name: string }[]>`select name from sandboxes where session_id = ${session.id} and status = 'ready' order by generation desc limit 1`;
  if (!sandbox) throw new Error("the session has no ready sandbox row");
  const directory = new EgressDirectory(bench.db, new SecretBox(secretKey));
  const context = await directory.forSandbox(sandbox.name);
  if (!context) throw new Error(`forSandbox(${sandbox.name}) found nothing`);
  const tokens = createGatewayTokens(secretKey);
  const token = tokens.issue(sandbox.name);
  const benchGateway = (lookup: (name: string) => Promise<SandboxEgressContext | null>) =>
    new EgressGateway({
      directory: { forSandbox: lookup },
      tokens,
      addressRules: new AddressRules({ allowPrivate: [], ownAddresses: AddressRules.ownHostAddresses() }),
      resolveMap: config.egress.resolveMap,
      ca: () => Promise.reject(new Error("no inspection in bench:egress")),
      modelRelay: (_req, res) => void res.writeHead(404).end(),
      log: new EgressLog((sessionId, events) => directory.record(sessionId, events), { windowMs: 1_000, logger, metrics: null }),
      metrics: null,
      logger,
    });
  const realGateway = benchGateway((name) => directory.forSandbox(name));
  const stubGateway = benchGateway(async () => context);
  cleanups.push("bench gateways", async () => void (await Promise.all([realGateway.close(), stubGateway.close()])));
  const realProxy = `-x http://berth:${token}@127.0.0.1:${(await realGateway.listenTcp(0, "127.0.0.1")).port}`;
  const stubProxy = `-x http://berth:${token}@127.0.0.1:${(await stubGateway.listenTcp(0, "127.0.0.1")).port}`;

  // ------------------------------------------------------------------ small requests
  console.log("\n== small requests");
  const tunnel = "--proxytunnel";
  const close = "-H 'Connection: close'";
  const small = await smallLoops(
    {
      selectOne: { call: () => bench.sql`select 1` },
      forSandbox: { call: () => directory.forSandbox(sandbox.name) },
      direct: { run: onHost, url: direct, options: "" },
      relay: { run: onHost, url: relay, options: "" },
      jailPlain: { run: inJail, url: viaName, options: "" },
      jailTunnel: { run: inJail, url: viaName, options: tunnel },
      gatewayPlain: { run: onHost, url: viaName, options: realProxy },
      stubPlain: { run: onHost, url: viaName, options: stubProxy },
      gatewayTunnel: { run: onHost, url: viaName, options: `${tunnel} ${realProxy}` },
    },
    requests,
    warmUp,
    "keep-alive",
  );
  const fresh = await smallLoops(
    {
      direct: { run: onHost, url: direct, options: close },
      relay: { run: onHost, url: relay, options: close },
      jailTunnel: { run: inJail, url: viaName, options: `${tunnel} ${close}` },
      gatewayTunnel: { run: onHost, url: viaName, options: `${tunnel} ${close} ${realProxy}` },
      stubTunnel: { run: onHost, url: viaName, options: `${tunnel} ${close} ${stubProxy}` },
    },
    connectionRequests,
    Math.min(warmUp, 10),
    "new connection per request",
  );

  // ------------------------------------------------------------------ big transfers
  console.log(`\n== ${megabytes} MB transfers`);
  const bigWays = {
    direct: { run: onHost, url: direct, options: "" },
    relay: { run: onHost, url: relay, options: "" },
    jailPlain: { run: inJail, url: viaName, options: "" },
    jailTunnel: { run: inJail, url: viaName, options: tunnel },
    gatewayPlain: { run: onHost, url: viaName, options: realProxy },
    gatewayTunnel: { run: onHost, url: viaName, options: `${tunnel} ${realProxy}` },
  };
  const download = await transfers(bigWays, "download");
  const upload = await transfers(bigWays, "upload");
  const loadAfter = await idleLoad(1_000);

  // ------------------------------------------------------------------ report
  console.log("\n================================ summary ================================");
  console.log(`machine   ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? "?"}), ${process.release.name} ${process.version}; ${curlVersion.split("\n")[0]?.split(" ").slice(0, 2).join(" ")}; ${database.description}`);
  console.log(`load      ${loadBefore} in the second before the run, ${loadAfter} in the second after it (other processes: the figures share the CPUs with them); load average ${os.loadavg().map((value) => value.toFixed(1)).join(" ")}`);
  console.log(`client    curl, one process per loop, requests one after another on one keep-alive connection unless said otherwise; ${rounds} rounds, every way once per round, ${warmUp} untimed requests per loop`);
  console.log("direct    host curl -> target;  gateway: curl in the session's jail -> daemon forwarder -> gateway Unix socket -> target");
  printTable("Targets: the way a sandbox goes out, against direct", [
    ...latencyRows(`small GET, plain HTTP proxy (n=${small.jailPlain.n})`, small.direct, small.jailPlain, true),
    ...latencyRows(`small GET, one CONNECT tunnel (n=${small.jailTunnel.n})`, small.direct, small.jailTunnel, true),
    ...latencyRows(`small GET, new CONNECT each (n=${fresh.jailTunnel.n}; direct: new connection)`, fresh.direct, fresh.jailTunnel, false),
    throughputRow(`${megabytes} MB download, plain HTTP proxy`, download.direct.mbps, download.jailPlain.mbps),
    throughputRow(`${megabytes} MB download, CONNECT tunnel`, download.direct.mbps, download.jailTunnel.mbps),
    throughputRow(`${megabytes} MB upload, plain HTTP proxy`, upload.direct.mbps, upload.jailPlain.mbps),
    throughputRow(`${megabytes} MB upload, CONNECT tunnel`, upload.direct.mbps, upload.jailTunnel.mbps),
  ]);

  const p50s = (figure: Latency) => `p50 ${ms2(figure.p50)}  p99 ${ms2(figure.p99)}`;
  const added = (figure: Latency, base: Latency) => signedMs(figure.p50 - base.p50);
  console.log("\nWhere the added time goes: host curl to a bare relay and to gateways of this process on 127.0.0.1 TCP (no jail, no forwarder); added p50 over direct");
  console.log(`  database round trip (select 1)     ${p50s(small.selectOne)}`);
  console.log(`  EgressDirectory.forSandbox alone   ${p50s(small.forSandbox)}   (once per plain-HTTP request, once per CONNECT)`);
  const breakdown: Array<[string, Latency, Latency, Latency, Latency, Latency]> = [
    ["plain HTTP proxy", small.direct, small.relay, small.stubPlain, small.gatewayPlain, small.jailPlain],
    ["one CONNECT tunnel", small.direct, small.relay, small.gatewayTunnel, small.gatewayTunnel, small.jailTunnel],
    ["new CONNECT per request", fresh.direct, fresh.relay, fresh.stubTunnel, fresh.gatewayTunnel, fresh.jailTunnel],
  ];
  for (const [label, base, bareRelay, stubbed, real, jail] of breakdown) {
    console.log(
      `  ${label.padEnd(24)} bare relay ${added(bareRelay, base)} · gateway ${stubbed === real ? "" : `with the lookup stubbed ${added(stubbed, base)}, with it `}${added(real, base)} · ` +
        `in the jail ${added(jail, base)} (jail and forwarder ${added(jail, real)})`,
    );
  }
  const transferLine = (label: string, figures: typeof download) =>
    `  ${megabytes} MB ${label.padEnd(8)}  direct ${mbps(figures.direct.mbps)} · bare relay ${mbps(figures.relay.mbps)} (${((figures.relay.mbps / figures.direct.mbps) * 100).toFixed(0)}%) · ` +
    `gateway plain ${mbps(figures.gatewayPlain.mbps)}, tunnel ${mbps(figures.gatewayTunnel.mbps)} · in the jail plain ${mbps(figures.jailPlain.mbps)}, tunnel ${mbps(figures.jailTunnel.mbps)}`;
  const cpuLine = (label: string, figures: typeof download) =>
    `  gateway thread CPU per MB, ${label.padEnd(8)}  bare relay ${figures.relay.mainThreadMsPerMb.toFixed(2)} ms · gateway plain ${figures.gatewayPlain.mainThreadMsPerMb.toFixed(2)} ms, tunnel ${figures.gatewayTunnel.mainThreadMsPerMb.toFixed(2)} ms · ` +
    `from the jail plain ${figures.jailPlain.mainThreadMsPerMb.toFixed(2)} ms, tunnel ${figures.jailTunnel.mainThreadMsPerMb.toFixed(2)} ms`;
  console.log(transferLine("download", download));
  console.log(transferLine("upload", upload));
  console.log(cpuLine("download", download));
  console.log(cpuLine("upload", upload));
  console.log(`total     ${secs(performance.now() - benchStarted)}`);
  console.log("=========================================================================");
} catch (error) {
  failed = true;
  console.error(`\nbench:egress failed: ${error instanceof Error ? (error.stack ?? error.message) : errorText(error)}`);
} finally {
  clearTimeout(deadline);
  await cleanups.run();
}
process.exit(failed ? 1 : 0);
