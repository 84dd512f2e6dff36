import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, lstatSync, readFileSync, readlinkSync, realpathSync, statSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import type { Logger } from "../logger";
import { HOST_PATH, runningInChroot, unchrootPrefix } from "../host-root";
import { ensureSystemUser, runningAsRoot, type HostIdentity } from "../system-user";
import { Cgroups } from "./cgroups";
import { createDaemonClient } from "./daemon-client";
import { killProcessesUnder, killProcessTree } from "./process-tree";
import { hostSeccompProgram } from "./seccomp";
import {
  SandboxUnavailableError,
  type DaemonClient,
  type ListedSandbox,
  type ProvisionedSandbox,
  type SandboxAvailability,
  type SandboxBackend,
  type SandboxIsolation,
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
  /** Idle pre-started jails kept (every jail is alike: what it may reach is decided at the egress gateway). */
  warmPoolSize: number;
  /** Run daemons without bubblewrap. Only for machines where bwrap cannot work; unsafe. */
  unsafeNoIsolation: boolean;
  /** The egress gateway: each jail gets a socket of it in its run folder, its only way out (and its model relay). */
  egress?: SandboxEgress;
  /**
   * Host programs every jail sees read-only at /opt/berth/bin/<name> (the coding-agent harnesses'
   * binaries, e.g. opencode). Missing files are skipped.
   */
  tools?: Record<string, string>;
  /** The daemon token of a sandbox: derived, so any process can reconnect to a sandbox by name. */
  tokenFor: (name: string) => string;
  logger: Logger;
};

/** What the local backend needs of the egress gateway. */
export type SandboxEgress = {
  /** Serves one jail on a Unix socket: connections there can only be that sandbox's. */
  listenForSandbox(socketPath: string, sandboxName: string): Promise<{ close(): Promise<void> }>;
  /** The sandbox's gateway token (proxy credentials and model relay key). */
  tokenFor(sandboxName: string): string;
  /** PEM of the installation's egress CA, which the sandbox trusts. */
  caPem: string;
  /** A host file of the system's trusted roots plus that CA: bound over the jail's trust store. */
  trustBundlePath: string;
};

type Jail = {
  name: string;
  /** A warm jail's workspace size (image workspaces only): a session claims it only if its agent's diskMb is the same. */
  diskMb: number | null;
  child: ChildProcess;
  hostPid: number;
  sessionId: string | null;
  workspace: string;
  socketPath: string;
  egressListener: { close(): Promise<void> } | null;
  stopping: boolean;
  exited: Promise<void>;
};

const DAEMON_IN_JAIL = "/opt/berth/sandboxd.js";
const WORKSPACE_IN_JAIL = "/workspace";
/** Workspace folders are named by session id (a UUID): nothing else under workspaces/ is listed or deleted. */
const SESSION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** Where jails find the system's trusted roots (Debian's layout; other distributions link into it or ignore it). */
const TRUST_STORE = "/etc/ssl/certs/ca-certificates.crt";
/** The jail's run folder: read-only to the sandbox but for DAEMON_DIR_IN_JAIL, where the daemon makes its socket. */
const SOCKET_DIR_IN_JAIL = "/run/berth";
const DAEMON_DIR_IN_JAIL = "/run/berth/daemon";
/** The host identity jails run as when Berth runs as root (decision 022). */
export const SANDBOX_SYSTEM_USER = "berth-sandbox";
/**
 * Where, as root, a jail's private mount namespace shows bwrap the host folders and files it binds:
 * bwrap runs as SANDBOX_SYSTEM_USER, who cannot reach the data dir (it may sit in /root, 0700).
 */
const STAGE_DIR = "/run/berth-stage";
/** /proc entries that change the whole host: the host's own, bound read-only over the jail's /proc (bwrap makes them a mount of their own only when it runs setuid). */
const PROC_READ_ONLY = ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"];
/** Image workspaces of warm jails have this size; a session whose agent asks for another starts cold. */
export const WARM_WORKSPACE_DISK_MB = 2048;
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
 * PID, IPC, UTS, cgroup and network namespaces (loopback only), a read-only view of the system
 * folders, a private /tmp, and the session's workspace at /workspace. The platform reaches the daemon
 * over a Unix socket in a folder bound into the jail; the jail's only way out is the egress gateway's
 * socket next to it, which the daemon forwards a loopback port to.
 */
export class LocalSandboxBackend implements SandboxBackend {
  readonly name = "local" as const;
  private readonly jails = new Map<string, Jail>();
  private warm: Jail[] = [];
  private refilling: Promise<void> | null = null;
  private readonly lossListeners: Array<(loss: SandboxLoss) => void> = [];
  private shuttingDown = false;
  /** Set when this host cannot run jails: Berth runs on without sandboxes, and says why. */
  private unavailable: JailProblem | null = null;

  private constructor(
    private readonly options: LocalBackendOptions,
    private readonly bwrapPath: string | null,
    private readonly cgroups: Cgroups,
    /** Who jails run as on the host: SANDBOX_SYSTEM_USER when Berth is root, otherwise Berth's own user (null). */
    private readonly identity: HostIdentity | null,
    private readonly seccomp: Buffer | null,
    /** How workspaces are kept: an ext4 image each (a real disk quota; root only), or a plain folder. */
    private workspaceKind: "image" | "folder",
    private readonly mkfsPath: string | null,
  ) {}

