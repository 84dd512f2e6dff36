import { execFileSync } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from "vitest";
import { createBerthClient } from "../../server/client";
import { SECCOMP_TABLES, type SeccompArch } from "../../server/sandbox/seccomp";
import { abstractProbe, listenAbstract, probeAbstractOnHost } from "../helpers/abstract-socket";
import { descendants, freePort, readyzStatus, startProcess, waitFor, type BerthProcess } from "../helpers/processes";

/**
 * The standing escape suite (issue 24): a real Berth, started from the build as root (or, with
 * BERTH_SECURITY_SERVER_USER, as that unprivileged user: .ci/run runs the suite a second time as
 * `nobody`; a run that is not root's runs it as its own user), attacked through the public API with
 * an ordinary member's API key, the way a prompt-injected agent or a malicious member would. Every
 * probe runs inside a real bubblewrap jail; each test also checks from the host that nothing
 * changed there. Probes only ever talk to 127.0.0.1.
 */
const serverUser = process.env.BERTH_SECURITY_SERVER_USER;
const asRoot = process.getuid?.() === 0 && !serverUser;
const arch: SeccompArch | null = process.arch === "x64" || process.arch === "arm64" ? process.arch : null;
const ADMIN_KEY = "security_suite_admin_key_0123456789abcdef";

/** Host values a jail must never change. */
const SYSCTLS = ["/proc/sys/vm/swappiness", "/proc/sys/kernel/core_pattern", "/proc/sys/kernel/hostname", "/proc/sys/kernel/domainname", "/proc/sys/fs/file-max"];

function hostUid(name: string): number {
  return Number(execFileSync("id", ["-u", name], { encoding: "utf8" }).trim());
}

