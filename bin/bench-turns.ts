/**
 * Message and event-log benchmark: `npm run build && npm run bench:turns [-- --sessions 50 --messages 20 --interval-ms 1000 --warm-up 1]`.
 *
 * Prints figures (no assertions), measured in one run on this machine, everything on 127.0.0.1:
 *   1. message accept latency: the built server (`node build/main.js`) on a fresh database; N sessions
 *      of a `demo` agent each send M messages one after another, all sessions at once, after a warm-up
 *      round (--warm-up messages per session, timed and printed apart: the first message meets cold
 *      code and connections, which a long-running server has long since warmed); every
 *      `sessions.send` round-trip (returns once the message is durable) is timed client-side, over one
 *      keep-alive HTTP connection per session. The CPU the server, Postgres and this client use while
 *      sending is printed beside it (Linux). Then the
 *      time until every turn finished, and the turn latency (finished_at - created_at) from SQL.
 *   2. event-log ingest: `appendEvents` in a transaction (batches of 100, 10 writers each on its own
 *      session) against a raw batched INSERT of the same rows with precomputed seqs.
 *   3. the write floor: a one-row INSERT per message, same sessions and rate, synchronous commit,
 *      straight from this process (no server): what the machine itself gives a durable write.
 *
 * The server runs on this Node, or on BENCH_SERVER_RUNTIME (e.g. a Bun binary: Berth also runs on Bun).
 * Database: an embedded Postgres in a temporary directory, or, when DATABASE_URL is set, a fresh
 * database `berth_bench_<random>` on that server, dropped at the end. See ../shared/DESIGN.md "Targets".
 */
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import type postgres from "postgres";
import { connectDatabase, type DatabaseClient } from "../db/client";
import { migrateDatabase } from "../db/migrate";
import { createBerthClient, type BerthClient } from "../server/client";
import { appendEvents, type EventInput } from "../server/services/event-log";
import {
  cpuFigures,
  mainThreadFigures,
  cpuSnapshot,
  createCleanups,
  errorText,
  makeTempRoot,
  ms,
  percentile,
  prepareDatabase,
  rate,
  secs,
  serverWarnings as warningLines,
  startServer as startBuiltServer,
  waitUntil,
  withTimeout,
  type RunningServer,
} from "./lib/bench";

// ---------------------------------------------------------------------------------------------- options

const { values } = parseArgs({
  options: {
    sessions: { type: "string", default: "50" },
    messages: { type: "string", default: "20" },
    "interval-ms": { type: "string", default: "1000" },
    "warm-up": { type: "string", default: "1" },
  },
});
const sessionCount = Number(values.sessions);
const messageCount = Number(values.messages);
/** Each session sends one message per interval (users typing, not a flood); 0 = back to back (saturation). */
const intervalMs = Number(values["interval-ms"]);
/** Messages each session sends before the timed ones; their accepts are printed apart. */
const warmUpCount = Number(values["warm-up"]);
if (!Number.isInteger(warmUpCount) || warmUpCount < 0 || warmUpCount > 100) throw new Error("--warm-up must be a whole number from 0 to 100");
if (!Number.isInteger(intervalMs) || intervalMs < 0 || intervalMs > 60_000) throw new Error("--interval-ms must be a whole number from 0 to 60000");
if (!Number.isInteger(sessionCount) || sessionCount < 1 || sessionCount > 500) throw new Error("--sessions must be a whole number from 1 to 500");
if (!Number.isInteger(messageCount) || messageCount < 1 || messageCount > 1000) throw new Error("--messages must be a whole number from 1 to 1000");

const INGEST_WRITERS = 10;
const INGEST_BATCH = 100;
const INGEST_SECONDS = 10;
const INGEST_MAX_EVENTS = 200_000;
const READY_TIMEOUT_MS = 90_000;
const SEND_TIMEOUT_MS = 120_000;
const DRAIN_TIMEOUT_MS = 75_000;
const ADMIN_API_KEY = "berth_bench_turns_admin_key_0123456789abcdef";

const serverScript = path.resolve("build/main.js");
if (!existsSync(serverScript)) {
  console.error("bench:turns: build/main.js is missing: run `npm run build` first");
  process.exit(1);
}