  /** What the sandbox boundary is made of here, for system.health and the start-up log. */
  describeIsolation(): SandboxIsolation {
    return {
      hostUser: this.identity?.name ?? (this.bwrapPath ? "the Berth user (not root)" : "the Berth user, WITHOUT a jail"),
      seccomp: this.bwrapPath !== null && this.seccomp !== null,
      diskQuota: this.workspaceKind === "image",
    };
  }

  /** Whether sessions can have sandboxes here: not when bubblewrap is missing or a test jail could not start. */
  availability(): SandboxAvailability {
    return this.unavailable ? { available: false, ...this.unavailable } : { available: true };
  }

  /**
   * Checks that a jail can start here. A host that cannot run one (no bubblewrap, user namespaces
   * off) does not stop Berth: the backend comes up unavailable, with the reason and the fix, and
   * every provision fails with them (decision 024).
   */
  static async create(options: LocalBackendOptions): Promise<LocalSandboxBackend> {
    const logger = options.logger.child({ component: "sandbox-local" });
    if (!existsSync(options.daemonScript)) {
      throw new Error(`the sandbox daemon is not built (${options.daemonScript} is missing): run \`npm run build\``);
    }
    let problem: JailProblem | null = null;
    let bwrapPath: string | null = null;
    if (options.unsafeNoIsolation) {
      logger.warn("BERTH_UNSAFE_NO_SANDBOX_ISOLATION is set: sandboxes run WITHOUT isolation. Never use this with untrusted agents.");
    } else {
      bwrapPath = await onPath("bwrap");
      if (!bwrapPath) problem = await bubblewrapMissing();
    }
    let identity: HostIdentity | null = null;
    if (bwrapPath && runningAsRoot()) {
      identity = await ensureSystemUser(SANDBOX_SYSTEM_USER, "that sandboxes run as", logger).catch((error: unknown) => {
        problem = {
          reason: `the '${SANDBOX_SYSTEM_USER}' system user that sandboxes run as could not be created (${(error as Error).message.trim()})`,
          fix: `Create it: \`useradd --system --user-group --no-create-home --shell /usr/sbin/nologin ${SANDBOX_SYSTEM_USER}\` (needs useradd, from the passwd package), then restart Berth.`,
        };
        return null;
      });
    }
    const seccomp = hostSeccompProgram();
    if (bwrapPath && !problem && !seccomp) logger.warn({ arch: process.arch }, "no seccomp filter for this architecture: sandboxes start without one");
    const mkfsPath = identity ? (["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"].find((candidate) => existsSync(candidate)) ?? null) : null;
    await fs.mkdir(path.join(options.dataDir, "sandboxes"), { recursive: true, mode: 0o700 });
    await fs.mkdir(path.join(options.dataDir, "workspaces", ".warm"), { recursive: true, mode: 0o700 });
    if (identity) await fs.mkdir(STAGE_DIR, { recursive: true, mode: 0o755 });
    const backend = new LocalSandboxBackend({ ...options, logger }, problem ? null : bwrapPath, await Cgroups.detect(logger), identity, seccomp, mkfsPath ? "image" : "folder", mkfsPath);
    await backend.removeLeftovers();
    if (bwrapPath && !problem) problem = await backend.selfTest();
    if (problem) {
      // Once, at start: reconciliation and the warm pool never try (and never log) again.
      backend.unavailable = problem;
      logger.error(problem, `sandboxes are unavailable: ${problem.reason}. ${problem.fix}`);
      return backend;
    }
    const isolation = backend.describeIsolation();
    if (!isolation.diskQuota) {
      logger.warn(
        { reason: identity ? "mkfs.ext4 (e2fsprogs) is missing" : "Berth is not running as root" },
        "workspace disk quotas (agent diskMb) are NOT enforced: workspaces are plain folders on the data dir's file system",
      );
    }
    logger.info(isolation, "sandbox isolation");
    backend.removeAbandonedCgroups();
    backend.refillWarmPools();
    return backend;
  }

  /** A session's workspace folder (`<id>`); with disk quotas its files live in the image `<id>.img` instead. */
  workspaceOf(sessionId: string): string {
    if (!SESSION_ID.test(sessionId)) throw new Error(`not a session id: ${JSON.stringify(sessionId)}`);
    return path.join(this.options.dataDir, "workspaces", sessionId);
  }

