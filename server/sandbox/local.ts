import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, lstatSync, readlinkSync, realpathSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import type { Logger } from "../logger";
import { Cgroups } from "./cgroups";
import { createDaemonClient } from "./daemon-client";
import { startModelRelay, type ModelRelay, type ModelRelayGateway } from "./model-relay";
import {
  SandboxUnavailableError,
  type DaemonClient,
  type ListedSandbox,
  type NetworkMode,
  type ProvisionedSandbox,
  type SandboxBackend,
  type SandboxLoss,
  type SandboxSpec,
  type SandboxState,
} from "./port";

/** An empty sandbox cgroup this old is nobody's: a jail joins its group as it starts. */
const ABANDONED_CGROUP_AGE_MS = 10 * 60_000;
/** How long a jail's processes get to exit after the jail did before they count as left behind. */
const JAIL_EXIT_GRACE_MS = 1_000;
const run = promisify(execFile);

export type LocalBackendOptions = {
  dataDir: string;
  /** The JavaScript runtime that runs the daemon (this process's own: node or bun). */
  runtimePath: string;
  /** The bundled daemon, build/sandboxd.js. */
  daemonScript: string;
  /** Idle pre-started jails kept per network mode. */
  warmPoolSize: number;
  /** Run daemons without bubblewrap. Only for machines where bwrap cannot work; unsafe. */
  unsafeNoIsolation: boolean;
  /** The LiteLLM Gateway that each jail's model relay forwards to; without it jails get no relay. */
  modelGateway?: ModelRelayGateway;
  /**
   * Host programs every jail sees read-only at /opt/berth/bin/<name> (the coding-agent harnesses'
   * binaries, e.g. opencode). Missing files are skipped.
   */
  tools?: Record<string, string>;
  /** The daemon token of a sandbox: derived, so any process can reconnect to a sandbox by name. */
  tokenFor: (name: string) => string;
  logger: Logger;
};

type Jail = {
  name: string;
  child: ChildProcess;
  hostPid: number;
  network: NetworkMode;
  sessionId: string | null;
  workspace: string;
  socketPath: string;
  modelRelay: ModelRelay | null;
  stopping: boolean;
  exited: Promise<void>;
};

const DAEMON_IN_JAIL = "/opt/berth/sandboxd.js";
const WORKSPACE_IN_JAIL = "/workspace";
/** Workspace folders are named by session id (a UUID): nothing else under workspaces/ is listed or deleted. */
const SESSION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const SOCKET_DIR_IN_JAIL = "/run/berth";
/** Where harness binaries appear in a jail; Kubernetes sandbox images put them at the same place. */
export const TOOLS_DIR_IN_JAIL = "/opt/berth/bin";
const SANDBOX_UID = 1000;
const READY_TIMEOUT_MS = 15_000;
const PIDS_LIMIT = 512;
const OPEN_FILES_LIMIT = 4096;
/** Address space a jail may reserve beyond its memory size on hosts without cgroups (addressSpaceLimit). */
const ADDRESS_SPACE_HEADROOM_MB = 64 * 1024;
const REFILL_DELAY_MS = 250;

/** System folders a jail sees, read-only; everything else of the host (data dir, /home, /root…) stays out. */
const SYSTEM_PATHS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
const ETC_FILES = [
  "/etc/alternatives",
  "/etc/ca-certificates",
  "/etc/ssl",
  "/etc/hosts",
  "/etc/resolv.conf",
  "/etc/nsswitch.conf",
  "/etc/localtime",
  "/etc/ld.so.cache",
  "/etc/ld.so.conf",
  "/etc/ld.so.conf.d",
  "/etc/bash.bashrc",
  "/etc/profile",
];

export const DOCKER_HINT =
  "Inside Docker, run the container with --security-opt seccomp=unconfined --security-opt apparmor=unconfined " +
  "--security-opt systempaths=unconfined (bubblewrap needs user and mount namespaces), or use BERTH_SANDBOX_BACKEND=kubernetes.";

