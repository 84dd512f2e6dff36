import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type { Logger } from "./logger";

const run = promisify(execFile);

export type HostIdentity = { name: string; uid: number; gid: number };

/**
 * A system user (and its group) of this machine, created when missing. Only root can create one;
 * Berth does so for the identities it hands work to when it runs as root: the embedded Postgres
 * (`postgres`) and the sandboxes (`berth-sandbox`).
 */
export async function ensureSystemUser(name: string, purpose: string, logger: Logger): Promise<HostIdentity> {
  const lookup = async () => ({
    name,
    uid: Number((await run("id", ["-u", name])).stdout.trim()),
    gid: Number((await run("id", ["-g", name])).stdout.trim()),
  });
  try {
    return await lookup();
  } catch {
    logger.info({ user: name }, `running as root: creating the '${name}' system user ${purpose}`);
    await run("useradd", ["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name]);
    return lookup();
  }
}

export function runningAsRoot(): boolean {
  return typeof process.getuid === "function" && process.getuid() === 0;
}
