import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureApplicationDatabase, startEmbeddedPostgres, type EmbeddedPostgres } from "../../db/embedded";
import { createBerthClient, TRPCClientError } from "../../server/client";
import { createLogger } from "../../server/logger";
import { freePort, readyzStatus, startProcess, waitFor, type BerthProcess } from "../helpers/processes";

const KEY = "outage_test_key_0123456789abcdefghijklm";
const logger = createLogger("silent");

type Ack = { sessionId: string; seq: number; text: string };

/**
 * Postgres restarted under traffic: a real Postgres server of our own (stopped and started on the
 * same port), the built Berth process against it, messages sent throughout. The process must not
 * crash, calls during the outage must fail fast with SERVICE_UNAVAILABLE, and afterwards every
 * acknowledged message must be in the log with its turn finished, nothing doubled.
 */
describe("a database restart under traffic", () => {
  let dataDir: string;
  let pgDataDir: string;
  let pgPort: number;
  let database: EmbeddedPostgres | undefined;
  let server: BerthProcess | undefined;

  beforeAll(async () => {
    dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-outage-"));
    pgDataDir = mkdtempSync(path.join(os.tmpdir(), "berth-outage-pg-"));
    pgPort = await freePort();
    database = await startEmbeddedPostgres({ dataDir: pgDataDir, logger, port: pgPort });
    await ensureApplicationDatabase(database.url);
  });
  afterAll(async () => {
    server?.child.kill("SIGKILL");
    await database?.stop();
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(pgDataDir, { recursive: true, force: true });
  });

  it("keeps running, fails calls fast while Postgres is down, and loses nothing", { timeout: 180_000 }, async () => {
    const port = await freePort();
    server = startProcess(process.execPath, ["build/main.js"], {
      DATABASE_URL: database!.url,
      BERTH_DATA_DIR: dataDir,
      PORT: String(port),
      HOST: "127.0.0.1",
      BERTH_ADMIN_API_KEY: KEY,
      BERTH_WARM_POOL_SIZE: "0",
      LOG_LEVEL: "warn",
    });
    await waitFor("/readyz", async () => ((await readyzStatus(port)) === 200 ? true : undefined), 60_000);
    const api = createBerthClient({ url: `http://127.0.0.1:${port}`, apiKey: KEY });
    const agent = await api.agents.create.mutate({ name: "outage", model: "demo" });
    const sessionIds: string[] = [];
    for (let i = 0; i < 3; i++) sessionIds.push((await api.sessions.create.mutate({ agentId: agent.id })).id);
    await waitFor("sessions ready", async () => {
      const sessions = await Promise.all(sessionIds.map((sessionId) => api.sessions.get.query({ sessionId })));
      return sessions.every((session) => session.status === "ready") ? true : undefined;
    });

    const acks: Ack[] = [];
    const failures: { code: string; ms: number; at: number }[] = [];
    const t0 = Date.now();
    const marks: Record<string, number> = {};
    let sending = true;
    const senders = sessionIds.map(async (sessionId, index) => {
      for (let i = 0; sending; i++) {
        const text = `run: echo s${index}-m${i}`;
        const started = performance.now();
        try {
          const { seq } = await api.sessions.send.mutate({ sessionId, text });
          acks.push({ sessionId, seq, text });
        } catch (error) {
          const code = error instanceof TRPCClientError ? String((error.data as { code?: string } | undefined)?.code ?? error.message) : String(error);
          failures.push({ code, ms: performance.now() - started, at: Date.now() - t0 });
        }
        await new Promise((resolve) => setTimeout(resolve, 150));
      }
    });

    await waitFor("traffic before the outage", () => (acks.length >= 9 ? true : undefined), 30_000);
    marks.stop = Date.now() - t0;
    await database!.stop();
    marks.stopped = Date.now() - t0;
    database = undefined;
    const outageStarted = Date.now();
    await waitFor("calls to fail during the outage", () => (failures.length >= 6 ? true : undefined), 30_000);
    // One probe may not answer in time (the server's database check can take most of the helper's
    // 2 s): ask until it says 503, for a bounded time (the database stays down until it does).
    let readyDuringOutage: number | undefined;
    await waitFor("/readyz to report the outage", async () => ((readyDuringOutage = await readyzStatus(port)) === 503 ? true : undefined), 10_000).catch(() => {});
    if (readyDuringOutage !== 503) {
      throw new Error(`/readyz during the outage: ${readyDuringOutage}; exit ${server.child.exitCode} ${server.child.signalCode}; output: ${server.output().split("\n").filter((line) => /"level":(50|60)|fatal|Error:/.test(line)).slice(-8).join("\n").slice(-5000)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, 3_000 - (Date.now() - outageStarted))));
    database = await startEmbeddedPostgres({ dataDir: pgDataDir, logger, port: pgPort });
    const acksAtRestart = acks.length;
    marks.restarted = Date.now() - t0;
    await waitFor("traffic to be accepted again", () => (acks.length >= acksAtRestart + 9 ? true : undefined), 60_000).catch((error: unknown) => {
      throw new Error(`${(error as Error).message}; failures since: ${JSON.stringify(failures.slice(-5))}; exit ${server!.child.exitCode} ${server!.child.signalCode}; server output: ${server!.output().split("\n").filter((line) => /"level":(50|60)|fatal|Error:/.test(line)).slice(-12).join("\n").slice(-6000)}`);
    });
    sending = false;
    await Promise.all(senders);

    // The process never stopped, and is ready again without a restart.
    expect(server.child.exitCode).toBeNull();
    await waitFor("/readyz again", async () => ((await readyzStatus(port)) === 200 ? true : undefined), 30_000);
    // Calls during the outage failed fast and said why.
    expect(failures.length).toBeGreaterThan(0);
    const serverErrors = () => server!.output().split("\n").filter((line) => /"level":(50|60)|fatal|Error:/.test(line)).slice(-8).join("\n").slice(-6000);
    expect(new Set(failures.map((failure) => failure.code)), `codes of the failed calls; the server's errors: ${serverErrors()}`).toEqual(new Set(["SERVICE_UNAVAILABLE"]));
    expect(Math.max(...failures.map((failure) => failure.ms)), JSON.stringify({ marks, failures: failures.map((f) => [Math.round(f.at), Math.round(f.ms), f.code]) })).toBeLessThan(10_000);

    const sql = postgres(database.url, { max: 2, onnotice: () => {} });
    try {
      await waitFor("every turn to finish", async () => {
        const [row] = await sql<{ open: number }[]>`select count(*)::int as open from turns where status in ('queued', 'running')`;
        return row!.open === 0 ? true : undefined;
      }, 90_000);
      for (const sessionId of sessionIds) {
        const events = await sql<{ seq: number; type: string; payload: { text?: string; id?: string; callId?: string } }[]>`
          select seq::int, type::text, payload from session_events where session_id = ${sessionId} order by seq`;
        expect(events.map((event) => event.seq)).toEqual(events.map((_, index) => index + 1));
        for (const ack of acks.filter((candidate) => candidate.sessionId === sessionId)) {
          expect(events.find((event) => event.seq === ack.seq)).toMatchObject({ type: "user_message", payload: { text: ack.text } });
        }
        const calls = events.filter((event) => event.type === "tool_call").map((event) => event.payload.id);
        const results = events.filter((event) => event.type === "tool_result").map((event) => event.payload.callId);
        expect(new Set(calls).size).toBe(calls.length);
        expect([...results].sort()).toEqual([...calls].sort());
        const [turns] = await sql<{ total: number; unfinished: number }[]>`
          select count(*)::int as total, count(*) filter (where status not in ('completed', 'failed', 'aborted'))::int as unfinished
          from turns where session_id = ${sessionId}`;
        expect(turns!.unfinished).toBe(0);
        expect(turns!.total).toBe(events.filter((event) => event.type === "user_message").length);
      }
    } finally {
      await sql.end();
    }
    server.child.kill("SIGTERM");
    expect(await server.exited).toEqual({ code: 0, signal: null });
    server = undefined;
  });
});
