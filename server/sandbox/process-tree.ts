import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";

/**
 * Kills a jail's whole process tree without relying on cgroups (an unprivileged Berth has none).
 *
 * bwrap's --die-with-parent chain is set up by each of its processes a moment after it starts, and
 * the inner bwrap leaves the process group (--new-session) before it does: a jail killed in that
 * window left its inner bwrap, and later the daemon, running under init for good. Here every process
 * is stopped first, and the tree is read only once each has actually stopped (a stop signal is taken
 * on the way back from the kernel, so a process inside clone() still adds its child), again until it
 * stops growing; only then is everything killed.
 */
export async function killProcessTree(root: number): Promise<number> {
  const found = new Set<number>([root]);
  signal(root, "SIGSTOP");
  await untilStopped([root]);
  for (let round = 0; round < 20; round += 1) {
    const added = descendantsOf(root).filter((pid) => !found.has(pid));
    if (added.length === 0) break;
    for (const pid of added) {
      found.add(pid);
      signal(pid, "SIGSTOP");
    }
    await untilStopped(added);
  }
  for (const pid of found) signal(pid, "SIGKILL");
  return found.size - 1;
}

/** Waits (up to about a second) until each process is stopped or gone. */
async function untilStopped(pids: number[]): Promise<void> {
  const deadline = Date.now() + 1_000;
  while (pids.some((pid) => !["T", "t", "Z", "X", null].includes(stateOf(pid))) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

function stateOf(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.charAt(stat.lastIndexOf(")") + 2);
  } catch {
    return null;
  }
}

/**
 * Kills the jails of a data dir that a dead Berth process left (one it was starting when it died has
 * no death signal yet): bwrap processes of `ownerUids` whose command line names a path under `folder`
 * and whose parent is no longer a jail's starter (Berth's runtime) or another bwrap, with their trees.
 * Anything else that names the folder (an operator's `tail -f`, a shell) is left alone.
 */
export async function killProcessesUnder(folder: string, ownerUids: number[]): Promise<number> {
  const prefix = folder.endsWith("/") ? folder : `${folder}/`;
  let killed = 0;
  for (const pid of processIds()) {
    if (pid === process.pid || !ownerUids.includes(realUidOf(pid))) continue;
    const args = commandLineOf(pid);
    if (!args || path.basename(args[0] ?? "") !== "bwrap" || !args.some((arg) => arg.startsWith(prefix))) continue;
    const parent = parentOf(pid);
    const parentProgram = parent === null ? "" : path.basename(commandLineOf(parent)?.[0] ?? "");
    if (["bwrap", "node", "bun"].includes(parentProgram)) continue;
    killed += 1 + (await killProcessTree(pid));
  }
  return killed;
}

function commandLineOf(pid: number): string[] | null {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").slice(0, -1);
  } catch {
    return null;
  }
}

/** Every live descendant of `root`, read from /proc. */
export function descendantsOf(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const pid of processIds()) {
    const parent = parentOf(pid);
    if (parent === null) continue;
    const list = children.get(parent);
    if (list) list.push(pid);
    else children.set(parent, [pid]);
  }
  const result: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    for (const child of children.get(queue.shift()!) ?? []) {
      result.push(child);
      queue.push(child);
    }
  }
  return result;
}

function processIds(): number[] {
  try {
    return readdirSync("/proc").filter((entry) => /^\d+$/.test(entry)).map(Number);
  } catch {
    return [];
  }
}

function parentOf(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) is in parentheses and may itself hold spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[1]);
  } catch {
    return null;
  }
}

function realUidOf(pid: number): number {
  try {
    return Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? -1);
  } catch {
    return -1;
  }
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // already gone
  }
}