// ---------------------------------------------------------------------------------------------- clean-up, database, server

const cleanups = createCleanups();
const cleanUp = () => cleanups.run();
const tempRoot = makeTempRoot("berth-bench-turns-", cleanups);

async function startServer(databaseUrl: string): Promise<RunningServer> {
  return startBuiltServer({ serverScript, databaseUrl, dataDir: path.join(tempRoot, "server-data"), adminApiKey: ADMIN_API_KEY, cleanups });
}

// ---------------------------------------------------------------------------------------------- 1. message accept latency

/**
 * `sessions.send` as one HTTP request in tRPC's wire format (what any HTTP client sends), on a
 * keep-alive connection; resolves once the answer says the message is durable. The typed client
 * would measure more of itself: it holds each call to the next timer tick to batch it, and fetch
 * costs about 2 ms of CPU per call on the two cores the server shares with this process.
 */
function sendMessage(agent: http.Agent, baseUrl: string, sessionId: string, text: string): Promise<void> {
  const body = JSON.stringify({ json: { sessionId, text } });
  return new Promise((resolve, reject) => {
    const request = http.request(
      `${baseUrl}/api/trpc/sessions.send`,
      { method: "POST", agent, headers: { authorization: `Bearer ${ADMIN_API_KEY}`, "content-type": "application/json", "content-length": Buffer.byteLength(body) } },
      (response) => {
        let answer = "";
        response.setEncoding("utf8");
        response.on("data", (chunk: string) => (answer += chunk));
        response.on("end", () => {
          const seq = (JSON.parse(answer) as { result?: { data?: { json?: { seq?: unknown } } } }).result?.data?.json?.seq;
          if (response.statusCode === 200 && typeof seq === "number") resolve();
          else reject(new Error(`sessions.send answered ${response.statusCode}: ${answer.slice(0, 200)}`));
        });
        response.on("error", reject);
      },
    );
    request.on("error", reject);
    request.end(body);
  });
}



type TurnFigures = {
  readyMillis: number;
  sendSamples: number[];
  /** The warm-up messages' accepts (each session's first messages), not in sendSamples. */
  warmUpSamples: number[];
  /** When each sample's send started, in ms from the start of the send phase (same order as sendSamples). */
  sendOffsets: number[];
  /** Wall-clock start of the send phase, to tell whether a minute's maintenance jobs (jobs/crontab.ts) ran inside it. */
  sendStartedAt: Date;
  sendErrors: string[];
  sendWallMillis: number;
  /** Where the CPU went while messages were sent (their turns ran alongside). */
  sendCpu: string;
  /** How the server's event loop thread was scheduled meanwhile. */
  sendMainThread: string;
  /** What the send phase (accepts and their turns) wrote to the WAL, per message. */
  sendWal: string;
  drainAfterLastSendMillis: number;
  drainTotalMillis: number;
  turns: { status: string; count: number }[];
  turnLatency: { avg: number; p50: number; p95: number; max: number; queueAvg: number; runAvg: number };
  shutdown: { exitCode: number | null; signal: string | null; millis: number };
  serverWarnings: string[];
};

