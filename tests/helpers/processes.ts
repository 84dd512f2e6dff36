import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { runningInChroot, traversableBy, unchrootPrefix } from "../../server/host-root";
import { ROOT } from "./berth";

export type BerthProcess = {
  child: ChildProcess;
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
};

/** Starts a process with only the given environment (plus PATH/HOME), capturing all its output. */
export function startProcess(
  command: string,
  args: string[],
  env: Record<string, string>,
  options: { uid?: number; gid?: number } = {},
): BerthProcess {
  const environment = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? "/root", ...env } as unknown as NodeJS.ProcessEnv;
  const asOther = options.uid !== undefined && options.uid !== process.getuid?.();
  // Another user may not reach this checkout (a clone in root's 0700 home), and in a chroot could
  // start no jail: it runs on a view of the checkout, as the root of a mount namespace of its own.
  const viaView = asOther && (!traversableBy({ uid: options.uid!, gid: options.gid ?? options.uid! }, ROOT) || runningInChroot());
  const view = path.join("/run", "berth-test-checkout", String(process.pid));
  if (viaView) mkdirSync(view, { recursive: true, mode: 0o755 });
  const [program, ...programArgs] = viaView
    ? [...unchrootPrefix(), "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", VIEW_SCRIPT, "berth-test-view", ROOT, view, String(options.uid), String(options.gid ?? options.uid), command, ...args]
    : [command, ...args];
  const child: ChildProcess = spawn(program!, programArgs, {
    cwd: ROOT,
    env: environment,
    stdio: ["ignore", "pipe", "pipe"],
    ...(options.uid === undefined || viaView ? {} : { uid: options.uid, gid: options.gid }),
  });
  let output = "";
  child.stdout!.on("data", (chunk) => (output += chunk));
  child.stderr!.on("data", (chunk) => (output += chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  return { child, output: () => output, exited };
}

const VIEW_SCRIPT = `mount --bind "$1" "$2" && cd "$2" && uid=$3 && gid=$4 && shift 4 && exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"`;

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}

export async function readyzStatus(port: number): Promise<number | undefined> {
  try {
    const response = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(2_000) });
    return response.status;
  } catch {
    return undefined;
  }
}

/** Every process below `root` (from /proc's parent links). */
export function descendants(root: number): number[] {
  const parents = new Map<number, number>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      parents.set(Number(entry), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {
      // the process ended meanwhile
    }
  }
  const found: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    const parent = queue.shift()!;
    for (const [pid, ppid] of parents) {
      if (ppid !== parent) continue;
      found.push(pid);
      queue.push(pid);
    }
  }
  return found;
}
