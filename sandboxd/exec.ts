import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import type { ServerResponse } from "node:http";
import { StringDecoder } from "node:string_decoder";
import { errnoCode } from "./errors";

export type ExecChunk =
  | { type: "stdout"; data: string }
  | { type: "stderr"; data: string }
  | {
      type: "exit";
      exitCode: number | null;
      signal: string | null;
      timedOut: boolean;
      durationMs: number;
      /** Bytes the command wrote to each stream (all of them, also past the cap). */
      stdoutBytes: number;
      stderrBytes: number;
      /** The stream went past the request's maxOutputBytes: only its first bytes were sent. */
      stdoutTruncated: boolean;
      stderrTruncated: boolean;
    };

/** Every command gets this variable (a random id per exec); its descendants inherit it, so what an exec left behind can be found in /proc. */
export const EXEC_ID_VARIABLE = "BERTH_EXEC_ID";
/** Longest the daemon keeps killing what an exec (or the whole sandbox) left behind before giving up. */
export const CLEANUP_DEADLINE_MS = 5_000;

/** SIGTERM first; the whole group gets SIGKILL this long after. */
export const KILL_GRACE_MS = 2_000;
/**
 * After the shell exits, how long to wait for its output pipes to close. A background process
 * (`server &`) keeps them open forever; the exec then ends without waiting for it, and the process
 * is killed (ExecTracker.end).
 */
const OUTPUT_GRACE_MS = 250;

/** Process groups of the commands this daemon started (each command is a group leader). */
export class ProcessGroups {
  private readonly groups = new Set<number>();

  add(pgid: number): void {
    this.prune();
    this.groups.add(pgid);
  }

  /** Signals every group; resolves once all are gone or `waitMs` passed, then SIGKILLs what is left. */
  async killAll(waitMs: number): Promise<void> {
    this.prune();
    for (const pgid of this.groups) signalGroup(pgid, "SIGTERM");
    const deadline = Date.now() + waitMs;
    while (Date.now() < deadline) {
      this.prune();
      if (this.groups.size === 0) return;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    for (const pgid of this.groups) signalGroup(pgid, "SIGKILL");
  }

  private prune(): void {
    for (const pgid of this.groups) if (!groupAlive(pgid)) this.groups.delete(pgid);
  }
}

export function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch (error) {
    if (errnoCode(error) !== "ESRCH") throw error;
  }
}

function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (error) {
    return errnoCode(error) === "EPERM";
  }
}

/** What a cleanup did: how many processes it signalled, in how many passes, how long it took. */
export type CleanupReport = { scope: "exec" | "sandbox"; killed: number; passes: number; ms: number; complete: boolean };

/**
 * The execs running in this daemon, and the cleanup when one ends: its process group is killed,
 * then every process that carries its exec id (a `setsid` or double-forked descendant left the
 * group but kept the environment). With `sweep` (the daemon is alone in its own PID namespace: a
 * jail or a pod), the last exec to end also kills every process of the sandbox but the daemon and
 * its ancestors, so nothing that escaped both (`env -i setsid ...`) outlives the execs; new execs
 * wait for a sweep to finish.
 */
export class ExecTracker {
  readonly groups = new ProcessGroups();
  private readonly active = new Map<string, number | undefined>();
  private sweeping: Promise<CleanupReport> | null = null;
  /** The last cleanup (for tests and logs). */
  lastCleanup: CleanupReport | null = null;

  constructor(readonly sweep: boolean) {}

  get running(): number {
    return this.active.size;
  }

  /** Waits for a running sweep, then registers a new exec and returns its id. */
  async begin(): Promise<string> {
    while (this.sweeping) await this.sweeping;
    const id = randomBytes(12).toString("hex");
    this.active.set(id, undefined);
    return id;
  }

  started(id: string, pgid: number | undefined): void {
    this.active.set(id, pgid);
    if (pgid !== undefined) this.groups.add(pgid);
  }

  /** The exec's shell exited (or never started): kills what it left behind. Resolves once they are gone. */
  async end(id: string): Promise<CleanupReport> {
    if (!this.active.has(id)) return { scope: "exec", killed: 0, passes: 0, ms: 0, complete: true };
    const pgid = this.active.get(id);
    this.active.delete(id);
    if (pgid !== undefined) signalGroup(pgid, "SIGKILL");
    let report: Promise<CleanupReport>;
    if (this.sweep && this.active.size === 0) {
      // Decided and marked in the same tick: no exec can start between the check and the sweep.
      this.sweeping = killUntilGone("sandbox", () => true).finally(() => {
        this.sweeping = null;
      });
      report = this.sweeping;
    } else {
      const marker = `${EXEC_ID_VARIABLE}=${id}`;
      report = killUntilGone("exec", (pid) => environHas(pid, marker));
    }
    this.lastCleanup = await report;
    return this.lastCleanup;
  }
}