async function benchTurns(databaseUrl: string, sql: postgres.Sql): Promise<TurnFigures> {
  const startedAt = performance.now();
  const server = await startServer(databaseUrl);
  console.log(`server up (build/main.js) at ${server.url} in ${secs(performance.now() - startedAt)}`);

  const admin = createBerthClient({ url: server.url, apiKey: ADMIN_API_KEY });
  const agent = await admin.agents.create.mutate({ name: `bench-${randomBytes(4).toString("hex")}`, model: "demo" });
  const clients: BerthClient[] = Array.from({ length: sessionCount }, () => createBerthClient({ url: server.url, apiKey: ADMIN_API_KEY, batch: false }));
  const created = performance.now();
  const sessionIds = await Promise.all(clients.map(async (client, index) => (await client.sessions.create.mutate({ agentId: agent.id, title: `bench ${index}` })).id));

  const pending = new Set(sessionIds);
  await waitUntil(`${sessionCount} sessions to be ready`, READY_TIMEOUT_MS, 200, async () => {
    await Promise.all(
      sessionIds.map(async (sessionId, index) => {
        if (!pending.has(sessionId)) return;
        const session = await clients[index]!.sessions.get.query({ sessionId });
        if (session.status === "failed" || session.status === "terminated") throw new Error(`session ${sessionId} is ${session.status}: ${session.statusReason ?? "no reason"}`);
        if (session.status === "ready") pending.delete(sessionId);
      }),
    );
    return pending.size === 0;
  }).catch((error: unknown) => {
    throw new Error(`${errorText(error)} (${sessionCount - pending.size} of ${sessionCount} ready)`);
  });
  const readyMillis = performance.now() - created;
  console.log(`${sessionCount} sessions ready in ${secs(readyMillis)} (cold sandboxes, warm pool off)`);

  const sendErrors: string[] = [];
  // One keep-alive connection per session, like one user's client; see sendMessage.
  const sendAgent = new http.Agent({ keepAlive: true, maxSockets: sessionCount });
  cleanups.push("send agent", async () => sendAgent.destroy());
  /** Every session sends `count` messages, one per interval from a random phase; each accept is timed. */
  async function sendRound(label: string, count: number, round: { samples: number[]; offsets: number[] }) {
    const roundStarted = performance.now();
    await withTimeout(
      `the ${label}`,
      SEND_TIMEOUT_MS,
      Promise.all(
        sessionIds.map(async (sessionId) => {
          if (intervalMs > 0) await new Promise((resolve) => setTimeout(resolve, Math.random() * intervalMs));
          for (let i = 0; i < count; i++) {
            if (intervalMs > 0 && i > 0) await new Promise((resolve) => setTimeout(resolve, intervalMs));
            const started = performance.now();
            try {
              await sendMessage(sendAgent, server.url, sessionId, `${label} ${i}`);
              round.samples.push(performance.now() - started);
              round.offsets.push(started - roundStarted);
            } catch (error) {
              sendErrors.push(errorText(error));
            }
          }
        }),
      ),
    );
  }

  // Each session's first message meets cold code and cold connections (each Postgres connection
  // compiles the SQL functions on first use): timed apart, so the figures below are the steady state.
  const warmUp = { samples: [] as number[], offsets: [] as number[] };
  if (warmUpCount > 0) {
    await sendRound("warm-up", warmUpCount, warmUp);
    await waitForTurns(sql);
    console.log(`warm-up: ${warmUp.samples.length} messages accepted (p99 ${ms(percentile(warmUp.samples, 99))}), their turns finished`);
  }

  const sent = { samples: [] as number[], offsets: [] as number[] };
  const [timedFrom] = await sql<{ since: Date }[]>`select clock_timestamp() as since`;
  const since = timedFrom!.since;
  const walBefore = await walSnapshot(sql);
  const cpuBefore = cpuSnapshot(server.child.pid);
  const sendStarted = performance.now();
  const sendStartedAt = new Date();
  await sendRound("hello", messageCount, sent);
  const sendSamples = sent.samples;
  const sendOffsets = sent.offsets;
  const lastSendAt = performance.now();
  const cpuAfter = cpuSnapshot(server.child.pid);
  const walAfter = await walSnapshot(sql);
  const sendWallMillis = lastSendAt - sendStarted;
  console.log(`${sendSamples.length} messages accepted in ${secs(sendWallMillis)} (${sendErrors.length} errors)`);

  await waitForTurns(sql);
  const drainedAt = performance.now();
  console.log(`all turns finished ${secs(drainedAt - lastSendAt)} after the last send`);

  const turns = await sql<{ status: string; count: number }[]>`select status::text as status, count(*)::int as count from turns group by status order by status`;
  const [latency] = await sql<{ avg: number; p50: number; p95: number; max: number; queue_avg: number; run_avg: number }[]>`
    select
      avg(extract(epoch from finished_at - created_at) * 1000)::float8 as avg,
      percentile_cont(0.5) within group (order by extract(epoch from finished_at - created_at) * 1000)::float8 as p50,
      percentile_cont(0.95) within group (order by extract(epoch from finished_at - created_at) * 1000)::float8 as p95,
      max(extract(epoch from finished_at - created_at) * 1000)::float8 as max,
      avg(extract(epoch from started_at - created_at) * 1000)::float8 as queue_avg,
      avg(extract(epoch from finished_at - started_at) * 1000)::float8 as run_avg
    from turns where finished_at is not null and created_at >= ${since}`;

  const shutdown = await server.stop();
  const serverWarnings = warningLines(server.logLines);
  return {
    readyMillis,
    sendSamples,
    warmUpSamples: warmUp.samples,
    sendOffsets,
    sendStartedAt,
    sendErrors,
    sendWallMillis,
    sendCpu: cpuFigures(cpuBefore, cpuAfter, sendWallMillis, Math.max(1, sendSamples.length), "message"),
    sendMainThread: mainThreadFigures(cpuBefore, cpuAfter, Math.max(1, sendSamples.length), "message"),
    sendWal: walFigures(walBefore, walAfter, Math.max(1, sendSamples.length)),
    drainAfterLastSendMillis: drainedAt - lastSendAt,
    drainTotalMillis: drainedAt - sendStarted,
    turns,
    turnLatency: {
      avg: latency?.avg ?? Number.NaN,
      p50: latency?.p50 ?? Number.NaN,
      p95: latency?.p95 ?? Number.NaN,
      max: latency?.max ?? Number.NaN,
      queueAvg: latency?.queue_avg ?? Number.NaN,
      runAvg: latency?.run_avg ?? Number.NaN,
    },
    shutdown,
    serverWarnings,
  };
}

