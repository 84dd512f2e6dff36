import fs from "node:fs/promises";
import path from "node:path";
import { HttpError, errnoCode } from "./errors";

/** Largest file the daemon reads or writes (decoded bytes). */
export const MAX_FILE_BYTES = 10 * 1024 * 1024;

export type FileEntry = { name: string; type: "file" | "directory" | "symlink" | "other"; size: number; modifiedAt: string };

const MAX_SYMLINK_HOPS = 40;
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * The session workspace. Every path the platform sends is relative to it, and every one is checked
 * the same way (files and exec cwd): no absolute paths, no `..` escape, and no escape through a
 * symlink — the existing part of the path is resolved like the kernel would and must stay inside.
 */
export class Workspace {
  /** `root` is the workspace's realpath. */
  constructor(readonly root: string) {}

  contains(candidate: string): boolean {
    if (candidate === this.root) return true;
    const prefix = this.root.endsWith(path.sep) ? this.root : this.root + path.sep;
    return candidate.startsWith(prefix);
  }

  /** Validates a workspace-relative path and returns its absolute location with every existing symlink resolved. */
  async resolve(relative: string, field = "path"): Promise<string> {
    if (relative.includes("\0")) throw new HttpError(400, "invalid_path", `${field} must not contain NUL bytes`);
    if (path.isAbsolute(relative)) {
      throw new HttpError(400, "absolute_path", `${field} must be relative to the workspace, got an absolute path: ${relative}`);
    }
    const normalized = path.posix.normalize(relative === "" ? "." : relative);
    if (normalized === ".." || normalized.startsWith("../")) {
      throw new HttpError(400, "path_escape", `${field} escapes the workspace: ${relative}`);
    }
    const lexical = path.resolve(this.root, normalized);
    let real: string;
    try {
      real = await resolveLeniently(lexical, 0);
    } catch (error) {
      throw fsError(error, relative);
    }
    if (!this.contains(real)) {
      throw new HttpError(400, "symlink_escape", `${field} resolves through a symlink to outside the workspace: ${relative}`);
    }
    return real;
  }

  async readFile(relative: string): Promise<{ content: string; encoding: "utf8" | "base64"; size: number }> {
    const target = await this.resolve(relative);
    try {
      const stat = await fs.stat(target);
      if (stat.isDirectory()) throw new HttpError(400, "is_directory", `${relative} is a directory`);
      if (!stat.isFile()) throw new HttpError(400, "not_a_file", `${relative} is not a regular file`);
      if (stat.size > MAX_FILE_BYTES) throw tooLarge(relative, stat.size);
      const bytes = await readAtMost(target, MAX_FILE_BYTES + 1);
      if (bytes.length > MAX_FILE_BYTES) throw tooLarge(relative, bytes.length);
      let text: string | undefined;
      try {
        text = utf8.decode(bytes);
      } catch {
        text = undefined;
      }
      return text === undefined
        ? { content: bytes.toString("base64"), encoding: "base64", size: bytes.length }
        : { content: text, encoding: "utf8", size: bytes.length };
    } catch (error) {
      throw fsError(error, relative);
    }
  }

  async writeFile(relative: string, bytes: Buffer): Promise<{ size: number }> {
    if (bytes.length > MAX_FILE_BYTES) throw tooLarge(relative, bytes.length);
    const target = await this.resolve(relative);
    if (target === this.root) throw new HttpError(400, "is_directory", `${relative} is the workspace directory`);
    try {
      await fs.mkdir(path.dirname(target), { recursive: true });
      // The parent now exists: re-check it (a concurrent symlink swap is the only way it could differ).
      const parent = await fs.realpath(path.dirname(target));
      if (!this.contains(parent)) {
        throw new HttpError(400, "symlink_escape", `path resolves through a symlink to outside the workspace: ${relative}`);
      }
      await fs.writeFile(path.join(parent, path.basename(target)), bytes);
      return { size: bytes.length };
    } catch (error) {
      throw fsError(error, relative);
    }
  }