  async listWorkspaces(): Promise<string[]> {
    // Gone (someone cleaned the data dir): nothing to reconcile, rather than an error every minute.
    const entries = await fs.readdir(path.join(this.options.dataDir, "workspaces"), { withFileTypes: true }).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return [];
      throw error;
    });
    // `.warm` holds the warm jails' empty workspaces; anything else not named for a session is not ours.
    const names = new Set<string>();
    for (const entry of entries) {
      if (entry.isDirectory() && SESSION_ID.test(entry.name)) names.add(entry.name);
      else if (entry.isFile() && entry.name.endsWith(IMAGE_SUFFIX) && SESSION_ID.test(entry.name.slice(0, -IMAGE_SUFFIX.length))) names.add(entry.name.slice(0, -IMAGE_SUFFIX.length));
    }
    return [...names];
  }

  async deleteWorkspace(sessionId: string): Promise<void> {
    const workspace = this.workspaceOf(sessionId);
    const jails = [...this.jails.values()].filter((jail) => jail.sessionId === sessionId);
    const running = jails.find((jail) => !jail.stopping);
    if (running) throw new Error(`the workspace of session ${sessionId} is in use by sandbox ${running.name}`);
    // A stopping jail's processes could still change the tree while it is deleted.
    await Promise.all(jails.map((jail) => jail.exited));
    await removeTree(workspace);
    await fs.rm(workspace + IMAGE_SUFFIX, { force: true });
  }

  onLost(listener: (loss: SandboxLoss) => void): void {
    this.lossListeners.push(listener);
  }

  connect(address: string): DaemonClient {
    // unix:<dataDir>/sandboxes/<name>/run/daemon/daemon.sock
    const [name = ""] = path.relative(path.join(this.options.dataDir, "sandboxes"), address.replace(/^unix:/, "")).split(path.sep);
    return createDaemonClient({ address, token: this.options.tokenFor(name) });
  }

  async provision(spec: SandboxSpec): Promise<ProvisionedSandbox> {
    if (this.unavailable) throw new SandboxUnavailableError(`sandboxes are unavailable on this host: ${this.unavailable.reason}`);
    const started = performance.now();
    const folder = this.workspaceOf(spec.sessionId);
    const image = folder + IMAGE_SUFFIX;
    const existing = existsSync(image) ? image : existsSync(folder) ? folder : null;
    const claimable = (jail: Jail) => this.workspaceKind === "folder" || jail.diskMb === spec.resources.diskMb;
    const warmIndex = existing ? -1 : this.warm.findIndex(claimable);
    const claimed = warmIndex === -1 ? undefined : this.warm.splice(warmIndex, 1)[0];
    if (claimed) {
      try {
        // A new session adopts the warm jail's empty workspace: the jail's mount follows the rename.
        const workspace = this.workspaceKind === "image" ? image : folder;
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
    const workspace = existing ?? (await this.newWorkspace(this.workspaceKind === "image" ? image : folder, spec.resources.diskMb));
    if (workspace === folder) await this.ownWorkspaceFolder(folder);
    const jail = await this.startJail({ name: spec.name, sessionId: spec.sessionId, workspace, env: spec.env, resources: spec.resources });
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
      // Not left to bwrap's --die-with-parent chain: a jail stopped while it starts would outlive it.
      if (this.bwrapPath) await killProcessTree(jail.hostPid);
      else process.kill(-jail.hostPid, "SIGKILL");
    }
    await jail.exited;
  }

  async shutdown(): Promise<void> {
    this.shuttingDown = true;
    await Promise.all([...this.jails.keys()].map((name) => this.stop(name, "platform shutdown")));
  }

  /** Keeps `warmPoolSize` idle jails, one refill at a time. */
  private refillWarmPools(): void {
    if (this.unavailable || this.shuttingDown || this.refilling || this.warm.length >= this.options.warmPoolSize) return;
    this.refilling = (async () => {
      try {
        while (!this.shuttingDown && this.warm.length < this.options.warmPoolSize) {
          const name = `warm-${randomBytes(5).toString("hex")}`;
          const folder = path.join(this.options.dataDir, "workspaces", ".warm", name);
          const workspace = await this.newWorkspace(this.workspaceKind === "image" ? folder + IMAGE_SUFFIX : folder, WARM_WORKSPACE_DISK_MB);
          const jail = await this.startJail({ name, sessionId: null, workspace, env: null, resources: { memoryMb: 1024, cpuMillis: 1000, diskMb: WARM_WORKSPACE_DISK_MB } });
          // A fresh runtime compiles its request path lazily; pay that now, not at claim time.
          await this.connect(addressOf(jail)).health();
          if (this.shuttingDown) await this.stop(jail.name, "platform shutdown");
          else this.warm.push(jail);
        }
      } catch (error) {
        if (!this.shuttingDown) this.options.logger.error({ err: error }, "could not fill the warm sandbox pool");
      } finally {
        this.refilling = null;
      }
    })();
  }

  /** Waits until the warm pool is full (benchmarks and tests). */
  async warmPoolsReady(): Promise<void> {
    this.refillWarmPools();
    while (this.refilling) await this.refilling;
  }

  private async startJail(input: {
    name: string;
    sessionId: string | null;
    workspace: string;
    env: Record<string, string> | null;
    resources: { memoryMb: number; cpuMillis: number; diskMb: number };
  }): Promise<Jail> {
    // A NUL would end one of bwrap's --setenv arguments early (spawnJail); Node refuses it in a real environment too.
    if (Object.entries(input.env ?? {}).some(([name, value]) => name.includes("\0") || value.includes("\0"))) {
      throw new SandboxUnavailableError(`sandbox ${input.name} did not start: an environment variable of the session holds a NUL character`);
    }
    const sandboxDir = path.join(this.options.dataDir, "sandboxes", input.name);
    const socketDir = path.join(sandboxDir, "run");
    const daemonDir = path.join(socketDir, "daemon");
    // The sandbox folder only traversable and the run folder readable by the sandbox user (they
    // reach it through the jail's binds); the daemon's folder its own until it is sealed.
    await fs.mkdir(daemonDir, { recursive: true, mode: 0o700 });
    await fs.chmod(sandboxDir, 0o711);
    await fs.chmod(socketDir, 0o755);
    if (this.identity) await fs.chown(daemonDir, this.identity.uid, this.identity.gid);
    const procsFiles = await this.cgroups.create(input.name, { memoryMb: input.resources.memoryMb, cpuMillis: input.resources.cpuMillis, pids: PIDS_LIMIT });
    const addressSpace = addressSpaceLimit(input.resources.memoryMb, this.cgroups.mode !== "unavailable");
    const egress = this.options.egress;
    const egressSocket = path.join(socketDir, "egress.sock");
    const egressListener = egress ? await egress.listenForSandbox(egressSocket, input.name) : null;
    // Connecting needs write access to the socket; the gateway checks the sandbox's token on every request.
    if (egressListener) await fs.chmod(egressSocket, 0o666);
    const limits = ["prlimit", `--nofile=${OPEN_FILES_LIMIT}`, ...(addressSpace === null ? [] : [`--as=${addressSpace}`]), "--core=0", "--"];
    const daemonEnv = {
      // The daemon's own settings come from here only, never from an agent's env or secrets.
      ...Object.fromEntries(Object.entries(input.env ?? {}).filter(([name]) => !name.startsWith("BERTH_DAEMON_"))),
      BERTH_DAEMON_LISTEN: `unix:${this.bwrapPath ? DAEMON_DIR_IN_JAIL : daemonDir}/daemon.sock`,
      BERTH_DAEMON_TOKEN: this.options.tokenFor(input.name),
      BERTH_WORKSPACE: this.bwrapPath ? WORKSPACE_IN_JAIL : input.workspace,
      ...(input.env ? {} : { BERTH_DAEMON_UNBOUND: "1" }),
      // Alone in the jail's PID namespace: when its last command ends, it ends whatever that left running.
      ...(this.bwrapPath ? { BERTH_DAEMON_SWEEP: "1" } : {}),
      ...(egress
        ? {
            BERTH_DAEMON_GATEWAY: `unix:${this.bwrapPath ? SOCKET_DIR_IN_JAIL : socketDir}/egress.sock`,
            BERTH_DAEMON_GATEWAY_TOKEN: egress.tokenFor(input.name),
            BERTH_DAEMON_CA_PEM: egress.caPem,
          }
        : {}),
    };
    const stage = new Stage(this.identity);
    const jailCommand = this.bwrapPath
      ? [...stage.prefix(this.bwrapPath, await this.bwrapArgs(stage, input.workspace, sandboxDir, input.resources.memoryMb), this.seccomp !== null), this.options.runtimePath, DAEMON_IN_JAIL]
      : [this.options.runtimePath, this.options.daemonScript];
    const child = spawnJail([...limits, ...jailCommand], procsFiles, {
      // Exactly the session's environment (plus the daemon's own settings, which it removes at start),
      // set by bwrap itself: the host programs before it (some of them root's) must never run with an
      // agent's PATH or LD_PRELOAD. Without bwrap there is no boundary to keep it from.
      jailEnv: this.bwrapPath ? daemonEnv : null,
      hostEnv: this.bwrapPath ? HOST_ENV : daemonEnv,
      seccomp: this.bwrapPath ? this.seccomp : null,
      detached: !this.bwrapPath,
    });
    if (!child.pid) {
      await egressListener?.close();
      throw new SandboxUnavailableError(`could not start sandbox ${input.name}`);
    }
    // `exited` settles once the exit is handled (groups emptied and removed), so a stop or a shutdown
    // that waits for it leaves nothing behind.
    let exitHandled!: () => void;
    const jail: Jail = {
      name: input.name,
      diskMb: this.workspaceKind === "image" ? input.resources.diskMb : null,
      child,
      hostPid: child.pid,
      sessionId: input.sessionId,
      workspace: input.workspace,
      socketPath: path.join(daemonDir, "daemon.sock"),
      egressListener,
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
      // The daemon has made its socket: from now on the folder is root's, and nothing in the sandbox
      // can add to it, or swap the socket for a link to a socket of its choosing that root would dial.
      if (this.identity) await fs.chown(daemonDir, 0, 0);
    } catch (error) {
      await this.stop(jail.name, "did not become ready");
      throw new SandboxUnavailableError(`sandbox ${input.name} did not start: ${(error as Error).message}. ${output.trim()}`.trim());
    }
    return jail;
  }

  private async onJailExit(jail: Jail, code: number | null, signal: NodeJS.Signals | null, output: string) {
    this.jails.delete(jail.name);
    await jail.egressListener?.close();
    this.warm = this.warm.filter((j) => j !== jail);
    // bwrap's --die-with-parent chain takes a jail's processes down with it, except one whose parent
    // died before it set that up (a jail stopped while it starts): removing the groups kills those
    // still there once the others have had a moment to exit. Only then are its folders removed.
    const strays = await this.cgroups.remove(jail.name, { graceMs: JAIL_EXIT_GRACE_MS });
    if (strays > 0) this.options.logger.warn({ sandbox: jail.name, processes: strays }, "killed processes left behind by a stopped sandbox");
    await removeTree(path.join(this.options.dataDir, "sandboxes", jail.name)).catch((error: unknown) =>
      this.options.logger.warn({ err: error, sandbox: jail.name }, "could not remove a stopped sandbox's folder"),
    );
    if (!jail.sessionId) await removeTree(jail.workspace).catch(() => {});
    if (jail.stopping) return;
    const reason = `sandbox process exited (${signal ?? `code ${code}`})`;
    this.options.logger.warn({ sandbox: jail.name, sessionId: jail.sessionId, code, signal, output: output.slice(-500) }, "sandbox lost");
    if (jail.sessionId) for (const listener of this.lossListeners) listener({ name: jail.name, reason });
    else this.refillWarmPools();
  }

  private async bwrapArgs(stage: Stage, workspace: string, sandboxDir: string, memoryMb: number): Promise<string[]> {
    const passwd = path.join(sandboxDir, "passwd");
    const group = path.join(sandboxDir, "group");
    await fs.writeFile(passwd, `root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:${SANDBOX_UID}:${SANDBOX_UID}:sandbox:${WORKSPACE_IN_JAIL}:/bin/bash\n`, { mode: 0o644 });
    await fs.writeFile(group, `root:x:0:\nsandbox:x:${SANDBOX_UID}:\n`, { mode: 0o644 });
    const runtime = realpathSync(this.options.runtimePath);
    const sandbox = stage.view(sandboxDir);
    const tools = Object.entries(this.options.tools ?? {}).filter(([, hostPath]) => existsSync(hostPath));
    return [
      "--unshare-user",
      "--uid",
      String(SANDBOX_UID),
      "--gid",
      String(SANDBOX_UID),
      // No user namespaces inside (the seccomp filter refuses them too).
      "--disable-userns",
      "--unshare-pid",
      "--unshare-ipc",
      "--unshare-uts",
      "--unshare-cgroup-try",
      // Never the host's network: loopback only; the way out is the egress gateway's socket.
      "--unshare-net",
      "--die-with-parent",
      // A new session: no TIOCSTI into a terminal the platform holds.
      "--new-session",
      "--hostname",
      "sandbox",
      ...systemBinds(),
      ...ETC_FILES.flatMap((file) => ["--ro-bind-try", file, file]),
      // The system's roots plus the installation's egress CA, for programs that read the trust store itself.
      ...(this.options.egress && existsSync(TRUST_STORE) ? ["--ro-bind", stage.view(this.options.egress.trustBundlePath), TRUST_STORE] : []),
      "--ro-bind",
      `${sandbox}/passwd`,
      "/etc/passwd",
      "--ro-bind",
      `${sandbox}/group`,
      "/etc/group",
      "--proc",
      "/proc",
      // The kernel's global knobs, read-only (bwrap covers them only when it runs setuid).
      ...PROC_READ_ONLY.flatMap((entry) => ["--ro-bind-try", entry, entry]),
      "--dev",
      "/dev",
      // Sized: without a memory cgroup nothing else would bound them.
      "--size",
      String(memoryMb * 1024 * 1024),
      "--tmpfs",
      "/tmp",
      "--size",
      String(1024 * 1024),
      "--tmpfs",
      "/run",
      "--ro-bind",
      `${sandbox}/run`,
      SOCKET_DIR_IN_JAIL,
      "--bind",
      `${sandbox}/run/daemon`,
      DAEMON_DIR_IN_JAIL,
      "--bind",
      stage.view(workspace, workspace.endsWith(IMAGE_SUFFIX) ? "image" : "bind"),
      WORKSPACE_IN_JAIL,
      ...(runtime.startsWith("/usr/") ? [] : ["--ro-bind", stage.view(runtime), runtime]),
      ...tools.flatMap(([name, hostPath]) => ["--ro-bind", stage.view(hostPath), `${TOOLS_DIR_IN_JAIL}/${name}`]),
      "--ro-bind",
      stage.view(this.options.daemonScript),
      DAEMON_IN_JAIL,
      "--chdir",
      WORKSPACE_IN_JAIL,
      "--",
    ];
  }

  /**
   * Starts a jail that runs `/bin/true` the way every sandbox starts (as the sandbox user, seccomp,
   * staged binds, an image workspace where quotas are on), so a host that cannot do it is known at
   * start, with the reason, rather than at the first session. An image that cannot be mounted (no
   * loop devices, as in many containers) turns quotas off with a warning instead. Returns what keeps
   * jails from starting here, or null.
   */
  private async selfTest(): Promise<JailProblem | null> {
    const dir = path.join(this.options.dataDir, "sandboxes", ".self-test");
    await fs.rm(dir, { recursive: true, force: true });
    await fs.mkdir(dir, { mode: 0o711 });
    const attempt = async (workspace: string) => {
      const stage = new Stage(this.identity);
      const args = [
        "--unshare-user",
        "--uid",
        String(SANDBOX_UID),
        "--disable-userns",
        "--unshare-pid",
        "--unshare-net",
        ...systemBinds(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--bind",
        stage.view(workspace, workspace.endsWith(IMAGE_SUFFIX) ? "image" : "bind"),
        WORKSPACE_IN_JAIL,
        "--",
        "/bin/sh",
        "-c",
        `touch ${WORKSPACE_IN_JAIL}/.berth-self-test`,
      ];
      const child = spawnJail(stage.prefix(this.bwrapPath!, args, this.seccomp !== null), [], { jailEnv: {}, hostEnv: HOST_ENV, seccomp: this.seccomp, detached: false });
      let stderr = "";
      child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (stderr = (stderr + chunk).slice(-2000)));
      child.stdout!.resume();
      const code = await new Promise<number | null>((resolve) => child.once("close", (exitCode) => resolve(exitCode)));
      if (code !== 0) throw new Error(stderr.trim() || `exit code ${code}`);
    };
    try {
      if (this.workspaceKind === "image") {
        try {
          await attempt(await this.newWorkspace(path.join(dir, `workspace${IMAGE_SUFFIX}`), 16));
          return null;
        } catch (error) {
          this.options.logger.warn({ err: error }, "a workspace image could not be mounted (are loop devices available?): disk quotas are off");
          this.workspaceKind = "folder";
        }
      }
      const folder = path.join(dir, "workspace");
      await this.newWorkspace(folder, 0);
      await attempt(folder);
      return null;
    } catch (error) {
      return diagnoseJailFailure((error as Error).message, { readSetting: readKernelSetting, inContainer: inContainer(), root: runningAsRoot(), inChroot: runningInChroot() });
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  }

  /** An empty workspace: an ext4 image of `diskMb` (path ends in .img), or a folder the sandbox user owns. */
  private async newWorkspace(target: string, diskMb: number): Promise<string> {
    if (!target.endsWith(IMAGE_SUFFIX)) {
      await fs.mkdir(target, { recursive: true, mode: 0o700 });
      if (this.identity) await fs.chown(target, this.identity.uid, this.identity.gid);
      return target;
    }
    const partial = `${target}.partial`;
    try {
      await fs.writeFile(partial, "", { mode: 0o600 });
      await fs.truncate(partial, diskMb * 1024 * 1024);
      // No reserved blocks, lazy init (a sparse file: a new 2 GiB workspace takes about 1 MB on disk),
      // the root folder owned by the sandbox user.
      const owner = this.identity ? `,root_owner=${this.identity.uid}:${this.identity.gid}` : "";
      await run(this.mkfsPath!, ["-q", "-F", "-m", "0", "-E", `lazy_itable_init=1,lazy_journal_init=1,nodiscard${owner}`, partial]);
      await fs.rename(partial, target);
    } catch (error) {
      await fs.rm(partial, { force: true });
      throw new SandboxUnavailableError(`could not create a ${diskMb} MB workspace image: ${(error as Error).message}`);
    }
    return target;
  }

  /** Workspaces from before jails ran as the sandbox user (or copied in by hand) are handed to it once. */
  private async ownWorkspaceFolder(folder: string): Promise<void> {
    if (!this.identity) return;
    const stat = await fs.stat(folder);
    if (stat.uid === this.identity.uid) return;
    await run("chown", ["-R", "--no-dereference", `${this.identity.uid}:${this.identity.gid}`, folder]);
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
    // Without cgroups, only their command lines tell them (a jail the previous process was starting when it died).
    const strays = await killProcessesUnder(sandboxesDir, [this.identity?.uid ?? process.getuid?.() ?? -1]);
    if (strays > 0) this.options.logger.warn({ processes: strays }, "stopped processes of jails that outlived the previous process");
    for (const name of await fs.readdir(sandboxesDir)) {
      try {
        const killed = await this.cgroups.remove(name);
        if (killed > 0) this.options.logger.warn({ sandbox: name, killed }, "stopped the processes of a jail that outlived the previous process");
        await removeTree(path.join(sandboxesDir, name));
      } catch (error) {
        // What a jail left must never keep Berth from starting.
        this.options.logger.error({ err: error, sandbox: name }, "could not remove a previous process's sandbox folder; remove it by hand");
      }
    }
    await removeTree(path.join(this.options.dataDir, "workspaces", ".warm"));
    await fs.mkdir(path.join(this.options.dataDir, "workspaces", ".warm"), { recursive: true, mode: 0o700 });
  }
}

/** Why this host cannot run jails, and what the operator can run about it (system.health, the dashboard). */
export type JailProblem = { reason: string; fix: string };

/** Where `program` is on PATH, the way a shell finds it; null when it is not. */
async function onPath(program: string): Promise<string | null> {
  return run("sh", ["-c", `command -v ${program}`]).then(({ stdout }) => stdout.trim() || null, () => null);
}

/** The install commands of the package managers this host has (both when neither is found). */
async function bubblewrapMissing(): Promise<JailProblem> {
  const sudo = runningAsRoot() ? "" : "sudo ";
  const [apt, dnf] = await Promise.all([onPath("apt-get"), onPath("dnf")]);
  const installs = [
    ...(apt || !dnf ? [`\`${sudo}apt-get install bubblewrap\` (Debian, Ubuntu)`] : []),
    ...(dnf || !apt ? [`\`${sudo}dnf install bubblewrap\` (Fedora, RHEL)`] : []),
  ];
  return {
    reason: "bubblewrap is not installed (no `bwrap` on PATH), and the local sandbox backend runs every sandbox in a bubblewrap jail",
    fix: `Install it with ${installs.join(" or ")}, or run \`npm start\` again as root or as a user with sudo rights (it installs it); then restart Berth.`,
  };
}

/** A /proc/sys setting's value, or null where this kernel has no such setting. */
function readKernelSetting(file: string): string | null {
  try {
    return readFileSync(file, "utf8").trim();
  } catch {
    return null;
  }
}

function inContainer(): boolean {
  if (existsSync("/.dockerenv") || existsSync("/run/.containerenv")) return true;
  return /docker|containerd|kubepods|libpod|lxc/.test(readKernelSetting("/proc/1/cgroup") ?? "");
}

/**
 * What keeps bwrap from starting a jail here, named from the kernel settings that decide it (read
 * first: bwrap's own message names a symptom, and Ubuntu's AppArmor restriction gives no clear one)
 * and then from bwrap's message, with the command that fixes it.
 */
export function diagnoseJailFailure(
  message: string,
  host: { readSetting: (file: string) => string | null; inContainer: boolean; root: boolean; inChroot?: boolean },
): JailProblem {
  const said = message.trim().replace(/^bwrap: /, "") || "no message";
  const reason = (cause: string) => `a test sandbox could not start (bwrap: ${said})${cause ? `: ${cause}` : ""}`;
  const sudo = host.root ? "" : "sudo ";
  const sysctl = (setting: string) =>
    `\`${sudo}sysctl -w ${setting}\` (to keep it after a reboot: \`echo ${setting} | ${sudo}tee /etc/sysctl.d/60-berth-userns.conf\`), then restart Berth`;
  // Before the sysctls: in a chroot they may all allow namespaces, and no sysctl helps.
  if (host.inChroot && !host.root) {
    return {
      reason: reason("Berth runs in a chroot, where the kernel refuses a process new user namespaces"),
      fix: "Run Berth as root (it then starts jails from a private mount namespace of the same tree), or outside the chroot; then restart Berth.",
    };
  }
  if (host.readSetting("/proc/sys/kernel/unprivileged_userns_clone") === "0") {
    return { reason: reason("unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)"), fix: `Allow them: ${sysctl("kernel.unprivileged_userns_clone=1")}.` };
  }
  if (host.readSetting("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") === "1") {
    return {
      reason: reason("AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1, Ubuntu's default since 23.10)"),
      fix: `Lift the restriction: ${sysctl("kernel.apparmor_restrict_unprivileged_userns=0")}. Or give bwrap an AppArmor profile that allows \`userns\`.`,
    };
  }
  if (host.readSetting("/proc/sys/user/max_user_namespaces") === "0" || /max_\*_namespaces|ENOSPC/.test(said)) {
    return {
      reason: reason("no user namespace may be created here (user.max_user_namespaces is 0, in this kernel or in an enclosing container)"),
      fix: `Allow them: ${sysctl("user.max_user_namespaces=15000")}${host.inContainer ? "; inside a container, the limit of the host or of the container's own user namespace applies" : ""}.`,
    };
  }
  if (/No permissions to creat/i.test(said)) {
    return {
      reason: reason("the kernel does not let unprivileged users create user namespaces"),
      fix: `Allow them with sysctl (Debian: \`kernel.unprivileged_userns_clone=1\`; Ubuntu 24.04: \`kernel.apparmor_restrict_unprivileged_userns=0\`; elsewhere \`user.max_user_namespaces\` above 0), then restart Berth.${host.inContainer ? ` ${DOCKER_HINT}` : ""}`,
    };
  }
  return {
    reason: reason(""),
    fix:
      (host.inContainer ? DOCKER_HINT : `To see the failure, run \`bwrap --unshare-user --unshare-pid --unshare-net --ro-bind / / true\`${host.root ? ` as the ${SANDBOX_SYSTEM_USER} user` : ""}. ${DOCKER_HINT}`) +
      " Only for trusted agents: BERTH_UNSAFE_NO_SANDBOX_ISOLATION=1 runs sandboxes with no isolation at all.",
  };
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

const IMAGE_SUFFIX = ".img";

/**
 * As root, bwrap runs as the sandbox user, who cannot reach the data dir: each host path the jail
 * binds is mounted first (by root, in a private mount namespace of the jail's own) under STAGE_DIR,
 * and bwrap binds it from there; an image workspace is loop-mounted there, nosuid and nodev. Then
 * the stage drops to the sandbox user (no groups, no capabilities, no new privileges) and runs bwrap.
 * As another user there is nothing to stage: bwrap binds the paths themselves.
 */
class Stage {
  private readonly mounts: string[] = [];

  constructor(private readonly identity: HostIdentity | null) {}

  /** The path bwrap binds for a host path (`image`: a workspace image, mounted). */
  view(hostPath: string, kind: "bind" | "image" = "bind"): string {
    if (!this.identity) {
      if (kind === "image") throw new Error("workspace images need Berth to run as root");
      return hostPath;
    }
    // What any user may read needs no staging (each mount costs a few milliseconds of a jail's start).
    if (kind === "bind" && readableByAnyone(hostPath)) return hostPath;
    const target = `t${this.mounts.length / 3}`;
    this.mounts.push(kind, hostPath, target);
    return `${STAGE_DIR}/${target}`;
  }

  /** The command that runs bwrap with `args` (up to "--"; append the program), reading a seccomp program on fd 3 if asked. */
  prefix(bwrapPath: string, args: string[], seccomp: boolean): string[] {
    // fd 4 (spawnJail): --clearenv and the jail's --setenv pairs, out of every command line.
    const bwrap = [bwrapPath, "--args", "4", ...(seccomp ? ["--seccomp", "3"] : []), ...args];
    if (!this.identity) return bwrap;
    const { uid, gid } = this.identity;
    return [...unchrootPrefix(), "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", STAGE_SCRIPT, "berth-stage", String(uid), String(gid), String(this.mounts.length / 3), ...this.mounts, ...bwrap];
  }
}

const STAGE_SCRIPT = `set -e
uid=$1; gid=$2; n=$3; shift 3
mount -t tmpfs -o mode=0755,nosuid,nodev,noexec,size=64k berth-stage ${STAGE_DIR}
while [ "$n" -gt 0 ]; do
  kind=$1; source=$2; target=${STAGE_DIR}/$3; shift 3; n=$((n-1))
  if [ "$kind" = image ]; then mkdir "$target"; mount -o loop,nosuid,nodev,noatime "$source" "$target"; rmdir "$target/lost+found" 2>/dev/null || true
  elif [ -d "$source" ]; then mkdir "$target"; mount --bind "$source" "$target"
  else : > "$target"; mount --bind "$source" "$target"; fi
done
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all --no-new-privs -- "$@"`;

/** The whole environment of the host programs that start a jail (sh, prlimit, unshare, mount, setpriv, bwrap). */
const HOST_ENV = { PATH: HOST_PATH };

/**
 * Spawns a jail's command line: a shell joins the sandbox's cgroups, then becomes the command, so
 * nothing starts outside them. The seccomp program reaches bwrap on fd 3 (`--seccomp 3`), and the
 * jail's environment on fd 4 (`--args 4`: `--clearenv`, then `--setenv NAME VALUE` for each), so that
 * secrets appear on no command line and no host program before bwrap runs with them.
 */
function spawnJail(
  command: string[],
  procsFiles: string[],
  options: { hostEnv: Record<string, string>; jailEnv: Record<string, string> | null; seccomp: Buffer | null; detached: boolean },
): ChildProcess {
  // (`command` passes --seccomp 3 to bwrap whenever `seccomp` is given, and --args 4 always: Stage.prefix.)
  const envArgs = options.jailEnv && ["--clearenv", ...Object.entries(options.jailEnv).flatMap(([name, value]) => ["--setenv", name, value])];
  // (startJail refuses NUL in names and values: it would end an argument early and make the rest bwrap options.)
  const joinCgroups = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 97; shift; n=$((n-1)); done; exec "$@"';
  const child = spawn("/bin/sh", ["-c", joinCgroups, "berth-jail", String(procsFiles.length), ...procsFiles, ...command], {
    env: options.hostEnv as unknown as NodeJS.ProcessEnv,
    stdio: ["ignore", "pipe", "pipe", options.seccomp ? "pipe" : "ignore", options.jailEnv ? "pipe" : "ignore"],
    detached: options.detached,
  });
  // A jail that dies before bwrap reads these closes the pipes: its exit is reported elsewhere.
  const seccompPipe = child.stdio[3] as NodeJS.WritableStream | null;
  if (seccompPipe && options.seccomp) {
    seccompPipe.on("error", () => {});
    seccompPipe.end(options.seccomp);
  }
  const envPipe = child.stdio[4] as NodeJS.WritableStream | null;
  if (envPipe && options.jailEnv) {
    envPipe.on("error", () => {});
    envPipe.end(Buffer.from(envArgs!.map((arg) => `${arg}\0`).join("")));
  }
  return child;
}

/** Whether every folder on the way to `target` lets anyone through, and anyone may read it. */
function readableByAnyone(target: string): boolean {
  try {
    const stat = statSync(target);
    if ((stat.mode & (stat.isDirectory() ? 0o005 : 0o004)) !== (stat.isDirectory() ? 0o005 : 0o004)) return false;
    for (let dir = path.dirname(target); ; dir = path.dirname(dir)) {
      if ((statSync(dir).mode & 0o001) === 0) return false;
      if (dir === path.dirname(dir)) return true;
    }
  } catch {
    return false;
  }
}

/**
 * Removes a folder a sandbox wrote into: coreutils' rm walks by directory handles, so a tree nested
 * past PATH_MAX (which fs.rm fails on) goes too, and it never follows links.
 */
async function removeTree(target: string): Promise<void> {
  await run("rm", ["-rf", "--one-file-system", "--", target]);
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