/** The daemon and its ancestors: never killed by a cleanup. */
function protectedPids(): Set<number> {
  const pids = new Set<number>([process.pid, 1]);
  let pid = process.ppid;
  while (pid > 1 && !pids.has(pid)) {
    pids.add(pid);
    const parent = procStat(pid)?.ppid;
    if (parent === undefined) break;
    pid = parent;
  }
  return pids;
}

function procStat(pid: number): { state: string; ppid: number } | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { state: fields[0]!, ppid: Number(fields[1]) };
  } catch {
    return undefined;
  }
}

function environHas(pid: number, entry: string): boolean {
  let environ: string;
  try {
    environ = fs.readFileSync(`/proc/${pid}/environ`, "latin1");
  } catch {
    return false; // gone, or not ours to read
  }
  return environ.startsWith(`${entry}\0`) || environ.includes(`\0${entry}\0`) || environ === entry || environ.endsWith(`\0${entry}`);
}

/** Live (not zombie) processes in /proc that `match`, the daemon and its ancestors excepted. */
function findProcesses(protect: Set<number>, match: (pid: number) => boolean): number[] {
  let entries: string[];
  try {
    entries = fs.readdirSync("/proc");
  } catch {
    return [];
  }
  const found: number[] = [];
  for (const entry of entries) {
    const code = entry.charCodeAt(0);
    if (code < 48 || code > 57) continue;
    const pid = Number(entry);
    if (protect.has(pid)) continue;
    const state = procStat(pid)?.state;
    if (state === undefined || state === "Z" || state === "X") continue;
    if (match(pid)) found.push(pid);
  }
  return found;
}

/**
 * SIGKILLs every process that matches, again and again until none is left (a fork bomb makes new
 * ones while the first are killed), for at most CLEANUP_DEADLINE_MS.
 */
async function killUntilGone(scope: CleanupReport["scope"], match: (pid: number) => boolean): Promise<CleanupReport> {
  const started = performance.now();
  const protect = protectedPids();
  const killed = new Set<number>();
  let passes = 0;
  for (;;) {
    const found = findProcesses(protect, match);
    if (found.length === 0) return { scope, killed: killed.size, passes, ms: Math.round(performance.now() - started), complete: true };
    passes += 1;
    for (const pid of found) {
      try {
        process.kill(pid, "SIGKILL");
        killed.add(pid);
      } catch {
        // gone already, or not ours
      }
    }
    if (performance.now() - started > CLEANUP_DEADLINE_MS) {
      console.error(`sandboxd: ${found.length} process(es) still alive after ${CLEANUP_DEADLINE_MS} ms of cleanup`);
      return { scope, killed: killed.size, passes, ms: Math.round(performance.now() - started), complete: false };
    }
    // Killed processes take a moment to become zombies (or be reaped); do not count them twice.
    await new Promise((resolve) => setTimeout(resolve, passes < 5 ? 2 : 20));
  }
}

export type CommandOptions = {
  shell: string;
  command: string;
  cwd: string;
  env: Record<string, string>;
  timeoutMs: number;
  /** Per stream (stdout, stderr): bytes sent at most; the rest is read and dropped. Default: no cap. */
  maxOutputBytes?: number;
  execs: ExecTracker;
};

/**
 * Runs `shell -c command` in its own process group and streams its output to `res` as NDJSON
 * ExecChunks, flushed as they arrive; the last line is the `exit` chunk. A timeout or a client that
 * goes away kills the whole group (SIGTERM, then SIGKILL after KILL_GRACE_MS). Once the shell has
 * exited, whatever it left behind is killed (ExecTracker.end) before the exit chunk is sent: when
 * the caller sees the exit, no process of the exec is left. Past `maxOutputBytes` a stream is read
 * and dropped (cut on a UTF-8 boundary) and the exit chunk says it was truncated.
 */
export function streamCommand(res: ServerResponse, options: CommandOptions): void {
  void options.execs.begin().then((execId) => runCommand(res, options, execId));
}

