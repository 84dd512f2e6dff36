/**
 * Local sandbox start-up benchmark: `npm run bench:sandboxes [-- --count 50]`.
 *
 * Prints, measured in one run on this machine:
 *   - the floor: `bwrap <the jail's namespace flags> /bin/true`, spawn to exit;
 *   - cold start: provision() of a new jail to its daemon's first answered health request;
 *   - warm claim: provision() that claims a pre-started jail (rename workspace, cgroup limits, bind env)
 *     to its first answered health request.
 * Needs `npm run build` first (it runs build/sandboxd.js, like the server does).
 */
import { execFile } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, realpathSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs, promisify } from "node:util";
import pino from "pino";
import { LocalSandboxBackend } from "../server/sandbox/local";
import type { SandboxSpec } from "../server/sandbox/port";

const run = promisify(execFile);
const { values } = parseArgs({ options: { count: { type: "string", default: "50" } } });
const count = Number(values.count);
if (!Number.isInteger(count) || count < 1 || count > 500) throw new Error("--count must be a whole number from 1 to 500");

const daemonScript = path.resolve("build/sandboxd.js");
if (!existsSync(daemonScript)) throw new Error("build/sandboxd.js is missing: run `npm run build` first");

function percentile(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

function report(label: string, samples: number[]): void {
  const format = (ms: number) => `${ms.toFixed(1)} ms`.padStart(9);
  console.log(
    `${label.padEnd(34)} n=${String(samples.length).padEnd(4)} p50 ${format(percentile(samples, 50))}  p95 ${format(percentile(samples, 95))}  ` +
      `min ${format(Math.min(...samples))}  max ${format(Math.max(...samples))}`,
  );
}

function spec(sessionId: string): SandboxSpec {
  return {
    name: `bench-${randomBytes(4).toString("hex")}`,
    teamId: randomUUID(),
    agentId: randomUUID(),
    sessionId,
    generation: 1,
    network: "none",
    env: { BENCH: "1" },
    resources: { cpuMillis: 1000, memoryMb: 512, diskMb: 2048 },
    image: null,
  };
}

/** `bwrap <flags> <program…>`, spawn to exit: `/bin/true`, or the daemon's runtime doing nothing. */
async function bwrapFloor(program: string[] = ["/bin/true"], extraBinds: string[] = []): Promise<number[]> {
  const { stdout } = await run("sh", ["-c", "command -v bwrap"]);
  const bwrap = stdout.trim();
  const flags = ["--unshare-user", "--uid", "1000", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--die-with-parent"];
  const binds = ["--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64"];
  const samples: number[] = [];
  for (let i = 0; i < count; i++) {
    const started = performance.now();
    await run(bwrap, [...flags, ...binds, ...extraBinds, "--proc", "/proc", "--dev", "/dev", "--", ...program]);
    samples.push(performance.now() - started);
  }
  return samples;
}

async function measure(warmPoolSize: number): Promise<{ samples: number[]; fromWarmPool: number }> {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-bench-"));
  const secret = randomBytes(32).toString("hex");
  const backend = await LocalSandboxBackend.create({
    dataDir,
    runtimePath: process.execPath,
    daemonScript,
    warmPoolSize,
    unsafeNoIsolation: false,
    tokenFor: (name) => `${secret}-${name}`,
    logger: pino({ level: "warn" }),
  });
  const samples: number[] = [];
  let fromWarmPool = 0;
  try {
    for (let i = 0; i < count; i++) {
      if (warmPoolSize > 0) await backend.warmPoolsReady();
      const started = performance.now();
      const sandbox = await backend.provision(spec(randomUUID()));
      await backend.connect(sandbox.address).health();
      samples.push(performance.now() - started);
      if (sandbox.fromWarmPool) fromWarmPool++;
      await backend.stop(sandbox.name, "benchmark");
    }
  } finally {
    await backend.shutdown();
    rmSync(dataDir, { recursive: true, force: true });
  }
  return { samples, fromWarmPool };
}

console.log(`Local sandbox benchmark: ${count} sandboxes per figure, ${os.cpus().length} CPUs, ${process.release.name} ${process.version}`);
const bwrapTrue = await bwrapFloor();
report("bwrap true (floor)", bwrapTrue);
const runtime = realpathSync(process.execPath);
const bareRuntime = await bwrapFloor([runtime, "-e", ""], runtime.startsWith("/usr/") ? [] : ["--ro-bind", runtime, runtime]);
report("node -e '' in bare bwrap (floor)", bareRuntime);
const cold = await measure(0);
report("cold start to healthy daemon", cold.samples);
const warm = await measure(2);
report("warm claim to healthy daemon", warm.samples);
const p50 = (samples: number[]) => [...samples].sort((a, b) => a - b)[Math.floor(samples.length / 2)]!;
console.log(`cold start p50 / node-in-bwrap p50: ${(p50(cold.samples) / p50(bareRuntime)).toFixed(2)}x (target 1.3x)`);
console.log(`warm claim p50 / bwrap-true p50:    ${(p50(warm.samples) / p50(bwrapTrue)).toFixed(2)}x (target 1.2x)`);
if (warm.fromWarmPool !== count) console.log(`note: only ${warm.fromWarmPool} of ${count} warm runs claimed a pre-started jail`);