/**
 * Where the accept tail sits in time: the slowest seconds of the send phase, and whether the
 * minute's maintenance jobs (reconciliation health-checks every jail) started inside it. Whether a
 * 20 s window holds a minute boundary is chance, and it moves the p99 between runs.
 */
function sendTailBySecond(turns: TurnFigures): string {
  const bySecond = new Map<number, number[]>();
  turns.sendSamples.forEach((sample, index) => {
    const second = Math.floor(turns.sendOffsets[index]! / 1000);
    bySecond.set(second, [...(bySecond.get(second) ?? []), sample]);
  });
  const worst = [...bySecond.entries()]
    .map(([second, samples]) => ({ second, max: Math.max(...samples), over: samples.filter((sample) => sample > 15).length }))
    .sort((a, b) => b.max - a.max)
    .slice(0, 3)
    .map(({ second, max, over }) => `+${second}s max ${ms(max)} (${over} over 15 ms)`);
  const start = turns.sendStartedAt.getTime();
  const nextMinute = Math.ceil(start / 60_000) * 60_000;
  const cron = nextMinute - start <= turns.sendWallMillis ? `maintenance cron at +${Math.floor((nextMinute - start) / 1000)}s` : "no maintenance cron inside";
  return `${worst.join(", ")}; ${cron}`;
}

type WalSnapshot = { records: number; fullPageImages: number; bytes: number } | null;

/** The server's WAL counters (pg_stat_wal, Postgres 14 and later; null before). */
async function walSnapshot(sql: postgres.Sql): Promise<WalSnapshot> {
  try {
    const [row] = await sql<{ records: string; fpi: string; bytes: string }[]>`select wal_records::text as records, wal_fpi::text as fpi, wal_bytes::text as bytes from pg_stat_wal`;
    return row ? { records: Number(row.records), fullPageImages: Number(row.fpi), bytes: Number(row.bytes) } : null;
  } catch {
    return null;
  }
}

function walFigures(before: WalSnapshot, after: WalSnapshot, messages: number): string {
  if (!before || !after) return "n/a (pg_stat_wal needs Postgres 14 or later)";
  const per = (value: number) => (value / messages).toFixed(1);
  return `${per(after.records - before.records)} records, ${per(after.fullPageImages - before.fullPageImages)} full-page images, ${((after.bytes - before.bytes) / messages / 1024).toFixed(1)} KiB per message (the whole server: accepts and turns)`;
}

