import { spawn, type ChildProcess } from "node:child_process";
import type { ServerResponse } from "node:http";
import { StringDecoder } from "node:string_decoder";
import { errnoCode } from "./errors";

export type ExecChunk =
  | { type: "stdout"; data: string }
  | { type: "stderr"; data: string }
  | { type: "exit"; exitCode: number | null; signal: string | null; timedOut: boolean; durationMs: number };

/** SIGTERM first; the whole group gets SIGKILL this long after. */
export const KILL_GRACE_MS = 2_000;
/**
 * After the shell exits, how long to wait for its output pipes to close. A background process
 * (`server &`) keeps them open forever; the exec then ends without waiting for it.
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

export type CommandOptions = {
  shell: string;
  command: string;
  cwd: string;
  env: Record<string, string>;
  timeoutMs: number;
  groups: ProcessGroups;
};

/**
 * Runs `shell -c command` in its own process group and streams its output to `res` as NDJSON
 * ExecChunks, flushed as they arrive; the last line is the `exit` chunk. A timeout or a client that
 * goes away kills the whole group (SIGTERM, then SIGKILL after KILL_GRACE_MS).
 */
export function streamCommand(res: ServerResponse, options: CommandOptions): void {
  // The client left while the request was being read or its cwd checked: its "close" is already
  // past, so nothing would ever stop the command. Do not start it.
  if (res.destroyed || res.socket?.destroyed === true) return;
  const started = performance.now();
  res.writeHead(200, {
    "content-type": "application/x-ndjson; charset=utf-8",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
  });
  res.flushHeaders();

  let done = false; // the exit chunk was sent, or the client is gone
  let timedOut = false;
  let killTimer: NodeJS.Timeout | undefined;
  let lingerTimer: NodeJS.Timeout | undefined;
  let exitInfo: { code: number | null; signal: string | null } | undefined;
  let waitingForDrain = false;

  let child: ChildProcess;
  try {
    child = spawn(options.shell, ["-c", options.command], {
      cwd: options.cwd,
      env: options.env as unknown as NodeJS.ProcessEnv, // some typings require NODE_ENV; a plain map is what spawn takes
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
  } catch (error) {
    // Synchronous spawn failures (e.g. an environment value the OS refuses).
    const lines: ExecChunk[] = [
      { type: "stderr", data: `sandboxd: cannot start the command: ${(error as Error).message}\n` },
      { type: "exit", exitCode: 127, signal: null, timedOut: false, durationMs: elapsed() },
    ];
    res.end(lines.map((line) => JSON.stringify(line) + "\n").join(""));
    return;
  }
  const pgid = child.pid;
  if (pgid !== undefined) options.groups.add(pgid);
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
    const decoder = new StringDecoder("utf8");
    stream.on("data", (bytes: Buffer) => {
      if (done) return;
      const data = decoder.write(bytes);
      if (data) writeChunk({ type, data });
    });
    stream.on("end", () => {
      if (done) return;
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
    // The client went away before the exit: nobody will see the output, stop the command.
    done = true;
    clearTimeout(timeoutTimer);
    clearTimeout(lingerTimer);
    killGroup();
    detach();
  });

  function finish(): void {
    if (done) return;
    clearTimeout(timeoutTimer);
    clearTimeout(lingerTimer);
    writeChunk({
      type: "exit",
      exitCode: exitInfo?.code ?? null,
      signal: exitInfo?.signal ?? null,
      timedOut,
      durationMs: elapsed(),
    });
    done = true;
    res.end();
    detach();
  }

  /** Keeps draining pipes still held by background processes so they never block or get SIGPIPE. */
  function detach(): void {
    if (waitingForDrain) {
      stdout.resume();
      stderr.resume();
    }
  }
}
