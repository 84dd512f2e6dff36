import { randomUUID } from "node:crypto";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, realpathSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { TRPCClientError } from "@trpc/client";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isProcessAlive } from "../../db/embedded";
import { startTestBerth, type TestBerth } from "../helpers/berth";
import { descendants, waitFor } from "../helpers/processes";
import { workspaceExists, workspaceFile } from "../helpers/workspaces";

const KEY = "sandbox_test_key_0123456789abcdefghij";

/**
 * Real bubblewrap jails: isolation, secrets injection, network policy, loss detection,
 * suspend/resume, warm pool and termination, all through the public API.
 */
describe("per-session sandboxes on the local backend", () => {
  let berth: TestBerth;
  let api: ReturnType<TestBerth["client"]>;
  let sql: postgres.Sql;
  let listener: net.Server;
  let listenerPort: number;

  beforeAll(async () => {
    berth = await startTestBerth({
      env: { BERTH_ADMIN_API_KEY: KEY, CONTAINER_ENV_SAMPLE_SECRET: "s3", CONTAINER_ENV_SHARED: "platform", BERTH_WARM_POOL_SIZE: "1" },
    });
    api = berth.client(KEY);
    sql = postgres(berth.databaseUrl, { max: 2, onnotice: () => {} });
    listener = net.createServer((socket) => socket.end("hello from the host\n"));
    await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
    listenerPort = (listener.address() as net.AddressInfo).port;
  });
  afterAll(async () => {
    listener?.close();
    await sql?.end();
    await berth?.close();
  });

  async function readySession(agentId: string) {
    const session = await api.sessions.create.mutate({ agentId });
    await waitFor(`session ${session.id} ready`, async () => ((await api.sessions.get.query({ sessionId: session.id })).status === "ready" ? true : undefined), 30_000);
    return api.sessions.get.query({ sessionId: session.id });
  }

  async function exec(sessionId: string, command: string) {
    return api.sessions.exec.mutate({ sessionId, command, timeoutMs: 20_000 });
  }

  it("provisions pending -> provisioning -> ready with a status event per transition", async () => {
    const agent = await api.agents.create.mutate({ name: "lifecycle", model: "demo" });
    const session = await readySession(agent.id);
    expect(session.sandbox).toMatchObject({ generation: 1, status: "ready", backend: "local", hostPid: expect.any(Number) });
    expect(isProcessAlive(session.sandbox!.hostPid!)).toBe(true);
    const events = await api.sessions.events.query({ sessionId: session.id });
    expect(events.items.map((event) => [event.type, event.payload])).toEqual([
      ["status", { from: "pending", to: "provisioning" }],
      ["status", { from: "provisioning", to: "ready" }],
    ]);
    const result = await exec(session.id, "echo hello; echo oops >&2; exit 3");
    expect(result).toMatchObject({ exitCode: 3, stdout: "hello\n", stderr: "oops\n", timedOut: false });
  });

  it("isolates a session from other sessions' workspaces, host processes and the platform's environment", async () => {
    const agent = await api.agents.create.mutate({ name: "isolation", model: "demo" });
    const [a, b] = [await readySession(agent.id), await readySession(agent.id)];
    await exec(a.id, "echo private-to-a > note.txt");
    const workspaceA = path.join(berth.config.dataDir, "workspaces", a.id);
    expect(workspaceFile(berth.config.dataDir, a.id, "note.txt")).toBe("private-to-a\n");

    const seen = await exec(b.id, `cat ${workspaceA}/note.txt; ls ${berth.config.dataDir}; ls /workspace/..; cat /workspace/../*/note.txt`);
    expect(seen.stdout).not.toContain("private-to-a");
    expect(seen.stderr).toContain("No such file or directory");

    const processes = await exec(b.id, "ls /proc | grep -E '^[0-9]+$' | wc -l; cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '");
    const [count, ...commandLines] = processes.stdout.trim().split("\n");
    expect(Number(count)).toBeLessThan(10);
    expect(commandLines.join(" ")).not.toMatch(/postgres|vitest/);
    expect(await exec(b.id, `kill -0 ${process.pid} && echo visible || echo hidden`)).toMatchObject({ stdout: "hidden\n" });

    const env = await exec(b.id, "env");
    const names = env.stdout.trim().split("\n").map((line) => line.split("=")[0]);
    expect(names).not.toContain("DATABASE_URL");
    // Only the exec's own id (what it leaves behind is found by it) and the model relay's address and
    // the sandbox's own gateway token, nothing of the platform's.
    expect(names.filter((name) => name!.startsWith("BERTH_")).sort()).toEqual(["BERTH_EXEC_ID", "BERTH_MODEL_API_KEY", "BERTH_MODEL_BASE_URL"]);
    expect(env.stdout).not.toContain(berth.databaseUrl);
    expect(env.stdout).not.toContain(KEY);

    const identity = await exec(b.id, "id -u; touch /usr/evil 2>&1; echo $?; touch /tmp/ok && echo tmp-writable");
    expect(identity.stdout).toMatch(/^1000\n/);
    expect(identity.stdout).toContain("tmp-writable");
    expect(identity.stdout).toMatch(/Read-only file system|Permission denied/);
  });

  it("injects CONTAINER_ENV_X as X, with team over platform and agent over team", async () => {
    const agent = await api.agents.create.mutate({ name: "secrets", model: "demo" });
    await api.secrets.set.mutate({ name: "SHARED", value: "team" });
    await api.secrets.set.mutate({ name: "AGENT_ONLY", value: "mine", agentId: agent.id });
    const session = await readySession(agent.id);
    const result = await exec(session.id, 'echo $SAMPLE_SECRET; echo $SHARED; echo $AGENT_ONLY');
    expect(result.stdout).toBe("s3\nteam\nmine\n");
    await api.secrets.set.mutate({ name: "SHARED", value: "agent", agentId: agent.id });
    // A changed secret reaches the next sandbox generation.
    await api.sessions.restart.mutate({ sessionId: session.id });
    await waitFor("restart", async () => {
      const current = await api.sessions.get.query({ sessionId: session.id });
      return current.status === "ready" && current.sandbox!.generation === 2 ? true : undefined;
    }, 30_000);
    expect((await exec(session.id, "echo $SHARED")).stdout).toBe("agent\n");
  });

  it("rotates a secret: the running generation keeps its env, the next generation gets the new value", async () => {
    const agent = await api.agents.create.mutate({ name: "rotation", model: "demo" });
    await api.secrets.set.mutate({ name: "ROTATED", value: "before", agentId: agent.id });
    const session = await readySession(agent.id);
    await api.secrets.set.mutate({ name: "ROTATED", value: "after", agentId: agent.id });
    expect((await exec(session.id, "echo $ROTATED")).stdout).toBe("before\n");
    await api.sessions.restart.mutate({ sessionId: session.id });
    await waitFor("generation 2 ready", async () => {
      const current = await api.sessions.get.query({ sessionId: session.id });
      return current.status === "ready" && current.sandbox!.generation === 2 ? true : undefined;
    }, 30_000);
    expect((await exec(session.id, "echo $ROTATED")).stdout).toBe("after\n");
  });

  it("never shares the host's network: a host loopback service is out of reach whatever the agent's egress", async () => {
    const probe = `(exec 3<>/dev/tcp/127.0.0.1/${listenerPort} && head -1 <&3) 2>&1 || echo unreachable`;
    const closed = await readySession((await api.agents.create.mutate({ name: "offline", model: "demo", network: "none" })).id);
    expect((await exec(closed.id, probe)).stdout).toMatch(/unreachable/);
    expect((await exec(closed.id, probe)).stdout).not.toContain("hello from the host");
    // Open egress goes through the gateway, which refuses loopback: neither directly nor through the proxy.
    const open = await readySession((await api.agents.create.mutate({ name: "online", model: "demo", network: "egress" })).id);
    expect((await exec(open.id, probe)).stdout).toMatch(/unreachable/);
    const proxied = await exec(open.id, `curl -sS --noproxy '' -w ' %{http_code}' http://127.0.0.1:${listenerPort}/ 2>&1`);
    expect(proxied.stdout).toMatch(/loopback.* 403$/s);
    expect(proxied.stdout).not.toContain("hello from the host");
  });

  it("runs programs that reserve much more address space than they use (WebAssembly memories, as Node's fetch makes)", async () => {
    const session = await readySession((await api.agents.create.mutate({ name: "wasm", model: "demo" })).id);
    // V8 reserves about 10 GiB of address space for each WebAssembly memory; three are more than
    // any address-space limit near the sandbox's memory size allows.
    const program = "const memories = [1, 2, 3].map(() => new WebAssembly.Memory({ initial: 1 })); console.log('memories', memories.length)";
    const result = await exec(session.id, `${realpathSync(process.execPath)} -e "${program}" 2>&1`);
    expect(result).toMatchObject({ exitCode: 0, stdout: "memories 3\n" });
  });

  it("refuses file paths that leave the workspace, and round-trips files inside it", async () => {
    const session = await readySession((await api.agents.create.mutate({ name: "files", model: "demo" })).id);
    await api.sessions.writeFile.mutate({ sessionId: session.id, path: "src/app.txt", content: "hi" });
    expect(await api.sessions.readFile.query({ sessionId: session.id, path: "src/app.txt" })).toMatchObject({ content: "hi", encoding: "utf8" });
    expect((await api.sessions.listFiles.query({ sessionId: session.id, path: "src" })).map((entry) => entry.name)).toEqual(["app.txt"]);
    // File contents go to the sandbox, not to Postgres: NUL bytes in them are written as they are.
    await api.sessions.writeFile.mutate({ sessionId: session.id, path: "src/nul.txt", content: "a\u0000b" });
    expect((await exec(session.id, "od -An -c src/nul.txt")).stdout.replace(/\s+/g, " ").trim()).toBe("a \\0 b");
    await exec(session.id, "ln -s /etc etc-link");
    for (const bad of ["../x", "/etc/passwd", "src/../../x", "etc-link/passwd"]) {
      const error = await api.sessions.readFile.query({ sessionId: session.id, path: bad }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TRPCClientError);
      expect((error as TRPCClientError<never>).data).toMatchObject({ code: "BAD_REQUEST" });
    }
  });

  it("notices a jail killed from outside and reconnects the session to a new generation with its workspace", async () => {
    const session = await readySession((await api.agents.create.mutate({ name: "killed", model: "demo" })).id);
    await exec(session.id, "echo survives > kept.txt");
    const pid = session.sandbox!.hostPid!;
    process.kill(pid, "SIGKILL");
    await waitFor("the sandbox row to be marked lost", async () => {
      const [row] = await sql<{ status: string }[]>`select status from sandboxes where session_id = ${session.id} and generation = 1`;
      return row?.status === "lost" ? true : undefined;
    });
    await waitFor("the session to be ready on generation 2", async () => {
      const current = await api.sessions.get.query({ sessionId: session.id });
      return current.status === "ready" && current.sandbox!.generation === 2 ? true : undefined;
    }, 30_000);
    const statuses = (await api.sessions.events.query({ sessionId: session.id })).items.filter((e) => e.type === "status").map((e) => (e.payload as { to: string }).to);
    expect(statuses).toEqual(["provisioning", "ready", "reconnecting", "provisioning", "ready"]);
    expect((await exec(session.id, "cat kept.txt")).stdout).toBe("survives\n");
  });

  it("kills a process left in a stopped jail's cgroups (one that escaped bwrap's die-with-parent chain)", async (context) => {
    const session = await readySession((await api.agents.create.mutate({ name: "strays", model: "demo" })).id);
    // The jail's own groups, from its process (cgroup v1 `N:controller:/berth/<name>`, v2 `0::/berth/<name>`).
    const groups = readFileSync(`/proc/${session.sandbox!.hostPid!}/cgroup`, "utf8")
      .split("\n")
      .map((line) => /^\d+:([^:]*):(\/berth\/.+)$/.exec(line))
      .filter((match) => match !== null)
      .map(([, controllers, group]) => (controllers ? `/sys/fs/cgroup/${controllers.replace(/^name=/, "")}${group}` : `/sys/fs/cgroup${group}`));
    if (groups.length === 0) context.skip("no cgroups on this machine");
    const stray = spawn("sleep", ["60"], { stdio: "ignore" });
    const strayEnded = new Promise((resolve) => stray.once("exit", (_code, signal) => resolve(signal)));
    for (const group of groups) writeFileSync(path.join(group, "cgroup.procs"), String(stray.pid));

    await api.sessions.terminate.mutate({ sessionId: session.id });
    expect(await Promise.race([strayEnded, new Promise((resolve) => setTimeout(() => resolve("still running after 10 s"), 10_000))])).toBe("SIGKILL");
    expect(berth.logs()).toContain("killed processes left behind by a stopped sandbox");
  });

  it("suspends an idle session (sandbox stopped, workspace kept) and resumes it on the next use", async () => {
    const session = await readySession((await api.agents.create.mutate({ name: "idle", model: "demo", idleTimeoutSeconds: 30 })).id);
    await exec(session.id, "echo still-here > idle.txt");
    const pid = session.sandbox!.hostPid!;
    await sql`update sessions set last_activity_at = now() - interval '1 hour' where id = ${session.id}`;
    expect(await berth.services.sandboxes.suspendIdle()).toBeGreaterThanOrEqual(1);
    expect((await api.sessions.get.query({ sessionId: session.id })).status).toBe("suspended");
    await waitFor("the jail to exit", () => (isProcessAlive(pid) ? undefined : true));

    expect((await exec(session.id, "cat idle.txt")).stdout).toBe("still-here\n");
    const resumed = await api.sessions.get.query({ sessionId: session.id });
    expect(resumed).toMatchObject({ status: "ready", sandbox: { generation: 2 } });
  });

  it("does not suspend a session while a command runs in it", async () => {
    const session = await readySession((await api.agents.create.mutate({ name: "busy", model: "demo", idleTimeoutSeconds: 30 })).id);
    const running = exec(session.id, "touch busy.txt; sleep 3; echo done");
    // Only once the command has started is it sure to count as running (it first waits for the sandbox).
    await waitFor("the command to start", () => (workspaceFile(berth.config.dataDir, session.id, "busy.txt") === null ? undefined : true), 20_000);
    await sql`update sessions set last_activity_at = now() - interval '1 hour' where id = ${session.id}`;
    await berth.services.sandboxes.suspendIdle();
    expect((await running).stdout).toBe("done\n");
    // Still the same sandbox: not suspended and then resumed by the command.
    expect(await api.sessions.get.query({ sessionId: session.id })).toMatchObject({ status: "ready", sandbox: { generation: session.sandbox!.generation } });
  });

  it("claims a pre-started jail from the warm pool and binds the session's env and workspace to it", async () => {
    await waitFor("a warm jail", async () => ((await berth.services.sandboxes.backendName) === "local" ? true : undefined));
    const agent = await api.agents.create.mutate({ name: "warm", model: "demo" });
    await api.secrets.set.mutate({ name: "WARM_SECRET", value: "bound-at-claim", agentId: agent.id });
    let session;
    // The pool refills in the background after every claim; give it a moment.
    for (let attempt = 0; attempt < 20; attempt++) {
      session = await readySession(agent.id);
      if (session.sandbox!.fromWarmPool) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    expect(session!.sandbox!.fromWarmPool).toBe(true);
    expect((await exec(session!.id, "echo $WARM_SECRET $SAMPLE_SECRET; pwd; touch made-in-warm")).stdout).toBe("bound-at-claim s3\n/workspace\n");
    expect(workspaceFile(berth.config.dataDir, session!.id, "made-in-warm")).toBe("");
  });

  it("reconciliation stops jails no live session owns, reconnects sessions whose sandbox vanished, deletes terminated sessions' workspaces", async () => {
    const agent = await api.agents.create.mutate({ name: "reconcile", model: "demo" });
    const orphaned = await readySession(agent.id);
    const vanished = await readySession(agent.id);
    const workspaces = path.join(berth.config.dataDir, "workspaces");
    // Not a session's (no row, or not a session id): left alone, whoever put it there.
    const unknown = path.join(workspaces, randomUUID());
    const notASession = path.join(workspaces, "notes");
    mkdirSync(unknown);
    mkdirSync(notASession);
    // A session made final behind the platform's back leaves its jail without an owner.
    await sql`update sessions set status = 'terminated' where id = ${orphaned.id}`;
    // A sandbox row whose jail the backend does not know: what a restart after a crash looks like.
    const [realName] = await sql<{ name: string }[]>`select name from sandboxes where session_id = ${vanished.id} and generation = 1`;
    await sql`update sandboxes set name = ${realName!.name + "-gone"} where session_id = ${vanished.id} and generation = 1`;

    await sql`select graphile_worker.add_job('sandbox:reconcile', '{}'::json)`;
    await waitFor("the orphaned jail to stop", () => (isProcessAlive(orphaned.sandbox!.hostPid!) ? undefined : true));
    await waitFor("the session with a vanished sandbox to be ready on generation 2", async () => {
      const current = await api.sessions.get.query({ sessionId: vanished.id });
      return current.status === "ready" && current.sandbox!.generation === 2 ? true : undefined;
    }, 30_000);
    // Its real first-generation jail had no row left: stopped as an orphan too.
    await waitFor("the renamed jail to stop", () => (isProcessAlive(vanished.sandbox!.hostPid!) ? undefined : true));
    const [orphanRow] = await sql<{ status: string; end_reason: string }[]>`select status, end_reason from sandboxes where session_id = ${orphaned.id}`;
    expect(orphanRow).toEqual({ status: "stopped", end_reason: "orphan: no live session owns it" });
    const [vanishedRow] = await sql<{ status: string; end_reason: string }[]>`select status, end_reason from sandboxes where session_id = ${vanished.id} and generation = 1`;
    expect(vanishedRow).toEqual({ status: "lost", end_reason: "sandbox vanished" });
    await waitFor("the terminated session's workspace to be deleted", () => (workspaceExists(berth.config.dataDir, orphaned.id) ? undefined : true));
    expect(workspaceExists(berth.config.dataDir, vanished.id)).toBe(true);
    expect(existsSync(unknown)).toBe(true);
    expect(existsSync(notASession)).toBe(true);
  });

  it("reconciliation treats a daemon that stopped answering as lost and reconnects the session", async () => {
    const session = await readySession((await api.agents.create.mutate({ name: "hung", model: "demo" })).id);
    await exec(session.id, "echo still-mine > hung.txt");
    // Freeze the daemon inside the jail: its process lives, it answers nothing.
    const daemonPid = descendants(session.sandbox!.hostPid!).find((pid) => {
      const [program, script] = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      return !program!.endsWith("bwrap") && script === "/opt/berth/sandboxd.js";
    });
    expect(daemonPid).toBeDefined();
    process.kill(daemonPid!, "SIGSTOP");
    await sql`select graphile_worker.add_job('sandbox:reconcile', '{}'::json)`;
    await waitFor("the session to be ready on generation 2", async () => {
      const current = await api.sessions.get.query({ sessionId: session.id });
      return current.status === "ready" && current.sandbox!.generation === 2 ? true : undefined;
    }, 45_000);
    const [old] = await sql<{ status: string; end_reason: string }[]>`select status, end_reason from sandboxes where session_id = ${session.id} and generation = 1`;
    expect(old).toEqual({ status: "lost", end_reason: "the sandbox daemon did not answer its health check" });
    await waitFor("the frozen jail to be gone", () => (isProcessAlive(session.sandbox!.hostPid!) ? undefined : true));
    expect((await exec(session.id, "cat hung.txt")).stdout).toBe("still-mine\n");
  });

  it("terminates: the jail is stopped, the workspace deleted, and the session is final", async () => {
    const session = await readySession((await api.agents.create.mutate({ name: "terminate", model: "demo" })).id);
    await exec(session.id, "mkdir -p deep/er && echo data > deep/er/file.txt");
    expect(workspaceFile(berth.config.dataDir, session.id, "deep/er/file.txt")).toBe("data\n");
    const terminated = await api.sessions.terminate.mutate({ sessionId: session.id });
    expect(terminated.status).toBe("terminated");
    expect(terminated.sandbox).toMatchObject({ status: "stopped", endReason: "terminated" });
    expect(isProcessAlive(session.sandbox!.hostPid!)).toBe(false);
    expect(workspaceExists(berth.config.dataDir, session.id)).toBe(false);
    const error = await exec(session.id, "true").catch((e: unknown) => e);
    expect((error as TRPCClientError<never>).data).toMatchObject({ code: "CONFLICT" });
  });
});

describe("workspace retention after termination (BERTH_WORKSPACE_RETENTION_HOURS)", () => {
  let berth: TestBerth;
  let sql: postgres.Sql;

  beforeAll(async () => {
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: KEY, BERTH_WORKSPACE_RETENTION_HOURS: "24" } });
    sql = postgres(berth.databaseUrl, { max: 2, onnotice: () => {} });
  });
  afterAll(async () => {
    await sql?.end();
    await berth?.close();
  });

  it("keeps a terminated session's workspace for the retention period, then reconciliation deletes it", async () => {
    const api = berth.client(KEY);
    const agent = await api.agents.create.mutate({ name: "retained", model: "demo" });
    const session = await api.sessions.create.mutate({ agentId: agent.id });
    await waitFor("session ready", async () => ((await api.sessions.get.query({ sessionId: session.id })).status === "ready" ? true : undefined), 30_000);
    await api.sessions.exec.mutate({ sessionId: session.id, command: "echo kept > notes.txt", timeoutMs: 20_000 });
    const dataDir = berth.config.dataDir;

    await api.sessions.terminate.mutate({ sessionId: session.id });
    expect(workspaceFile(dataDir, session.id, "notes.txt")).toBe("kept\n");
    await berth.services.sandboxes.reconcile();
    expect(workspaceExists(dataDir, session.id)).toBe(true);

    // 23 hours after termination: still inside the period.
    await sql`update sessions set updated_at = now() - interval '23 hours' where id = ${session.id}`;
    await berth.services.sandboxes.reconcile();
    expect(workspaceExists(dataDir, session.id)).toBe(true);

    await sql`update sessions set updated_at = now() - interval '25 hours' where id = ${session.id}`;
    await berth.services.sandboxes.reconcile();
    expect(workspaceExists(dataDir, session.id)).toBe(false);
  });
});
