import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
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

  it("finds left-behind jails by the folder their command line names, only among the given owners", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "berth-tree-"));
    try {
      const sandboxes = path.join(dir, "sandboxes");
      const jail = spawn("sh", ["-c", "sleep 300 & wait", path.join(sandboxes, "s-1-g1", "run")], { stdio: "ignore" });
      const other = spawn("sh", ["-c", "sleep 300 & wait", path.join(dir, "elsewhere")], { stdio: "ignore" });
      started.push(jail, other);
      await until(() => descendantsOf(jail.pid!).length === 1 && descendantsOf(other.pid!).length === 1);
      const jailChild = descendantsOf(jail.pid!)[0]!;
      expect(await killProcessesUnder(sandboxes, [process.getuid!() + 1])).toBe(0);
      expect(await killProcessesUnder(sandboxes, [process.getuid!()])).toBe(2);
      await until(() => !alive(jailChild) && jail.exitCode === null && jail.signalCode === "SIGKILL");
      expect(alive(other.pid!)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
