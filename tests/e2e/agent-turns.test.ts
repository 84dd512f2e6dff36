import { TRPCClientError } from "@trpc/client";
import postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startTestBerth, type TestBerth } from "../helpers/berth";
import { dropListeningConnections } from "../helpers/database";
import { waitFor } from "../helpers/processes";
import { sessionProbe, type LoggedEvent } from "../helpers/sessions";
import { startTestGateway, type TestGateway } from "../helpers/test-gateway";

const KEY = "turns_test_key_0123456789abcdefghijkl";
const GATEWAY_KEY = "sk-gateway-secret-for-tests-9f8e7d";

type Event = LoggedEvent;

/**
 * Agent turns end to end: the builtin harness against a scripted OpenAI-compatible gateway (real
 * HTTP, real wire format), tools run in real bubblewrap jails, everything recorded in Postgres and
 * followed live over SSE.
 */
describe("agent turns through the gateway", () => {
  let berth: TestBerth;
  let gateway: TestGateway;
  let api: ReturnType<TestBerth["client"]>;
  let sql: postgres.Sql;
  let probe: ReturnType<typeof sessionProbe>;

  beforeAll(async () => {
    gateway = await startTestGateway({ apiKey: GATEWAY_KEY });
    berth = await startTestBerth({
      env: {
        BERTH_ADMIN_API_KEY: KEY,
        LITELLM_BASE_URL: gateway.url,
        LITELLM_API_KEY: GATEWAY_KEY,
        BERTH_GATEWAY_MAX_RETRIES: "1",
        BERTH_GATEWAY_IDLE_TIMEOUT_MS: "1500",
        BERTH_GATEWAY_TIMEOUT_MS: "20000",
      },
    });
    api = berth.client(KEY);
    sql = postgres(berth.databaseUrl, { max: 2, onnotice: () => {} });
    probe = sessionProbe(api, sql);
  });
  // A test that fails with scripted replies left would otherwise have them answer the next test's turn.
  afterEach(() => gateway?.clear());
  afterAll(async () => {
    await sql?.end();
    await berth?.close();
    await gateway?.close();
  });

  async function session(agent: Parameters<typeof api.agents.create.mutate>[0] = { name: `agent-${Math.random().toString(36).slice(2, 8)}`, model: "test-model" }) {
    const created = await api.agents.create.mutate(agent);
    const { id } = await api.sessions.create.mutate({ agentId: created.id });
    await waitFor("the session to be ready", async () => ((await api.sessions.get.query({ sessionId: id })).status === "ready" ? true : undefined), 30_000);
    return { id };
  }

  const events = (sessionId: string) => probe.events(sessionId);
  /** Waits until every turn of the session has ended, then returns the log. */
  const settled = (sessionId: string, turnCount: number) => probe.settled(sessionId, turnCount, 60_000);

  const conversation = (log: Event[]) => log.filter((event) => event.type !== "status");

  /** A scripted reply the gateway holds until the test releases it: the turn runs for as long as the test needs. */
  function heldReply(text: string) {
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const step = async () => {
      await released;
      return { text };
    };
    return { step, release };
  }

  it("runs a turn that calls bash twice and answers, recording each step in order", async () => {
    const { id } = await session();
    gateway.script(
      { toolCalls: [{ name: "bash", arguments: { command: "echo first-output" } }], usage: { prompt: 100, completion: 10 } },
      { toolCalls: [{ name: "bash", arguments: { command: "echo second-output >&2; exit 3" } }], usage: { prompt: 150, completion: 12, cost: 0.0021 } },
      { text: "Both commands ran.", chunks: 4, usage: { prompt: 200, completion: 8, cost: 0.001 } },
    );
    const sent = await api.sessions.send.mutate({ sessionId: id, text: "run two commands" });
    expect(sent).toMatchObject({ duplicate: false });

    const log = conversation(await settled(id, 1));
    expect(log.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "tool_call", "tool_result", "assistant_message", "usage"]);
    expect(log[5]!.payload).toEqual({ text: "Both commands ran." });
    expect(log[6]!.payload).toEqual({ promptTokens: 450, completionTokens: 30, cost: 0.0031 });

    const results = await sql<{ output: string; exit_code: number; is_error: boolean }[]>`
      select payload->>'output' as output, (payload->>'exitCode')::int as exit_code, (payload->>'isError')::boolean as is_error
      from session_events where session_id = ${id} and type = 'tool_result' order by seq`;
    expect(results).toEqual([
      { output: "first-output\n", exit_code: 0, is_error: false },
      { output: "second-output\n", exit_code: 3, is_error: true },
    ]);
    const [totals] = await sql<{ prompt_tokens: number; completion_tokens: number; cost_usd: string }[]>`
      select prompt_tokens::int, completion_tokens::int, cost_usd from sessions where id = ${id}`;
    expect(totals).toEqual({ prompt_tokens: 450, completion_tokens: 30, cost_usd: "0.003100" });

    // The model saw each result, tied to its call, and the gateway key was sent.
    const last = gateway.completions.at(-1)!;
    const toolMessages = (last.body as { messages: { role: string; content: string }[] }).messages.filter((message) => message.role === "tool");
    expect(toolMessages.map((message) => message.content)).toEqual(["first-output\n", "second-output\n"]);
    expect(gateway.violations).toEqual([]);
    expect((await api.sessions.get.query({ sessionId: id })).status).toBe("ready");
  });

  it("streams events to a follower that disconnects mid-turn and resumes from its last seq with no gap or duplicate", async () => {
    const { id } = await session();
    gateway.script(
      { toolCalls: [{ name: "bash", arguments: { command: "echo one" } }] },
      { toolCalls: [{ name: "bash", arguments: { command: "echo two" } }], delayMs: 600 },
      { text: "finished", delayMs: 600 },
    );
    const received: { id: string; seq: number; type: string }[] = [];
    const follow = (lastEventId: string | null) => {
      let stop!: () => void;
      const done = new Promise<void>((resolve) => {
        const subscription = api.sessions.follow.subscribe(
          { sessionId: id, lastEventId },
          {
            onData(tracked) {
              if (tracked.data.kind === "event") received.push({ id: tracked.id, seq: tracked.data.event.seq, type: tracked.data.event.type });
            },
            onError(error) {
              throw error;
            },
          },
        );
        stop = () => {
          subscription.unsubscribe();
          resolve();
        };
      });
      return { stop: () => stop(), done };
    };

    const first = follow(null);
    await api.sessions.send.mutate({ sessionId: id, text: "go" });
    await waitFor("the first tool result to stream", () => (received.some((event) => event.type === "tool_result") ? true : undefined), 20_000);
    first.stop();
    const lastSeen = received.at(-1)!.id;
    const second = follow(lastSeen);
    await waitFor("the usage event to stream", () => (received.some((event) => event.type === "usage") ? true : undefined), 30_000);
    second.stop();

    const stored = await events(id);
    const seqs = received.map((event) => event.seq);
    expect(new Set(seqs).size).toBe(seqs.length);
    expect(seqs).toEqual(stored.map((event) => event.seq).slice(0, seqs.length));
    expect(received.map((event) => event.id)).toEqual(seqs.map(String));
  });

  it("ends a turn with a clear error event on gateway 500s, garbage JSON and a stalled stream, and stays usable", async () => {
    const { id } = await session();
    const cases = [
      { steps: [{ status: 500, message: "upstream exploded" }, { status: 500, message: "upstream exploded" }], expected: /500.*upstream exploded|upstream exploded/ },
      { steps: [{ malformed: "bad-json" as const }], expected: /not valid JSON|JSON/i },
      { steps: [{ text: "partial", chunks: 2, chunkDelayMs: 5_000 }], expected: /timed out|timeout|idle|no data/i },
    ];
    let turn = 0;
    for (const { steps, expected } of cases) {
      gateway.script(...steps);
      await api.sessions.send.mutate({ sessionId: id, text: `case ${turn}` });
      turn++;
      const last = conversation(await settled(id, turn)).at(-1)!;
      expect(last.type).toBe("error");
      expect(String(last.payload.message)).toMatch(expected);
      expect(String(last.payload.message)).not.toContain(GATEWAY_KEY);
    }
    gateway.script({ text: "recovered" });
    await api.sessions.send.mutate({ sessionId: id, text: "still there?" });
    const log = conversation(await settled(id, turn + 1));
    expect(log.at(-2)).toMatchObject({ type: "assistant_message", payload: { text: "recovered" } });
    expect((await api.sessions.get.query({ sessionId: id })).status).toBe("ready");
    expect(berth.logs()).not.toContain(GATEWAY_KEY);
  });

  it("answers with the offline demo model without a gateway call: `run: echo hi` records hi", async () => {
    const before = gateway.requests.length;
    const { id } = await session({ name: "demo-agent", model: "demo" });
    await api.sessions.send.mutate({ sessionId: id, text: "run: echo hi" });
    const log = conversation(await settled(id, 1));
    expect(log.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    expect(log[1]!.payload).toMatchObject({ name: "bash", input: { command: "echo hi" } });
    expect(log[2]!.payload).toMatchObject({ output: "hi\n", exitCode: 0, isError: false });
    expect(String(log[3]!.payload.text)).toContain("hi");
    expect(gateway.requests.length).toBe(before);
  });

  it("records a command's output that holds NUL bytes (as U+FFFD, which Postgres can store) instead of failing the step", async () => {
    const { id } = await session({ name: "nul-output", model: "demo" });
    await api.sessions.send.mutate({ sessionId: id, text: "run: printf 'a\\0b'" });
    const log = conversation(await settled(id, 1));
    expect(log.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    expect(log[2]!.payload).toMatchObject({ output: "a\uFFFDb", exitCode: 0, isError: false });
    const [turn] = await sql<{ status: string; run: number }[]>`select status, run from turns where session_id = ${id}`;
    expect(turn).toEqual({ status: "completed", run: 1 });
  });

  it("makes send idempotent with idempotencyKey", async () => {
    const { id } = await session({ name: "idempotent", model: "demo" });
    const first = await api.sessions.send.mutate({ sessionId: id, text: "hello", idempotencyKey: "msg-1" });
    const again = await api.sessions.send.mutate({ sessionId: id, text: "hello", idempotencyKey: "msg-1" });
    expect(again).toEqual({ ...first, duplicate: true, queued: false });
    const log = await settled(id, 1);
    expect(log.filter((event) => event.type === "user_message")).toHaveLength(1);
    const [jobs] = await sql<{ count: number }[]>`select count(*)::int from turns where session_id = ${id}`;
    expect(jobs!.count).toBe(1);
  });

  it("queues a message sent during a turn and answers it after, with the first answer in its history", async () => {
    const { id } = await session();
    // The first answer waits until message two is in, however long sending it takes.
    const first = heldReply("answer one");
    gateway.script(first.step, { text: "answer two" });
    try {
      const one = await api.sessions.send.mutate({ sessionId: id, text: "message one" });
      await waitFor("the first turn to run", async () => ((await api.sessions.get.query({ sessionId: id })).status === "running" ? true : undefined), 10_000);
      const two = await api.sessions.send.mutate({ sessionId: id, text: "message two" });
      expect(one.queued).toBe(false);
      expect(two.queued).toBe(true);
    } finally {
      first.release();
    }
    const log = conversation(await settled(id, 2)).filter((event) => event.type !== "usage");
    expect(log.map((event) => [event.type, event.payload.text ?? null])).toEqual([
      ["user_message", "message one"],
      ["user_message", "message two"],
      ["assistant_message", "answer one"],
      ["assistant_message", "answer two"],
    ]);
    const second = gateway.completions.at(-1)!.body as { messages: { role: string; content: string }[] };
    expect(second.messages.map((message) => `${message.role}:${message.content}`)).toEqual(["user:message one", "assistant:answer one", "user:message two"]);
  });

  it("rejects a message during a turn when the agent's busyPolicy is reject", async () => {
    const { id } = await session({ name: "rejecting", model: "test-model", busyPolicy: "reject" });
    // The first turn cannot end before the second message has been refused.
    const slow = heldReply("slow answer");
    gateway.script(slow.step);
    await api.sessions.send.mutate({ sessionId: id, text: "first" });
    const error = await api.sessions.send.mutate({ sessionId: id, text: "second" }).catch((e: unknown) => e).finally(slow.release);
    expect(error).toBeInstanceOf(TRPCClientError);
    expect((error as TRPCClientError<never>).data).toMatchObject({ code: "CONFLICT" });
    expect((error as Error).message).toMatch(/busy/);
    const log = await settled(id, 1);
    expect(log.filter((event) => event.type === "user_message")).toHaveLength(1);
  });

  it("aborts a running turn: the command is killed, the call gets a result, and the session takes the next message", async () => {
    const { id } = await session();
    gateway.script({ toolCalls: [{ name: "bash", arguments: { command: "sleep 30; echo too-late" } }] });
    await api.sessions.send.mutate({ sessionId: id, text: "long job" });
    await waitFor("the command to start", async () => ((await events(id)).some((event) => event.type === "tool_call") ? true : undefined), 20_000);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await api.sessions.abort.mutate({ sessionId: id })).toEqual({ aborted: true });
    const log = conversation(await settled(id, 1));
    expect(log.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "error"]);
    expect(log[2]!.payload).toMatchObject({ isError: true });
    expect(String(log[2]!.payload.output)).toMatch(/aborted/);
    expect(log[3]!.payload).toEqual({ message: "the turn was aborted by request" });
    const [turn] = await sql<{ status: string }[]>`select status from turns where session_id = ${id}`;
    expect(turn!.status).toBe("aborted");

    gateway.script({ text: "after abort" });
    await api.sessions.send.mutate({ sessionId: id, text: "next" });
    const after = conversation(await settled(id, 2));
    expect(after.slice(-2).map((event) => event.type)).toEqual(["assistant_message", "usage"]);
    expect(after.at(-2)).toMatchObject({ payload: { text: "after abort" } });
    expect(gateway.violations).toEqual([]);
    expect(gateway.pending).toBe(0);
  });

  /** Finds the warning of the run that was overtaken (the JSON log line). */
  function overtaken(turnId: string) {
    const line = berth.logs().split("\n").find((entry) => entry.includes(turnId) && entry.includes("another run took this turn over"));
    return line ? (JSON.parse(line) as { run: number; reason: string }) : undefined;
  }

  async function turnOf(sessionId: string) {
    const [turn] = await sql<[{ id: string; status: string; run: number }]>`select id, status, run from turns where session_id = ${sessionId}`;
    return turn;
  }

  /** Once the overtaken run's job has failed and its retry found nothing to do, the session has no job left. */
  const noJobsLeft = (sessionId: string) =>
    waitFor("the session's jobs to be done", async () => ((await sql<[{ count: number }]>`select count(*)::int from graphile_worker.jobs where queue_name = ${`session:${sessionId}`}`)[0].count === 0 ? true : undefined), 30_000);

  it("lets a second run of a turn (another replica, after a lock mix-up) take it over: the first run's command is stopped at once, each step recorded once", async () => {
    const { id } = await session();
    gateway.script({ toolCalls: [{ name: "bash", arguments: { command: "sleep 271; echo first-run-output" } }] }, { text: "answered by the second run" });
    await api.sessions.send.mutate({ sessionId: id, text: "long command" });
    // Counted by exact command line: a child the shell has forked but not yet exec'd still shows the
    // shell's, so matching that would count one process twice now and then on a loaded machine.
    const runningSleeps = async () => (await api.sessions.exec.mutate({ sessionId: id, command: "ps -eo args | grep -c '^sleep 271$' || true" })).stdout.trim();
    const firstRunProcesses = async () => (await api.sessions.exec.mutate({ sessionId: id, command: "ps -eo args | grep -c -e '^sleep 271$' -e 'first-run-[o]utput' || true" })).stdout.trim();
    await waitFor("the first run's command to run", async () => ((await runningSleeps()) === "1" ? true : undefined), 20_000);

    // What another replica would do with the session's job while this one still runs it. Its start
    // is announced (NOTIFY, as between replicas): the first run stops without waiting for its command.
    await berth.services.turns.runPending(id, new AbortController().signal);
    const log = conversation(await settled(id, 1));
    expect(log.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    expect(String(log[2]!.payload.output)).toMatch(/^interrupted: /);
    expect(log[3]!.payload).toEqual({ text: "answered by the second run" });

    const turn = await turnOf(id);
    await waitFor("the first run to stop", async () => overtaken(turn.id), 20_000);
    expect(overtaken(turn.id)).toMatchObject({ run: 1, reason: "run 2 took the turn over" });
    // Gone within moments (its command would run for minutes); the kill itself is asynchronous.
    await waitFor("the first run's command to be gone", async () => ((await firstRunProcesses()) === "0" ? true : undefined), 10_000);
    await noJobsLeft(id);
    expect(conversation(await events(id))).toEqual(log);
    expect(await turnOf(id)).toMatchObject({ status: "completed", run: 2 });
    expect(gateway.pending).toBe(0);
    expect(gateway.violations).toEqual([]);
  });

  it("stops an overtaken run in the middle of its model call, and it does not take the turn back", async () => {
    const { id } = await session();
    gateway.script({ text: "late answer of the first run", delayMs: 1_500 }, { text: "answer of the second run" });
    const completionsBefore = gateway.completions.length;
    await api.sessions.send.mutate({ sessionId: id, text: "slow model" });
    await waitFor("the first run's model call", async () => (gateway.completions.length > completionsBefore ? true : undefined), 20_000);

    await berth.services.turns.runPending(id, new AbortController().signal);
    const turn = await turnOf(id);
    await waitFor("the first run to stop", async () => overtaken(turn.id), 20_000);
    expect(overtaken(turn.id)).toMatchObject({ run: 1, reason: "run 2 took the turn over" });
    await noJobsLeft(id);
    const log = conversation(await events(id));
    expect(log.map((event) => [event.type, event.payload.text ?? null])).toEqual([
      ["user_message", "slow model"],
      ["assistant_message", "answer of the second run"],
      ["usage", null],
    ]);
    expect(await turnOf(id)).toMatchObject({ status: "completed", run: 2 });
    // One model call per run: the overtaken run made no second one.
    expect(gateway.completions.length).toBe(completionsBefore + 2);
    expect((await api.sessions.get.query({ sessionId: id })).status).toBe("ready");
  });

  it("stops runs whose abort or takeover it did not hear once its listening connection is back, without waiting for their commands", async () => {
    const toAbort = await session();
    const toTakeOver = await session();
    const command = { toolCalls: [{ name: "bash", arguments: { command: "sleep 272; echo never" } }] };
    gateway.script(command, command);
    await api.sessions.send.mutate({ sessionId: toAbort.id, text: "long command" });
    await api.sessions.send.mutate({ sessionId: toTakeOver.id, text: "long command" });
    const sleeps = async (sessionId: string) => (await api.sessions.exec.mutate({ sessionId, command: "ps -eo args | grep -c -e '^sleep 272$' -e 'echo [n]ever' || true" })).stdout.trim();
    for (const { id } of [toAbort, toTakeOver]) {
      await waitFor("the command to run", async () => ((await sleeps(id)) !== "0" ? true : undefined), 20_000);
    }

    // An abort and a takeover whose notifications this process never hears: written while its
    // listening connection is up but with nothing sent, then that connection drops.
    await sql`update turns set abort_requested_at = now() where session_id = ${toAbort.id} and status = 'running'`;
    await sql`update turns set run = run + 1 where session_id = ${toTakeOver.id} and status = 'running'`;
    expect(await dropListeningConnections(sql)).toContain("berth");

    const abortedLog = conversation(await settled(toAbort.id, 1));
    expect(abortedLog.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "error"]);
    expect(abortedLog[3]!.payload).toEqual({ message: "the turn was aborted by request" });
    const turn = await turnOf(toTakeOver.id);
    await waitFor("the overtaken run to stop", async () => overtaken(turn.id), 20_000);
    expect(overtaken(turn.id)).toMatchObject({ run: 1, reason: "run 2 took the turn over" });
    for (const { id } of [toAbort, toTakeOver]) {
      await waitFor("the stopped run's command to be gone", async () => ((await sleeps(id)) === "0" ? true : undefined), 10_000);
    }

    // The job's retry takes the turn over in its turn (run 3) and ends it; the command is not run twice.
    gateway.script({ text: "done after the takeover" });
    const log = conversation(await settled(toTakeOver.id, 1));
    expect(log.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    expect(String(log[2]!.payload.output)).toMatch(/^interrupted: /);
    expect(await turnOf(toTakeOver.id)).toMatchObject({ status: "completed", run: 3 });
    expect(gateway.violations).toEqual([]);
  });

  it("stops a turn at the agent's step limit with an error event", async () => {
    const { id } = await session({ name: "limited", model: "test-model", maxSteps: 1 });
    gateway.script({ toolCalls: [{ name: "bash", arguments: { command: "true" } }] });
    await api.sessions.send.mutate({ sessionId: id, text: "loop" });
    const log = conversation(await settled(id, 1));
    expect(log.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "error"]);
    expect(String(log.at(-1)!.payload.message)).toMatch(/maxSteps 1/);
  });

  it("refuses sends to other teams' sessions and bad input at the edge", async () => {
    const { id } = await session({ name: "edge", model: "demo" });
    const empty = await api.sessions.send.mutate({ sessionId: id, text: "   " }).catch((e: unknown) => e);
    expect((empty as TRPCClientError<never>).data).toMatchObject({ code: "BAD_REQUEST" });
    const missing = await api.sessions.send.mutate({ sessionId: "00000000-0000-4000-8000-000000000000", text: "hi" }).catch((e: unknown) => e);
    expect((missing as TRPCClientError<never>).data).toMatchObject({ code: "NOT_FOUND" });
    const [count] = await sql<{ count: number }[]>`select count(*)::int from session_events where session_id = ${id} and type = 'user_message'`;
    expect(count!.count).toBe(0);
  });
});
