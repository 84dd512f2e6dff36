import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { TRPCClientError } from "@trpc/client";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ServerBuild } from "@remix-run/node";
import { createBerthClient } from "../../server/client";
import { loadConfig } from "../../server/config";
import { createLogger } from "../../server/logger";
import { startBerth } from "../../server/main";
import { ROOT, startTestBerth, type TestBerth } from "../helpers/berth";
import { FakeKubeApi } from "../helpers/fake-kube-api";
import { freePort, waitFor } from "../helpers/processes";

const KEY = "kubernetes_test_key_0123456789abcdefg";
const NAMESPACE = "berth-e2e";
/** Shared by every replica: it encrypts secrets and derives the daemons' tokens. */
const SECRET_KEY = "5e".repeat(32);

/**
 * The whole platform with BERTH_SANDBOX_BACKEND=kubernetes against the stand-in API server: every
 * sandbox is an agent-sandbox Sandbox whose "pod" is a real daemon, reached through client-node.
 */
describe("sessions on the kubernetes backend (stand-in API server)", () => {
  let fake: FakeKubeApi;
  let berth: TestBerth;
  let api: ReturnType<TestBerth["client"]>;
  let sql: postgres.Sql;
  let kubeDir: string;
  let kubeEnv: Record<string, string>;
  /** A server "outside" (on loopback, reached through BERTH_EGRESS_RESOLVE): what the gateway let through. */
  let outside: http.Server;
  const outsideSeen: string[] = [];
  const previousKubeconfig = process.env.KUBECONFIG;

  beforeAll(async () => {
    fake = await new FakeKubeApi().start();
    kubeDir = mkdtempSync(path.join(os.tmpdir(), "berth-kubeconfig-"));
    writeFileSync(path.join(kubeDir, "config"), fake.kubeconfig(NAMESPACE), { mode: 0o600 });
    process.env.KUBECONFIG = path.join(kubeDir, "config");
    outside = http.createServer((req, res) => {
      outsideSeen.push(`${req.method} ${req.headers.host}${req.url}`);
      res.end(`hello from ${req.headers.host}\n`);
    });
    await new Promise<void>((resolve) => outside.listen(0, "127.0.0.1", resolve));
    const egressPort = await freePort();
    kubeEnv = {
      BERTH_ADMIN_API_KEY: KEY,
      BERTH_SECRET_KEY: SECRET_KEY,
      BERTH_SANDBOX_BACKEND: "kubernetes",
      BERTH_SANDBOX_IMAGE: "berth:e2e",
      BERTH_K8S_NAMESPACE: NAMESPACE,
      BERTH_SANDBOX_DAEMON_PORT: String(await freePort()),
      // The Berth pods' gateway port, and where the "pods" (daemons on 127.0.0.N) dial it.
      BERTH_EGRESS_PORT: String(egressPort),
      BERTH_K8S_EGRESS_ADDRESS: `127.0.0.1:${egressPort}`,
      // Test-only: these names are this server on loopback (the gateway refuses loopback otherwise).
      BERTH_EGRESS_RESOLVE: `api.example.test=127.0.0.1:${(outside.address() as AddressInfo).port}`,
      CONTAINER_ENV_PLATFORM_WIDE: "from-the-platform",
    };
    berth = await startTestBerth({ env: kubeEnv });
    api = berth.client(KEY);
    sql = postgres(berth.databaseUrl, { max: 2, onnotice: () => {} });
  });

  afterAll(async () => {
    await sql?.end();
    await berth?.close();
    await fake?.stop();
    outside?.close();
    if (previousKubeconfig === undefined) delete process.env.KUBECONFIG;
    else process.env.KUBECONFIG = previousKubeconfig;
    if (kubeDir) rmSync(kubeDir, { recursive: true, force: true });
  });

  async function readySession(agentId: string) {
    const session = await api.sessions.create.mutate({ agentId });
    await waitFor(`session ${session.id} ready`, async () => ((await api.sessions.get.query({ sessionId: session.id })).status === "ready" ? true : undefined), 30_000);
    return api.sessions.get.query({ sessionId: session.id });
  }

  const exec = (sessionId: string, command: string) => api.sessions.exec.mutate({ sessionId, command, timeoutMs: 20_000 });

  function statusPath(events: Array<{ type: string; payload: unknown }>) {
    return events.filter((e) => e.type === "status").map((e) => (e.payload as { to: string }).to);
  }

  it("create → ready → exec, pod deleted → reconnect with workspace and history, suspend → resume, terminate", async () => {
    const health = await api.system.health.query();
    expect(health.sandboxBackend).toBe("kubernetes");
    // The Kubernetes backend does not depend on this host's bubblewrap.
    expect(health.sandboxes).toEqual({ available: true });
    const agent = await api.agents.create.mutate({ name: "on-kubernetes", model: "demo", idleTimeoutSeconds: 30 });
    await api.secrets.set.mutate({ name: "AGENT_SECRET", value: "kube-secret-value-42", agentId: agent.id });
    const session = await readySession(agent.id);
    expect(session.sandbox).toMatchObject({ generation: 1, status: "ready", backend: "kubernetes", hostPid: null });
    const firstName = session.sandbox!.name;

    const sandbox = fake.get("sandboxes", NAMESPACE, firstName)!;
    expect(sandbox.metadata.labels).toMatchObject({ "berth.dev/session": session.id, "berth.dev/agent": agent.id });
    expect(JSON.stringify(sandbox)).not.toContain("kube-secret-value-42");
    for (const template of fake.list("sandboxtemplates", NAMESPACE)) expect(JSON.stringify(template)).not.toContain("kube-secret-value-42");

    const first = await exec(session.id, "echo $AGENT_SECRET $PLATFORM_WIDE; echo survives > kept.txt; pwd");
    expect(first).toMatchObject({ exitCode: 0, stdout: `kube-secret-value-42 from-the-platform\n${fake.pod(firstName)!.workspace}\n` });

    // A turn through the demo model: history to keep.
    await api.sessions.send.mutate({ sessionId: session.id, text: "run: cat kept.txt" });
    await waitFor("the demo answer", async () => {
      const events = (await api.sessions.events.query({ sessionId: session.id, limit: 200 })).items;
      return events.some((e) => e.type === "assistant_message") ? true : undefined;
    }, 30_000);

    // The pod goes away (node drain, eviction): the session reconnects to a new generation.
    await fake.deletePod(firstName);
    await waitFor("generation 2 ready", async () => {
      const current = await api.sessions.get.query({ sessionId: session.id });
      return current.status === "ready" && current.sandbox!.generation === 2 ? true : undefined;
    }, 30_000);
    const [lostRow] = await sql<{ status: string; end_reason: string }[]>`select status, end_reason from sandboxes where session_id = ${session.id} and generation = 1`;
    expect(lostRow!.status).toBe("lost");
    expect(lostRow!.end_reason).toMatch(/no longer ready/);
    await waitFor("the lost Sandbox deleted", () => (fake.get("sandboxes", NAMESPACE, firstName) ? undefined : true));
    expect((await exec(session.id, "cat kept.txt")).stdout).toBe("survives\n");
    const events = (await api.sessions.events.query({ sessionId: session.id, limit: 200 })).items;
    expect(events.filter((e) => e.type === "user_message")).toHaveLength(1);
    expect(events.find((e) => e.type === "tool_result")).toBeDefined();
    expect(statusPath(events)).toEqual(["provisioning", "ready", "running", "ready", "reconnecting", "provisioning", "ready"]);

    // Idle: suspended through operatingMode (pod gone, Sandbox and workspace claim kept), resumed on
    // the next use as generation 3 of the same Sandbox. Reconciliation leaves a suspended one alone.
    const secondName = (await api.sessions.get.query({ sessionId: session.id })).sandbox!.name;
    await sql`update sessions set last_activity_at = now() - interval '1 hour' where id = ${session.id}`;
    expect(await berth.services.sandboxes.suspendIdle()).toBeGreaterThanOrEqual(1);
    expect((await api.sessions.get.query({ sessionId: session.id })).status).toBe("suspended");
    await waitFor("the pod to stop", () => (fake.pod(secondName) ? undefined : true));
    expect(fake.get("sandboxes", NAMESPACE, secondName)!.spec!.operatingMode).toBe("Suspended");
    expect(fake.get("persistentvolumeclaims", NAMESPACE, `berth-ws-${session.id}`)).toBeDefined();
    expect(await berth.services.sandboxes.reconcile()).toEqual({ stopped: 0, lost: 0, workspacesDeleted: 0 });
    expect(fake.get("sandboxes", NAMESPACE, secondName)).toBeDefined();
    expect((await exec(session.id, "cat kept.txt")).stdout).toBe("survives\n");
    expect(await api.sessions.get.query({ sessionId: session.id })).toMatchObject({ status: "ready", sandbox: { generation: 3, name: secondName } });
    expect(fake.get("sandboxes", NAMESPACE, secondName)!.spec!.operatingMode).toBe("Running");

    // Terminate while suspended: the kept Sandbox is deleted too.
    const suspendedSession = await readySession(agent.id);
    await sql`update sessions set last_activity_at = now() - interval '1 hour' where id = ${suspendedSession.id}`;
    await berth.services.sandboxes.suspendIdle();
    await api.sessions.terminate.mutate({ sessionId: suspendedSession.id });
    expect(fake.get("sandboxes", NAMESPACE, suspendedSession.sandbox!.name)).toBeUndefined();
    expect(fake.get("persistentvolumeclaims", NAMESPACE, `berth-ws-${suspendedSession.id}`)).toBeUndefined();

    // Terminate: the Sandbox and its env Secret are deleted; the session is final.
    const thirdName = (await api.sessions.get.query({ sessionId: session.id })).sandbox!.name;
    const terminated = await api.sessions.terminate.mutate({ sessionId: session.id });
    expect(terminated.status).toBe("terminated");
    expect(fake.get("sandboxes", NAMESPACE, thirdName)).toBeUndefined();
    expect(fake.get("secrets", NAMESPACE, `${thirdName}-env`)).toBeUndefined();
    // Nothing can reach its files any more: the workspace claim goes too.
    expect(fake.get("persistentvolumeclaims", NAMESPACE, `berth-ws-${session.id}`)).toBeUndefined();
    const error = await exec(session.id, "true").catch((e: unknown) => e);
    expect((error as TRPCClientError<never>).data).toMatchObject({ code: "CONFLICT" });

    // Every object the platform sent passed the CRD schemas.
    expect(fake.rejected).toEqual([]);
    expect(fake.accepted.filter((a) => a.kind === "Sandbox").length).toBeGreaterThanOrEqual(3);
    expect(berth.logs()).not.toContain("kube-secret-value-42");
  });

  it("a daemon killed inside its pod: the session reconnects", async () => {
    const session = await readySession((await api.agents.create.mutate({ name: "killed-daemon", model: "demo" })).id);
    await exec(session.id, "echo again > kept.txt");
    fake.killDaemon(session.sandbox!.name);
    await waitFor("generation 2 ready", async () => {
      const current = await api.sessions.get.query({ sessionId: session.id });
      return current.status === "ready" && current.sandbox!.generation === 2 ? true : undefined;
    }, 30_000);
    expect((await exec(session.id, "cat kept.txt")).stdout).toBe("again\n");
  });

  it("two replicas share the sandboxes: either one reaches them, a lost pod reconnects once, a stopping replica leaves them running", async () => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-replica-"));
    // Its own gateway port (one host here); the pods keep dialing the first one's (BERTH_K8S_EGRESS_ADDRESS), as behind one Service.
    const config = loadConfig({ ...kubeEnv, BERTH_EGRESS_PORT: String(await freePort()), NODE_ENV: "test", PORT: "1", HOST: "127.0.0.1", DATABASE_URL: berth.databaseUrl, BERTH_DATA_DIR: dataDir, LOG_LEVEL: "warn", BERTH_WARM_POOL_SIZE: "0" });
    config.port = 0;
    const replica = await startBerth({
      config,
      logger: createLogger("silent"),
      remixBuild: (await import(path.join(ROOT, "build/server/index.js"))) as ServerBuild,
      clientAssetsDir: path.join(ROOT, "build/client"),
      daemonScript: path.join(ROOT, "build/sandboxd.js"),
    });
    try {
      const other = createBerthClient({ url: replica.url, apiKey: KEY });
      const session = await readySession((await api.agents.create.mutate({ name: "replicated", model: "demo" })).id);
      await exec(session.id, "echo from-replica-one > shared.txt");
      expect(await other.sessions.exec.mutate({ sessionId: session.id, command: "cat shared.txt" })).toMatchObject({ exitCode: 0, stdout: "from-replica-one\n" });

      // Both replicas watch; the database lets one of them handle the loss.
      await fake.deletePod(session.sandbox!.name);
      await waitFor("generation 2 ready", async () => {
        const current = await api.sessions.get.query({ sessionId: session.id });
        return current.status === "ready" && current.sandbox!.generation === 2 ? true : undefined;
      }, 30_000);
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      const generations = await sql<{ generation: number }[]>`select generation from sandboxes where session_id = ${session.id} order by generation`;
      expect(generations.map((g) => g.generation)).toEqual([1, 2]);
      expect((await other.sessions.exec.mutate({ sessionId: session.id, command: "cat shared.txt" })).stdout).toBe("from-replica-one\n");

      // A replica going away (rolling update) does not take sandboxes with it.
      const name = (await api.sessions.get.query({ sessionId: session.id })).sandbox!.name;
      await replica.stop();
      expect(fake.get("sandboxes", NAMESPACE, name)).toBeDefined();
      expect((await exec(session.id, "cat shared.txt")).stdout).toBe("from-replica-one\n");
    } finally {
      await replica.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it("a pod's way out is the egress gateway: an allowed host answers, another gets 403 and a denied egress event; a brokered secret is only a stub in the pod's env Secret", async () => {
    const agent = await api.agents.create.mutate({ name: "egress-on-kubernetes", model: "demo", egress: { mode: "allowlist", allow: [{ host: "api.example.test" }] } });
    const brokeredValue = "sk-live-brokered-value-on-kubernetes-9f8e7d";
    await api.secrets.set.mutate({ name: "UPSTREAM_TOKEN", value: brokeredValue, agentId: agent.id, brokered: { hosts: ["api.example.test"] } });
    const session = await readySession(agent.id);
    const name = session.sandbox!.name;

    // The pod: the gateway from its template, its own gateway token from its env Secret.
    const pod = fake.pod(name)!;
    expect(pod.env.BERTH_DAEMON_GATEWAY).toBe(`tcp:${kubeEnv.BERTH_K8S_EGRESS_ADDRESS}`);
    expect(pod.env.BERTH_DAEMON_CA_PEM).toContain("-----BEGIN CERTIFICATE-----");
    const envSecret = fake.get("secrets", NAMESPACE, `${name}-env`)!;
    const envData = Object.fromEntries(Object.entries(envSecret.data as Record<string, string>).map(([key, value]) => [key, Buffer.from(value, "base64").toString("utf8")]));
    expect(envData.BERTH_DAEMON_GATEWAY_TOKEN).toMatch(new RegExp(`^${name}~`));
    // The brokered secret: a stub in the Secret (and so in the pod), never its value, anywhere.
    expect(envData.UPSTREAM_TOKEN).toMatch(/^berth-stub-[0-9a-f]{40}$/);
    for (const object of [envSecret, fake.get("sandboxes", NAMESPACE, name)!, ...fake.list("sandboxtemplates", NAMESPACE)]) {
      expect(JSON.stringify(object)).not.toContain(brokeredValue);
      expect(JSON.stringify(object)).not.toContain(Buffer.from(brokeredValue).toString("base64"));
    }
    expect((await exec(session.id, "echo $UPSTREAM_TOKEN")).stdout.trim()).toBe(envData.UPSTREAM_TOKEN);

    // Allowed: through the daemon's forwarder and the gateway to the host.
    const allowed = await exec(session.id, "curl -sS --max-time 10 http://api.example.test/hello");
    expect(allowed).toMatchObject({ exitCode: 0, stdout: "hello from api.example.test\n" });
    expect(outsideSeen).toContain("GET api.example.test/hello");
    // Outside the policy: 403 from the gateway, nothing sent (the name is not even looked up).
    const refused = await exec(session.id, "curl -sS --max-time 10 -o /dev/stderr -w '%{http_code}' http://blocked.example.test/secret-path");
    expect(refused.stdout).toBe("403");
    expect(outsideSeen.some((request) => request.includes("blocked.example.test"))).toBe(false);

    // Both recorded in the session's log as egress events (written once a second).
    type Egress = { host: string; port: number; method?: string; decision: string; status?: number; reason?: string };
    const egressEvents = () => sql<{ payload: Egress }[]>`select payload from session_events where session_id = ${session.id} and type = 'egress' order by seq`;
    await waitFor("the denied egress event", async () => ((await egressEvents()).some((event) => event.payload.decision === "denied") ? true : undefined), 15_000);
    const events = (await egressEvents()).map((event) => event.payload);
    expect(events).toContainEqual(expect.objectContaining({ host: "blocked.example.test", port: 80, method: "GET", decision: "denied", status: 403 }));
    expect(events).toContainEqual(expect.objectContaining({ host: "api.example.test", port: 80, method: "GET", decision: "allowed", status: 200 }));
    expect(berth.logs()).not.toContain(brokeredValue);
  });

  it("reconciliation removes Sandboxes no live session owns, and terminated sessions' workspaces", async () => {
    const session = await readySession((await api.agents.create.mutate({ name: "orphan", model: "demo" })).id);
    await sql`update sessions set status = 'terminated' where id = ${session.id}`;
    await sql`select graphile_worker.add_job('sandbox:reconcile', '{}'::json)`;
    await waitFor("the orphaned Sandbox deleted", () => (fake.get("sandboxes", NAMESPACE, session.sandbox!.name) ? undefined : true), 30_000);
    await waitFor("its workspace claim deleted", () => (fake.get("persistentvolumeclaims", NAMESPACE, `berth-ws-${session.id}`) ? undefined : true), 30_000);
    const [row] = await sql<{ status: string; end_reason: string }[]>`select status, end_reason from sandboxes where session_id = ${session.id}`;
    expect(row).toEqual({ status: "stopped", end_reason: "orphan: no live session owns it" });
  });
});