  async listFiles(relative: string): Promise<FileEntry[]> {
    const directory = await this.resolve(relative);
    try {
      const names = await fs.readdir(directory);
      names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      const entries: FileEntry[] = [];
      // lstat in small batches: a huge directory must not open thousands of requests at once.
      for (let start = 0; start < names.length; start += 64) {
        const batch = names.slice(start, start + 64);
        const stats = await Promise.all(batch.map((name) => fs.lstat(path.join(directory, name)).catch(() => undefined)));
        batch.forEach((name, index) => {
          const stat = stats[index];
          if (!stat) return; // removed meanwhile
          const type = stat.isSymbolicLink() ? "symlink" : stat.isDirectory() ? "directory" : stat.isFile() ? "file" : "other";
          entries.push({ name, type, size: stat.size, modifiedAt: stat.mtime.toISOString() });
        });
      }
      return entries;
    } catch (error) {
      throw fsError(error, relative);
    }
  }

  /** A directory to run a command in. */
  async directory(relative: string): Promise<string> {
    const directory = await this.resolve(relative, "cwd");
    let isDirectory: boolean;
    try {
      isDirectory = (await fs.stat(directory)).isDirectory();
    } catch (error) {
      throw fsError(error, relative);
    }
    if (!isDirectory) throw new HttpError(400, "not_a_directory", `cwd is not a directory: ${relative}`);
    return directory;
  }
}

/**
 * realpath() that tolerates a missing tail: the existing part is resolved (symlinks followed, also
 * dangling ones, lexically, the way open(O_CREAT) would follow them) and the missing rest appended.
 */
async function resolveLeniently(target: string, hops: number): Promise<string> {
  if (hops > MAX_SYMLINK_HOPS) throw Object.assign(new Error("too many symlinks"), { code: "ELOOP" });
  try {
    return await fs.realpath(target);
  } catch (error) {
    const code = errnoCode(error);
    if (code !== "ENOENT" && code !== "ENOTDIR") throw error;
  }
  const parent = path.dirname(target);
  if (parent === target) return target;
  const realParent = await resolveLeniently(parent, hops);
  const joined = path.join(realParent, path.basename(target));
  const stat = await fs.lstat(joined).catch(() => undefined);
  if (stat?.isSymbolicLink()) {
    const link = await fs.readlink(joined);
    return resolveLeniently(path.resolve(realParent, link), hops + 1);
  }
  return joined;
}

async function readAtMost(file: string, limit: number): Promise<Buffer> {
  const handle = await fs.open(file, "r");
  try {
    const buffer = Buffer.alloc(limit);
    let length = 0;
    while (length < limit) {
      const { bytesRead } = await handle.read(buffer, length, limit - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    return buffer.subarray(0, length);
  } finally {
    await handle.close();
  }
}

function tooLarge(relative: string, size: number): HttpError {
  return new HttpError(413, "too_large", `${relative} is ${size} bytes, above the ${MAX_FILE_BYTES}-byte limit`);
}

/** Maps a filesystem error to the daemon's error codes; HttpErrors pass through. */
export function fsError(error: unknown, relative: string): unknown {
  if (error instanceof HttpError) return error;
  switch (errnoCode(error)) {
    case "ENOENT":
      return new HttpError(404, "not_found", `no such file or directory: ${relative}`);
    case "ENOTDIR":
      return new HttpError(400, "not_a_directory", `a component of the path is not a directory: ${relative}`);
    case "EISDIR":
      return new HttpError(400, "is_directory", `${relative} is a directory`);
    case "EACCES":
    case "EPERM":
      return new HttpError(403, "permission_denied", `permission denied: ${relative}`);
    case "EROFS":
      return new HttpError(403, "read_only", `read-only file system: ${relative}`);
    case "ELOOP":
      return new HttpError(400, "symlink_loop", `too many levels of symbolic links: ${relative}`);
    case "ENAMETOOLONG":
      return new HttpError(400, "name_too_long", `file name too long: ${relative}`);
    case "EEXIST": // mkdir -p met a file where a directory should be
      return new HttpError(400, "not_a_directory", `a component of the path is not a directory: ${relative}`);
    case "ENOSPC":
    case "EDQUOT":
      return new HttpError(507, "no_space", `no space left in the workspace: ${relative}`);
    default:
      return error;
  }
}