/**
 * The `local` backend: each sandbox is a bubblewrap jail around the sandbox daemon, with its own user,
 * PID, IPC, UTS, cgroup (and, unless egress is allowed, network) namespaces, a read-only view of the
 * system folders, a private /tmp, and the session's workspace at /workspace. The platform reaches the
 * daemon over a Unix socket in a folder bound into the jail, so a jail with no network still answers.
 */
export class LocalSandboxBackend implements SandboxBackend {
  readonly name = "local" as const;
  private readonly jails = new Map<string, Jail>();
  private readonly warm: Record<NetworkMode, Jail[]> = { none: [], egress: [] };
  private readonly refilling: Record<NetworkMode, Promise<void> | null> = { none: null, egress: null };
  private readonly lossListeners: Array<(loss: SandboxLoss) => void> = [];
  private shuttingDown = false;

  private constructor(
    private readonly options: LocalBackendOptions,
    private readonly bwrapPath: string | null,
    private readonly cgroups: Cgroups,
  ) {}

  /** Checks that a jail can start here, and fails with instructions when it cannot. */
  static async create(options: LocalBackendOptions): Promise<LocalSandboxBackend> {
    const logger = options.logger.child({ component: "sandbox-local" });
    if (!existsSync(options.daemonScript)) {
      throw new Error(`the sandbox daemon is not built (${options.daemonScript} is missing): run \`npm run build\``);
    }
    let bwrapPath: string | null = null;
    if (options.unsafeNoIsolation) {
      logger.warn("BERTH_UNSAFE_NO_SANDBOX_ISOLATION is set: sandboxes run WITHOUT isolation. Never use this with untrusted agents.");
    } else {
      bwrapPath = await run("sh", ["-c", "command -v bwrap"]).then(({ stdout }) => stdout.trim(), () => null);
      if (!bwrapPath) {
        throw new Error(
          "bubblewrap (bwrap) is not installed, and the local sandbox backend needs it: install it with " +
            "`apt-get install bubblewrap` (Debian/Ubuntu) or `dnf install bubblewrap` (Fedora).",
        );
      }
      try {
        await run(bwrapPath, ["--unshare-user", "--uid", String(SANDBOX_UID), "--unshare-pid", "--unshare-net", ...systemBinds(), "--proc", "/proc", "--dev", "/dev", "--", "/bin/true"]);
      } catch (error) {
        const detail = ((error as { stderr?: string }).stderr ?? String(error)).trim();
        throw new Error(`a test sandbox could not start (bwrap: ${detail}). ${DOCKER_HINT}`);
      }
    }
    await fs.mkdir(path.join(options.dataDir, "sandboxes"), { recursive: true, mode: 0o700 });
    await fs.mkdir(path.join(options.dataDir, "workspaces", ".warm"), { recursive: true, mode: 0o700 });
    const backend = new LocalSandboxBackend({ ...options, logger }, bwrapPath, await Cgroups.detect(logger));
    await backend.removeLeftovers();
    backend.removeAbandonedCgroups();
    backend.refillWarmPools();
    return backend;
  }

  workspaceOf(sessionId: string): string {
    if (!SESSION_ID.test(sessionId)) throw new Error(`not a session id: ${JSON.stringify(sessionId)}`);
    return path.join(this.options.dataDir, "workspaces", sessionId);
  }

  async listWorkspaces(): Promise<string[]> {
    const entries = await fs.readdir(path.join(this.options.dataDir, "workspaces"), { withFileTypes: true });
    // `.warm` holds the warm jails' empty workspaces; anything else not named for a session is not ours.
    return entries.filter((entry) => entry.isDirectory() && SESSION_ID.test(entry.name)).map((entry) => entry.name);
  }

  async deleteWorkspace(sessionId: string): Promise<void> {
    const workspace = this.workspaceOf(sessionId);
    for (const jail of this.jails.values()) {
      if (jail.sessionId === sessionId && !jail.stopping) throw new Error(`the workspace of session ${sessionId} is in use by sandbox ${jail.name}`);
    }
    await fs.rm(workspace, { recursive: true, force: true });
  }

