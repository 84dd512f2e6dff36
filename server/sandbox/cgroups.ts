import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import type { Logger } from "../logger";

const ROOT = "/sys/fs/cgroup";
const REMOVE_TIMEOUT_MS = 3_000;

export type CgroupLimits = { memoryMb: number; cpuMillis: number; pids: number };

/** The folders under which sandbox groups are made: one for v2, one per controller for v1. */
function groupRoots(mode: "v2" | "v1"): string[] {
  return mode === "v2" ? [path.join(ROOT, "berth")] : ["memory", "pids", "cpu"].map((controller) => path.join(ROOT, controller, "berth"));
}

/**
 * Creates and removes a group under each root, as every sandbox will: a root that exists but is not
 * this user's (left by a root process, e.g. a Berth that once ran as root) passes `mkdir -p` and
 * only fails here.
 */
async function probeGroupCreation(roots: string[]): Promise<void> {
  const name = `probe-${process.pid}-${Date.now().toString(36)}`;
  for (const root of roots) {
    await fs.mkdir(path.join(root, name));
    await fs.rmdir(path.join(root, name));
  }
}

/**
 * Per-sandbox cgroups for memory, CPU and process-count limits, on cgroup v2 (unified) or v1
 * (one hierarchy per controller). Where neither is writable (an unprivileged container, say) the
 * sandbox runs with rlimits only; `available` says which.
 */
export class Cgroups {
  private constructor(
    readonly mode: "v2" | "v1" | "unavailable",
    private readonly logger: Logger,
  ) {}

  static async detect(logger: Logger): Promise<Cgroups> {
    try {
      if (existsSync(path.join(ROOT, "cgroup.controllers"))) {
        const controllers = (await fs.readFile(path.join(ROOT, "cgroup.controllers"), "utf8")).split(/\s+/);
        if (!["memory", "pids", "cpu"].every((c) => controllers.includes(c))) throw new Error("controllers missing");
        await fs.mkdir(path.join(ROOT, "berth"), { recursive: true });
        await fs.writeFile(path.join(ROOT, "berth", "cgroup.subtree_control"), "+memory +pids +cpu");
        await probeGroupCreation(groupRoots("v2"));
        return new Cgroups("v2", logger);
      }
      for (const root of groupRoots("v1")) await fs.mkdir(root, { recursive: true });
      await probeGroupCreation(groupRoots("v1"));
      return new Cgroups("v1", logger);
    } catch (error) {
      logger.warn({ reason: (error as Error).message }, "cgroups are not writable here: sandboxes' memory, CPU and process count are not limited (only rlimits apply)");
      return new Cgroups("unavailable", logger);
    }
  }

  private groupDirs(name: string): Record<"memory" | "pids" | "cpu", string> {
    if (this.mode === "v2") {
      const dir = path.join(ROOT, "berth", name);
      return { memory: dir, pids: dir, cpu: dir };
    }
    return { memory: path.join(ROOT, "memory", "berth", name), pids: path.join(ROOT, "pids", "berth", name), cpu: path.join(ROOT, "cpu", "berth", name) };
  }

  /** Creates the sandbox's group(s); returns the `cgroup.procs` files a process writes its pid to. */
  async create(name: string, limits: CgroupLimits): Promise<string[]> {
    if (this.mode === "unavailable") return [];
    const dirs = this.groupDirs(name);
    for (const dir of new Set(Object.values(dirs))) await fs.mkdir(dir, { recursive: true });
    await this.apply(name, limits);
    return [...new Set(Object.values(dirs))].map((dir) => path.join(dir, "cgroup.procs"));
  }

  /** (Re)writes the limits; also used when a warm sandbox is claimed for an agent with other sizes. */
  async apply(name: string, limits: CgroupLimits): Promise<void> {
    if (this.mode === "unavailable") return;
    const dirs = this.groupDirs(name);
    const memoryBytes = String(limits.memoryMb * 1024 * 1024);
    const period = 100_000;
    const quota = Math.max(1_000, Math.round((limits.cpuMillis / 1000) * period));
    if (this.mode === "v2") {
      await fs.writeFile(path.join(dirs.memory, "memory.max"), memoryBytes);
      await fs.writeFile(path.join(dirs.memory, "memory.swap.max"), "0").catch(() => {});
      await fs.writeFile(path.join(dirs.pids, "pids.max"), String(limits.pids));
      await fs.writeFile(path.join(dirs.cpu, "cpu.max"), `${quota} ${period}`);
    } else {
      await fs.writeFile(path.join(dirs.memory, "memory.limit_in_bytes"), memoryBytes);
      await fs.writeFile(path.join(dirs.pids, "pids.max"), String(limits.pids));
      await fs.writeFile(path.join(dirs.cpu, "cpu.cfs_period_us"), String(period));
      await fs.writeFile(path.join(dirs.cpu, "cpu.cfs_quota_us"), String(quota));
    }
  }