function runCommand(res: ServerResponse, options: CommandOptions, execId: string): void {
  const { execs } = options;
  // The client left while the request was being read, its cwd checked or a sweep ran: its "close"
  // is already past, so nothing would ever stop the command. Do not start it.
  if (res.destroyed || res.socket?.destroyed === true) {
    void execs.end(execId);
    return;
  }
  const started = performance.now();
  res.writeHead(200, {
    "content-type": "application/x-ndjson; charset=utf-8",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
  });
  res.flushHeaders();

  let done = false; // the exit chunk was sent, or the client is gone
  let ending = false; // finish() runs (cleanup under way)
  let timedOut = false;
  let killTimer: NodeJS.Timeout | undefined;
  let lingerTimer: NodeJS.Timeout | undefined;
  let exitInfo: { code: number | null; signal: string | null } | undefined;
  let waitingForDrain = false;
  const limit = options.maxOutputBytes ?? Number.POSITIVE_INFINITY;
  const counts = {
    stdout: { total: 0, sent: 0, truncated: false },
    stderr: { total: 0, sent: 0, truncated: false },
  };

  let child: ChildProcess;
  try {
    child = spawn(options.shell, ["-c", options.command], {
      cwd: options.cwd,
      // some typings require NODE_ENV; a plain map is what spawn takes
      env: { ...options.env, [EXEC_ID_VARIABLE]: execId } as unknown as NodeJS.ProcessEnv,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
  } catch (error) {
    // Synchronous spawn failures (e.g. an environment value the OS refuses).
    void execs.end(execId);
    const message = `sandboxd: cannot start the command: ${(error as Error).message}\n`;
    const lines: ExecChunk[] = [
      { type: "stderr", data: message },
      { type: "exit", exitCode: 127, signal: null, timedOut: false, durationMs: elapsed(), stdoutBytes: 0, stderrBytes: 0, stdoutTruncated: false, stderrTruncated: false },
    ];
    res.end(lines.map((line) => JSON.stringify(line) + "\n").join(""));
    return;
  }
  const pgid = child.pid;
  execs.started(execId, pgid);
  const stdout = child.stdout!;
  const stderr = child.stderr!;

  function elapsed(): number {
    return Math.round(performance.now() - started);
  }

  function writeChunk(chunk: ExecChunk): void {
    if (res.destroyed || res.writableEnded) return;
    const flushed = res.write(JSON.stringify(chunk) + "\n");
    if (!flushed && !waitingForDrain && !done) {
      // Slow reader: stop reading the command's output until the client caught up.
      waitingForDrain = true;
      stdout.pause();
      stderr.pause();
      res.once("drain", () => {
        waitingForDrain = false;
        stdout.resume();
        stderr.resume();
      });
    }
  }

  function killGroup(): void {
    if (pgid === undefined) return;
    signalGroup(pgid, "SIGTERM");
    killTimer ??= setTimeout(() => signalGroup(pgid, "SIGKILL"), KILL_GRACE_MS);
  }

  let openStreams = 2;
  for (const [stream, type] of [
    [stdout, "stdout"],
    [stderr, "stderr"],
  ] as const) {
    // One chunk per pipe read (at most 64 KiB): a chunk's NDJSON line stays far below the client's line limit.
    const decoder = new StringDecoder("utf8");
    const count = counts[type];
    stream.on("data", (bytes: Buffer) => {
      count.total += bytes.length;
      if (done || count.truncated) return; // drained, never sent
      if (count.sent + bytes.length > limit) {
        // The decoder holds back a character cut in two; it is never flushed, so the text ends on a boundary.
        bytes = bytes.subarray(0, limit - count.sent);
        count.truncated = true;
      }
      count.sent += bytes.length;
      const data = decoder.write(bytes);
      if (data) writeChunk({ type, data });
    });
    stream.on("end", () => {
      if (done || count.truncated) return;
      const data = decoder.end();
      if (data) writeChunk({ type, data });
    });
    stream.on("error", () => {});
    stream.on("close", () => {
      openStreams -= 1;
      if (openStreams === 0 && exitInfo) finish();
    });
  }

  const timeoutTimer = setTimeout(() => {
    timedOut = true;
    killGroup();
  }, options.timeoutMs);

  child.on("exit", (code, signal) => {
    exitInfo = { code, signal };
    if (openStreams === 0) finish();
    else lingerTimer = setTimeout(finish, OUTPUT_GRACE_MS);
  });
  child.on("error", (error) => {
    // Only spawn failures land here (the pipes are ours and the kill errors are handled).
    if (exitInfo || done) return;
    writeChunk({ type: "stderr", data: `sandboxd: cannot start the command: ${error.message}\n` });
    exitInfo = { code: 127, signal: null };
    finish();
  });

  res.on("close", () => {
    if (done) return;
    // The client went away before the exit: nobody will see the output, stop the command. Its
    // cleanup runs once the shell has exited (finish).
    done = true;
    clearTimeout(timeoutTimer);
    killGroup();
    detach();
  });

  function finish(): void {
    if (ending) return;
    ending = true;
    clearTimeout(timeoutTimer);
    clearTimeout(lingerTimer);
    // Background processes, `setsid` daemons, a fork bomb: killed before the caller hears of the exit.
    void execs.end(execId).then(() => {
      clearTimeout(killTimer);
      writeChunk({
        type: "exit",
        exitCode: exitInfo?.code ?? null,
        signal: exitInfo?.signal ?? null,
        timedOut,
        durationMs: elapsed(),
        stdoutBytes: counts.stdout.total,
        stderrBytes: counts.stderr.total,
        stdoutTruncated: counts.stdout.truncated,
        stderrTruncated: counts.stderr.truncated,
      });
      done = true;
      res.end();
      detach();
    });
  }

  /** Keeps draining pipes still held by processes being killed so they never block or get SIGPIPE. */
  function detach(): void {
    if (waitingForDrain) {
      stdout.resume();
      stderr.resume();
    }
  }
}