  onLost(listener: (loss: SandboxLoss) => void): void {
    this.lossListeners.push(listener);
  }

  connect(address: string): DaemonClient {
    // unix:<dataDir>/sandboxes/<name>/run/daemon.sock
    const name = path.basename(path.dirname(path.dirname(address.replace(/^unix:/, ""))));
    return createDaemonClient({ address, token: this.options.tokenFor(name) });
  }

  async provision(spec: SandboxSpec): Promise<ProvisionedSandbox> {
    const started = performance.now();
    const workspace = this.workspaceOf(spec.sessionId);
    const claimed = existsSync(workspace) ? undefined : this.warm[spec.network].shift();
    if (claimed) {
      try {
        // A new session adopts the warm jail's empty workspace: the jail's bind mount follows the rename.
        await fs.rename(claimed.workspace, workspace);
        claimed.workspace = workspace;
        claimed.sessionId = spec.sessionId;
        await this.cgroups.apply(claimed.name, { memoryMb: spec.resources.memoryMb, cpuMillis: spec.resources.cpuMillis, pids: PIDS_LIMIT });
        await this.connect(addressOf(claimed)).bind({ sessionId: spec.sessionId, env: spec.env });
        return { name: claimed.name, address: addressOf(claimed), hostPid: claimed.hostPid, fromWarmPool: true, startMs: performance.now() - started };
      } catch (error) {
        this.options.logger.warn({ err: error, sandbox: claimed.name }, "claiming a warm sandbox failed; starting a cold one");
        await this.stop(claimed.name, "warm claim failed");
      } finally {
        // Starting a jail costs a burst of CPU; let the claiming session's first steps go first.
        setTimeout(() => this.refillWarmPools(), REFILL_DELAY_MS).unref();
      }
    }
    await fs.mkdir(workspace, { recursive: true, mode: 0o700 });
    const jail = await this.startJail({ name: spec.name, network: spec.network, sessionId: spec.sessionId, workspace, env: spec.env, resources: spec.resources });
    return { name: jail.name, address: addressOf(jail), hostPid: jail.hostPid, fromWarmPool: false, startMs: performance.now() - started };
  }

  async status(name: string): Promise<SandboxState> {
    const jail = this.jails.get(name);
    return jail && !jail.stopping && jail.child.exitCode === null && jail.child.signalCode === null ? "running" : "gone";
  }

  async list(): Promise<ListedSandbox[]> {
    return [...this.jails.values()].filter((jail) => jail.sessionId).map((jail) => ({ name: jail.name, sessionId: jail.sessionId, state: "running" as const }));
  }

  async stop(name: string, reason: string): Promise<void> {
    const jail = this.jails.get(name);
    if (!jail) return;
    jail.stopping = true;
    this.options.logger.debug({ sandbox: name, reason }, "stopping sandbox");
    if (jail.child.exitCode === null && jail.child.signalCode === null) {
      // bwrap's --die-with-parent chain takes every process of the jail down with it.
      if (this.bwrapPath) jail.child.kill("SIGKILL");
      else process.kill(-jail.hostPid, "SIGKILL");
    }
    await jail.exited;
  }

  async shutdown(): Promise<void> {
    this.shuttingDown = true;
    await Promise.all([...this.jails.keys()].map((name) => this.stop(name, "platform shutdown")));
  }