  /** Current memory use of the sandbox, for metrics; null when not known. */
  async memoryBytes(name: string): Promise<number | null> {
    if (this.mode === "unavailable") return null;
    const file = this.mode === "v2" ? "memory.current" : "memory.usage_in_bytes";
    const text = await fs.readFile(path.join(this.groupDirs(name).memory, file), "utf8").catch(() => null);
    return text === null ? null : Number(text.trim());
  }

  /**
   * Removes the sandbox's groups once its jail has exited. A process still in them after `graceMs`
   * belongs to no jail (see killAll) and is killed first. Returns how many were killed.
   * @param options.graceMs how long processes get to leave on their own: when a jail has just exited,
   *   bwrap's --die-with-parent has killed the rest, and they are on their way out.
   */
  async remove(name: string, options: { graceMs?: number } = {}): Promise<number> {
    if (this.mode === "unavailable") return 0;
    const deadline = Date.now() + (options.graceMs ?? 0);
    for (let wait = 10; Date.now() < deadline && (await this.processesIn(name)).size > 0; wait = Math.min(wait * 2, 100)) {
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
    const killed = await this.killAll(name);
    for (const dir of new Set(Object.values(this.groupDirs(name)))) {
      // The group empties a moment after its last process exits, later when many exit at once (a
      // shutdown stops every jail together): retry for a few seconds. One left over anyway is
      // removed by the next start's removeAbandoned.
      const deadline = Date.now() + REMOVE_TIMEOUT_MS;
      for (let wait = 25; ; wait = Math.min(wait * 2, 250)) {
        try {
          await fs.rmdir(dir);
          break;
        } catch (error) {
          const code = (error as NodeJS.ErrnoException).code;
          if (code === "ENOENT") break;
          if (Date.now() >= deadline) {
            this.logger.warn({ dir, code }, "could not remove a sandbox cgroup");
            break;
          }
          await new Promise((resolve) => setTimeout(resolve, wait));
        }
      }
    }
    return killed;
  }

  /**
   * Kills every process left in the sandbox's group: a jail of a process that was killed while it
   * started it (bwrap's --die-with-parent comes too late when the parent dies first) outlives it.
   * Returns how many it killed.
   */
  async killAll(name: string): Promise<number> {
    if (this.mode === "unavailable") return 0;
    let killed = 0;
    for (const pid of await this.processesIn(name)) {
      try {
        process.kill(pid, "SIGKILL");
        killed++;
      } catch {
        // Already gone.
      }
    }
    return killed;
  }

  private async processesIn(name: string): Promise<Set<number>> {
    const pids = new Set<number>();
    for (const dir of new Set(Object.values(this.groupDirs(name)))) {
      const procs = await fs.readFile(path.join(dir, "cgroup.procs"), "utf8").catch(() => "");
      for (const pid of procs.split("\n").filter(Boolean)) pids.add(Number(pid));
    }
    return pids;
  }

  /**
   * Removes sandbox groups nobody uses: empty, and older than `olderThanMs` (a group is only empty
   * for the moment between its creation and its jail joining it). A process that was killed, or
   * whose jails were slow to exit at its shutdown, leaves them, and every Berth process on the
   * machine shares the root; an empty memory cgroup still holds kernel memory. Returns how many.
   */
  async removeAbandoned(olderThanMs: number): Promise<number> {
    if (this.mode === "unavailable") return 0;
    let removed = 0;
    for (const root of groupRoots(this.mode)) {
      const entries = await fs.readdir(root, { withFileTypes: true }).catch(() => []);
      for (const entry of entries) {
        if (!entry.isDirectory()) continue;
        const dir = path.join(root, entry.name);
        const [stat, procs] = await Promise.all([fs.stat(dir).catch(() => null), fs.readFile(path.join(dir, "cgroup.procs"), "utf8").catch(() => null)]);
        if (!stat || procs === null || procs.trim() !== "" || Date.now() - stat.mtimeMs < olderThanMs) continue;
        // Fails harmlessly (EBUSY) if a process joined it meanwhile.
        if (await fs.rmdir(dir).then(() => true, () => false)) removed++;
      }
    }
    return removed;
  }
}