async function waitForTurns(sql: postgres.Sql): Promise<void> {
  let open = -1;
  await waitUntil("every turn to finish", DRAIN_TIMEOUT_MS, 50, async () => {
    const [row] = await sql<{ open: number }[]>`select count(*)::int as open from turns where status in ('queued', 'running')`;
    open = row!.open;
    return open === 0;
  }).catch((error: unknown) => {
    throw new Error(`${errorText(error)} (${open} turns still queued or running)`);
  });
}

// ---------------------------------------------------------------------------------------------- 3. the machine's floor

/**
 * What one durable write costs on this machine at the accept phase's shape: the same number of
 * clients, each on its own connection, each writing one row per interval from a random phase, with
 * synchronous commit, from this Node process, with no HTTP and no Berth code in the way. An accept
 * cannot be faster than this; its figures say how much of the accept's tail is the machine (CPU
 * wake-ups, the WAL flush) rather than the server.
 */
async function benchDurableWriteFloor(databaseUrl: string): Promise<number[]> {
  const floor = connectDatabase(databaseUrl, { max: sessionCount, applicationName: "berth-bench-floor" });
  const samples: number[] = [];
  try {
    await floor.sql`create table bench_write_floor (id bigserial primary key, client integer not null, text text not null, at timestamptz not null default now())`;
    const clients = Array.from({ length: sessionCount }, (_, client) => client);
    // Untimed: every connection opened and the statement prepared, like the accept's warm-up round.
    await Promise.all(clients.map((client) => floor.sql`insert into bench_write_floor (client, text) values (${client}, 'warm-up')`));
    await Promise.all(
      clients.map(async (client) => {
        if (intervalMs > 0) await new Promise((resolve) => setTimeout(resolve, Math.random() * intervalMs));
        for (let i = 0; i < messageCount; i++) {
          if (intervalMs > 0 && i > 0) await new Promise((resolve) => setTimeout(resolve, intervalMs));
          const started = performance.now();
          await floor.sql`insert into bench_write_floor (client, text) values (${client}, ${`hello ${i}`})`;
          samples.push(performance.now() - started);
        }
      }),
    );
    await floor.sql`drop table bench_write_floor`;
  } finally {
    await floor.close();
  }
  return samples;
}

// ---------------------------------------------------------------------------------------------- 2. event ingest

type IngestFigures = { events: number; millis: number; perSecond: number; batchP50: number; batchP99: number };

const OUTPUT = "x".repeat(40) + " line of tool output that stands in for what a command printed, padded to about two hundred characters " + "y".repeat(56);

function toolResult(callId: string): { callId: string; output: string; isError: false } {
  return { callId, output: OUTPUT, isError: false };
}

/** A team, an agent and its version, and `count` sessions, inserted directly. */
async function ingestSessions(sql: postgres.Sql, count: number): Promise<{ teamId: string; sessionIds: string[] }> {
  const suffix = randomBytes(4).toString("hex");
  const [team] = await sql<{ id: string }[]>`insert into teams (slug, name) values (${`bench-ingest-${suffix}`}, 'bench ingest') returning id`;
  const [agent] = await sql<{ id: string }[]>`insert into agents (team_id, name) values (${team!.id}, ${`ingest-${suffix}`}) returning id`;
  await sql`insert into agent_versions (agent_id, version, team_id, model) values (${agent!.id}, 1, ${team!.id}, 'demo')`;
  const rows = Array.from({ length: count }, (_, index) => ({ team_id: team!.id, agent_id: agent!.id, agent_version: 1, title: `ingest ${index}`, status: "ready" }));
  const sessions = await sql<{ id: string }[]>`insert into sessions ${sql(rows)} returning id`;
  return { teamId: team!.id, sessionIds: sessions.map((row) => row.id) };
}