  /** Keeps `warmPoolSize` idle jails per network mode, one refill at a time per mode. */
  private refillWarmPools(): void {
    for (const network of ["none", "egress"] as const) {
      if (this.shuttingDown || this.refilling[network] || this.warm[network].length >= this.options.warmPoolSize) continue;
      this.refilling[network] = (async () => {
        try {
          while (!this.shuttingDown && this.warm[network].length < this.options.warmPoolSize) {
            const name = `warm-${network}-${randomBytes(5).toString("hex")}`;
            const workspace = path.join(this.options.dataDir, "workspaces", ".warm", name);
            await fs.mkdir(workspace, { mode: 0o700 });
            const jail = await this.startJail({ name, network, sessionId: null, workspace, env: null, resources: { memoryMb: 1024, cpuMillis: 1000 } });
            // A fresh runtime compiles its request path lazily; pay that now, not at claim time.
            await this.connect(addressOf(jail)).health();
            if (this.shuttingDown) await this.stop(jail.name, "platform shutdown");
            else this.warm[network].push(jail);
          }
        } catch (error) {
          if (!this.shuttingDown) this.options.logger.error({ err: error, network }, "could not fill the warm sandbox pool");
        } finally {
          this.refilling[network] = null;
        }
      })();
    }
  }

  /** Waits until every warm pool is full (benchmarks and tests). */
  async warmPoolsReady(): Promise<void> {
    this.refillWarmPools();
    while (this.refilling.none || this.refilling.egress) await Promise.all([this.refilling.none, this.refilling.egress]);
  }

  private async startJail(input: {
    name: string;
    network: NetworkMode;
    sessionId: string | null;
    workspace: string;
    env: Record<string, string> | null;
    resources: { memoryMb: number; cpuMillis: number };
  }): Promise<Jail> {
    const sandboxDir = path.join(this.options.dataDir, "sandboxes", input.name);
    const socketDir = path.join(sandboxDir, "run");
    await fs.mkdir(socketDir, { recursive: true, mode: 0o700 });
    const procsFiles = await this.cgroups.create(input.name, { ...input.resources, pids: PIDS_LIMIT });
    const addressSpace = addressSpaceLimit(input.resources.memoryMb, this.cgroups.mode !== "unavailable");
    const modelToken = randomBytes(24).toString("hex");
    const modelRelay = this.options.modelGateway
      ? await startModelRelay({ socketPath: path.join(socketDir, "model.sock"), token: modelToken, gateway: this.options.modelGateway, logger: this.options.logger })
      : null;
    const limits = ["prlimit", `--nofile=${OPEN_FILES_LIMIT}`, ...(addressSpace === null ? [] : [`--as=${addressSpace}`]), "--core=0", "--"];
    const daemonEnv = {
      ...(input.env ?? {}),
      BERTH_DAEMON_LISTEN: `unix:${this.bwrapPath ? SOCKET_DIR_IN_JAIL : socketDir}/daemon.sock`,
      BERTH_DAEMON_TOKEN: this.options.tokenFor(input.name),
      BERTH_WORKSPACE: this.bwrapPath ? WORKSPACE_IN_JAIL : input.workspace,
      ...(input.env ? {} : { BERTH_DAEMON_UNBOUND: "1" }),
      ...(modelRelay ? { BERTH_DAEMON_MODEL_RELAY: `unix:${this.bwrapPath ? SOCKET_DIR_IN_JAIL : socketDir}/model.sock`, BERTH_DAEMON_MODEL_TOKEN: modelToken } : {}),
    };
    const jailCommand = this.bwrapPath
      ? [this.bwrapPath, ...(await this.bwrapArgs(input.network, input.workspace, socketDir, sandboxDir)), this.options.runtimePath, DAEMON_IN_JAIL]
      : [this.options.runtimePath, this.options.daemonScript];
    // The shell joins the sandbox's cgroups, then becomes prlimit, then bwrap: nothing starts outside them.
    const joinCgroups = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 97; shift; n=$((n-1)); done; exec "$@"';
    const child = spawn("/bin/sh", ["-c", joinCgroups, "berth-jail", String(procsFiles.length), ...procsFiles, ...limits, ...jailCommand], {
      // Exactly the session's environment (plus the daemon's own settings, which it removes at start).
      env: daemonEnv as unknown as NodeJS.ProcessEnv,
      stdio: ["ignore", "pipe", "pipe"],
      detached: !this.bwrapPath,
    });
    if (!child.pid) {
      await modelRelay?.close();
      throw new SandboxUnavailableError(`could not start sandbox ${input.name}`);
    }
    // `exited` settles once the exit is handled (groups emptied and removed), so a stop or a shutdown
    // that waits for it leaves nothing behind.
    let exitHandled!: () => void;
    const jail: Jail = {
      name: input.name,
      child,
      hostPid: child.pid,
      network: input.network,
      sessionId: input.sessionId,
      workspace: input.workspace,
      socketPath: path.join(socketDir, "daemon.sock"),
      modelRelay,
      stopping: false,
      exited: new Promise((resolve) => (exitHandled = resolve)),
    };
    this.jails.set(jail.name, jail);
    let output = "";
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (chunk: string) => {
      output = (output + chunk).slice(-4000);
    });
    child.once("exit", (code, signal) => {
      this.onJailExit(jail, code, signal, output)
        .catch((error: unknown) => this.options.logger.error({ err: error, sandbox: jail.name }, "cleaning up after a sandbox failed"))
        .finally(exitHandled);
    });

