import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createBerthClient } from "../../server/client";
import { createTestDatabase, type TestDatabase } from "../helpers/database";
import { freePort, readyzStatus, startProcess, waitFor, type BerthProcess } from "../helpers/processes";
import { startTestGateway, type TestGateway } from "../helpers/test-gateway";

const KEY = "continuity_key_0123456789abcdefghijklmn";

type Event = { seq: number; type: string; payload: Record<string, unknown> };

/**
 * Session continuity with real processes: the built server, real jails, the scripted gateway. Each
 * test asserts the final event log: every message answered, every tool call with exactly one result,
 * seqs gap-free.
 */
describe("session continuity", () => {
  let database: TestDatabase;
  let gateway: TestGateway;
  let sql: postgres.Sql;
  let dataDir: string;
  let server: (BerthProcess & { port: number }) | undefined;

  beforeAll(async () => {
    database = await createTestDatabase();
    gateway = await startTestGateway();
    sql = postgres(database.url, { max: 2, onnotice: () => {} });
    dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-continuity-"));
  });
  afterAll(async () => {
    server?.child.kill("SIGKILL");
    await sql?.end();
    await gateway?.close();
    await database?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  async function startServer() {
    const port = await freePort();
    const process_ = startProcess(process.execPath, ["build/main.js"], {
      DATABASE_URL: database.url,
      BERTH_DATA_DIR: dataDir,
      PORT: String(port),
      HOST: "127.0.0.1",
      BERTH_ADMIN_API_KEY: KEY,
      LITELLM_BASE_URL: gateway.url,
      BERTH_WARM_POOL_SIZE: "0",
      LOG_LEVEL: "info",
    });
    await waitFor("/readyz", async () => ((await readyzStatus(port)) === 200 ? true : undefined), 60_000);
    server = { ...process_, port };
    return createBerthClient({ url: `http://127.0.0.1:${port}`, apiKey: KEY });
  }

  async function log(sessionId: string): Promise<Event[]> {
    return sql<Event[]>`select seq::int, type::text, payload from session_events where session_id = ${sessionId} order by seq`;
  }

  function assertConsistent(events: Event[]) {
    expect(events.map((event) => event.seq)).toEqual(events.map((_, index) => index + 1));
    const calls = events.filter((event) => event.type === "tool_call").map((event) => event.payload.id);
    const results = events.filter((event) => event.type === "tool_result").map((event) => event.payload.callId);
    expect([...results].sort()).toEqual([...calls].sort());
  }

  async function settled(sessionId: string) {
    await waitFor("every turn to finish", async () => {
      const [row] = await sql<{ open: number }[]>`select count(*) filter (where status in ('queued','running'))::int as open from turns where session_id = ${sessionId}`;
      return row!.open === 0 ? true : undefined;
    }, 60_000);
    return log(sessionId);
  }

  it("a sandbox killed mid-command: the call gets an interrupted result, the session reconnects, the turn finishes", async () => {
    const api = await startServer();
    const agent = await api.agents.create.mutate({ name: "sandbox-killed", model: "test-model" });
    const { id } = await api.sessions.create.mutate({ agentId: agent.id });
    await waitFor("ready", async () => ((await api.sessions.get.query({ sessionId: id })).status === "ready" ? true : undefined));
    const { sandbox } = await api.sessions.get.query({ sessionId: id });
    gateway.script({ toolCalls: [{ name: "bash", arguments: { command: "echo started > started.txt; sleep 20; echo finished" } }] }, { toolCalls: [{ name: "bash", arguments: { command: "cat started.txt" } }] }, { text: "carried on" });
    await api.sessions.send.mutate({ sessionId: id, text: "work" });
    await waitFor("the command to run", async () => ((await api.sessions.readFile.query({ sessionId: id, path: "started.txt" }).catch(() => null)) ? true : undefined), 20_000);
    process.kill(sandbox!.hostPid!, "SIGKILL");

    const events = await settled(id);
    assertConsistent(events);
    const results = events.filter((event) => event.type === "tool_result");
    expect(results[0]!.payload).toMatchObject({ isError: true });
    expect(String(results[0]!.payload.output)).toMatch(/sandbox stopped/);
    // The next call ran in the new generation, on the same workspace.
    expect(results[1]!.payload).toMatchObject({ output: "started\n", isError: false });
    expect(events.filter((event) => event.type === "assistant_message").map((event) => event.payload.text)).toEqual(["carried on"]);
    const statuses = events.filter((event) => event.type === "status").map((event) => event.payload.to);
    expect(statuses).toContain("reconnecting");
    const session = await api.sessions.get.query({ sessionId: id });
    expect(session.sandbox!.generation).toBe(2);
    expect(gateway.violations).toEqual([]);
    server!.child.kill("SIGTERM");
    expect(await server!.exited).toEqual({ code: 0, signal: null });
    server = undefined;
  });

  it("the platform SIGKILLed mid-turn: after a restart the turn finishes from the log, nothing lost or doubled", async () => {
    let api = await startServer();
    const agent = await api.agents.create.mutate({ name: "platform-killed", model: "test-model" });
    const { id } = await api.sessions.create.mutate({ agentId: agent.id });
    await waitFor("ready", async () => ((await api.sessions.get.query({ sessionId: id })).status === "ready" ? true : undefined));
    gateway.script({ toolCalls: [{ name: "bash", arguments: { command: "echo before-crash > mark.txt; sleep 30" } }] }, { toolCalls: [{ name: "bash", arguments: { command: "cat mark.txt" } }] }, { text: "resumed" });
    const accepted = await api.sessions.send.mutate({ sessionId: id, text: "survive this" });
    // The command starts well after its tool_call is logged (sandbox checks, a daemon call): kill only
    // once its first effect is in the workspace, so the crash really lands mid-command.
    await waitFor(
      "the command to run",
      async () => ((await api.sessions.readFile.query({ sessionId: id, path: "mark.txt" }).catch(() => null))?.content === "before-crash\n" ? true : undefined),
      20_000,
    );
    server!.child.kill("SIGKILL");
    await server!.exited;

    api = await startServer();
    const events = await settled(id);
    assertConsistent(events);
    expect(events.find((event) => event.seq === accepted.seq)).toMatchObject({ type: "user_message", payload: { text: "survive this" } });
    const results = events.filter((event) => event.type === "tool_result");
    expect(String(results[0]!.payload.output)).toMatch(/^interrupted/);
    expect(results[1]!.payload).toMatchObject({ output: "before-crash\n", isError: false });
    expect(events.filter((event) => event.type === "assistant_message").map((event) => event.payload.text)).toEqual(["resumed"]);
    expect((await api.sessions.get.query({ sessionId: id })).status).toBe("ready");
    expect(gateway.violations).toEqual([]);
    server!.child.kill("SIGTERM");
    expect(await server!.exited).toEqual({ code: 0, signal: null });
    server = undefined;
  });
});
