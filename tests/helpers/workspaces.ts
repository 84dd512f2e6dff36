import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";

/**
 * A session's workspace as the local backend keeps it: a folder `<id>`, or (Berth as root, disk
 * quotas on) an ext4 image `<id>.img` that only the jail mounts. Tests read an image's files with
 * e2fsprogs' debugfs, after a sync so that what a running jail wrote has reached the image.
 */
export function workspaceExists(dataDir: string, sessionId: string): boolean {
  const folder = path.join(dataDir, "workspaces", sessionId);
  return existsSync(folder) || existsSync(`${folder}.img`);
}

/** A file's content in a session's workspace, or null when there is none. */
export function workspaceFile(dataDir: string, sessionId: string, relativePath: string): string | null {
  const folder = path.join(dataDir, "workspaces", sessionId);
  if (existsSync(`${folder}.img`)) {
    execFileSync("sync");
    const debugfs = ["/usr/sbin/debugfs", "/sbin/debugfs"].find((candidate) => existsSync(candidate)) ?? "debugfs";
    const output = execFileSync(debugfs, ["-R", `cat "/${relativePath}"`, `${folder}.img`], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    // debugfs answers a missing file on stderr and exits 0, with nothing on stdout.
    const stat = execFileSync(debugfs, ["-R", `stat "/${relativePath}"`, `${folder}.img`], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    return stat.includes("Inode:") ? output : null;
  }
  const file = path.join(folder, relativePath);
  return existsSync(file) ? readFileSync(file, "utf8") : null;
}