    try {
      await waitForReadyLine(child, READY_TIMEOUT_MS);
    } catch (error) {
      await this.stop(jail.name, "did not become ready");
      throw new SandboxUnavailableError(`sandbox ${input.name} did not start: ${(error as Error).message}. ${output.trim()}`.trim());
    }
    return jail;
  }

  private async onJailExit(jail: Jail, code: number | null, signal: NodeJS.Signals | null, output: string) {
    this.jails.delete(jail.name);
    await jail.modelRelay?.close();
    for (const network of ["none", "egress"] as const) this.warm[network] = this.warm[network].filter((j) => j !== jail);
    await fs.rm(path.join(this.options.dataDir, "sandboxes", jail.name), { recursive: true, force: true }).catch(() => {});
    if (!jail.sessionId) await fs.rm(jail.workspace, { recursive: true, force: true }).catch(() => {});
    // bwrap's --die-with-parent chain takes a jail's processes down with it, except one whose parent
    // died before it set that up (a jail stopped while it starts): removing the groups kills those
    // still there once the others have had a moment to exit.
    const strays = await this.cgroups.remove(jail.name, { graceMs: JAIL_EXIT_GRACE_MS });
    if (strays > 0) this.options.logger.warn({ sandbox: jail.name, processes: strays }, "killed processes left behind by a stopped sandbox");
    if (jail.stopping) return;
    const reason = `sandbox process exited (${signal ?? `code ${code}`})`;
    this.options.logger.warn({ sandbox: jail.name, sessionId: jail.sessionId, code, signal, output: output.slice(-500) }, "sandbox lost");
    if (jail.sessionId) for (const listener of this.lossListeners) listener({ name: jail.name, reason });
    else this.refillWarmPools();
  }

  private async bwrapArgs(network: NetworkMode, workspace: string, socketDir: string, sandboxDir: string): Promise<string[]> {
    const passwd = path.join(sandboxDir, "passwd");
    const group = path.join(sandboxDir, "group");
    await fs.writeFile(passwd, `root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:${SANDBOX_UID}:${SANDBOX_UID}:sandbox:${WORKSPACE_IN_JAIL}:/bin/bash\n`);
    await fs.writeFile(group, `root:x:0:\nsandbox:x:${SANDBOX_UID}:\n`);
    const runtime = realpathSync(this.options.runtimePath);
    return [
      "--unshare-user",
      "--uid",
      String(SANDBOX_UID),
      "--gid",
      String(SANDBOX_UID),
      "--unshare-pid",
      "--unshare-ipc",
      "--unshare-uts",
      "--unshare-cgroup-try",
      ...(network === "none" ? ["--unshare-net"] : []),
      "--die-with-parent",
      "--new-session",
      "--hostname",
      "sandbox",
      ...systemBinds(),
      ...ETC_FILES.flatMap((file) => ["--ro-bind-try", file, file]),
      "--ro-bind",
      passwd,
      "/etc/passwd",
      "--ro-bind",
      group,
      "/etc/group",
      "--proc",
      "/proc",
      "--dev",
      "/dev",
      "--tmpfs",
      "/tmp",
      "--tmpfs",
      "/run",
      "--bind",
      socketDir,
      SOCKET_DIR_IN_JAIL,
      "--bind",
      workspace,
      WORKSPACE_IN_JAIL,
      ...(runtime.startsWith("/usr/") ? [] : ["--ro-bind", runtime, runtime]),
      ...Object.entries(this.options.tools ?? {}).flatMap(([name, hostPath]) => ["--ro-bind-try", hostPath, `${TOOLS_DIR_IN_JAIL}/${name}`]),
      "--ro-bind",
      this.options.daemonScript,
      DAEMON_IN_JAIL,
      "--chdir",
      WORKSPACE_IN_JAIL,
      "--",
    ];
  }

  /** In the background: cgroups any Berth process on this machine left behind (Cgroups.removeAbandoned). */
  private removeAbandonedCgroups(): void {
    this.cgroups
      .removeAbandoned(ABANDONED_CGROUP_AGE_MS)
      .then((removed) => {
        if (removed > 0) this.options.logger.info({ removed }, "removed abandoned sandbox cgroups");
      })
      .catch((error: unknown) => this.options.logger.warn({ err: error }, "could not look for abandoned sandbox cgroups"));
  }

  /** Sandbox folders, cgroups and any jail still running, left by a previous process of this data dir. */
  private async removeLeftovers(): Promise<void> {
    const sandboxesDir = path.join(this.options.dataDir, "sandboxes");
    for (const name of await fs.readdir(sandboxesDir)) {
      const killed = await this.cgroups.remove(name);
      if (killed > 0) this.options.logger.warn({ sandbox: name, killed }, "stopped the processes of a jail that outlived the previous process");
      await fs.rm(path.join(sandboxesDir, name), { recursive: true, force: true });
    }
    await fs.rm(path.join(this.options.dataDir, "workspaces", ".warm"), { recursive: true, force: true });
    await fs.mkdir(path.join(this.options.dataDir, "workspaces", ".warm"), { recursive: true, mode: 0o700 });
  }
}

