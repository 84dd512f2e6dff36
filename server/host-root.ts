import { readFileSync, statSync } from "node:fs";
import path from "node:path";

/** The PATH of the host programs Berth runs around its jails and its database: never anything of an agent's. */
export const HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/**
 * Whether this process is chrooted: no mount of its mount namespace is mounted at its "/" (the kernel
 * lists only the mounts reachable from a process's root, and the namespace's root mount is above a
 * chroot's). /proc unreadable: not known to be chrooted.
 */
export function runningInChroot(mountInfo?: string): boolean {
  let text = mountInfo;
  if (text === undefined) {
    try {
      text = readFileSync("/proc/self/mountinfo", "utf8");
    } catch {
      return false;
    }
  }
  return !text.split("\n").some((line) => line.split(" ")[4] === "/");
}

let chrooted: boolean | undefined;

// Escapes the chroot (setns into the process's own mount namespace resets its root and working
// folder to the namespace's), makes a private mount namespace, binds the chroot's folder (read from
// Berth's /proc entry, which still has it as root) onto itself and pivots into it, so the command runs
// in the same tree, now as the root of its namespace, in the folder it was started in.
const ENTER_SCRIPT = 'wd=$(pwd); inner=$1; pid=$2; shift 2; exec nsenter --mount=/proc/self/ns/mnt -- unshare --mount --propagation private -- /bin/sh -c "$inner" berth-unchroot "$pid" "$wd" "$@"';
const PIVOT_SCRIPT = 'tree=$(readlink "/proc/$1/root") && wd=$2 && shift 2 && mount --rbind "$tree" "$tree" && cd "$tree" && pivot_root . . && umount -l . && { cd "$wd" 2>/dev/null || cd /; } && exec "$@"';

/**
 * As root in a chroot, the command prefix that runs a command in the same file tree, but as the root
 * of a new private mount namespace; otherwise none. The kernel refuses a chrooted process new user
 * namespaces (so bubblewrap cannot start a jail) and changes of "/" propagation (so `unshare --mount
 * --propagation private` fails). A chroot is no boundary for root, which can always leave it: the
 * prefix only gives what runs under it a proper root. The programs between the setns and the pivot
 * (unshare, sh, mount, pivot_root, umount) are the host's, found on the default PATH.
 */
export function unchrootPrefix(): string[] {
  // Read once: a process does not move in or out of a chroot, and every jail start asks.
  chrooted ??= runningInChroot();
  if (process.getuid?.() !== 0 || !chrooted) return [];
  return ["/bin/sh", "-c", ENTER_SCRIPT, "berth-unchroot", PIVOT_SCRIPT, String(process.pid)];
}

/** Whether uid/gid may pass through every folder from the root to `target` (inclusive); false if one cannot be read. */
export function traversableBy(ids: { uid: number; gid: number }, target: string): boolean {
  try {
    for (let dir = target; ; dir = path.dirname(dir)) {
      const stat = statSync(dir);
      const bits = stat.uid === ids.uid ? (stat.mode >> 6) & 7 : stat.gid === ids.gid ? (stat.mode >> 3) & 7 : stat.mode & 7;
      if ((bits & 1) === 0) return false;
      if (dir === path.dirname(dir)) return true;
    }
  } catch {
    return false;
  }
}
