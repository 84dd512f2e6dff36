import { readdirSync, readFileSync } from "node:fs";
import { TRPCClientError } from "@trpc/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestBerth, type TestBerth } from "../helpers/berth";
import { waitFor } from "../helpers/processes";

const KEY = "sandbox_exec_test_key_0123456789abcdefgh";
const MiB = 1024 * 1024;

/** Every process below `root` with its command line (from /proc's parent links, host view). */
function processesBelow(root: number): Array<{ pid: number; command: string }> {
  const parents = new Map<number, number>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (fields[0] === "Z") continue;
      parents.set(Number(entry), Number(fields[1]));
    } catch {
      // the process ended meanwhile
    }
  }
  const found: Array<{ pid: number; command: string }> = [];
  const queue = [root];
  while (queue.length > 0) {
    const parent = queue.shift()!;
    for (const [pid, ppid] of parents) {
      if (ppid !== parent) continue;
      let command = "";
      try {
        command = readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ").trim();
      } catch {
        continue;
      }
      found.push({ pid, command });
      queue.push(pid);
    }
  }
  return found;
}

/** The jail's processes that are not bwrap or the daemon. */
function leftovers(hostPid: number): string[] {
  return processesBelow(hostPid)
    .map((entry) => entry.command)
    .filter((command) => !/^(\S*\/)?bwrap\b/.test(command) && !command.includes("sandboxd.js"));
}

function rssMiB(): number {
  return Math.round((process.memoryUsage.rss() / MiB) * 10) / 10;
}

/**
 * What an exec may leave in the platform and in a jail: its output is capped while it streams, and
 * every process it started is gone when it returns. Real bubblewrap jails through the public API,
 * on their own Berth (no warm pool: the sweep flag is read when a daemon starts).
 */
