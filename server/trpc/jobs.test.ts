import { TRPCClientError } from "@trpc/client";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestBerth, type TestBerth } from "../../tests/helpers/berth";
import { waitFor } from "../../tests/helpers/processes";
import { createKeyForTeam, createTeamWithKey } from "../../tests/helpers/teams";

const OWNER_KEY = "jobs_owner_key_0123456789abcdefghijkl";
/** No worker handles this task, so its rows stay exactly as the test leaves them. */
const TASK = "test:no-handler";

async function codeOf(call: Promise<unknown>): Promise<string | undefined> {
  try {
    await call;
    return undefined;
  } catch (error) {
    expect(error).toBeInstanceOf(TRPCClientError);
    return (error as { data?: { code?: string } }).data?.code;
  }
}

describe("jobs: the dashboard's view of graphile-worker, scoped to the caller's team", () => {
  let berth: TestBerth;
  let sql: postgres.Sql;
  let owner: ReturnType<TestBerth["client"]>;
  let other: ReturnType<TestBerth["client"]>;
  let member: ReturnType<TestBerth["client"]>;
  const ids = { own: "", ownFailed: "", otherTeams: "", platform: "" };

  /** A session row of the key's team, written directly (no provisioning job of its own). */
  async function sessionOf(client: ReturnType<TestBerth["client"]>, teamId: string) {
    const agent = await client.agents.create.mutate({ name: `agent-${teamId.slice(0, 8)}`, model: "demo" });
    const [row] = await sql<{ id: string }[]>`insert into sessions (team_id, agent_id, agent_version) values (${teamId}, ${agent.id}, 1) returning id`;
    return row!.id;
  }

  async function addJob(payload: Record<string, string>, failed = false) {
    const [job] = await sql<{ id: string }[]>`
      select id::text from graphile_worker.add_job(${TASK}, ${sql.json(payload)}::json, run_at => now() + interval '1 hour', max_attempts => 3)`;
    if (failed) await sql`update graphile_worker._private_jobs set attempts = max_attempts, last_error = 'boom: it broke' where id = ${job!.id}::bigint`;
    return job!.id;
  }

  beforeAll(async () => {
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: OWNER_KEY } });
    sql = postgres(berth.databaseUrl, { max: 2, onnotice: () => {} });
    owner = berth.client(OWNER_KEY);
    const adminTeam = await owner.teams.get.query();
    member = berth.client(await createKeyForTeam(berth.databaseUrl, adminTeam.id, "member"));
    const second = await createTeamWithKey(berth.databaseUrl, "jobs-other", "owner");
    other = berth.client(second.apiKey);
    const ownSession = await sessionOf(owner, adminTeam.id);
    const otherSession = await sessionOf(other, second.teamId);
    ids.own = await addJob({ sessionId: ownSession });
    ids.ownFailed = await addJob({ sessionId: ownSession }, true);
    ids.otherTeams = await addJob({ sessionId: otherSession }, true);
    ids.platform = await addJob({});
  });
  afterAll(async () => {
    await sql?.end();
    await berth?.close();
  });

  it("shows a team its sessions' jobs; only the admin team also sees jobs of no session", async () => {
    const mine = (await owner.jobs.list.query({ limit: 100 })).items.map((job) => job.id);
    expect(mine).toEqual(expect.arrayContaining([ids.own, ids.ownFailed, ids.platform]));
    expect(mine).not.toContain(ids.otherTeams);

    const theirs = (await other.jobs.list.query({ limit: 100 })).items.map((job) => job.id);
    expect(theirs).toContain(ids.otherTeams);
    expect(theirs).not.toContain(ids.own);
    expect(theirs).not.toContain(ids.ownFailed);
    expect(theirs).not.toContain(ids.platform);
  });

  it("filters by state, counts per state, and shows the last error of a failed job", async () => {
    const failed = await owner.jobs.list.query({ state: "failed", limit: 100 });
    expect(failed.items.map((job) => job.id)).toEqual([ids.ownFailed]);
    expect(failed.items[0]).toMatchObject({ task: TASK, state: "failed", attempts: 3, maxAttempts: 3, lastError: "boom: it broke" });
    expect(failed.counts.failed).toBe(1);
    const theirs = await other.jobs.list.query({ limit: 100 });
    expect(theirs.counts).toEqual({ queued: 0, running: 0, failed: 1 });
  });

  it("pages newest first", async () => {
    const first = await owner.jobs.list.query({ limit: 1, state: "queued" });
    expect(first.items).toHaveLength(1);
    expect(first.nextCursor).not.toBeNull();
    const second = await owner.jobs.list.query({ limit: 100, state: "queued", cursor: first.nextCursor! });
    expect(Number(second.items[0]!.id)).toBeLessThan(Number(first.items[0]!.id));
  });

  it("is for admins and owners", async () => {
    expect(await codeOf(member.jobs.list.query({ limit: 10 }))).toBe("FORBIDDEN");
    expect(await codeOf(member.jobs.retry.mutate({ jobId: ids.ownFailed }))).toBe("FORBIDDEN");
  });

  it("retries a failed job of the team, and nothing else", async () => {
    expect(await codeOf(owner.jobs.retry.mutate({ jobId: ids.otherTeams }))).toBe("NOT_FOUND");
    expect(await codeOf(owner.jobs.retry.mutate({ jobId: "999999999" }))).toBe("NOT_FOUND");
    expect(await codeOf(owner.jobs.retry.mutate({ jobId: ids.own }))).toBe("CONFLICT");
    expect(await codeOf(owner.jobs.retry.mutate({ jobId: "not-a-number" }))).toBe("BAD_REQUEST");

    const wakeUps: string[] = [];
    const listener = await sql.listen("jobs:insert", (payload) => wakeUps.push(payload));
    const retried = await owner.jobs.retry.mutate({ jobId: ids.ownFailed });
    expect(retried).toMatchObject({ id: ids.ownFailed, state: "queued", attempts: 0 });
    // The runners are told at once (they poll only every few seconds).
    // (Sent with the retry, so waiting for its delivery does not loosen that: a busy machine delays it.)
    await waitFor("the runners' wake-up", () => wakeUps.includes('{"count":1}'), 10_000);
    await listener.unlisten();
    const [row] = await sql<{ attempts: number; due: boolean }[]>`
      select attempts, run_at <= now() as due from graphile_worker._private_jobs where id = ${ids.ownFailed}::bigint`;
    expect(row).toEqual({ attempts: 0, due: true });
    const audit = await owner.audit.list.query({ limit: 1, action: "job.retry" });
    expect(audit.items[0]).toMatchObject({ targetType: "job", targetId: ids.ownFailed, metadata: { task: TASK } });
    // The other team's failed job is untouched.
    const [theirs] = await sql<{ attempts: number }[]>`select attempts from graphile_worker._private_jobs where id = ${ids.otherTeams}::bigint`;
    expect(theirs!.attempts).toBe(3);
  });
});
