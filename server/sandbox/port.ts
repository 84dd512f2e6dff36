/**
 * The sandbox port: what the platform needs from any sandbox backend (local bubblewrap jails,
 * Kubernetes agent-sandbox pods). Backend-neutral: no bwrap or Kubernetes notion leaks through here.
 */

export type NetworkMode = "none" | "egress";

export type SandboxSpec = {
  /** Unique name for this sandbox generation, chosen by the platform (DNS-label safe). */
  name: string;
  teamId: string;
  agentId: string;
  sessionId: string;
  generation: number;
  network: NetworkMode;
  /** The whole environment of processes in the sandbox: nothing else of the platform's is visible. */
  env: Record<string, string>;
  /** diskMb: the workspace's quota in MiB (the agent version's `diskMb`; Kubernetes: its claim's requested storage). */
  resources: { cpuMillis: number; memoryMb: number; diskMb: number };
  image: string | null;
  /**
   * The agent version's warm pool (Kubernetes: SandboxWarmPool replicas; 0 or absent = none). The
   * local backend ignores it: its pool is BERTH_WARM_POOL_SIZE for every agent.
   */
  warmPoolSize?: number;
};

/** The warm pool one agent's current version wants: the shape of its sandboxes and how many to keep ready. */
export type WarmPoolSpec = Pick<SandboxSpec, "teamId" | "agentId" | "network" | "resources" | "image"> & { size: number };

/** How to reach a sandbox's daemon: backend-specific, opaque to the platform, stored on the row. */
export type SandboxAddress = string;

export type ProvisionedSandbox = {
  name: string;
  address: SandboxAddress;
  /** Local backend: host PID of the jail; other backends: null. */
  hostPid: number | null;
  fromWarmPool: boolean;
  /** Milliseconds from the provision call to a healthy daemon. */
  startMs: number;
};

export type SandboxState = "running" | "suspended" | "gone";

export type ListedSandbox = { name: string; sessionId: string | null; state: SandboxState };

export type SandboxLoss = { name: string; reason: string };

/** What a sandbox's boundary is made of on this backend and host (system.health, the start-up log). */
export type SandboxIsolation = {
  /** Who sandboxed processes are on the host. */
  hostUser: string;
  /** A seccomp filter refuses the system calls sandboxes never need. */
  seccomp: boolean;
  /** An agent's diskMb really stops writes. */
  diskQuota: boolean;
};

/**
 * Whether sandboxes can start on this backend here. A host that cannot run them (no bubblewrap, user
 * namespaces off) still runs Berth: everything but sessions works, and `reason` and `fix` tell the
 * operator what is wrong and what to run.
 */
export type SandboxAvailability = { available: true } | { available: false; reason: string; fix: string };

export interface SandboxBackend {
  readonly name: "local" | "kubernetes";
  /** Optional: what isolates sandboxes here. */
  describeIsolation?(): SandboxIsolation;
  /** Optional: whether sandboxes can start at all (absent: they can). Decided at start-up. */
  availability?(): SandboxAvailability;
  /** Starts (or claims from a warm pool) a sandbox and returns once its daemon answers health. */
  provision(spec: SandboxSpec): Promise<ProvisionedSandbox>;
  /** Stops the sandbox and releases its compute; the session workspace is kept (see deleteWorkspace). Idempotent. */
  stop(name: string, reason: string): Promise<void>;
  /**
   * Optional: idle suspension that keeps the sandbox object for a later resume (Kubernetes:
   * `operatingMode: Suspended`); the next `provision` of the same session resumes it. Backends
   * without it are stopped instead.
   */
  suspend?(name: string): Promise<void>;
  /**
   * Optional: makes the backend's per-agent warm pools match these (create, resize, delete the ones
   * not listed). Kubernetes: SandboxWarmPools. The local backend has one pool of its own instead.
   */
  syncWarmPools?(pools: WarmPoolSpec[]): Promise<void>;
  /** Current state as the backend sees it. */
  status(name: string): Promise<SandboxState>;
  /** Every sandbox this backend runs for Berth (for reconciliation). */
  list(): Promise<ListedSandbox[]>;
  /** The sessions whose workspaces this backend keeps (for reconciliation). */
  listWorkspaces(): Promise<string[]>;
  /**
   * Deletes a session's workspace and everything in it. Only for a session that is over (terminated)
   * and whose sandboxes are stopped. Idempotent.
   */
  deleteWorkspace(sessionId: string): Promise<void>;
  /** A client for the in-sandbox daemon. */
  connect(address: SandboxAddress): DaemonClient;
  /** Called when the backend notices a sandbox died on its own (process killed, pod deleted). */
  onLost(listener: (loss: SandboxLoss) => void): void;
  /** Stops every sandbox and pool this process runs (graceful shutdown). */
  shutdown(): Promise<void>;
}

/** ---- The sandbox daemon's protocol (sandboxd/), as the platform uses it ---- */

export type ExecRequest = {
  command: string;
  /** Relative to the workspace; default the workspace root. */
  cwd?: string;
  timeoutMs?: number;
  /**
   * Per stream (stdout, stderr): the daemon sends at most this many bytes (cut on a UTF-8
   * boundary), reads and drops the rest, and says so in the exit chunk. Default: everything.
   */
  maxOutputBytes?: number;
};

export type ExecChunk =
  | { type: "stdout"; data: string }
  | { type: "stderr"; data: string }
  | {
      type: "exit";
      exitCode: number | null;
      signal: string | null;
      timedOut: boolean;
      durationMs: number;
      /** Bytes the command wrote to each stream, also past the cap (absent from daemons older than the cap). */
      stdoutBytes?: number;
      stderrBytes?: number;
      /** The daemon cut the stream at maxOutputBytes. */
      stdoutTruncated?: boolean;
      stderrTruncated?: boolean;
    };

export type ExecResult = {
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  /** The first bytes of each stream, at most the cap (cut on a UTF-8 boundary). */
  stdout: string;
  stderr: string;
  durationMs: number;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** Either stream was cut. */
  truncated: boolean;
  /** Bytes the command wrote to each stream (as far as known: a daemon without the cap does not say). */
  stdoutBytes: number;
  stderrBytes: number;
};

export type FileEntry = { name: string; type: "file" | "directory" | "symlink" | "other"; size: number; modifiedAt: string };

export interface DaemonClient {
  health(): Promise<{ ok: true; pid: number; uptimeMs: number; bound: boolean }>;
  /**
   * Warm-pool claim: gives an unbound daemon its session's environment (and, optionally, its own token
   * from then on, and its own egress gateway token in place of the pool's). Once only.
   */
  bind(input: { sessionId: string; env: Record<string, string>; token?: string; gatewayToken?: string }): Promise<void>;
  /** Runs `bash -lc command` (or sh) and streams its output; the last chunk is `exit`. */
  exec(request: ExecRequest, signal?: AbortSignal): AsyncIterable<ExecChunk>;
  readFile(path: string): Promise<{ content: string; encoding: "utf8" | "base64"; size: number }>;
  writeFile(path: string, content: string, encoding?: "utf8" | "base64"): Promise<{ size: number }>;
  listFiles(path: string): Promise<FileEntry[]>;
}

export class SandboxUnavailableError extends Error {
  override name = "SandboxUnavailableError";
}

/** An error the daemon answered with (bad path, bad request): not a sign the sandbox is gone. */
export class DaemonRequestError extends Error {
  override name = "DaemonRequestError";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}
