import { Writable } from "node:stream";
import { afterEach, describe, expect, it, vi } from "vitest";
import { createLogger } from "../logger";
import { EgressLog, MAX_KEYS_PER_SESSION, OVERFLOW_HOST, type EgressRecord } from "./egress-log";

type Written = { sessionId: string; events: EgressRecord[] };

function setup(options: { windowMs?: number; sink?: (sessionId: string, events: EgressRecord[]) => Promise<void> } = {}) {
  const written: Written[] = [];
  let logged = "";
  const logger = createLogger("debug", new Writable({ write: (chunk, _encoding, done) => ((logged += String(chunk)), done()) }));
  const log = new EgressLog(
    async (sessionId, events) => {
      const payloads = events.map((event) => {
        expect(event.type).toBe("egress");
        return event.payload;
      });
      if (options.sink) await options.sink(sessionId, payloads);
      written.push({ sessionId, events: payloads });
    },
    { windowMs: options.windowMs ?? 60_000, logger, metrics: null },
  );
  const all = (sessionId?: string) => written.filter((write) => sessionId === undefined || write.sessionId === sessionId).flatMap((write) => write.events);
  return { log, written, all, logged: () => logged };
}

const request = (overrides: Partial<EgressRecord> = {}): EgressRecord => ({
  host: "api.example.test",
  port: 443,
  method: "GET",
  path: "/v1/models",
  status: 200,
  decision: "allowed",
  rule: "api.example.test",
  bytesOut: 10,
  bytesIn: 100,
  durationMs: 1.5,
  ...overrides,
});

const total = (events: EgressRecord[]) => events.reduce((sum, event) => sum + (event.count ?? 1), 0);

afterEach(() => {
  vi.useRealTimers();
});

