import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { createLogger } from "../logger";
import { addressSpaceLimit, diagnoseJailFailure, LocalSandboxBackend } from "./local";
import { SandboxUnavailableError } from "./port";

describe("a jail's address-space limit", () => {
  it("is left to the memory cgroup when there is one, and is a wide backstop when there is none", () => {
    expect(addressSpaceLimit(1024, true)).toBeNull();
    // Wide enough for several WebAssembly memories (about 10 GiB of reservation each) beyond the memory size.
    expect(addressSpaceLimit(1024, false)).toBe((1024 + 64 * 1024) * 1024 * 1024);
  });
});

describe("naming what keeps jails from starting", () => {
  const host = (settings: Record<string, string>, extra: { inContainer?: boolean; root?: boolean } = {}) => ({
    readSetting: (file: string) => settings[file] ?? null,
    inContainer: extra.inContainer ?? false,
    root: extra.root ?? false,
  });
  // What bwrap 0.8 prints when it may not create a user namespace (EPERM).
  const noPermission =
    "bwrap: No permissions to create new namespace, likely because the kernel does not allow non-privileged user namespaces. See <https://deb.li/bubblewrap> or <file:///usr/share/doc/bubblewrap/README.Debian.gz>.";

  it("names Debian's switch, and the sysctl that turns it on", () => {
    const problem = diagnoseJailFailure(noPermission, host({ "/proc/sys/kernel/unprivileged_userns_clone": "0" }));
    expect(problem.reason).toContain("No permissions to create new namespace");
    expect(problem.reason).toContain("kernel.unprivileged_userns_clone = 0");
    expect(problem.fix).toContain("`sudo sysctl -w kernel.unprivileged_userns_clone=1`");
    expect(problem.fix).toContain("/etc/sysctl.d/");
  });

  it("names Ubuntu's AppArmor restriction (24.04), with no sudo for root", () => {
    const problem = diagnoseJailFailure("bwrap: loopback: Failed RTM_NEWADDR: Operation not permitted", host({ "/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1" }, { root: true }));
    expect(problem.reason).toContain("kernel.apparmor_restrict_unprivileged_userns = 1");
    expect(problem.fix).toContain("`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`");
    expect(problem.fix).not.toContain("sudo");
  });

  it("names user.max_user_namespaces when it is 0 or bwrap says the limit was reached", () => {
    expect(diagnoseJailFailure(noPermission, host({ "/proc/sys/user/max_user_namespaces": "0" })).fix).toContain("sysctl -w user.max_user_namespaces=15000");
    const enospc = diagnoseJailFailure("bwrap: Creating new namespace failed: nesting depth or /proc/sys/user/max_*_namespaces exceeded (ENOSPC)", host({}));
    expect(enospc.reason).toContain("user.max_user_namespaces");
  });

  it("names a chroot before any sysctl, when Berth is not root", () => {
    const chrooted = diagnoseJailFailure(noPermission, { ...host({ "/proc/sys/kernel/unprivileged_userns_clone": "1" }), inChroot: true });
    expect(chrooted.reason).toContain("chroot");
    expect(chrooted.fix).toContain("Run Berth as root");
  });

  it("falls back to the namespaces in general, and to Docker's options inside a container", () => {
    expect(diagnoseJailFailure(noPermission, host({})).fix).toContain("kernel.apparmor_restrict_unprivileged_userns=0");
    const docker = diagnoseJailFailure("bwrap: Can't mount proc on /newroot/proc: Operation not permitted", host({}, { inContainer: true }));
    expect(docker.reason).toContain("Can't mount proc");
    expect(docker.fix).toContain("--security-opt seccomp=unconfined");
  });
});

describe("a host whose jails cannot start", () => {
  it("brings the backend up unavailable, with the reason and the fix, and refuses to provision", async () => {
    // The real bwrap, in a user namespace that may create none of its own: exactly what bwrap meets
    // on a host with user namespaces turned off (user.max_user_namespaces=0), without touching the host.
    const realBwrap = execFileSync("sh", ["-c", "command -v bwrap"], { encoding: "utf8" }).trim();
    const binDir = mkdtempSync(path.join(os.tmpdir(), "berth-userns-off-"));
    const dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-userns-off-data-"));
    // As root, jails run bwrap as the sandbox user: it must be able to run the wrapper.
    chmodSync(binDir, 0o755);
    writeFileSync(
      path.join(binDir, "bwrap"),
      `#!/bin/sh\nexec unshare --user --map-root-user sh -c 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" "$@"' ${realBwrap} "$@"\n`,
      { mode: 0o755 },
    );
    const originalPath = process.env.PATH;
    process.env.PATH = `${binDir}:${originalPath ?? "/usr/bin:/bin"}`;
    let backend: LocalSandboxBackend | undefined;
    try {
      backend = await LocalSandboxBackend.create({
        dataDir,
        runtimePath: process.execPath,
        daemonScript: import.meta.filename,
        warmPoolSize: 2,
        unsafeNoIsolation: false,
        tokenFor: () => "token",
        logger: createLogger("silent"),
      });
      const availability = backend.availability();
      expect(availability.available).toBe(false);
      if (availability.available) return;
      expect(availability.reason).toContain("a test sandbox could not start (bwrap: Creating new namespace failed");
      expect(availability.reason).toContain("user.max_user_namespaces");
      expect(availability.fix).toContain("sysctl -w user.max_user_namespaces=15000");
      await expect(
        backend.provision({
          name: "s-test",
          teamId: "t",
          agentId: "a",
          sessionId: "00000000-0000-4000-8000-000000000000",
          generation: 1,
          network: "none",
          env: {},
          resources: { cpuMillis: 1000, memoryMb: 256, diskMb: 256 },
          image: null,
        }),
      ).rejects.toThrow(SandboxUnavailableError);
      // No warm pool is being filled, nothing is running, and the self-test left nothing behind.
      await backend.warmPoolsReady();
      expect(await backend.list()).toEqual([]);
      expect(existsSync(path.join(dataDir, "sandboxes", ".self-test"))).toBe(false);
      expect(existsSync(path.join(dataDir, "workspaces", "00000000-0000-4000-8000-000000000000"))).toBe(false);
    } finally {
      process.env.PATH = originalPath;
      await backend?.shutdown();
      rmSync(binDir, { recursive: true, force: true });
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
