import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createDaemonClient } from "../../server/sandbox/daemon-client";
import { startTestBerth, type TestBerth } from "../helpers/berth";
import { FakeKubeApi } from "../helpers/fake-kube-api";
import { freePort, waitFor } from "../helpers/processes";

const KEY = "kubernetes_pool_key_0123456789abcdefg";
const NAMESPACE = "berth-pool-e2e";
const SECRET_KEY = "7a".repeat(32);
const SECRET_VALUE = "pool-secret-value-1337";

type Obj = NonNullable<ReturnType<FakeKubeApi["get"]>>;

/**
 * An agent with `warmPoolSize` on the kubernetes backend against the stand-in API server: its
 * SandboxWarmPool keeps started, unbound daemons; a session's first sandbox is a SandboxClaim that
 * adopts one of them, and its env arrives through the daemon's bind, never through a shared object.
 */
describe("warm pools on the kubernetes backend (stand-in API server)", () => {
  let fake: FakeKubeApi;
  let berth: TestBerth;
  let api: ReturnType<TestBerth["client"]>;
  let sql: postgres.Sql;
  let kubeDir: string;
  const previousKubeconfig = process.env.KUBECONFIG;

  beforeAll(async () => {
    fake = await new FakeKubeApi().start();
    kubeDir = mkdtempSync(path.join(os.tmpdir(), "berth-kubeconfig-"));
    writeFileSync(path.join(kubeDir, "config"), fake.kubeconfig(NAMESPACE), { mode: 0o600 });
    process.env.KUBECONFIG = path.join(kubeDir, "config");
    const egressPort = await freePort();
    berth = await startTestBerth({
      env: {
        BERTH_ADMIN_API_KEY: KEY,
        BERTH_SECRET_KEY: SECRET_KEY,
        BERTH_SANDBOX_BACKEND: "kubernetes",
        BERTH_SANDBOX_IMAGE: "berth:e2e",
        BERTH_K8S_NAMESPACE: NAMESPACE,
        BERTH_SANDBOX_DAEMON_PORT: String(await freePort()),
        BERTH_EGRESS_PORT: String(egressPort),
        BERTH_K8S_EGRESS_ADDRESS: `127.0.0.1:${egressPort}`,
        CONTAINER_ENV_PLATFORM_WIDE: "from-the-platform",
      },
    });
    api = berth.client(KEY);
    sql = postgres(berth.databaseUrl, { max: 2, onnotice: () => {} });
  });

  afterAll(async () => {
    await sql?.end();
    await berth?.close();
    await fake?.stop();
    if (previousKubeconfig === undefined) delete process.env.KUBECONFIG;
    else process.env.KUBECONFIG = previousKubeconfig;
    if (kubeDir) rmSync(kubeDir, { recursive: true, force: true });
  });

  const poolOf = (agentId: string) => fake.list("sandboxwarmpools", NAMESPACE).find((pool) => pool.metadata.labels?.["berth.dev/agent"] === agentId);
  const isReady = (sandbox: Obj) => ((sandbox.status as { conditions?: Array<{ type: string; status: string }> } | undefined)?.conditions ?? []).some((c) => c.type === "Ready" && c.status === "True");
  /** The pool's own Sandboxes (not yet claimed), ready ones only. */
  const readyMembers = (pool: Obj) => fake.list("sandboxes", NAMESPACE).filter((s) => s.metadata.ownerReferences?.some((ref) => ref.uid === pool.metadata.uid) && isReady(s));
  const exec = (sessionId: string, command: string) => api.sessions.exec.mutate({ sessionId, command, timeoutMs: 20_000 });

  async function readySession(agentId: string) {
    const session = await api.sessions.create.mutate({ agentId });
    await waitFor(`session ${session.id} ready`, async () => ((await api.sessions.get.query({ sessionId: session.id })).status === "ready" ? true : undefined), 30_000);
    return api.sessions.get.query({ sessionId: session.id });
  }

  it("a session is served by a claim adopted from the agent's pool: env bound after start, pool token rotated away, pool refilled, workspace and history survive a lost pod, terminate removes claim and sandbox", async () => {
    const agent = await api.agents.create.mutate({ name: "pooled", model: "demo", warmPoolSize: 2 });
    expect(agent.warmPoolSize).toBe(2);
    await api.secrets.set.mutate({ name: "AGENT_SECRET", value: SECRET_VALUE, agentId: agent.id });

    // Creating the agent syncs the pools (reconciliation job): two ready, unbound sandboxes.
    await waitFor("the warm pool", () => poolOf(agent.id), 30_000);
    const pool = poolOf(agent.id)!;
    expect(pool.spec).toMatchObject({ replicas: 2, sandboxTemplateRef: { name: pool.metadata.name } });
    await waitFor("two ready pooled sandboxes", () => (readyMembers(pool).length === 2 ? true : undefined), 30_000);
    const before = readyMembers(pool).map((s) => s.metadata.name!);

    const session = await readySession(agent.id);
    expect(session.sandbox).toMatchObject({ generation: 1, status: "ready", backend: "kubernetes", fromWarmPool: true });
    const claimedName = session.sandbox!.name;
    expect(before).toContain(claimedName);
    const [row] = await sql<{ name: string; from_warm_pool: boolean }[]>`select name, from_warm_pool from sandboxes where session_id = ${session.id}`;
    expect(row).toEqual({ name: claimedName, from_warm_pool: true });
    const claims = fake.list("sandboxclaims", NAMESPACE).filter((c) => c.metadata.labels?.["berth.dev/session"] === session.id);
    expect(claims).toHaveLength(1);
    expect(claims[0]!.spec).not.toHaveProperty("env");
    expect(claims[0]!.spec).not.toHaveProperty("volumeClaimTemplates");
    expect(claims[0]!.status).toMatchObject({ sandbox: { name: claimedName } });

    // The env was bound after the pod started: visible to commands, absent from every shared object.
    const first = await exec(session.id, "echo $AGENT_SECRET $PLATFORM_WIDE; echo survives > kept.txt");
    expect(first).toMatchObject({ exitCode: 0, stdout: `${SECRET_VALUE} from-the-platform\n` });
    const poolTemplate = fake.get("sandboxtemplates", NAMESPACE, pool.metadata.name!)!;
    const poolSecret = fake.get("secrets", NAMESPACE, `${pool.metadata.name}-token`)!;
    for (const object of [poolTemplate, poolSecret, pool, claims[0]!, fake.get("sandboxes", NAMESPACE, claimedName)!]) {
      expect(JSON.stringify(object)).not.toContain(SECRET_VALUE);
      expect(JSON.stringify(object)).not.toContain(Buffer.from(SECRET_VALUE).toString("base64"));
    }
    expect(fake.pod(claimedName)!.env.AGENT_SECRET).toBeUndefined(); // not in the pod's environment either

    // The pool's token opened the daemon for the bind; it no longer does.
    const poolToken = Buffer.from((poolSecret.data as Record<string, string>).BERTH_DAEMON_TOKEN!, "base64").toString("utf8");
    const daemonPort = fake.pod(claimedName)!.env.BERTH_DAEMON_LISTEN?.split(":").at(-1);
    const daemonAddress = `http://${fake.pod(claimedName)!.ip}:${daemonPort}`;
    const claimed = createDaemonClient({ address: daemonAddress, token: poolToken });
    await expect(claimed.health()).rejects.toMatchObject({ status: 401 });
    await expect(claimed.bind({ sessionId: "intruder", env: { X: "y" }, token: "z".repeat(40) })).rejects.toMatchObject({ status: 401 });
    // ... while the sandbox's own token (derived from its name, as the platform does) does.
    const ownToken = createHmac("sha256", Buffer.from(SECRET_KEY, "hex")).update(`sandbox-daemon:${claimedName}`).digest("base64url");
    expect(await createDaemonClient({ address: daemonAddress, token: ownToken }).health()).toMatchObject({ ok: true, bound: true });

    // The gateway token too: the pod started with the pool's; the bind gave it the one of its
    // Sandbox's name, the session's sandboxes row: the gateway finds the session by it, records
    // the refused request in its log (the agent's default egress policy lets nothing out).
    const poolGatewayToken = Buffer.from((poolSecret.data as Record<string, string>).BERTH_DAEMON_GATEWAY_TOKEN!, "base64").toString("utf8");
    expect(fake.pod(claimedName)!.env.BERTH_DAEMON_GATEWAY_TOKEN).toBe(poolGatewayToken);
    expect(poolGatewayToken.startsWith(`${pool.metadata.name}~`)).toBe(true);
    const gatewayToken = (await exec(session.id, "echo $BERTH_MODEL_API_KEY")).stdout.trim();
    expect(gatewayToken.startsWith(`${claimedName}~`)).toBe(true);
    const refused = await exec(session.id, "curl -sS --max-time 10 -o /dev/null -w '%{http_code}' http://nowhere.example.test/");
    expect(refused.stdout).toBe("403");
    await waitFor("the denied egress event in the session's log", async () => {
      const [row] = await sql<{ n: number }[]>`select count(*)::int as n from session_events where session_id = ${session.id} and type = 'egress' and payload->>'decision' = 'denied' and payload->>'host' = 'nowhere.example.test'`;
      return row!.n > 0 ? true : undefined;
    }, 15_000);

    // The pool refills to two ready, unclaimed sandboxes.
    await waitFor("the pool refilled", () => (readyMembers(pool).length === 2 && !readyMembers(pool).some((s) => s.metadata.name === claimedName) ? true : undefined), 30_000);

    // A turn: history to keep.
    await api.sessions.send.mutate({ sessionId: session.id, text: "run: cat kept.txt" });
    await waitFor("the demo answer", async () => {
      const events = (await api.sessions.events.query({ sessionId: session.id, limit: 200 })).items;
      return events.some((e) => e.type === "assistant_message") ? true : undefined;
    }, 30_000);

    // The pod goes away: generation 2 is a plain Sandbox on the same workspace PVC.
    await fake.deletePod(claimedName);
    await waitFor("generation 2 ready", async () => {
      const current = await api.sessions.get.query({ sessionId: session.id });
      return current.status === "ready" && current.sandbox!.generation === 2 ? true : undefined;
    }, 30_000);
    const second = (await api.sessions.get.query({ sessionId: session.id })).sandbox!;
    expect(second.fromWarmPool).toBe(false);
    await waitFor("the lost claim and Sandbox deleted", () => (fake.get("sandboxes", NAMESPACE, claimedName) || claims.some((c) => fake.get("sandboxclaims", NAMESPACE, c.metadata.name!)) ? undefined : true));
    expect(fake.get("sandboxes", NAMESPACE, second.name)!.metadata.annotations).toMatchObject({ "berth.dev/workspace": `workspace-${claimedName}` });
    expect((await exec(session.id, "cat kept.txt; echo $AGENT_SECRET")).stdout).toBe(`survives\n${SECRET_VALUE}\n`);
    const events = (await api.sessions.events.query({ sessionId: session.id, limit: 200 })).items;
    expect(events.filter((e) => e.type === "user_message")).toHaveLength(1);
    expect(events.find((e) => e.type === "tool_result")).toBeDefined();

    // Terminate a pooled session: its claim and Sandbox are deleted.
    const other = await readySession(agent.id);
    expect(other.sandbox!.fromWarmPool).toBe(true);
    const otherClaim = fake.list("sandboxclaims", NAMESPACE).find((c) => c.metadata.labels?.["berth.dev/session"] === other.id)!;
    expect((await api.sessions.terminate.mutate({ sessionId: other.id })).status).toBe("terminated");
    expect(fake.get("sandboxclaims", NAMESPACE, otherClaim.metadata.name!)).toBeUndefined();
    expect(fake.get("sandboxes", NAMESPACE, other.sandbox!.name)).toBeUndefined();
    expect(fake.list("persistentvolumeclaims", NAMESPACE).filter((c) => c.metadata.labels?.["berth.dev/session"] === other.id)).toEqual([]);

    // Reconciliation leaves the live pooled session alone and keeps the pool.
    await berth.services.sandboxes.reconcile();
    expect((await exec(session.id, "cat kept.txt")).stdout).toBe("survives\n");
    expect(poolOf(agent.id)).toBeDefined();

    // Every object the platform sent passed the CRD schemas; the stand-in controller had no errors.
    expect(fake.rejected).toEqual([]);
    expect(fake.controllerErrors).toEqual([]);
    expect(fake.accepted.filter((a) => a.kind === "SandboxClaim").length).toBeGreaterThanOrEqual(2);
    expect(berth.logs()).not.toContain(SECRET_VALUE);
  });

  it("warm pool size 0 (update) removes the pool; sessions then start cold", async () => {
    const agent = await api.agents.create.mutate({ name: "pool-then-none", model: "demo", warmPoolSize: 1 });
    await waitFor("the warm pool", () => poolOf(agent.id), 30_000);
    const updated = await api.agents.update.mutate({ agentId: agent.id, warmPoolSize: 0 });
    expect(updated).toMatchObject({ version: 2, warmPoolSize: 0 });
    await waitFor("the pool deleted", () => (poolOf(agent.id) ? undefined : true), 30_000);
    const session = await readySession(agent.id);
    expect(session.sandbox!.fromWarmPool).toBe(false);
    expect(fake.list("sandboxclaims", NAMESPACE).some((c) => c.metadata.labels?.["berth.dev/session"] === session.id)).toBe(false);
    const versions = await api.agents.versions.query({ agentId: agent.id });
    expect(versions.items.map((v) => v.warmPoolSize)).toEqual([0, 1]);
  });
});
