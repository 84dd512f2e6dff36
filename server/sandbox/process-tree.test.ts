import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { descendantsOf, killProcessesUnder, killProcessTree } from "./process-tree";

const started: ChildProcess[] = [];
afterEach(() => {
  for (const child of started.splice(0)) {
    for (const pid of descendantsOf(child.pid!)) process.kill(pid, "SIGKILL");
    child.kill("SIGKILL");
  }
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function until(check: () => boolean): Promise<void> {
  await expect.poll(check, { timeout: 5_000 }).toBe(true);
}

describe("killing a jail's process tree without cgroups", () => {
  it("also kills a descendant that left the process group (what bwrap's inner process does), which a group kill misses", async () => {
    const root = spawn("sh", ["-c", "setsid sleep 300 & wait"], { stdio: "ignore", detached: true });
    started.push(root);
    await until(() => descendantsOf(root.pid!).length === 1);
    const [escaped] = descendantsOf(root.pid!);
    // What the old stop did: the group goes, the setsid'd process stays (under init).
    process.kill(-root.pid!, "SIGKILL");
    await until(() => !alive(root.pid!) || descendantsOf(root.pid!).length === 0);
    expect(alive(escaped!)).toBe(true);
    process.kill(escaped!, "SIGKILL");

    const second = spawn("sh", ["-c", "setsid sh -c 'sleep 300 & wait' & wait"], { stdio: "ignore" });
    started.push(second);
    await until(() => descendantsOf(second.pid!).length === 2);
    const tree = descendantsOf(second.pid!);
    expect(await killProcessTree(second.pid!)).toBe(2);
    await until(() => tree.every((pid) => !alive(pid)));
  });

  it("finds left-behind jails (orphaned bwrap naming the folder) among the given owners, and leaves other processes that name it alone", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "berth-tree-"));
    const pidFile = (name: string) => path.join(dir, `${name}.pid`);
    // Orphans (their starter gone), as a jail whose Berth died is: one that looks like bwrap, one an operator's tool.
    const orphan = (name: string, argv0: string, arg: string) =>
      spawnSync("bash", ["-c", `(exec -a ${argv0} sh -c 'echo $$ > "$1"; sleep 300 & wait' x ${pidFile(name)} ${arg} </dev/null >/dev/null 2>&1 &)`], { stdio: "ignore" });
    try {
      const sandboxes = path.join(dir, "sandboxes");
      orphan("jail", "bwrap", path.join(sandboxes, "s-1-g1", "run"));
      orphan("tool", "tail", path.join(sandboxes, "s-1-g1", "log"));
      orphan("elsewhere", "bwrap", path.join(dir, "elsewhere"));
      // A live jail: its starter (this process) is still there.
      const live = spawn("bash", ["-c", `exec -a bwrap sh -c 'sleep 300 & wait' x ${path.join(sandboxes, "s-2-g1")}`], { stdio: "ignore" });
      started.push(live);
      await until(() => ["jail", "tool", "elsewhere"].every((name) => existsSync(pidFile(name))) && descendantsOf(live.pid!).length === 1);
      const [jail, tool, elsewhere] = ["jail", "tool", "elsewhere"].map((name) => Number(readFileSync(pidFile(name), "utf8")));
      const jailChild = descendantsOf(jail!)[0]!;
      expect(await killProcessesUnder(sandboxes, [process.getuid!() + 1])).toBe(0);
      expect(await killProcessesUnder(sandboxes, [process.getuid!()])).toBe(2);
      await until(() => !alive(jail!) && !alive(jailChild));
      expect([alive(tool!), alive(elsewhere!), alive(live.pid!)]).toEqual([true, true, true]);
      for (const pid of [tool!, elsewhere!]) {
        for (const child of descendantsOf(pid)) process.kill(child, "SIGKILL");
        process.kill(pid, "SIGKILL");
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