describe("exec output caps and process cleanup in local jails", () => {
  let berth: TestBerth;
  let api: ReturnType<TestBerth["client"]>;

  beforeAll(async () => {
    berth = await startTestBerth({
      env: { BERTH_ADMIN_API_KEY: KEY, BERTH_WARM_POOL_SIZE: "0" },
    });
    api = berth.client(KEY);
  });
  afterAll(async () => {
    await berth?.close();
  });

  async function readySession(name: string) {
    const agent = await api.agents.create.mutate({ name, model: "demo" });
    const session = await api.sessions.create.mutate({ agentId: agent.id });
    await waitFor(`session ${session.id} ready`, async () => ((await api.sessions.get.query({ sessionId: session.id })).status === "ready" ? true : undefined), 30_000);
    const ready = await api.sessions.get.query({ sessionId: session.id });
    return { id: ready.id, hostPid: ready.sandbox!.hostPid! };
  }

  it("caps each stream (1 MiB by default, up to 16 MiB on request) on a UTF-8 boundary and says truncated", async () => {
    const session = await readySession("caps");
    const small = await api.sessions.exec.mutate({ sessionId: session.id, command: "printf '€€€€€'; printf 'ok' >&2", maxOutputBytes: 10 });
    expect(small).toMatchObject({ exitCode: 0, stdout: "€€€", stderr: "ok", truncated: true, stdoutTruncated: true, stderrTruncated: false, stdoutBytes: 15, stderrBytes: 2 });

    const whole = await api.sessions.exec.mutate({ sessionId: session.id, command: "echo hello" });
    expect(whole).toMatchObject({ stdout: "hello\n", truncated: false, stdoutTruncated: false, stderrTruncated: false });

    const two = await api.sessions.exec.mutate({ sessionId: session.id, command: "head -c 3000000 /dev/zero | tr '\\0' b", maxOutputBytes: 2 * MiB });
    expect(two.stdout).toBe("b".repeat(2 * MiB));
    expect(two).toMatchObject({ truncated: true, stdoutBytes: 3_000_000 });

    const refused = await api.sessions.exec.mutate({ sessionId: session.id, command: "true", maxOutputBytes: 16 * MiB + 1 }).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(TRPCClientError);
    expect((refused as { data?: { code?: string } }).data?.code).toBe("BAD_REQUEST");
    expect((refused as Error).message).toMatch(/at most 16777216 \(16 MiB\)/);
  });

  it("300 MB of output: the caller gets the first MiB with truncated, the platform's memory stays flat", async () => {
    const session = await readySession("big-output");
    // Warm up (first exec, code paths compiled), then settle.
    await api.sessions.exec.mutate({ sessionId: session.id, command: "head -c 2000000 /dev/zero | tr '\\0' a" });
    globalThis.gc?.();
    await new Promise((resolve) => setTimeout(resolve, 500));
    const before = rssMiB();
    let peak = before;
    const sampler = setInterval(() => {
      peak = Math.max(peak, rssMiB());
    }, 10);
    const started = performance.now();
    let result;
    try {
      result = await api.sessions.exec.mutate({ sessionId: session.id, command: "head -c 300000000 /dev/zero | tr '\\0' a", timeoutMs: 120_000 });
    } finally {
      clearInterval(sampler);
    }
    const ms = Math.round(performance.now() - started);
    const after = rssMiB();
    peak = Math.max(peak, after);
    console.log(`300 MB exec: ${ms} ms; platform RSS before ${before} MiB, peak ${peak} MiB, after ${after} MiB`);
    expect(result.stdout).toBe("a".repeat(MiB));
    expect(result).toMatchObject({ exitCode: 0, truncated: true, stdoutTruncated: true, stdoutBytes: 300_000_000 });
    expect(peak - before).toBeLessThan(64);
    expect(after - before).toBeLessThan(64);

    // Three at once: readiness keeps answering meanwhile.
    const three = Promise.all([1, 2, 3].map(() => api.sessions.exec.mutate({ sessionId: session.id, command: "head -c 300000000 /dev/zero | tr '\\0' a", timeoutMs: 120_000 })));
    let peakThree = rssMiB();
    const slowest = { ms: 0 };
    let settled = false;
    void three.finally(() => (settled = true));
    while (!settled) {
      const asked = performance.now();
      const ready = await fetch(`${berth.url}/readyz`);
      slowest.ms = Math.max(slowest.ms, performance.now() - asked);
      expect(ready.status).toBe(200);
      peakThree = Math.max(peakThree, rssMiB());
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const results = await three;
    console.log(`3 x 300 MB at once: platform RSS peak ${peakThree} MiB (before ${before}), slowest /readyz ${Math.round(slowest.ms)} ms`);
    for (const each of results) expect(each).toMatchObject({ truncated: true, stdoutBytes: 300_000_000 });
    expect(peakThree - before).toBeLessThan(64);
  });

  it("a background process, a setsid daemon and one with a cleared environment are gone when the exec returns", async () => {
    const session = await readySession("leftovers");
    expect(leftovers(session.hostPid)).toEqual([]);
    const result = await api.sessions.exec.mutate({
      sessionId: session.id,
      command: "sleep 1000 & setsid sleep 1001 >/dev/null 2>&1 < /dev/null & (env -i setsid sleep 1002 >/dev/null 2>&1 < /dev/null &); sleep 0.3; echo started",
    });
    expect(result).toMatchObject({ exitCode: 0, stdout: "started\n" });
    expect(leftovers(session.hostPid)).toEqual([]);
  });

  it("a timed-out exec leaves nothing behind", async () => {
    const session = await readySession("timeout");
    const result = await api.sessions.exec.mutate({
      sessionId: session.id,
      command: "sleep 1000 & setsid sleep 1001 >/dev/null 2>&1 < /dev/null & (trap '' TERM; sleep 1003) & sleep 1000",
      timeoutMs: 500,
    });
    expect(result.timedOut).toBe(true);
    expect(leftovers(session.hostPid)).toEqual([]);
  });

  it("a fork bomb is cleaned up when its exec ends", async () => {
    const session = await readySession("fork-bomb");
    const limit = (await api.sessions.exec.mutate({ sessionId: session.id, command: "cat /sys/fs/cgroup/pids.max 2>/dev/null || echo none" })).stdout.trim();
    // The real thing only where the jail's cgroup bounds it (512 processes); else one bounded by depth (about 1,000 processes).
    const bounded = /^\d+$/.test(limit) && Number(limit) <= 512;
    const bomb = bounded ? ":(){ :|:& };:" : 'b(){ [ "$1" -lt 9 ] || exec sleep 1000; b $(($1+1)) | b $(($1+1)) & wait; }; b 0 &';
    // Only builtins once the bomb runs (a fork may fail at the limit): the sleep is started before it.
    const command = ["sleep 2 & s=$!", bomb, "wait $s", "n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo $n"].join("\n");
    const started = performance.now();
    const result = await api.sessions.exec.mutate({ sessionId: session.id, command, timeoutMs: 30_000 });
    const ms = Math.round(performance.now() - started);
    const counted = Number(result.stdout.trim().split("\n").at(-1));
    // The exit is sent after the cleanup: its duration past the 2 s sleep is the sweep (and the count).
    console.log(`fork bomb (${bounded ? `cgroup pids.max ${limit}` : `depth-bounded; pids.max ${limit}`}): ${counted} processes in the jail after 2 s; exec ${result.durationMs} ms in the daemon, ${ms} ms through the API, so about ${result.durationMs - 2000} ms to sweep`);
    expect(counted).toBeGreaterThan(100);
    expect(leftovers(session.hostPid)).toEqual([]);
    // The sandbox still works, with nothing of the bomb in it.
    const after = await api.sessions.exec.mutate({ sessionId: session.id, command: "ls /proc | grep -c '^[0-9]'" });
    expect(Number(after.stdout.trim())).toBeLessThan(10);
  });

  it("ending one of two overlapping execs kills only its own processes; the last one sweeps", async () => {
    const session = await readySession("overlap");
    const longer = api.sessions.exec.mutate({ sessionId: session.id, command: "setsid sleep 1000 >/dev/null 2>&1 < /dev/null & sleep 3; echo long-done" });
    await waitFor("the longer exec's process", () => (leftovers(session.hostPid).some((command) => command === "sleep 1000") ? true : undefined), 10_000);
    const shorter = await api.sessions.exec.mutate({ sessionId: session.id, command: "setsid sleep 1001 >/dev/null 2>&1 < /dev/null & (env -i setsid sleep 1002 >/dev/null 2>&1 < /dev/null &); sleep 0.3; echo short-done" });
    expect(shorter.stdout).toBe("short-done\n");
    const between = leftovers(session.hostPid);
    expect(between).toContain("sleep 1000"); // the other exec's, untouched
    expect(between).not.toContain("sleep 1001"); // this exec's (it carries its id)
    // `env -i` dropped the id: it stays until the last exec ends and the sandbox is swept.
    expect(between).toContain("sleep 1002");
    expect((await longer).stdout).toBe("long-done\n");
    expect(leftovers(session.hostPid)).toEqual([]);
  });
});