/**
 * The address-space rlimit of a jail, in bytes; null for none. With a memory cgroup (the real limit)
 * there is none: runtimes reserve far more address space than they use (V8 about 10 GiB for each
 * WebAssembly memory, which Node's own fetch creates; JavaScriptCore, in the opencode binary,
 * several GiB), and a limit near the memory size makes them fail. Without cgroups it is the only
 * backstop, set wide enough for a few such reservations.
 */
export function addressSpaceLimit(memoryMb: number, memoryCgroup: boolean): number | null {
  if (memoryCgroup) return null;
  return (memoryMb + ADDRESS_SPACE_HEADROOM_MB) * 1024 * 1024;
}

function addressOf(jail: Jail): string {
  return `unix:${jail.socketPath}`;
}

/** Read-only system folders; merged-/usr symlinks (/bin -> usr/bin) are recreated as symlinks. */
function systemBinds(): string[] {
  const args: string[] = [];
  for (const dir of SYSTEM_PATHS) {
    let stat;
    try {
      stat = lstatSync(dir);
    } catch {
      continue;
    }
    if (stat.isSymbolicLink()) args.push("--symlink", readlinkSync(dir), dir);
    else args.push("--ro-bind", dir, dir);
  }
  return args;
}

function waitForReadyLine(child: ChildProcess, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let buffer = "";
    const timer = setTimeout(() => finish(new Error(`no READY within ${timeoutMs} ms`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      buffer += chunk.toString();
      if (buffer.includes("READY")) finish();
    };
    const onExit = (code: number | null, signal: string | null) => finish(new Error(`exited before ready (${signal ?? `code ${code}`})`));
    function finish(error?: Error) {
      clearTimeout(timer);
      child.stdout!.off("data", onData);
      child.off("exit", onExit);
      // Keep draining stdout so a chatty daemon never blocks on a full pipe.
      child.stdout!.resume();
      if (error) reject(error);
      else resolve();
    }
    child.stdout!.on("data", onData);
    child.once("exit", onExit);
  });
}