/** `root` and every live process below it, with its host uids (real, effective, saved, filesystem) and command line. */
function processTree(root: number): Array<{ pid: number; uids: number[]; command: string }> {
  const found: Array<{ pid: number; uids: number[]; command: string }> = [];
  for (const pid of [root, ...descendants(root)]) {
    try {
      const status = readFileSync(`/proc/${pid}/status`, "utf8");
      if (/^State:\s+Z/m.test(status)) continue;
      const uids = hostUids(status);
      found.push({ pid, uids, command: readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ").trim() });
    } catch {
      // ended meanwhile
    }
  }
  return found;
}

/** Files under `dir` with the setuid or setgid bit, as the host sees them. */
function setuidFiles(dir: string): string[] {
  const found: string[] = [];
  const walk = (current: string) => {
    for (const entry of readdirSync(current, { withFileTypes: true })) {
      const full = path.join(current, entry.name);
      const stat = statSync(full, { throwIfNoEntry: false });
      if (!stat) continue;
      if ((stat.mode & 0o6000) !== 0) found.push(full);
      if (entry.isDirectory()) walk(full);
    }
  };
  walk(dir);
  return found;
}

describe(`sandbox escape probes (Berth running as ${serverUser ?? (asRoot ? "root" : "the test's own user")})`, () => {
  let dataDir: string;
  let berth: BerthProcess;
  let api: ReturnType<typeof createBerthClient>;
  let sessionId: string;
  let jailPid: number;
  let expectedUid: number;
  let port: number;
  let startServer: () => Promise<void>;
  const sysctlsBefore = new Map<string, string>();

  async function exec(command: string, timeoutMs = 60_000) {
    return api.sessions.exec.mutate({ sessionId, command, timeoutMs });
  }

  beforeAll(async () => {
    for (const file of SYSCTLS) sysctlsBefore.set(file, readFileSync(file, "utf8"));
    dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-security-"));
    const runAs = serverUser ? { uid: hostUid(serverUser), gid: Number(execFileSync("id", ["-g", serverUser], { encoding: "utf8" }).trim()) } : undefined;
    if (runAs) chownSync(dataDir, runAs.uid, runAs.gid);
    expectedUid = asRoot ? -1 : (runAs?.uid ?? process.getuid!());
    port = await freePort();
    startServer = async () => {
      berth = startProcess(
        process.execPath,
        ["build/main.js"],
        {
          BERTH_DATA_DIR: dataDir,
          HOME: dataDir,
          PORT: String(port),
          HOST: "127.0.0.1",
          BERTH_ADMIN_API_KEY: ADMIN_KEY,
          BERTH_WARM_POOL_SIZE: "0",
          // The model relay (now the egress gateway's origin-form route) has an upstream to name (never called here).
          LITELLM_BASE_URL: "http://127.0.0.1:9",
        },
        runAs,
      );
      await waitFor("/readyz", async () => ((await readyzStatus(port)) === 200 ? true : undefined), 90_000);
    };
    await startServer();
    if (asRoot) expectedUid = hostUid("berth-sandbox");
    const admin = createBerthClient({ url: `http://127.0.0.1:${port}`, apiKey: ADMIN_KEY });
    const member = await admin.apiKeys.create.mutate({ name: "attacker", role: "member" });
    api = createBerthClient({ url: `http://127.0.0.1:${port}`, apiKey: member.key });
    // Agents are an admin's to define; sessions and commands are what a member (or an agent) gets.
    const agent = await admin.agents.create.mutate({ name: "probe", model: "demo", memoryMb: 256, diskMb: 256 });
    sessionId = (await api.sessions.create.mutate({ agentId: agent.id })).id;
    const session = await waitFor("the session's sandbox", async () => {
      const current = await api.sessions.get.query({ sessionId });
      if (current.status === "failed") throw new Error(`sandbox failed: ${berth.output().slice(-2000)}`);
      return current.status === "ready" ? current : undefined;
    }, 90_000);
    jailPid = session.sandbox!.hostPid!;
  }, 180_000);

  // After every probe the host is as it was: sysctls, no setuid/setgid file in the data dir, and no
  // orphan of the jails' host user (a process that left its jail, or outlived it, is reparented to
  // init; other test files' jails, run alongside, are their own test processes' children).
  afterEach(async () => {
    for (const [file, value] of sysctlsBefore) expect(readFileSync(file, "utf8"), file).toBe(value);
    expect(setuidFiles(dataDir)).toEqual([]);
    // A jail stopped a moment ago (a terminate) may still be on its way out: its inner bwrap is
    // reparented to init for the instant before its death signal lands. What stays is a stray.
    await expect.poll(() => orphansOf(expectedUid), { message: "orphaned processes of the sandbox user", timeout: 10_000 }).toEqual([]);
  });

  afterAll(async () => {
    if (berth) {
      berth.child.kill("SIGTERM");
      await berth.exited;
    }
    // The host as it was: no sysctl changed, nothing setuid left in the data dir.
    for (const [file, value] of sysctlsBefore) expect(readFileSync(file, "utf8"), file).toBe(value);
    if (dataDir && existsSync(dataDir)) {
      expect(setuidFiles(dataDir)).toEqual([]);
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it("runs every jail process as an unprivileged host user (never host root), uid 1000 inside", async () => {
    expect((await exec("id -u; id -g")).stdout).toBe("1000\n1000\n");
    const tree = processTree(jailPid);
    expect(tree.length).toBeGreaterThanOrEqual(2);
    for (const process of tree) {
      expect(process.uids, `${process.pid} ${process.command}`).not.toContain(0);
      expect(process.uids.every((uid) => uid === expectedUid), `${process.pid} ${process.command}: ${process.uids}`).toBe(true);
    }
  });

  it("cannot change host sysctls: /proc/sys and the other global /proc knobs are read-only", async () => {
    const result = await exec(
      [
        "echo 61 > /proc/sys/vm/swappiness; echo swappiness=$?",
        "echo '|/workspace/pwn %p' > /proc/sys/kernel/core_pattern; echo core_pattern=$?",
        "echo h > /proc/sysrq-trigger; echo sysrq=$?",
        "awk '$2 == \"/proc/sys\" { print \"mount=\" $4 }' /proc/self/mounts",
      ].join("; "),
    );
    expect(result.stdout).toMatch(/swappiness=[1-9]/);
    expect(result.stdout).toMatch(/core_pattern=[1-9]/);
    expect(result.stdout).toMatch(/sysrq=[1-9]/);
    expect(result.stdout).toMatch(/mount=ro,/);
    expect(result.stderr).toMatch(/Read-only file system|Permission denied/);
    for (const [file, value] of sysctlsBefore) expect(readFileSync(file, "utf8"), file).toBe(value);
  });

  it("leaves nothing setuid or setgid on the host: chmod, open and mknod with those bits are refused", async () => {
    const result = await exec(
      [
        "cp /bin/true ./suid; chmod 4755 suid; echo chmod4755=$?",
        "chmod u+s suid; echo chmodus=$?",
        "chmod g+s .; echo chmodgs=$?",
        "install -m 6755 /bin/true ./installed; echo install=$?",
        `perl -e 'use Fcntl; sysopen(my $f, "opened", O_CREAT|O_WRONLY, 04755) or exit 1; exit 0'; echo sysopen=$?`,
        "stat -c '%a %n' suid . installed opened 2>/dev/null",
        "chmod 755 suid; echo chmod755=$?",
      ].join("; "),
    );
    expect(result.stdout).toMatch(/chmod4755=1/);
    expect(result.stdout).toMatch(/chmodus=1/);
    expect(result.stdout).toMatch(/chmodgs=1/);
    expect(result.stdout).toMatch(/install=1/);
    expect(result.stdout).toMatch(/sysopen=1/);
    expect(result.stdout).toContain("chmod755=0");
    for (const line of result.stdout.split("\n").filter((l) => /^\d+ /.test(l))) expect(Number.parseInt(line.split(" ")[0]!, 8) & 0o6000, line).toBe(0);
    expect(setuidFiles(dataDir)).toEqual([]);
  });

  it("cannot create user namespaces (unshare -Ur fails)", async () => {
    const result = await exec("unshare -Ur true; echo userns=$?; unshare -U true; echo plain=$?; unshare -m true; echo mountns=$?");
    expect(result.stdout).toMatch(/userns=[1-9]/);
    expect(result.stdout).toMatch(/plain=[1-9]/);
    expect(result.stdout).toMatch(/mountns=[1-9]/);
  });

  it("mount, keyctl and bpf are refused", async () => {
    const result = await exec("mkdir -p m; mount -t tmpfs none m; echo mount=$?; keyctl show 2>/dev/null; perl -e '$! = 0; syscall(250, 0, 0); print \"keyctl=\", $! + 0, \"\\n\"; $! = 0; syscall(321, 0, 0, 0); print \"bpf=\", $! + 0, \"\\n\"'");
    expect(result.stdout).toMatch(/mount=[1-9]/);
    expect(result.stdout).toContain("keyctl=1\n"); // EPERM
    expect(result.stdout).toContain("bpf=1\n");
  });

  it.runIf(arch !== null)("the seccomp filter refuses every call on its list, and allows ordinary ones", async () => {
    const table = SECCOMP_TABLES[arch!];
    // Arguments that would make each call succeed were it allowed do not matter: the filter answers first.
    const probes: Array<[string, number[] | string, number]> = [
      ...Object.entries(table.refused).map(([name, nr]) => [name, [nr], 1] as [string, number[], number]),
      ...Object.entries(table.unsupported).map(([name, nr]) => [name, [nr], 38] as [string, number[], number]),
      ["clone(CLONE_NEWUSER)", [table.clone, 0x10000000 | 17, 0, 0, 0, 0], 1],
      ["clone(CLONE_NEWNET)", [table.clone, 0x40000000 | 17, 0, 0, 0, 0], 1],
      ["ioctl(TIOCSTI)", [table.ioctl, 0, 0x5412, 0], 1],
      ["ioctl(TIOCLINUX)", [table.ioctl, 0, 0x541c, 0], 1],
      // Only creating the socket is tried: it never connects anywhere.
      ["socket(AF_VSOCK)", [table.socket, 40, 1, 0], 1],
    ];
    const perl = probes
      .map(([name, args]) => `$! = 0; my $r = syscall(${(args as number[]).join(", ")}); print "${name} ", ($r == -1 ? $! + 0 : "ok"), "\\n";`)
      .join(" ");
    const result = await exec(`perl -e '${perl} print "getpid ", syscall(${arch === "x64" ? 39 : 172}) > 0 ? "ok" : "failed", "\\n";'`);
    const answers = new Map(result.stdout.trim().split("\n").map((line) => line.split(" ") as [string, string]));
    for (const [name, , errno] of probes) expect(answers.get(name), name).toBe(String(errno));
    expect(answers.get("getpid")).toBe("ok");
  });

  it("/run/berth is read-only to the sandbox, but for the daemon's own socket folder", async () => {
    const result = await exec(
      "ls /run/berth; touch /run/berth/x; echo touch=$?; rm -f /run/berth/egress.sock; echo rm=$?; ln -sf /workspace /run/berth/link; echo ln=$?; ls /run/berth",
    );
    expect(result.stdout).toMatch(/touch=[1-9]/);
    expect(result.stdout).toMatch(/rm=[1-9]/);
    expect(result.stdout).toMatch(/ln=[1-9]/);
    expect(result.stdout.match(/egress\.sock/g)).toHaveLength(2);
    // As root the daemon's folder is sealed once its socket exists: the socket cannot be swapped for a
    // link root would dial, and nothing can be written there. (Not as another user: docs/security.md.)
    if (asRoot) {
      const daemonFolder = await exec("mkdir /run/berth/daemon/x; echo mkdir=$?; ln -sf /run/berth/egress.sock /run/berth/daemon/daemon.sock; echo swap=$?");
      expect(daemonFolder.stdout).toMatch(/mkdir=[1-9]/);
      expect(daemonFolder.stdout).toMatch(/swap=[1-9]/);
      expect((await exec("echo daemon-still-answers")).stdout).toBe("daemon-still-answers\n");
    }
  });

  it("a new session: no controlling terminal to push input into (TIOCSTI)", async () => {
    const result = await exec("ps -o sid= -p $$; ps -o tty= -p $$");
    expect(result.stdout.split("\n")[1]?.trim()).toBe("?");
  });

  it("a fork bomb and daemonised processes do not outlive their exec", async () => {
    // Bounded so the jail's 256 MB are not the limit that stops it (the pids cgroup caps a real bomb at 512: tests/e2e/sandbox-exec).
    const bomb = await exec("setsid sleep 1000 & (sleep 1000 &) ; for i in $(seq 1 200); do sleep 1000 & done; echo started", 120_000);
    expect(bomb.stdout, JSON.stringify(bomb)).toContain("started");
    await waitFor("the exec's processes to be gone", () => (processTree(jailPid).some((p) => p.command.includes("sleep")) ? undefined : true), 20_000);
    // The jail still works afterwards.
    expect((await exec("echo alive")).stdout).toBe("alive\n");
  });

  it("a memory hog is stopped at the agent's memory limit, and the platform stays ready", async () => {
    const health = await api.system.health.query();
    const hog = await exec("perl -e '$x = \"a\" x (768 * 1024 * 1024); print \"allocated\\n\"'");
    // With cgroups the kernel kills it at 256 MB; without, the address-space backstop is memory + 64 GiB (docs/security.md).
    if (cgroupsActive(jailPid)) {
      expect(hog.stdout).not.toContain("allocated");
      expect(hog.exitCode === null || hog.exitCode !== 0).toBe(true);
    }
    expect(health.ok).toBe(true);
    expect((await exec("echo still-here")).stdout).toBe("still-here\n");
  });

  it("file paths and symlinks cannot leave the workspace", async () => {
    await exec("ln -sf /etc/shadow shadow-link; ln -sf ../../../../ up-link");
    for (const probe of ["../../../etc/shadow", "/etc/shadow", "shadow-link", "up-link/etc/shadow"]) {
      const read = await api.sessions.readFile.query({ sessionId, path: probe }).then(
        (file) => JSON.stringify(file),
        (error: Error) => error.message,
      );
      expect(read, probe).not.toMatch(/root:[^:]*:\d+:/);
    }
    const seen = await exec(`cat ${dataDir}/admin-api-key 2>&1; ls ${dataDir} 2>&1`);
    expect(seen.stdout).not.toContain(ADMIN_KEY);
    expect(seen.stdout).toContain("No such file or directory");
  });

  it("the workspace disk quota stops writes inside the sandbox, and the host's disk is untouched", async () => {
    const health = await api.system.health.query();
    if (!health.sandboxIsolation?.diskQuota) {
      // Honest about what does not hold: without root (or mkfs.ext4) quotas are off, and the server says so.
      expect(asRoot).toBe(false);
      expect(health.sandboxIsolation?.diskQuota).toBe(false);
      return;
    }
    const before = statfsFree(dataDir);
    const result = await exec("dd if=/dev/zero of=big bs=1M count=400 2>&1; echo dd=$?; du -sm big; rm -f big", 120_000);
    expect(result.stdout).toMatch(/No space left on device/);
    expect(result.stdout).toMatch(/dd=[1-9]/);
    const written = Number(result.stdout.match(/^(\d+)\s+big$/m)![1]);
    expect(written).toBeGreaterThan(200);
    expect(written).toBeLessThanOrEqual(256);
    // The image is sparse: what the sandbox wrote and removed is all it ever took on the host.
    expect(before - statfsFree(dataDir)).toBeLessThan(300 * 1024 * 1024);
  });

  // The network (issue 25): a jail has its own network namespace with loopback only; its one way out
  // is the egress gateway's socket, and the gateway never connects to the host's loopback. Probes
  // only ever talk to 127.0.0.1 (inside the jail, that is the jail's own loopback).

  it("no jail reaches the platform's port or a database's port on the host's loopback, directly or through the egress gateway", async () => {
    const databasePorts = [embeddedPostgresPort(dataDir), testRunPostgresPort()].filter((value): value is number => value !== null);
    expect(databasePorts.length).toBeGreaterThanOrEqual(1);
    const targets = [port, ...databasePorts];
    // The targets answer on the host: what fails below fails for the jail's sake.
    for (const target of targets) expect(await hostConnects(target), `host reaches 127.0.0.1:${target}`).toBe(true);

    const probe = (target: number) =>
      [
        `curl --noproxy '*' -sS -m 5 -o /dev/null http://127.0.0.1:${target}/healthz 2>/dev/null; echo direct-${target}=$?`,
        `(exec 3<>/dev/tcp/127.0.0.1/${target}) 2>/dev/null; echo tcp-${target}=$?`,
        `perl -MIO::Socket::INET -e 'print "perl-${target}=", (IO::Socket::INET->new(PeerAddr => "127.0.0.1", PeerPort => ${target}, Timeout => 5) ? "connected" : "refused"), "\\n"'`,
        // NO_PROXY names 127.0.0.1: --noproxy '' sends it through the gateway all the same.
        `curl -sS -m 10 --noproxy '' -x "$HTTP_PROXY" -o /dev/null -w 'proxy-${target}=%{http_code}\\n' http://127.0.0.1:${target}/healthz 2>/dev/null`,
        `curl -sS -m 10 --noproxy '' -p -x "$HTTP_PROXY" -o /dev/null -w 'connect-${target}=%{http_connect}\\n' http://127.0.0.1:${target}/healthz 2>/dev/null`,
      ].join("\n");
    const expectUnreachable = (stdout: string) => {
      for (const target of targets) {
        expect(stdout, `${target}: ${stdout}`).toMatch(new RegExp(`^direct-${target}=7$`, "m")); // could not connect
        expect(stdout).toMatch(new RegExp(`^tcp-${target}=1$`, "m"));
        expect(stdout).toMatch(new RegExp(`^perl-${target}=refused$`, "m"));
        expect(stdout).toMatch(new RegExp(`^proxy-${target}=403$`, "m"));
        expect(stdout).toMatch(new RegExp(`^connect-${target}=403$`, "m"));
      }
    };

    // The suite's own agent: no egress at all (the default).
    expectUnreachable((await exec(targets.map(probe).join("\n"))).stdout);

    // An agent with open egress, and one whose allow-list names exactly these ports: the gateway's
    // address rules refuse loopback whatever the policy says.
    const admin = createBerthClient({ url: `http://127.0.0.1:${port}`, apiKey: ADMIN_KEY });
    for (const egress of [{ mode: "open" as const, allow: [] }, { mode: "allowlist" as const, allow: [{ host: "127.0.0.1", ports: targets }] }]) {
      const agent = await admin.agents.create.mutate({ name: `probe-net-${egress.mode}`, model: "demo", memoryMb: 256, diskMb: 256, egress });
      const { id } = await api.sessions.create.mutate({ agentId: agent.id });
      await waitFor(`the ${egress.mode} session's sandbox`, async () => {
        const current = await api.sessions.get.query({ sessionId: id });
        if (current.status === "failed") throw new Error(`sandbox failed: ${berth.output().slice(-2000)}`);
        return current.status === "ready" ? true : undefined;
      }, 90_000);
      const result = await api.sessions.exec.mutate({ sessionId: id, command: `${targets.map(probe).join("\n")}\ncurl -sS -m 10 --noproxy '' -x "$HTTP_PROXY" http://127.0.0.1:${port}/healthz`, timeoutMs: 120_000 });
      expectUnreachable(result.stdout);
      expect(result.stdout, egress.mode).toMatch(/127\.0\.0\.1.* is loopback/);
      await api.sessions.terminate.mutate({ sessionId: id });
    }
  });

  it("a jail's network namespace is not the host's: nothing but lo inside, no route, and the host's abstract Unix sockets are out of reach", async () => {
    const abstractName = `berth-escape-abstract-${process.pid}-${Date.now()}`;
    const abstract = await listenAbstract(abstractName);
    try {
      // The same probe reaches it from the host: what fails in the jail fails for the jail's sake.
      expect(await probeAbstractOnHost(abstractName)).toBe("abstract=connected");
      const result = await exec(
        [
          "echo netns=$(readlink /proc/self/ns/net)",
          "echo devices=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')",
          "echo v6-devices=$(awk '{print $6}' /proc/net/if_inet6 | sort -u | tr '\\n' ' ')",
          // No route out: the main IPv4 table is empty (no default route; loopback's routes live in the local table).
          "echo routes4=$(tail -n +2 /proc/net/route | wc -l)",
          `echo abstract-listed=$(grep -c '@${abstractName}' /proc/net/unix)`,
          abstractProbe(abstractName),
        ].join("\n"),
      );
      const field = (name: string) => result.stdout.match(new RegExp(`^${name}=(.*)$`, "m"))?.[1]?.trim();
      const netns = field("netns");
      expect(netns, result.stdout).toMatch(/^net:\[\d+\]$/);
      // The host's namespace (this test process), and the platform's own (readable to root and to the user Berth runs as).
      expect(netns).not.toBe(readlinkSync("/proc/self/ns/net"));
      const platformNetns = (() => {
        try {
          return readlinkSync(`/proc/${berth.child.pid}/ns/net`);
        } catch {
          return null;
        }
      })();
      if (platformNetns !== null) expect(netns).not.toBe(platformNetns);
      // It is the namespace of the jail's processes as the host sees them (where the host may look).
      const jailNamespaces = processTree(jailPid).flatMap(({ pid }) => {
        try {
          return [readlinkSync(`/proc/${pid}/ns/net`)];
        } catch {
          return [];
        }
      });
      if (jailNamespaces.length > 0) expect(jailNamespaces).toContain(netns);
      expect(field("devices")).toBe("lo");
      expect(field("v6-devices")).toMatch(/^(lo)?$/);
      expect(field("routes4")).toBe("0");
      expect(field("abstract-listed")).toBe("0");
      expect(field("abstract")).toBe("refused");
    } finally {
      abstract.close();
    }
  });

  it("an agent's environment (PATH, LD_PRELOAD) reaches only the jail, never the host programs that start it", async () => {
    const admin = createBerthClient({ url: `http://127.0.0.1:${port}`, apiKey: ADMIN_KEY });
    // Programs named like those that start a jail, in a session's workspace: run on the host, each
    // would leave a file in the data dir.
    const { id: planter } = await api.sessions.create.mutate({ agentId: (await api.agents.list.query({})).items.find((item) => item.name === "probe")!.id });
    await waitFor("the planting session's sandbox", async () => ((await api.sessions.get.query({ sessionId: planter })).status === "ready" ? true : undefined), 90_000);
    const names = ["sh", "prlimit", "unshare", "nsenter", "mount", "setpriv", "bwrap", "env"];
    const plant = names.map((name) => `printf '#!/bin/sh\\ntouch ${dataDir}/ran-on-host-${name}\\nexec /usr/bin/${name} "$@"\\n' > /workspace/${name} && chmod +x /workspace/${name}`).join(" && ");
    const planted = await api.sessions.exec.mutate({ sessionId: planter, command: `${plant} && ls /workspace | wc -l` });
    expect(planted.exitCode, planted.stderr).toBe(0);
    const hostWorkspace = path.join(dataDir, "workspaces", planter);
    const agent = await admin.agents.create.mutate({
      name: "hostile-env",
      model: "demo",
      // A size of its own: the session starts a cold jail of its own rather than a warm one.
      diskMb: 320,
      env: { PATH: `${hostWorkspace}:/usr/bin:/bin`, LD_PRELOAD: `${hostWorkspace}/nothing.so`, BASH_ENV: `${hostWorkspace}/sh` },
    });
    const { id: sessionId2 } = await api.sessions.create.mutate({ agentId: agent.id });
    await waitFor("the hostile-env session's sandbox", async () => {
      const current = await api.sessions.get.query({ sessionId: sessionId2 });
      if (current.status === "failed") throw new Error(`sandbox failed: ${current.statusReason}`);
      return current.status === "ready" ? true : undefined;
    }, 90_000);
    // Inside, the agent's environment is what it set.
    const inside = await api.sessions.exec.mutate({ sessionId: sessionId2, command: "printenv PATH LD_PRELOAD" });
    expect(inside.stdout).toContain(hostWorkspace);
    expect(readdirSync(dataDir).filter((name) => name.startsWith("ran-on-host-"))).toEqual([]);
    await api.sessions.terminate.mutate({ sessionId: sessionId2 });
    await api.sessions.terminate.mutate({ sessionId: planter });
  });

  it("sandboxes stopped while they start (restarts in quick succession, then a terminate) leave no process behind", async () => {
    const agent = (await api.agents.list.query({})).items.find((item) => item.name === "probe")!;
    const { id: churned } = await api.sessions.create.mutate({ agentId: agent.id });
    // Each restart stops the generation before it wherever it is in its start, most of them before
    // their jail has set up its death signals (without cgroups, only a tree kill catches those).
    for (const delayMs of [0, 40, 80, 120, 160, 200, 260, 320, 400, 500]) {
      await new Promise((resolve) => setTimeout(resolve, delayMs));
      await api.sessions.restart.mutate({ sessionId: churned });
    }
    await api.sessions.terminate.mutate({ sessionId: churned });
    // (afterEach: no orphan of the sandbox user)
  });

  it("a tree nested past PATH_MAX where the sandbox can write neither outlives its session nor keeps Berth from starting again", async () => {
    const agent = (await api.agents.list.query({})).items.find((item) => item.name === "probe")!;
    const { id: deepSession } = await api.sessions.create.mutate({ agentId: agent.id });
    const jailName = await waitFor("the second session's sandbox", async () => {
      const current = await api.sessions.get.query({ sessionId: deepSession });
      return current.status === "ready" ? current.sandbox!.name! : undefined;
    }, 90_000);
    const nest = (dir: string) => `(cd ${dir} && mkdir deep && cd deep && n=$(printf 'a%.0s' $(seq 200)); for i in $(seq 30); do mkdir $n && cd $n || exit 1; done; echo nested)`;
    const deep = await api.sessions.exec.mutate({ sessionId: deepSession, command: `${nest("/workspace")}; ${nest("/run/berth/daemon")} 2>&1; true`, timeoutMs: 60_000 });
    expect(deep.stdout).toContain("nested");
    // A crash leaves the jail's folder behind; the next start must clear it and come up.
    berth.child.kill("SIGKILL");
    await berth.exited;
    await startServer();
    await api.sessions.terminate.mutate({ sessionId: deepSession });
    const folder = path.join(dataDir, "workspaces", deepSession);
    await waitFor("the terminated session's workspace to be deleted", () => (existsSync(folder) || existsSync(`${folder}.img`) ? undefined : true), 30_000);
    expect(existsSync(path.join(dataDir, "sandboxes", jailName))).toBe(false);
  });
});

/** The uids (real, effective, saved, filesystem) of a /proc/<pid>/status text. */
function hostUids(status: string): number[] {
  return status.match(/^Uid:\s+(.*)$/m)![1]!.trim().split(/\s+/).map(Number);
}

/** Live processes whose real or effective host uid is `uid` and whose parent is init. */
function orphansOf(uid: number): string[] {
  const found: string[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const status = readFileSync(`/proc/${entry}/status`, "utf8");
      if (/^State:\s+Z/m.test(status)) continue;
      const [real, effective] = hostUids(status);
      const parent = Number(status.match(/^PPid:\s+(\d+)$/m)![1]);
      if ((real === uid || effective === uid) && parent === 1) found.push(`${entry} ${readFileSync(`/proc/${entry}/cmdline`, "utf8").replaceAll("\0", " ")}`);
    } catch {
      // ended meanwhile
    }
  }
  return found;
}

function cgroupsActive(pid: number): boolean {
  try {
    return /berth/.test(readFileSync(`/proc/${pid}/cgroup`, "utf8"));
  } catch {
    return false;
  }
}

function statfsFree(dir: string): number {
  const output = execFileSync("df", ["--output=avail", "-B1", dir], { encoding: "utf8" });
  return Number(output.trim().split("\n")[1]);
}

/** The port of the embedded Postgres Berth started in `dataDir` (line 4 of postmaster.pid), or null. */
function embeddedPostgresPort(dataDir: string): number | null {
  try {
    const port = Number(readFileSync(path.join(dataDir, "pg", "postmaster.pid"), "utf8").split("\n")[3]);
    return Number.isInteger(port) && port > 0 ? port : null;
  } catch {
    return null;
  }
}

/** The port of the test run's own Postgres when it listens on 127.0.0.1 (these probes talk to no other address). */
function testRunPostgresPort(): number | null {
  const url = new URL(inject("postgresAdminUrl"));
  return ["127.0.0.1", "localhost"].includes(url.hostname) && url.port ? Number(url.port) : null;
}

/** Whether a TCP connection from the host to 127.0.0.1:port is accepted. */
function hostConnects(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.setTimeout(5_000, () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}