/** `writers` loops, each writing batches to its own session, until the time or event budget is spent. */
async function runWriters(sessionIds: string[], writeBatch: (sessionId: string, writer: number, batch: number) => Promise<void>): Promise<IngestFigures> {
  // Warm-up (not counted): connections, prepared statements.
  await Promise.all(sessionIds.map((sessionId, writer) => writeBatch(sessionId, writer, -1)));
  let events = 0;
  const batchMillis: number[] = [];
  const started = performance.now();
  const deadline = started + INGEST_SECONDS * 1000;
  await Promise.all(
    sessionIds.map(async (sessionId, writer) => {
      // A writer claims its batch before writing it, so the total never exceeds the budget.
      for (let batch = 0; performance.now() < deadline && events + INGEST_BATCH <= INGEST_MAX_EVENTS; batch++) {
        events += INGEST_BATCH;
        const batchStarted = performance.now();
        await writeBatch(sessionId, writer, batch);
        batchMillis.push(performance.now() - batchStarted);
      }
    }),
  );
  const millis = performance.now() - started;
  return { events, millis, perSecond: (events / millis) * 1000, batchP50: percentile(batchMillis, 50), batchP99: percentile(batchMillis, 99) };
}

async function benchIngest(client: DatabaseClient): Promise<{ appendEvents: IngestFigures; raw: IngestFigures }> {
  const { teamId, sessionIds } = await ingestSessions(client.sql, INGEST_WRITERS * 2);
  const serviceSessions = sessionIds.slice(0, INGEST_WRITERS);
  const rawSessions = sessionIds.slice(INGEST_WRITERS);

  const viaService = await runWriters(serviceSessions, async (sessionId, writer, batch) => {
    const events: EventInput[] = Array.from({ length: INGEST_BATCH }, (_, index) => ({ type: "tool_result", payload: toolResult(`call_${writer}_${batch}_${index}`) }));
    await client.db.transaction(async (tx) => {
      await appendEvents(tx, sessionId, events);
    });
  });
  console.log(`appendEvents: ${viaService.events} events in ${secs(viaService.millis)}`);

  const nextSeq = new Map(rawSessions.map((sessionId) => [sessionId, 1]));
  const raw = await runWriters(rawSessions, async (sessionId, writer, batch) => {
    const first = nextSeq.get(sessionId)!;
    nextSeq.set(sessionId, first + INGEST_BATCH);
    const rows = Array.from({ length: INGEST_BATCH }, (_, index) => ({
      session_id: sessionId,
      seq: first + index,
      team_id: teamId,
      type: "tool_result",
      // Like drizzle: jsonb travels as JSON text.
      payload: JSON.stringify(toolResult(`call_${writer}_${batch}_${index}`)),
    }));
    await client.sql`insert into session_events ${client.sql(rows)}`;
  });
  console.log(`raw INSERT:   ${raw.events} events in ${secs(raw.millis)}`);
  return { appendEvents: viaService, raw };
}

// ---------------------------------------------------------------------------------------------- main