describe("EgressLog", () => {
  it("makes alike records of a window one event: a count, summed bytes and durations, the path while they share it", async () => {
    const { log, all } = setup();
    for (let i = 0; i < 3; i++) log.record("s1", request());
    log.record("s1", request({ path: "/v1/chat", method: "POST" }));
    log.record("s1", request({ path: "/v1/chat", method: "POST", durationMs: 0.25 }));
    log.record("s1", request({ path: "/v1/other", method: "POST" }));
    await log.flush();
    const events = all("s1");
    expect(events).toHaveLength(2);
    expect(events.find((event) => event.method === "GET")).toEqual({ ...request(), count: 3, bytesOut: 30, bytesIn: 300, durationMs: 4.5 });
    const posts = events.find((event) => event.method === "POST");
    expect(posts).toMatchObject({ count: 3, bytesOut: 30, bytesIn: 300, durationMs: 3.25 });
    // Three requests to two paths name neither.
    expect(posts?.path).toBeUndefined();
  });

  it("keeps apart what differs in host, port, method, decision, status or rule, and sessions from each other", async () => {
    const { log, all } = setup();
    const variants = [
      request(),
      request({ host: "other.test" }),
      request({ port: 8443 }),
      request({ method: "POST" }),
      request({ status: 404 }),
      request({ rule: "api.example.test GET /v1/*" }),
      request({ decision: "denied", status: 403, rule: undefined, reason: "no allow rule" }),
    ];
    for (const variant of variants) log.record("s1", variant);
    log.record("s2", request());
    await log.flush();
    expect(all("s1")).toHaveLength(variants.length);
    expect(all("s2")).toEqual([request()]);
  });

  it("merges the brokered secrets and stubs seen of alike records", async () => {
    const { log, all } = setup();
    log.record("s1", request({ brokered: ["A"] }));
    log.record("s1", request({ brokered: ["B"], stubsSeen: ["C"] }));
    log.record("s1", request({ brokered: ["A"], stubsSeen: ["(unknown stub)"] }));
    await log.flush();
    const [event] = all("s1");
    expect(event?.brokered?.sort()).toEqual(["A", "B"]);
    expect(event?.stubsSeen?.sort()).toEqual(["(unknown stub)", "C"]);
    expect(event?.count).toBe(3);
  });

  it("writes a window when it ends, without being asked", async () => {
    const { log, all } = setup({ windowMs: 50 });
    log.record("s1", request());
    log.record("s1", request());
    expect(all()).toEqual([]);
    await expect.poll(() => total(all("s1"))).toBe(2);
    log.record("s1", request());
    await expect.poll(() => total(all("s1"))).toBe(3);
    expect(all("s1")).toHaveLength(2);
  });

  it("denials of many paths (each reason naming its path) are one event with their count, not one each", async () => {
    const { log, all } = setup();
    for (let i = 0; i < 1_000; i++) {
      log.record("s1", request({ path: `/p${i}`, decision: "denied", status: 403, rule: undefined, reason: `no allow rule for GET /p${i} on api.example.test`, bytesIn: 0, bytesOut: 0 }));
    }
    await log.flush();
    const events = all("s1");
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ decision: "denied", count: 1_000, host: "api.example.test" });
    expect(events[0]?.path).toBeUndefined();
    expect(events[0]?.reason).toBe("for different reasons, such as: no allow rule for GET /p0 on api.example.test");
    // One reason for all: kept as it is.
    log.record("s1", request({ decision: "denied", status: 403, reason: "mode none" }));
    log.record("s1", request({ decision: "denied", status: 403, reason: "mode none" }));
    await log.flush();
    expect(all("s1").at(-1)).toMatchObject({ reason: "mode none", count: 2 });
  });

  it("a session hammering distinct hosts: a bounded number of events a window, the rest counted (never dropped) in an overflow event per decision", async () => {
    const { log, all } = setup();
    for (let i = 0; i < 5_000; i++) {
      log.record("s1", request({ host: `h${i}.test`, decision: "denied", status: 403, rule: undefined, reason: `no allow rule for host h${i}.test port 443`, bytesOut: 0, bytesIn: 0 }));
      log.record("s1", request({ host: `a${i}.test`, bytesOut: 1, bytesIn: 2, brokered: i === 4_999 ? ["LATE"] : undefined }));
    }
    log.record("s2", request());
    await log.flush();
    const events = all("s1");
    expect(events.length).toBeLessThanOrEqual(MAX_KEYS_PER_SESSION + 2);
    const denied = events.filter((event) => event.decision === "denied");
    const allowed = events.filter((event) => event.decision === "allowed");
    expect(total(denied)).toBe(5_000);
    expect(total(allowed)).toBe(5_000);
    expect(allowed.reduce((sum, event) => sum + event.bytesIn, 0)).toBe(10_000);
    const overflow = events.filter((event) => event.host === OVERFLOW_HOST);
    expect(overflow.map((event) => event.decision).sort()).toEqual(["allowed", "denied"]);
    expect(overflow.find((event) => event.decision === "allowed")?.brokered).toEqual(["LATE"]);
    expect(overflow[0]).toMatchObject({ port: 0 });
    expect(overflow[0]?.reason).toContain(`more than ${MAX_KEYS_PER_SESSION}`);
    // Another session is not affected.
    expect(all("s2")).toEqual([request()]);
  });

  it("a slow database: one write at a time, the next takes everything that came meanwhile (no queue of batches)", async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let writes = 0;
    const { log, all, written } = setup({
      sink: async () => {
        writes++;
        if (writes === 1) await gate;
      },
    });
    log.record("s1", request());
    const first = log.flush();
    await expect.poll(() => writes).toBe(1);
    const flushes: Array<Promise<void>> = [];
    for (let i = 0; i < 500; i++) {
      log.record("s1", request({ host: `h${i}.test` }));
      flushes.push(log.flush());
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(writes).toBe(1);
    release();
    await Promise.all([first, ...flushes]);
    expect(writes).toBe(2);
    expect(written).toHaveLength(2);
    expect(total(all("s1"))).toBe(501);
  });

  it("tries a failed write again, and gives up (logging it, without the events' content) after five attempts", async () => {
    vi.useFakeTimers();
    let failures = 1;
    const flaky = setup({
      sink: async () => {
        if (failures-- > 0) throw new Error("database restarting");
      },
    });
    flaky.log.record("s1", request());
    const done = flaky.log.flush();
    await vi.runAllTimersAsync();
    await done;
    expect(flaky.all("s1")).toEqual([request()]);
    expect(flaky.logged()).toContain("could not record egress events");

    let attempts = 0;
    const broken = setup({
      sink: async () => {
        attempts++;
        throw new Error("database gone");
      },
    });
    broken.log.record("s1", request({ path: "/private/path" }));
    const gaveUp = broken.log.flush();
    await vi.runAllTimersAsync();
    await gaveUp;
    expect(attempts).toBe(5);
    expect(broken.logged()).toContain("gave up recording egress events");
    expect(broken.logged()).not.toContain("/private/path");
  });

  it("many sessions at once: written early once the pending entries reach the global bound", async () => {
    const { log, all } = setup();
    for (let session = 0; session < 101; session++) for (let i = 0; i < 199; i++) log.record(`s${session}`, request({ host: `h${i}.test` }));
    await expect.poll(() => all().length).toBeGreaterThan(0);
    await log.flush();
    expect(total(all())).toBe(101 * 199);
  });
});
