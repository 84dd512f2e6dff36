import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import { afterAll, describe, expect, it } from "vitest";
import { createLogger } from "../logger";
import { Cgroups } from "./cgroups";

const cgroups = await Cgroups.detect(createLogger("silent"));
const name = (label: string) => `test-${label}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;

/** Real cgroups of this machine (v1 or v2); where none are writable there is nothing to remove. */
describe.skipIf(cgroups.mode === "unavailable")(`Cgroups (${cgroups.mode}) abandoned groups`, () => {
  const sleeper = spawn("sleep", ["60"], { stdio: "ignore" });
  const created: string[] = [];
  afterAll(async () => {
    sleeper.kill("SIGKILL");
    await new Promise((resolve) => sleeper.once("exit", resolve));
    for (const group of created) await cgroups.remove(group);
  });

  it("removes empty groups older than the age given, and keeps young ones and ones with a process", async () => {
    const abandoned = name("abandoned");
    const young = name("young");
    const busy = name("busy");
    created.push(abandoned, young, busy);
    const [abandonedProcs] = await cgroups.create(abandoned, { memoryMb: 64, cpuMillis: 100, pids: 8 });
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const [youngProcs] = await cgroups.create(young, { memoryMb: 64, cpuMillis: 100, pids: 8 });
    const busyProcs = await cgroups.create(busy, { memoryMb: 64, cpuMillis: 100, pids: 8 });
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    for (const procs of busyProcs) await fs.writeFile(procs, String(sleeper.pid));

    // Groups of other tests and processes may be removed too when they are empty and old: count ours.
    await cgroups.removeAbandoned(1_500);
    expect(existsSync(abandonedProcs!)).toBe(false);
    expect(existsSync(youngProcs!)).toBe(true);
    for (const procs of busyProcs) expect(existsSync(procs)).toBe(true);
  });

  it("kills the processes left in a group, after which it can be removed", async () => {
    const orphan = spawn("sleep", ["60"], { stdio: "ignore" });
    const exited = new Promise((resolve) => orphan.once("exit", (_code, signal) => resolve(signal)));
    const group = name("orphan");
    created.push(group);
    for (const procs of await cgroups.create(group, { memoryMb: 64, cpuMillis: 100, pids: 8 })) await fs.writeFile(procs, String(orphan.pid));
    expect(await cgroups.killAll(group)).toBe(1);
    expect(await exited).toBe("SIGKILL");
    await cgroups.remove(group);
    expect(await cgroups.killAll(group)).toBe(0);
  });

  it("lets processes leave on their own within the grace given, and kills and counts only those still there after it", async () => {
    const leaving = spawn("sleep", ["60"], { stdio: "ignore" });
    const staying = spawn("sleep", ["60"], { stdio: "ignore" });
    const signals = [leaving, staying].map((child) => new Promise((resolve) => child.once("exit", (_code, signal) => resolve(signal))));
    const group = name("grace");
    created.push(group);
    for (const procs of await cgroups.create(group, { memoryMb: 64, cpuMillis: 100, pids: 8 })) {
      await fs.writeFile(procs, String(leaving.pid));
      await fs.writeFile(procs, String(staying.pid));
    }
    setTimeout(() => leaving.kill("SIGTERM"), 200);
    expect(await cgroups.remove(group, { graceMs: 1_500 })).toBe(1);
    expect(await Promise.all(signals)).toEqual(["SIGTERM", "SIGKILL"]);
  });
});
