import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eq } from "drizzle-orm";
import { connectDatabase, type DatabaseClient } from "../../db/client";
import { agents, agentVersions, sessionEvents, sessions, teams, turns } from "../../db/schema";
import { createTestDatabase, type TestDatabase } from "../../tests/helpers/database";
import { Writable } from "node:stream";
import { createLogger } from "../logger";
import { EventBus } from "./event-bus";
import { MAX_TURN_RUNS, TurnRunner, TurnStore, TurnSupersededError, type Harness } from "./turns";

/**
 * The turn bookkeeping of db/migrations/0005_turn_functions.sql, each step one statement, against a
 * real database: what a turn's start and end write, and the turn row as the functions return it.
 */
describe("TurnStore on the SQL turn functions", () => {
  let database: TestDatabase;
  let client: DatabaseClient;
  let store: TurnStore;
  let teamId: string;
  let agentId: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    client = connectDatabase(database.url, { max: 4 });
    store = new TurnStore(client.db);
    const [team] = await client.db.insert(teams).values({ slug: "turns", name: "Turns" }).returning();
    teamId = team!.id;
    const [agent] = await client.db.insert(agents).values({ teamId, name: "a" }).returning();
    agentId = agent!.id;
    await client.db.insert(agentVersions).values({ agentId, teamId, version: 1, model: "demo" });
  });
  afterAll(async () => {
    await client?.close();
    await database?.drop();
  });

  async function sessionWithMessages(status: "ready" | "running" | "terminated", texts: string[]) {
    const [session] = await client.db.insert(sessions).values({ teamId, agentId, agentVersion: 1, status }).returning();
    const turnIds: string[] = [];
    for (const text of texts) {
      const [row] = await client.sql<{ accepted_turn_id: string }[]>`select * from berth_accept_message(${teamId}::uuid, ${session!.id}::uuid, ${text}, null)`;
      turnIds.push(row!.accepted_turn_id);
    }
    return { sessionId: session!.id, turnIds };
  }

  const log = async (sessionId: string) =>
    (await client.db.select({ seq: sessionEvents.seq, type: sessionEvents.type, payload: sessionEvents.payload }).from(sessionEvents).where(eq(sessionEvents.sessionId, sessionId)).orderBy(sessionEvents.seq));

  it("starts the oldest queued turn, moves the session to running, and returns the row a select returns", async () => {
    const { sessionId, turnIds } = await sessionWithMessages("ready", ["first", "second"]);
    const next = await store.startNext(sessionId);
    expect(next).not.toBeNull();
    expect(next!.turn.id).toBe(turnIds[0]);
    expect(next!.resumed).toBe(false);
    expect(next!.sessionStatus).toBe("running");
    expect(next!.agent).toMatchObject({ agentId, version: 1, model: "demo" });
    // The function's turn row and drizzle's are the same object (a column added to one but not the other fails here).
    expect(next!.turn).toEqual(await store.get(turnIds[0]!));
    expect(next!.turn).toMatchObject({ status: "running", startSeq: 2, userSeq: 1, costUsd: "0.000000" });
    expect((await log(sessionId)).map((event) => event.type)).toEqual(["user_message", "user_message", "status"]);
    expect((await log(sessionId))[2]!.payload).toEqual({ from: "ready", to: "running" });

    // Running again resumes the same turn, and the session's status event is not repeated.
    const again = await store.startNext(sessionId);
    expect(again!.turn.id).toBe(turnIds[0]);
    expect(again!.resumed).toBe(true);
    expect(await log(sessionId)).toHaveLength(3);
  });

  it("finishes with usage totals, stays running while a message waits, and goes ready after the last", async () => {
    const { sessionId, turnIds } = await sessionWithMessages("ready", ["first", "second"]);
    const first = (await store.startNext(sessionId))!;
    await store.recordStep(first.turn, [{ type: "tool_call", payload: { id: "c1", name: "bash", input: { command: "true" } } }], { promptTokens: 10, completionTokens: 2, cost: 0.0015 });
    await store.finish(first.turn, { status: "completed", events: [{ type: "assistant_message", payload: { text: "one" } }], usage: { promptTokens: 5, completionTokens: 1 } });
    let events = await log(sessionId);
    expect(events.slice(-2).map((event) => event.type)).toEqual(["assistant_message", "usage"]);
    expect(events.at(-1)!.payload).toEqual({ promptTokens: 15, completionTokens: 3, cost: 0.0015 });
    const [afterFirst] = await client.db.select().from(sessions).where(eq(sessions.id, sessionId));
    expect(afterFirst).toMatchObject({ status: "running", promptTokens: 15, completionTokens: 3, costUsd: "0.001500" });
    expect((await store.get(turnIds[0]!)).status).toBe("completed");

    // Finishing a turn that is no longer running writes nothing.
    await store.finish(first.turn, { status: "failed", error: "late" });
    expect(await log(sessionId)).toHaveLength(events.length);

    const second = (await store.startNext(sessionId))!;
    expect(second.turn.id).toBe(turnIds[1]);
    await store.finish(second.turn, { status: "failed", error: "the model failed" });
    events = await log(sessionId);
    // A failed turn that used no tokens reports no usage; its error comes before the move to ready.
    expect(events.slice(-3)).toMatchObject([
      { type: "usage", payload: { promptTokens: 15, completionTokens: 3 } },
      { type: "error", payload: { message: "the model failed" } },
      { type: "status", payload: { from: "running", to: "ready" } },
    ]);
    const seqs = events.map((event) => event.seq);
    expect(seqs).toEqual(seqs.map((_, index) => index + 1));
    const [afterSecond] = await client.db.select().from(sessions).where(eq(sessions.id, sessionId));
    expect(afterSecond).toMatchObject({ status: "ready", statusReason: null, lastSeq: seqs.length });
    expect(await store.startNext(sessionId)).toBeNull();

    // The model's history: conversation events only, in seq order, and every turn.
    const history = await store.history(sessionId);
    expect(history.events.map((event) => [event.seq, event.type])).toEqual(
      events.filter((event) => ["user_message", "assistant_message", "tool_call", "tool_result"].includes(event.type)).map((event) => [event.seq, event.type]),
    );
    expect(history.events[0]).toEqual({ seq: 1, type: "user_message", payload: { text: "first" } });
    expect(history.turns.sort((a, b) => a.userSeq - b.userSeq)).toEqual([
      { userSeq: 1, startSeq: 2 },
      { userSeq: 2, startSeq: 6 },
    ]);
    const { sessionId: empty } = await sessionWithMessages("ready", []);
    expect(await store.history(empty)).toEqual({ events: [], turns: [] });
  });

  it("refuses a finish with an invalid event before writing anything", async () => {
    const { sessionId } = await sessionWithMessages("ready", ["hi"]);
    const next = (await store.startNext(sessionId))!;
    const before = await log(sessionId);
    await expect(store.finish(next.turn, { status: "completed", events: [{ type: "assistant_message", payload: { text: 42 } } as never] })).rejects.toThrow();
    expect(await log(sessionId)).toEqual(before);
    expect((await store.get(next.turn.id)).status).toBe("running");
  });

  it("aborts the open turns of a terminated session instead of starting one", async () => {
    const { sessionId, turnIds } = await sessionWithMessages("ready", ["one", "two"]);
    await client.db.update(sessions).set({ status: "terminated" }).where(eq(sessions.id, sessionId));
    expect(await store.startNext(sessionId)).toBeNull();
    const rows = await client.db.select().from(turns).where(eq(turns.sessionId, sessionId));
    expect(rows.map((row) => [row.id, row.status, row.error]).sort()).toEqual(turnIds.map((id) => [id, "aborted", "the session is terminated"]).sort());
  });

  it("records a turn's steps only for the run that holds it: a resume fences off the run it took over from", async () => {
    const { sessionId, turnIds } = await sessionWithMessages("ready", ["fenced", "next"]);
    const first = (await store.startNext(sessionId))!;
    expect(first.turn.run).toBe(1);
    await store.recordStep(first.turn, [{ type: "tool_call", payload: { id: "c1", name: "bash", input: { command: "true" } } }], { promptTokens: 3, completionTokens: 1 });

    // Another run resumes the turn (another replica, after a lock mix-up) while the first still works.
    const second = (await store.startNext(sessionId))!;
    expect(second).toMatchObject({ resumed: true, turn: { id: turnIds[0], run: 2, steps: 1 } });
    const before = await log(sessionId);
    const [sessionBefore] = await client.db.select().from(sessions).where(eq(sessions.id, sessionId));

    // The first run's writes are refused, and nothing of them is written.
    const refused = store.append(first.turn, [{ type: "tool_result", payload: { callId: "c1", output: "late", isError: false } }]);
    await expect(refused).rejects.toBeInstanceOf(TurnSupersededError);
    await expect(refused).rejects.toThrow(/held by run 2, not run 1/);
    await expect(store.recordStep(first.turn, [], { promptTokens: 100, completionTokens: 100 })).rejects.toBeInstanceOf(TurnSupersededError);
    await expect(store.finish(first.turn, { status: "completed", events: [{ type: "assistant_message", payload: { text: "late" } }] })).rejects.toBeInstanceOf(TurnSupersededError);
    expect(await log(sessionId)).toEqual(before);
    const [sessionAfter] = await client.db.select().from(sessions).where(eq(sessions.id, sessionId));
    expect(sessionAfter).toEqual(sessionBefore);
    expect(await store.get(turnIds[0]!)).toMatchObject({ status: "running", run: 2, steps: 1, promptTokens: 3 });

    // The run that holds the turn records and ends it; then its writes are refused too.
    await store.append(second.turn, [{ type: "tool_result", payload: { callId: "c1", output: "once", isError: false } }]);
    expect(await store.finish(second.turn, { status: "completed", events: [{ type: "assistant_message", payload: { text: "done" } }] })).toBe(true);
    await expect(store.append(second.turn, [{ type: "assistant_message", payload: { text: "after" } }])).rejects.toThrow(/no longer running/);
    expect(await store.finish(second.turn, { status: "failed", error: "late" })).toBe(false);
    const results = (await log(sessionId)).filter((event) => event.type === "tool_result");
    expect(results.map((event) => event.payload)).toEqual([{ callId: "c1", output: "once", isError: false }]);

    // The next turn starts at run 1 of its own.
    expect((await store.startNext(sessionId))!.turn).toMatchObject({ id: turnIds[1], run: 1 });
  });

  it("writes a harness's state only for the run that holds the turn: an overtaken run neither sets nor clears it", async () => {
    const { sessionId, turnIds } = await sessionWithMessages("ready", ["cli"]);
    const first = (await store.startNext(sessionId))!;
    await store.setHarnessState(first.turn, "codex", { runningTurn: turnIds[0], threadId: "t1" });
    const second = (await store.startNext(sessionId))!;
    expect(second.turn.run).toBe(2);
    await store.setHarnessState(second.turn, "codex", { threadId: "t2" });

    await expect(store.setHarnessState(first.turn, "codex", { threadId: "stale" })).rejects.toThrow(/held by run 2, not run 1/);
    await expect(store.clearRunningTurn(first.turn, "codex")).rejects.toBeInstanceOf(TurnSupersededError);
    expect(await store.harnessState(sessionId, "codex")).toEqual({ runningTurn: turnIds[0], threadId: "t2" });

    await store.clearRunningTurn(second.turn, "codex");
    expect(await store.harnessState(sessionId, "codex")).toEqual({ threadId: "t2" });
    expect(await store.finish(second.turn, { status: "completed" })).toBe(true);
    await expect(store.setHarnessState(second.turn, "codex", { threadId: "after" })).rejects.toThrow(/no longer running \(completed\)/);
    expect(await store.harnessState(sessionId, "codex")).toEqual({ threadId: "t2" });
  });

  it("refuses a step that waited on a resume still in progress (the resume's session lock orders them)", async () => {
    const { sessionId } = await sessionWithMessages("ready", ["race"]);
    const first = (await store.startNext(sessionId))!;
    let step: Promise<unknown> | undefined;
    await client.sql.begin(async (tx) => {
      const [resumed] = await tx<{ turn: { run: number } }[]>`select * from berth_start_turn(${sessionId}::uuid)`;
      expect(resumed!.turn.run).toBe(2);
      // The first run's step is sent while the resume holds the session row, uncommitted.
      step = store.append(first.turn, [{ type: "assistant_message", payload: { text: "crossed" } }]).then(
        () => "written",
        (error: unknown) => error,
      );
      // The step may first have to open a pool connection: wait (bounded) until it is blocked on the lock.
      const waiting = async () =>
        (await client.sql<{ count: number }[]>`select count(*)::int from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and query like '%berth_append_turn_events%'`)[0]!.count;
      await expect.poll(waiting, { timeout: 10_000 }).toBe(1);
    });
    expect(await step).toBeInstanceOf(TurnSupersededError);
    expect((await log(sessionId)).map((event) => event.type)).toEqual(["user_message", "status"]);
  });

  function runnerWith(runTurn: Harness["runTurn"]) {
    const logged: string[] = [];
    const logger = createLogger("warn", new Writable({ write: (chunk, _encoding, done) => (logged.push(chunk.toString()), done()) }));
    const runner = new TurnRunner({ store, harnesses: { builtin: { name: "builtin", runTurn } }, bus: new EventBus(client.sql, logger), logger });
    return { runner, logged };
  }

  it(`gives a turn that keeps failing unexpectedly up on its ${MAX_TURN_RUNS}th run, with an error event, and runs the session's next turn`, async () => {
    const { sessionId, turnIds } = await sessionWithMessages("ready", ["breaks", "works"]);
    const ran: string[] = [];
    const { runner, logged } = runnerWith(async ({ turn }) => {
      ran.push(turn.id);
      if (turn.id === turnIds[0]) throw new Error("the sandbox answered something \u0000unexpected");
      await store.finish(turn, { status: "completed", events: [{ type: "assistant_message", payload: { text: "fine" } }] });
    });
    const shutdown = new AbortController().signal;

    // Before its last run, the error fails the job (it runs again) and the turn stays running.
    for (let run = 1; run < MAX_TURN_RUNS; run++) {
      await expect(runner.runPending(sessionId, shutdown)).rejects.toThrow(/unexpected/);
      expect(await store.get(turnIds[0]!)).toMatchObject({ status: "running", run });
    }
    await runner.runPending(sessionId, shutdown);
    expect(ran).toEqual([...Array(MAX_TURN_RUNS).fill(turnIds[0]), turnIds[1]]);
    // The error text is stored as Postgres can hold it (its NUL as U+FFFD).
    const message = `the turn could not be run: the sandbox answered something \uFFFDunexpected (it failed ${MAX_TURN_RUNS} times; details are in the server log)`;
    expect(await store.get(turnIds[0]!)).toMatchObject({ status: "failed", error: message });
    const events = await log(sessionId);
    expect(events.find((event) => event.type === "error")!.payload).toEqual({ message });
    expect(events.slice(-3).map((event) => event.type)).toEqual(["assistant_message", "usage", "status"]);
    const [session] = await client.db.select().from(sessions).where(eq(sessions.id, sessionId));
    expect(session!.status).toBe("ready");
    expect(logged.join("")).toContain("a turn's last run failed");
  });

  it(`gives up a turn whose ${MAX_TURN_RUNS} runs were all cut off (a crash or shutdown each time) instead of starting it again`, async () => {
    const { sessionId, turnIds } = await sessionWithMessages("ready", ["crashes the process"]);
    await client.sql`update turns set status = 'running', run = ${MAX_TURN_RUNS}, start_seq = 1 where id = ${turnIds[0]!}`;
    const { runner, logged } = runnerWith(async () => {
      throw new Error("must not run again");
    });
    await runner.runPending(sessionId, new AbortController().signal);
    expect(await store.get(turnIds[0]!)).toMatchObject({ status: "failed", error: expect.stringMatching(/given up after 10 runs, each of them cut off/) });
    expect(logged.join("")).toContain("a turn's runs were all cut off");
  });

  it("queues a job for sessions whose open turns have none left (out of attempts, or cut off on the last one), once", async () => {
    const stranded = await sessionWithMessages("ready", ["no job left"]);
    const served = await sessionWithMessages("ready", ["job waiting"]);
    const queueOf = (sessionId: string) => `session:${sessionId}`;
    const jobsOf = (sessionId: string) =>
      client.sql<{ attempts: number; max_attempts: number }[]>`select attempts, max_attempts from graphile_worker.jobs where queue_name = ${queueOf(sessionId)} order by id`;
    await client.sql`update graphile_worker._private_jobs set attempts = max_attempts
      where job_queue_id = (select id from graphile_worker._private_job_queues where queue_name = ${queueOf(stranded.sessionId)})`;

    const { runner, logged } = runnerWith(async () => {});
    await runner.queueStrandedTurns();
    expect(await jobsOf(stranded.sessionId)).toEqual([
      { attempts: 10, max_attempts: 10 },
      { attempts: 0, max_attempts: 10 },
    ]);
    expect(await jobsOf(served.sessionId)).toEqual([{ attempts: 0, max_attempts: 10 }]);
    expect(logged.join("")).toContain(stranded.sessionId);
    expect(logged.join("")).not.toContain(served.sessionId);

    await runner.queueStrandedTurns();
    expect(await jobsOf(stranded.sessionId)).toHaveLength(2);
  });

  it("runs the hot SQL functions on generic plans (a CREATE OR REPLACE in a later migration must repeat the setting)", async () => {
    const rows = await client.sql<{ name: string; config: string[] | null }[]>`
      select oid::regprocedure::text as name, proconfig as config from pg_proc
      where proname in ('berth_accept_message', 'berth_append_events', 'berth_append_turn_events', 'berth_start_turn', 'berth_finish_turn') order by 1`;
    // The eight-argument berth_finish_turn only forwards to the fenced one (for a replica of the previous version).
    const forwarder = "berth_finish_turn(uuid,uuid,turn_status,text,jsonb,bigint,bigint,numeric)";
    expect(rows.map((row) => row.name.replace(/\(.*/, ""))).toEqual(["berth_accept_message", "berth_append_events", "berth_append_turn_events", "berth_finish_turn", "berth_finish_turn", "berth_start_turn"]);
    for (const row of rows) expect(row.config, row.name).toEqual(row.name === forwarder ? null : ["plan_cache_mode=force_generic_plan"]);
  });

  it("still finishes a turn through the previous version's call (a rolling upgrade), without a run", async () => {
    const { sessionId } = await sessionWithMessages("ready", ["old replica"]);
    const next = (await store.startNext(sessionId))!;
    const [row] = await client.sql<{ finished: boolean }[]>`select berth_finish_turn(${next.turn.id}::uuid, ${sessionId}::uuid, 'completed', null, '[]'::jsonb, 0, 0, 0) as finished`;
    expect(row!.finished).toBe(true);
    expect((await store.get(next.turn.id)).status).toBe("completed");
  });
});
