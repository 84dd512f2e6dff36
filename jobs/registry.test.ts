import { Logger as WorkerLogger, run, type Runner } from "graphile-worker";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { createTestDatabase, type TestDatabase } from "../tests/helpers/database";
import { createLogger } from "../server/logger";
import { BerthMetrics } from "../server/metrics";
import type { Services } from "../server/services";
import { toTaskList, type BerthTask } from "./registry";

const logger = createLogger("silent");

async function waitUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe("toTaskList on a real graphile-worker", () => {
  let database: TestDatabase;
  let sql: postgres.Sql;
  let runner: Runner | undefined;
  let releaseAll = () => {};
  beforeAll(async () => {
    database = await createTestDatabase();
    sql = postgres(database.url, { max: 2, onnotice: () => {} });
  });
  afterAll(async () => {
    releaseAll();
    await runner?.stop();
    await sql.end({ timeout: 5 });
    await database.drop();
  });

  it("never runs two jobs of one queue at once, even when the queue's lock is released under a running job", { timeout: 30_000 }, async () => {
    const started = new Map<string, number>();
    const ended = new Map<string, number>();
    const gates = new Map<string, () => void>();
    // A failed expectation must not leave jobs held open for the runner's stop to wait on, including
    // those that start after it.
    let released = false;
    releaseAll = () => {
      released = true;
      gates.forEach((open) => open());
    };
    const holdTask: BerthTask = {
      name: "test:hold",
      payload: z.object({ label: z.string() }),
      async run(payload) {
        const { label } = payload as { label: string };
        started.set(label, performance.now());
        await new Promise<void>((resolve) => (released ? resolve() : gates.set(label, resolve)));
        ended.set(label, performance.now());
      },
    };
    const services = { metrics: new BerthMetrics(sql) } as unknown as Services;
    runner = await run({
      connectionString: database.url,
      concurrency: 4,
      pollInterval: 100,
      noHandleSignals: true,
      logger: new WorkerLogger(() => () => {}),
      taskList: toTaskList([holdTask], services, logger, new AbortController().signal),
    });
    const addJob = (label: string, queue: string) =>
      sql`select graphile_worker.add_job('test:hold', json_build_object('label', ${label}::text), queue_name => ${queue}::text)`;

    await addJob("first", "session:a");
    await waitUntil("the first job to start", () => started.has("first"));
    // What a late complete or fail of an earlier run does: unlock the queue by the pool's id while
    // another worker of the same pool runs its job.
    await sql`update graphile_worker._private_job_queues set locked_by = null, locked_at = null where queue_name = 'session:a'`;
    await addJob("second", "session:a");
    await addJob("elsewhere", "session:b");
    await waitUntil("the other queue's job to start", () => started.has("elsewhere"));
    // graphile-worker handed the second job to a worker; it waits here for the first.
    await waitUntil("the second job to be taken", async () => {
      const [row] = await sql<{ locked: boolean }[]>`
        select j.locked_by is not null as locked from graphile_worker._private_jobs j
        where j.payload->>'label' = 'second'`;
      return row?.locked === true;
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(started.has("second")).toBe(false);

    gates.get("first")!();
    await waitUntil("the second job to start", () => started.has("second"));
    expect(started.get("second")!).toBeGreaterThanOrEqual(ended.get("first")!);
    gates.get("second")!();
    gates.get("elsewhere")!();
    await waitUntil("every job to finish", async () => {
      const [row] = await sql<{ count: number }[]>`select count(*)::int as count from graphile_worker._private_jobs`;
      return row!.count === 0;
    });
  });
});