const benchStarted = performance.now();
let failed = false;
try {
  console.log(
    `Turn and event-log benchmark: ${sessionCount} sessions x ${messageCount} messages, one per ${intervalMs} ms per session; ingest ${INGEST_WRITERS} writers x batches of ${INGEST_BATCH}, ` +
      `${INGEST_SECONDS} s or ${INGEST_MAX_EVENTS.toLocaleString("en-US")} events each; ${os.cpus().length} CPUs, ${process.release.name} ${process.version}`,
  );
  const database = await prepareDatabase({ tempRoot, namePrefix: "berth_bench_", cleanups });
  const migrateStarted = performance.now();
  await migrateDatabase(database.url);
  console.log(`database: ${database.description}; migrated in ${secs(performance.now() - migrateStarted)}`);

  const client = connectDatabase(database.url, { max: INGEST_WRITERS, applicationName: "berth-bench" });
  cleanups.push("database pool", () => client.close());

  console.log("\n== 1. message accept latency");
  const turns = await benchTurns(database.url, client.sql);
  console.log("\n== 2. event-log ingest");
  const ingest = await benchIngest(client);
  console.log("\n== 3. one durable INSERT per message, same shape, no server");
  const floor = await benchDurableWriteFloor(database.url);

  const sends = turns.sendSamples;
  const lines = [
    "",
    "================================ summary ================================",
    `machine            ${os.cpus().length} CPUs, ${process.release.name} ${process.version}; ${database.description}`,
    `server runtime     ${process.env.BENCH_SERVER_RUNTIME ? `${process.env.BENCH_SERVER_RUNTIME} (BENCH_SERVER_RUNTIME)` : `${process.release.name} ${process.version}`}`,
    `sessions ready     ${sessionCount} in ${secs(turns.readyMillis)}`,
    `send accepted      n=${sends.length} errors=${turns.sendErrors.length}  p50 ${ms(percentile(sends, 50))}  p95 ${ms(percentile(sends, 95))}  ` +
      `p99 ${ms(percentile(sends, 99))}  max ${ms(sends.length ? Math.max(...sends) : Number.NaN)}`,
    `send tail          ${sendTailBySecond(turns)}`,
    `write floor        n=${floor.length}  p50 ${ms(percentile(floor, 50))}  p95 ${ms(percentile(floor, 95))}  p99 ${ms(percentile(floor, 99))}  max ${ms(floor.length ? Math.max(...floor) : Number.NaN)}  ` +
      `(one-row INSERT per message from this client, same sessions, rate and synchronous commit, no HTTP: an accept's lower bound on this machine)`,
    `warm-up accepted   ${turns.warmUpSamples.length === 0 ? "none (--warm-up 0: the figures above include each session's first message)" : `n=${turns.warmUpSamples.length} (${warmUpCount} per session, before the timed messages)  p50 ${ms(percentile(turns.warmUpSamples, 50))}  p99 ${ms(percentile(turns.warmUpSamples, 99))}  max ${ms(Math.max(...turns.warmUpSamples))}`}`,
    `send throughput    ${rate((sends.length / turns.sendWallMillis) * 1000)} messages (${sessionCount} concurrent sessions, wall ${secs(turns.sendWallMillis)})`,
    `send-phase CPU     ${turns.sendCpu}`,
    `server main thread ${turns.sendMainThread}`,
    `send-phase WAL     ${turns.sendWal}`,
    `turn drain         ${secs(turns.drainAfterLastSendMillis)} after the last send (${secs(turns.drainTotalMillis)} from the first)`,
    `turns              ${turns.turns.map((row) => `${row.status}=${row.count}`).join(" ")}`,
    `turn latency       avg ${ms(turns.turnLatency.avg)}  p50 ${ms(turns.turnLatency.p50)}  p95 ${ms(turns.turnLatency.p95)}  max ${ms(turns.turnLatency.max)}  ` +
      `(queued avg ${ms(turns.turnLatency.queueAvg)}, running avg ${ms(turns.turnLatency.runAvg)})`,
    `server shutdown    ${turns.shutdown.signal ?? `exit ${turns.shutdown.exitCode}`} after ${secs(turns.shutdown.millis)}; ${turns.serverWarnings.length} warn/error log lines`,
    `ingest appendEvents ${rate(ingest.appendEvents.perSecond)} events (${ingest.appendEvents.events} in ${secs(ingest.appendEvents.millis)}; batch p50 ${ms(ingest.appendEvents.batchP50)} p99 ${ms(ingest.appendEvents.batchP99)})`,
    `ingest raw INSERT  ${rate(ingest.raw.perSecond)} events (${ingest.raw.events} in ${secs(ingest.raw.millis)}; batch p50 ${ms(ingest.raw.batchP50)} p99 ${ms(ingest.raw.batchP99)})`,
    `ingest ratio       raw / appendEvents = ${(ingest.raw.perSecond / ingest.appendEvents.perSecond).toFixed(2)}x`,
    `total              ${secs(performance.now() - benchStarted)}`,
    "=========================================================================",
  ];
  console.log(lines.join("\n"));
  if (turns.sendErrors.length > 0) {
    const distinct = [...new Set(turns.sendErrors)];
    console.log(`\nsend errors (${distinct.length} distinct):\n  ${distinct.slice(0, 5).join("\n  ")}`);
  }
  if (turns.serverWarnings.length > 0) {
    console.log(`\nserver warn/error log lines (first 5 of ${turns.serverWarnings.length}):\n  ${turns.serverWarnings.slice(0, 5).join("\n  ")}`);
  }
} catch (error) {
  failed = true;
  console.error(`\nbench:turns failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
} finally {
  await cleanUp();
}
process.exit(failed ? 1 : 0);
