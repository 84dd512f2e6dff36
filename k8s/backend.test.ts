/**
 * The kubernetes backend against the stand-in API server (tests/helpers/fake-kube-api.ts), driven
 * only through @kubernetes/client-node: real HTTP, real watch streams, CRD schema validation, and a
 * real sandbox daemon per Sandbox.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { CoreV1Api, CustomObjectsApi, KubeConfig } from "@kubernetes/client-node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../server/logger";
import { SandboxUnavailableError, type SandboxLoss, type SandboxSpec } from "../server/sandbox/port";
import { FakeKubeApi } from "../tests/helpers/fake-kube-api";
import { freePort, waitFor } from "../tests/helpers/processes";
import { createDaemonClient } from "../server/sandbox/daemon-client";
import { CLAIM_REF, KubernetesSandboxBackend, SANDBOX_REF } from "./backend";
import { KubeApiError } from "./kube";
import {
  buildSandbox,
  buildSandboxClaim,
  buildSandboxTemplate,
  buildWarmPoolTemplate,
  envSecretName,
  quantityBytes,
  warmPoolNameFor,
  workspaceClaimName,
  type KubernetesSandboxSettings,
} from "./resources";

const NAMESPACE = "berth-test";
const SECRET_VALUE = "sk-test-7f3a9c1e5b-do-not-leak";
let fake: FakeKubeApi;
let logs = "";
let daemonPort: number;
let counter = 0;

function kubeConfigFor(server: FakeKubeApi): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromString(server.kubeconfig(NAMESPACE));
  return kc;
}

/** A sandbox named "...-bad-..." gets a token its daemon refuses (too short): its pod fails. */
const tokenFor = (name: string) => (name.includes("-bad-") ? "short" : `token-for-${name}-${"x".repeat(32)}`);
/** The egress gateway token of a sandbox (the platform's is `<name>~<MAC>`, server/egress/tokens.ts). */
const gatewayTokenFor = (name: string) => `${name}~gateway-${"g".repeat(32)}`;
/** A certificate as far as the daemon checks (PEM blocks): it writes it for commands to trust. */
const CA_PEM = "-----BEGIN CERTIFICATE-----\nTUlJQmVydGhUZXN0Q0E=\n-----END CERTIFICATE-----\n";
/** Stands in for the Berth pods' egress gateway: records what the sandboxes' forwarders send it. */
let gateway: http.Server;
let gatewayPort: number;
const proxied: Array<{ url: string; authorization: string }> = [];

function settings(): KubernetesSandboxSettings {
  return {
    namespace: NAMESPACE,
    image: "berth:test",
    runtimeClassName: undefined,
    daemonPort,
    storageClassName: undefined,
    gateway: { address: `127.0.0.1:${gatewayPort}`, listenPort: gatewayPort, caPem: CA_PEM },
  };
}

async function makeBackend(overrides: Partial<Parameters<typeof KubernetesSandboxBackend.create>[0]> = {}) {
  const logger = createLogger(
    "debug",
    new Writable({
      write(chunk, _encoding, callback) {
        logs += chunk.toString();
        callback();
      },
    }),
  );
  return KubernetesSandboxBackend.create({
    ...settings(),
    kubeConfig: kubeConfigFor(fake),
    tokenFor,
    gatewayTokenFor,
    logger,
    readyTimeoutMs: 20_000,
    retryBaseMs: 20,
    watchMinBackoffMs: 50,
    watchMaxBackoffMs: 500,
    ...overrides,
  });
}

function spec(overrides: Partial<SandboxSpec> = {}): SandboxSpec {
  counter++;
  const sessionId = overrides.sessionId ?? `0000000${counter}-aaaa-4bbb-8ccc-${String(counter).padStart(12, "0")}`;
  const generation = overrides.generation ?? 1;
  return {
    name: `s-${sessionId.slice(0, 8)}-g${generation}-${counter}`,
    teamId: "11111111-2222-4333-8444-555555555555",
    agentId: "99999999-8888-4777-8666-555555555555",
    sessionId,
    generation,
    network: "none",
    env: { GREETING: "hello from the agent", API_TOKEN: SECRET_VALUE },
    resources: { cpuMillis: 500, memoryMb: 512, diskMb: 2048 },
    image: null,
    ...overrides,
  };
}

async function run(backend: KubernetesSandboxBackend, address: string, command: string) {
  let stdout = "";
  let exitCode: number | null = null;
  for await (const chunk of backend.connect(address).exec({ command })) {
    if (chunk.type === "stdout") stdout += chunk.data;
    if (chunk.type === "exit") exitCode = chunk.exitCode;
  }
  return { stdout, exitCode };
}

beforeAll(async () => {
  fake = await new FakeKubeApi().start();
  daemonPort = await freePort();
  gateway = http.createServer((req, res) => {
    const basic = /^Basic (.+)$/.exec(req.headers["proxy-authorization"] ?? "")?.[1];
    proxied.push({ url: req.url ?? "", authorization: basic ? Buffer.from(basic, "base64").toString("utf8") : "" });
    res.end("through the gateway\n");
  });
  await new Promise<void>((resolve) => gateway.listen(0, "127.0.0.1", resolve));
  gatewayPort = (gateway.address() as AddressInfo).port;
});

afterAll(async () => {
  await fake?.stop();
  gateway?.close();
});

/** What a sandbox's proxied request looks like at the gateway: the proxy user and token it carried. */
async function proxiedBy(backend: KubernetesSandboxBackend, address: string, marker: string): Promise<string> {
  const result = await run(backend, address, `curl -sS --max-time 10 http://${marker}.example.test/`);
  expect(result).toEqual({ stdout: "through the gateway\n", exitCode: 0 });
  const seen = proxied.find((request) => request.url === `http://${marker}.example.test/`);
  expect(seen).toBeDefined();
  return seen!.authorization;
}

describe("KubernetesSandboxBackend against the stand-in API server", () => {
  let backend: KubernetesSandboxBackend;
  const losses: SandboxLoss[] = [];

  beforeAll(async () => {
    backend = await makeBackend();
    backend.onLost((loss) => losses.push(loss));
  });

  afterAll(async () => {
    await backend?.shutdown();
  });

  afterEach(() => {
    expect(logs).not.toContain(SECRET_VALUE);
  });

  it("provisions a Sandbox from a SandboxTemplate, waits for Ready, and runs commands through the daemon", async () => {
    const s = spec();
    const provisioned = await backend.provision(s);
    expect(provisioned.name).toBe(s.name);
    expect(provisioned.hostPid).toBeNull();
    expect(provisioned.address).toBe(`http://${fake.pod(s.name)!.ip}:${daemonPort}`);
    expect(await backend.status(s.name)).toBe("running");

    const result = await run(backend, provisioned.address, 'echo "$GREETING"; id -u; pwd');
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain("hello from the agent");

    // The objects, as the API server stored them.
    const sandbox = fake.get("sandboxes", NAMESPACE, s.name)!;
    expect(sandbox.metadata.labels).toMatchObject({
      "berth.dev/team": s.teamId,
      "berth.dev/agent": s.agentId,
      "berth.dev/session": s.sessionId,
      "berth.dev/generation": "1",
      "app.kubernetes.io/managed-by": "berth",
    });
    const podSpec = (sandbox.spec!.podTemplate as { spec: Record<string, unknown> }).spec as {
      automountServiceAccountToken: boolean;
      securityContext: { runAsNonRoot: boolean; seccompProfile: { type: string } };
      containers: Array<{ image: string; resources: unknown; envFrom: unknown }>;
      volumes: Array<{ name: string; persistentVolumeClaim?: { claimName: string } }>;
    };
    expect(podSpec.automountServiceAccountToken).toBe(false);
    expect(podSpec.securityContext.runAsNonRoot).toBe(true);
    expect(podSpec.securityContext.seccompProfile.type).toBe("RuntimeDefault");
    expect(podSpec.containers[0]!.image).toBe("berth:test");
    expect(podSpec.containers[0]!.resources).toEqual({ requests: { cpu: "500m", memory: "512Mi" }, limits: { cpu: "500m", memory: "512Mi" } });
    expect(podSpec.containers[0]!.envFrom).toEqual([{ secretRef: { name: envSecretName(s.name) } }]);
    expect(podSpec.volumes.find((v) => v.name === "workspace")).toEqual({ name: "workspace", persistentVolumeClaim: { claimName: workspaceClaimName(s.sessionId) } });
    expect(sandbox.spec!.operatingMode).toBe("Running");
    const templates = fake.list("sandboxtemplates", NAMESPACE);
    expect(templates.map((t) => t.metadata.name)).toContain(buildSandboxTemplate(s, settings()).metadata!.name);
  });

  it("puts the session's env and the daemon token in a per-generation Secret, never in the template or the Sandbox", async () => {
    const s = spec();
    await backend.provision(s);
    const pod = fake.pod(s.name)!;
    expect(pod.env.API_TOKEN).toBe(SECRET_VALUE);
    expect(pod.env.BERTH_DAEMON_TOKEN).toBe(tokenFor(s.name));

    const secret = fake.get("secrets", NAMESPACE, envSecretName(s.name))!;
    expect(Buffer.from((secret.data as Record<string, string>).API_TOKEN!, "base64").toString()).toBe(SECRET_VALUE);
    const sandbox = fake.get("sandboxes", NAMESPACE, s.name)!;
    expect(secret.metadata.ownerReferences).toEqual([expect.objectContaining({ kind: "Sandbox", name: s.name, uid: sandbox.metadata.uid })]);

    for (const template of fake.list("sandboxtemplates", NAMESPACE)) expect(JSON.stringify(template)).not.toContain(SECRET_VALUE);
    expect(JSON.stringify(sandbox)).not.toContain(SECRET_VALUE);
    expect(JSON.stringify(sandbox)).not.toContain(tokenFor(s.name));

    // Deleting the Sandbox takes its Secret with it.
    await backend.stop(s.name, "test");
    expect(fake.get("secrets", NAMESPACE, envSecretName(s.name))).toBeUndefined();
    expect(await backend.status(s.name)).toBe("gone");
  });

  it("gives the pod the egress gateway (template env), its own gateway token (env Secret), and commands the proxy through it", async () => {
    const s = spec();
    const provisioned = await backend.provision(s);
    const pod = fake.pod(s.name)!;
    expect(pod.env.BERTH_DAEMON_GATEWAY).toBe(`tcp:127.0.0.1:${gatewayPort}`);
    expect(pod.env.BERTH_DAEMON_CA_PEM).toBe(CA_PEM);
    expect(pod.env.BERTH_DAEMON_GATEWAY_TOKEN).toBe(gatewayTokenFor(s.name));
    // The token is the sandbox's own: in its env Secret, never in the shared template or the Sandbox.
    const secret = fake.get("secrets", NAMESPACE, envSecretName(s.name))!;
    expect(Buffer.from((secret.data as Record<string, string>).BERTH_DAEMON_GATEWAY_TOKEN!, "base64").toString()).toBe(gatewayTokenFor(s.name));
    const template = fake.get("sandboxtemplates", NAMESPACE, buildSandboxTemplate(s, settings()).metadata!.name!)!;
    expect(JSON.stringify(template)).toContain("BERTH_DAEMON_GATEWAY");
    for (const object of [template, fake.get("sandboxes", NAMESPACE, s.name)!]) expect(JSON.stringify(object)).not.toContain(gatewayTokenFor(s.name));

    // Commands: proxy variables on the daemon's loopback forwarder, the model relay there too, the CA to trust.
    const env = await run(backend, provisioned.address, 'echo "$HTTPS_PROXY|$BERTH_MODEL_BASE_URL|$BERTH_MODEL_API_KEY"; cat "$NODE_EXTRA_CA_CERTS"; env | grep -c BERTH_DAEMON_ || true');
    const [proxy, baseUrl, apiKey] = env.stdout.split("\n")[0]!.split("|");
    expect(proxy).toMatch(/^http:\/\/berth:[^@]+@127\.0\.0\.1:\d+$/);
    expect(proxy!.slice("http://berth:".length, proxy!.indexOf("@"))).toBe(gatewayTokenFor(s.name));
    expect(baseUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1$/);
    expect(apiKey).toBe(gatewayTokenFor(s.name));
    expect(env.stdout).toContain(CA_PEM);
    expect(env.stdout.trim().split("\n").at(-1)).toBe("0"); // the daemon's own settings are not the commands'
    // A proxied request arrives at the gateway with the sandbox's token.
    expect(await proxiedBy(backend, provisioned.address, "cold")).toBe(`berth:${gatewayTokenFor(s.name)}`);
    await backend.stop(s.name, "done");
  });

  it("keeps the session's workspace (its PersistentVolumeClaim) across generations", async () => {
    const first = spec();
    const one = await backend.provision(first);
    expect((await run(backend, one.address, "echo kept > notes.txt && cat notes.txt")).stdout).toBe("kept\n");
    await backend.stop(first.name, "idle");

    const second = spec({ sessionId: first.sessionId, generation: 2 });
    const two = await backend.provision(second);
    expect(two.address).not.toBe(one.address);
    expect((await run(backend, two.address, "cat notes.txt")).stdout).toBe("kept\n");
    expect(fake.list("persistentvolumeclaims", NAMESPACE).filter((c) => c.metadata.name === workspaceClaimName(first.sessionId))).toHaveLength(1);
    await backend.stop(second.name, "done");
  });

  it("an agent's diskMb is its workspace claim's requested storage: diskMb 256 gets a claim of 256Mi", async () => {
    const s = spec({ resources: { cpuMillis: 500, memoryMb: 512, diskMb: 256 } });
    const provisioned = await backend.provision(s);
    const claim = fake.get("persistentvolumeclaims", NAMESPACE, workspaceClaimName(s.sessionId))!;
    expect(claim.spec).toMatchObject({ accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "256Mi" } } });
    expect((await run(backend, provisioned.address, "echo ok")).stdout).toBe("ok\n");
    await backend.stop(s.name, "done");
  });

  it("a workspace claim smaller than diskMb (made before diskMb existed) is asked to grow; a larger one is left alone", async () => {
    const core = kubeConfigFor(fake).makeApiClient(CoreV1Api);
    const existingClaim = (sessionId: string, storage: string) =>
      core.createNamespacedPersistentVolumeClaim({
        namespace: NAMESPACE,
        body: {
          apiVersion: "v1",
          kind: "PersistentVolumeClaim",
          metadata: { name: workspaceClaimName(sessionId), labels: { "app.kubernetes.io/managed-by": "berth", "berth.dev/component": "workspace", "berth.dev/session": sessionId } },
          spec: { accessModes: ["ReadWriteOnce"], resources: { requests: { storage } } },
        },
      });
    const storageOf = (sessionId: string) => (fake.get("persistentvolumeclaims", NAMESPACE, workspaceClaimName(sessionId))!.spec as { resources: { requests: { storage: string } } }).resources.requests.storage;

    const small = spec({ resources: { cpuMillis: 500, memoryMb: 512, diskMb: 4096 } });
    await existingClaim(small.sessionId, "1Gi");
    await backend.provision(small);
    expect(storageOf(small.sessionId)).toBe("4096Mi");
    await backend.stop(small.name, "done");

    const large = spec({ resources: { cpuMillis: 500, memoryMb: 512, diskMb: 256 } });
    await existingClaim(large.sessionId, "5Gi");
    await backend.provision(large);
    expect(storageOf(large.sessionId)).toBe("5Gi"); // claims never shrink
    await backend.stop(large.name, "done");

    // A StorageClass without allowVolumeExpansion: the API server refuses (403), the sandbox starts on the claim as it is.
    fake.volumeExpansion = false;
    try {
      const refused = spec({ resources: { cpuMillis: 500, memoryMb: 512, diskMb: 2048 } });
      await existingClaim(refused.sessionId, "1Gi");
      const provisioned = await backend.provision(refused);
      expect(storageOf(refused.sessionId)).toBe("1Gi");
      expect(logs).toContain("could not expand a workspace claim");
      expect((await run(backend, provisioned.address, "echo still")).stdout).toBe("still\n");
      await backend.stop(refused.name, "done");
      expect(fake.rejected.filter((r) => r.kind === "PersistentVolumeClaim").map((r) => r.code)).toEqual([403]);
      fake.rejected.length = 0; // expected: the schema test below checks nothing else was refused
    } finally {
      fake.volumeExpansion = true;
    }
  });

  it("the stand-in validates claims as the API server does: a storage quantity, access modes, only growing, only the storage request changing", async () => {
    const core = kubeConfigFor(fake).makeApiClient(CoreV1Api);
    const body = (name: string, spec: Record<string, unknown>) => ({ apiVersion: "v1", kind: "PersistentVolumeClaim", metadata: { name }, spec });
    const statusOf = (call: Promise<unknown>) => call.then(() => 200, (error: { code?: number }) => error.code);
    expect(await statusOf(core.createNamespacedPersistentVolumeClaim({ namespace: NAMESPACE, body: body("bad-size", { accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "2 GB" } } }) }))).toBe(422);
    expect(await statusOf(core.createNamespacedPersistentVolumeClaim({ namespace: NAMESPACE, body: body("no-size", { accessModes: ["ReadWriteOnce"], resources: {} }) }))).toBe(422);
    expect(await statusOf(core.createNamespacedPersistentVolumeClaim({ namespace: NAMESPACE, body: body("no-modes", { resources: { requests: { storage: "1Gi" } } }) }))).toBe(422);
    expect(await statusOf(core.createNamespacedPersistentVolumeClaim({ namespace: NAMESPACE, body: body("ok-claim", { accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "1Gi" } } }) }))).toBe(200);
    const patch = (spec: Record<string, unknown>) =>
      statusOf(fetch(`${fake.url}/api/v1/namespaces/${NAMESPACE}/persistentvolumeclaims/ok-claim`, { method: "PATCH", headers: { "content-type": "application/merge-patch+json" }, body: JSON.stringify({ spec }) }).then((response) => {
        if (!response.ok) throw { code: response.status };
      }));
    expect(await patch({ resources: { requests: { storage: "512Mi" } } })).toBe(422); // shrink
    expect(await patch({ accessModes: ["ReadWriteMany"] })).toBe(422); // immutable
    expect(await patch({ resources: { requests: { storage: "2Gi" } } })).toBe(200); // grow
    await core.deleteNamespacedPersistentVolumeClaim({ namespace: NAMESPACE, name: "ok-claim" });
    expect(fake.rejected.filter((r) => r.kind === "PersistentVolumeClaim").map((r) => [r.name, r.code])).toEqual([
      ["bad-size", 422],
      ["no-size", 422],
      ["no-modes", 422],
      ["ok-claim", 422],
      ["ok-claim", 422],
    ]);
    fake.rejected.length = 0;
  });

  it("lists the sessions whose workspaces it keeps and deletes one session's workspace only", async () => {
    const ended = spec();
    const kept = spec();
    await backend.stop((await backend.provision(ended)).name, "terminated");
    const live = await backend.provision(kept);
    expect(await backend.listWorkspaces()).toEqual(expect.arrayContaining([ended.sessionId, kept.sessionId]));

    await backend.deleteWorkspace(ended.sessionId);
    expect(fake.get("persistentvolumeclaims", NAMESPACE, workspaceClaimName(ended.sessionId))).toBeUndefined();
    expect(await backend.listWorkspaces()).not.toContain(ended.sessionId);
    expect(fake.get("persistentvolumeclaims", NAMESPACE, workspaceClaimName(kept.sessionId))).toBeDefined();
    await backend.deleteWorkspace(ended.sessionId); // idempotent
    expect((await run(backend, live.address, "echo still-here")).stdout).toBe("still-here\n");
    await backend.stop(kept.name, "done");
  });

  it("sent only objects that pass the CRD schemas, and the stand-in does reject invalid ones", async () => {
    expect(fake.rejected).toEqual([]);
    expect(fake.accepted.filter((a) => a.kind === "Sandbox").length).toBeGreaterThan(0);
    expect(fake.accepted.filter((a) => a.kind === "SandboxTemplate").length).toBeGreaterThan(0);

    const api = kubeConfigFor(fake).makeApiClient(CustomObjectsApi);
    const s = spec();
    const invalid = buildSandbox(s, settings(), buildSandboxTemplate(s, settings()));
    (invalid.spec as Record<string, unknown>).operatingMode = "Paused";
    const enumError = await api.createNamespacedCustomObject({ ...SANDBOX_REF, namespace: NAMESPACE, body: invalid }).catch((error: unknown) => error);
    expect((enumError as { code: number }).code).toBe(422);
    expect(String((enumError as { body: string }).body)).toContain("spec.operatingMode");

    const unknownField = buildSandbox(s, settings(), buildSandboxTemplate(s, settings()));
    (unknownField.spec as Record<string, unknown>).podTemplateX = {};
    const strictError = await api.createNamespacedCustomObject({ ...SANDBOX_REF, namespace: NAMESPACE, body: unknownField, fieldValidation: "Strict" }).catch((error: unknown) => error);
    expect((strictError as { code: number }).code).toBe(400);
    expect(String((strictError as { body: string }).body)).toContain('unknown field \\"spec.podTemplateX\\"');

    const missingContainers = buildSandbox(s, settings(), buildSandboxTemplate(s, settings()));
    delete ((missingContainers.spec as { podTemplate: { spec: Record<string, unknown> } }).podTemplate.spec as Record<string, unknown>).containers;
    const requiredError = await api.createNamespacedCustomObject({ ...SANDBOX_REF, namespace: NAMESPACE, body: missingContainers }).catch((error: unknown) => error);
    expect((requiredError as { code: number }).code).toBe(422);
    expect(fake.rejected.map((r) => r.code)).toEqual([422, 400, 422]);
    fake.rejected.length = 0;
  });

  it("reports a sandbox lost when its daemon dies (pod failed), and deletes that generation", async () => {
    const s = spec();
    await backend.provision(s);
    fake.killDaemon(s.name);
    const loss = await waitFor("loss", () => losses.find((l) => l.name === s.name));
    expect(loss.reason).toMatch(/no longer ready \(PodFailed/);
    await waitFor("lost sandbox deleted", () => fake.get("sandboxes", NAMESPACE, s.name) === undefined);
  });

  it("reports a sandbox lost when its pod is deleted, or the Sandbox is deleted by someone else", async () => {
    const a = spec();
    const b = spec();
    await Promise.all([backend.provision(a), backend.provision(b)]);
    await fake.deletePod(a.name);
    expect((await waitFor("loss of a", () => losses.find((l) => l.name === a.name))).reason).toMatch(/DependenciesNotReady/);
    fake.deleteObject("sandboxes", NAMESPACE, b.name);
    expect((await waitFor("loss of b", () => losses.find((l) => l.name === b.name))).reason).toBe("sandbox was deleted");
  });

  it("does not report sandboxes it stops itself", async () => {
    const s = spec();
    await backend.provision(s);
    await backend.stop(s.name, "terminated");
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(losses.find((l) => l.name === s.name)).toBeUndefined();
  });

  it("keeps noticing losses after its watch connection drops or its resourceVersion expires", async () => {
    const s = spec();
    await backend.provision(s);
    fake.dropWatches();
    fake.compact();
    await new Promise((resolve) => setTimeout(resolve, 200));
    fake.killDaemon(s.name);
    await waitFor("loss after watch restart", () => losses.find((l) => l.name === s.name), 15_000);
  });

  it("lists its labelled sandboxes and removes env Secrets whose Sandbox is gone", async () => {
    const s = spec();
    await backend.provision(s);
    const listed = await backend.list();
    expect(listed).toContainEqual({ name: s.name, sessionId: s.sessionId, state: "running" });
    expect(listed.every((l) => l.sessionId)).toBe(true);

    // An env Secret left by a crash between the two creates, old enough to be an orphan.
    const orphan = spec();
    const secretsPath = `/api/v1/namespaces/${NAMESPACE}/secrets`;
    const response = await fetch(`${fake.url}${secretsPath}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        apiVersion: "v1",
        kind: "Secret",
        metadata: { name: envSecretName(orphan.name), labels: { "app.kubernetes.io/managed-by": "berth", "berth.dev/component": "sandbox-env", "berth.dev/sandbox": orphan.name } },
        stringData: { A: "b" },
      }),
    });
    expect(response.status).toBe(201);
    const stored = fake.get("secrets", NAMESPACE, envSecretName(orphan.name))!;
    stored.metadata.creationTimestamp = new Date(Date.now() - 3_600_000).toISOString();
    (fake as unknown as { objects: Map<string, unknown> }).objects.set(`secrets/${NAMESPACE}/${envSecretName(orphan.name)}`, stored);
    await backend.list();
    expect(fake.get("secrets", NAMESPACE, envSecretName(orphan.name))).toBeUndefined();
    expect(fake.get("secrets", NAMESPACE, envSecretName(s.name))).toBeDefined();
    await backend.stop(s.name, "done");
  });

  it("suspends through operatingMode: Suspended and resumes the same Sandbox as the next generation, with rotated env", async () => {
    const s = spec();
    const first = await backend.provision(s);
    await run(backend, first.address, "echo before > suspended.txt");
    await backend.suspend(s.name);
    await waitFor("pod gone", () => (fake.pod(s.name) ? undefined : true));
    const suspended = fake.get("sandboxes", NAMESPACE, s.name)!;
    expect(suspended.spec!.operatingMode).toBe("Suspended");
    expect(await backend.status(s.name)).toBe("suspended");
    expect((await backend.list()).find((l) => l.name === s.name)?.state).toBe("suspended");

    const next = spec({ sessionId: s.sessionId, generation: 2, env: { GREETING: "rotated" } });
    const resumed = await backend.provision(next);
    expect(resumed.name).toBe(s.name); // the same Sandbox, so the same token
    expect(fake.get("sandboxes", NAMESPACE, next.name)).toBeUndefined();
    expect(fake.get("sandboxes", NAMESPACE, s.name)!.metadata.labels!["berth.dev/generation"]).toBe("2");
    expect((await run(backend, resumed.address, 'cat suspended.txt; echo "$GREETING"')).stdout).toBe("before\nrotated\n");
    // The new generation's row gets the resumed Sandbox's name: its gateway token is for that name.
    expect(fake.pod(s.name)!.env.BERTH_DAEMON_GATEWAY_TOKEN).toBe(gatewayTokenFor(s.name));
    const secret = fake.get("secrets", NAMESPACE, envSecretName(s.name))!;
    expect(secret.metadata.ownerReferences).toEqual([expect.objectContaining({ kind: "Sandbox", uid: suspended.metadata.uid })]);
    expect(losses.find((l) => l.name === s.name)).toBeUndefined();
    await backend.stop(s.name, "done");
  });

  it("resumes on the new pod's status, not on the old pod's that a lagging controller still shows", async () => {
    const s = spec();
    await backend.provision(s);
    const runningStatus = fake.get("sandboxes", NAMESPACE, s.name)!.status!;
    fake.reportsSuspension = false;
    try {
      await backend.suspend(s.name);
      await waitFor("pod gone", () => (fake.pod(s.name) ? undefined : true));
      await new Promise((resolve) => setTimeout(resolve, 200));
      // The resume's patch answers with this: Ready, at the address of a daemon that is gone.
      expect(fake.get("sandboxes", NAMESPACE, s.name)!.status).toEqual(runningStatus);
    } finally {
      fake.reportsSuspension = true;
    }

    const resumed = await backend.provision(spec({ sessionId: s.sessionId, generation: 2 }));
    expect(resumed.name).toBe(s.name);
    expect(resumed.address).toContain(fake.pod(s.name)!.ip);
    expect(resumed.address).not.toContain(String((runningStatus as { serviceFQDN?: string }).serviceFQDN));
    expect((await run(backend, resumed.address, "echo resumed")).stdout).toBe("resumed\n");
    await backend.stop(s.name, "done");
  });

  it("a suspended Sandbox of another shape (e.g. the image changed) is replaced, not resumed", async () => {
    const s = spec();
    await backend.provision(s);
    await backend.suspend(s.name);
    const next = spec({ sessionId: s.sessionId, generation: 2, image: "berth:other" });
    const provisioned = await backend.provision(next);
    expect(provisioned.name).toBe(next.name);
    await waitFor("old one deleted", () => (fake.get("sandboxes", NAMESPACE, s.name) ? undefined : true));
    await backend.stop(next.name, "done");
  });
});

describe("warm pools: SandboxWarmPool + SandboxClaim", () => {
  let backend: KubernetesSandboxBackend;
  const losses: SandboxLoss[] = [];
  const agentId = "77777777-8888-4777-8666-555555555555";
  const pooled = (overrides: Partial<SandboxSpec> = {}) => spec({ agentId, warmPoolSize: 2, ...overrides });
  const pool = () => fake.list("sandboxwarmpools", NAMESPACE).find((p) => p.metadata.labels?.["berth.dev/agent"] === agentId)!;
  const members = () => fake.list("sandboxes", NAMESPACE).filter((s) => s.metadata.ownerReferences?.some((ref) => ref.uid === pool()?.metadata.uid));
  const readyMembers = () => members().filter((m) => (m.status as { conditions?: Array<{ type: string; status: string }> } | undefined)?.conditions?.some((c) => c.type === "Ready" && c.status === "True"));

  beforeAll(async () => {
    backend = await makeBackend();
    backend.onLost((loss) => losses.push(loss));
  });
  afterAll(async () => {
    await backend?.shutdown();
  });
  afterEach(() => {
    expect(logs).not.toContain(SECRET_VALUE);
  });

  it("syncWarmPools makes a pool of unbound daemons with the pool's token and no session data", async () => {
    const shape = pooled();
    await backend.syncWarmPools([{ teamId: shape.teamId, agentId, network: "none", resources: shape.resources, image: null, size: 2 }]);
    await waitFor("two ready pooled sandboxes", () => (readyMembers().length === 2 ? true : undefined), 20_000);
    const name = pool().metadata.name!;
    expect(pool().spec).toMatchObject({ replicas: 2, sandboxTemplateRef: { name } });
    const template = fake.get("sandboxtemplates", NAMESPACE, name)!;
    expect(JSON.stringify(template)).not.toContain(tokenFor(name));
    expect(JSON.stringify(template)).toContain("BERTH_DAEMON_UNBOUND");
    const member = readyMembers()[0]!;
    expect(fake.pod(member.metadata.name!)!.env.BERTH_DAEMON_TOKEN).toBe(tokenFor(name));
    expect(fake.pod(member.metadata.name!)!.env.API_TOKEN).toBeUndefined();
    // The pool's gateway token (no sandbox row has the pool's name: the gateway lets nothing out for it).
    expect(fake.pod(member.metadata.name!)!.env.BERTH_DAEMON_GATEWAY_TOKEN).toBe(gatewayTokenFor(name));
    expect(fake.pod(member.metadata.name!)!.env.BERTH_DAEMON_GATEWAY).toBe(`tcp:127.0.0.1:${gatewayPort}`);
    expect(JSON.stringify(template)).not.toContain(gatewayTokenFor(name));
    // Not Berth's yet: neither the watch nor reconciliation sees pooled Sandboxes.
    expect((await backend.list()).map((l) => l.name)).not.toContain(member.metadata.name);
  });

  it("provisions a session's first sandbox by claiming a ready pooled one: env bound, token rotated, pool refilled", async () => {
    const s = pooled();
    const started = performance.now();
    const provisioned = await backend.provision(s);
    const claimMs = performance.now() - started;
    expect(provisioned.fromWarmPool).toBe(true);
    expect(provisioned.name).not.toBe(s.name);
    expect(provisioned.name.startsWith(`${pool().metadata.name}-`)).toBe(true);
    console.log(`claim to ready (adopted from the pool): ${claimMs.toFixed(0)} ms`);

    const claim = fake.get("sandboxclaims", NAMESPACE, s.name)!;
    expect(claim.spec).toEqual({ warmPoolRef: { name: pool().metadata.name } });
    expect(claim.metadata.labels).toMatchObject({ "berth.dev/session": s.sessionId, "berth.dev/team": s.teamId, "berth.dev/agent": agentId });
    expect(claim.status).toMatchObject({ sandbox: { name: provisioned.name } });
    expect(JSON.stringify(claim)).not.toContain(SECRET_VALUE);
    const sandbox = fake.get("sandboxes", NAMESPACE, provisioned.name)!;
    expect(sandbox.metadata.labels).toMatchObject({ "berth.dev/session": s.sessionId, "berth.dev/claim": s.name, "app.kubernetes.io/managed-by": "berth", "agents.x-k8s.io/launch-type": "warm" });
    expect(sandbox.metadata.ownerReferences).toEqual([expect.objectContaining({ kind: "SandboxClaim", name: s.name })]);
    expect(JSON.stringify(sandbox)).not.toContain(SECRET_VALUE);

    // The session's env arrived through bind; the pool's token no longer opens this daemon.
    expect((await run(backend, provisioned.address, 'echo "$API_TOKEN"; echo pooled > notes.txt')).stdout).toBe(`${SECRET_VALUE}\n`);
    const poolClient = createDaemonClient({ address: provisioned.address, token: tokenFor(pool().metadata.name!) });
    await expect(poolClient.health()).rejects.toThrow(/401|token/);
    // The bind replaced the pool's gateway token by the one of the adopted Sandbox's name (the row's name).
    expect(await proxiedBy(backend, provisioned.address, "pooled")).toBe(`berth:${gatewayTokenFor(provisioned.name)}`);

    expect((await backend.list()).find((l) => l.name === provisioned.name)).toMatchObject({ sessionId: s.sessionId, state: "running" });
    await waitFor("the pool refilled", () => (readyMembers().length === 2 ? true : undefined), 20_000);

    // Pod lost: the next generation is a plain Sandbox on the same workspace PVC.
    await fake.deletePod(provisioned.name);
    await waitFor("loss", () => (losses.some((l) => l.name === provisioned.name) ? true : undefined));
    await waitFor("claim deleted", () => (fake.get("sandboxclaims", NAMESPACE, s.name) ? undefined : true));
    const workspace = `workspace-${provisioned.name}`;
    expect(fake.get("persistentvolumeclaims", NAMESPACE, workspace)!.metadata.ownerReferences ?? []).toEqual([]);
    // The pool's claim template asked for the agent's disk quota.
    expect(fake.get("persistentvolumeclaims", NAMESPACE, workspace)!.spec).toMatchObject({ resources: { requests: { storage: `${s.resources.diskMb}Mi` } } });
    const second = pooled({ sessionId: s.sessionId, generation: 2 });
    const next = await backend.provision(second);
    expect(next.fromWarmPool).toBe(false);
    expect(next.name).toBe(second.name);
    expect(fake.get("sandboxclaims", NAMESPACE, second.name)).toBeUndefined();
    expect((await run(backend, next.address, "cat notes.txt; echo $API_TOKEN")).stdout).toBe(`pooled\n${SECRET_VALUE}\n`);
    expect(fake.get("sandboxes", NAMESPACE, next.name)!.metadata.annotations).toMatchObject({ "berth.dev/workspace": workspace });
    await backend.stop(next.name, "done");
    expect(fake.get("persistentvolumeclaims", NAMESPACE, workspace)).toBeDefined();
  });

  it("a suspended pooled sandbox is not resumed in place: the next generation starts cold on its workspace", async () => {
    const s = pooled();
    const provisioned = await backend.provision(s);
    expect(provisioned.fromWarmPool).toBe(true);
    await run(backend, provisioned.address, "echo before-suspend > state.txt");
    await backend.suspend(provisioned.name);
    await waitFor("pod gone", () => (fake.pod(provisioned.name) ? undefined : true));
    expect((await backend.list()).find((l) => l.name === provisioned.name)).toMatchObject({ state: "suspended" });

    const next = await backend.provision(pooled({ sessionId: s.sessionId, generation: 2 }));
    expect(next.fromWarmPool).toBe(false);
    expect(fake.get("sandboxclaims", NAMESPACE, s.name)).toBeUndefined();
    expect(fake.get("sandboxes", NAMESPACE, provisioned.name)).toBeUndefined();
    expect((await run(backend, next.address, "cat state.txt; echo $GREETING")).stdout).toBe("before-suspend\nhello from the agent\n");
    await backend.stop(next.name, "done");
  });

  it("terminate deletes the claim and its Sandbox; a claim left by a dead provision is listed for reconciliation", async () => {
    const s = pooled();
    const provisioned = await backend.provision(s);
    await backend.stop(provisioned.name, "terminated");
    expect(fake.get("sandboxclaims", NAMESPACE, s.name)).toBeUndefined();
    expect(fake.get("sandboxes", NAMESPACE, provisioned.name)).toBeUndefined();
    expect(fake.get("persistentvolumeclaims", NAMESPACE, `workspace-${provisioned.name}`)).toBeDefined();
    // The pooled workspace is found by its session label, like the cold one.
    expect(await backend.listWorkspaces()).toContain(s.sessionId);
    await backend.deleteWorkspace(s.sessionId);
    expect(fake.get("persistentvolumeclaims", NAMESPACE, `workspace-${provisioned.name}`)).toBeUndefined();

    const api = kubeConfigFor(fake).makeApiClient(CustomObjectsApi);
    const orphan = pooled();
    await api.createNamespacedCustomObject({ ...CLAIM_REF, namespace: NAMESPACE, body: buildSandboxClaim(orphan, settings(), pool().metadata.name!) });
    await waitFor("the orphan claim listed", async () => ((await backend.list()).some((l) => l.name === orphan.name && l.sessionId === orphan.sessionId) ? true : undefined));
    await backend.stop(orphan.name, "orphan");
    expect(fake.get("sandboxclaims", NAMESPACE, orphan.name)).toBeUndefined();
    await waitFor("its Sandbox gone", () => (fake.list("sandboxes", NAMESPACE).some((x) => x.metadata.ownerReferences?.some((r) => r.name === orphan.name)) ? undefined : true));
  });

  it("an empty pool: the claim cold-starts from the pool's template, and is still bound the same way", async () => {
    const shape = pooled();
    await backend.syncWarmPools([{ teamId: shape.teamId, agentId, network: "none", resources: shape.resources, image: null, size: 0 }]);
    await waitFor("the pool deleted", () => (pool() ? undefined : true));
    const s = pooled({ warmPoolSize: 1 });
    const started = performance.now();
    // Makes the pool, whose first sandbox is held not ready (on a busy machine it could otherwise be
    // ready before the claim is looked at): the claim's cold path.
    fake.holdWarmPoolPods = true;
    const provisioned = await backend.provision(s).finally(() => (fake.holdWarmPoolPods = false));
    console.log(`claim to ready (cold, pool empty): ${(performance.now() - started).toFixed(0)} ms`);
    expect(provisioned).toMatchObject({ name: s.name, fromWarmPool: false });
    expect(fake.get("sandboxes", NAMESPACE, s.name)!.metadata.labels).toMatchObject({ "agents.x-k8s.io/launch-type": "cold", "berth.dev/claim": s.name });
    expect((await run(backend, provisioned.address, 'echo "$GREETING"')).stdout).toBe("hello from the agent\n");
    await backend.stop(provisioned.name, "done");
    await backend.syncWarmPools([]);
  });

  it("the stand-in rejects an invalid claim (unknown field, missing warmPoolRef) and a claim with env is not adopted", async () => {
    const api = kubeConfigFor(fake).makeApiClient(CustomObjectsApi);
    const s = pooled();
    const unknown = buildSandboxClaim(s, settings(), "some-pool");
    (unknown.spec as Record<string, unknown>).sandboxTemplateRef = { name: "x" };
    const strict = await api.createNamespacedCustomObject({ ...CLAIM_REF, namespace: NAMESPACE, body: unknown, fieldValidation: "Strict" }).catch((error: unknown) => error);
    expect((strict as { code: number }).code).toBe(400);
    expect(String((strict as { body: string }).body)).toContain("sandboxTemplateRef");
    const missing = buildSandboxClaim(s, settings(), "some-pool");
    delete (missing.spec as Record<string, unknown>).warmPoolRef;
    const invalid = await api.createNamespacedCustomObject({ ...CLAIM_REF, namespace: NAMESPACE, body: missing }).catch((error: unknown) => error);
    expect((invalid as { code: number }).code).toBe(422);
    expect(String((invalid as { body: string }).body)).toContain("warmPoolRef");
    // Valid to the API server, refused by the controller: pod labels outside its allowlisted domains.
    const labelled = buildSandboxClaim(s, settings(), "some-pool");
    (labelled.spec as Record<string, unknown>).additionalPodMetadata = { labels: { "berth.dev/session": s.sessionId } };
    await api.createNamespacedCustomObject({ ...CLAIM_REF, namespace: NAMESPACE, body: labelled });
    await waitFor("the claim refused by the controller", () => {
      const conditions = (fake.get("sandboxclaims", NAMESPACE, s.name)?.status as { conditions?: Array<{ type: string; status: string; reason: string }> } | undefined)?.conditions;
      return conditions?.some((c) => c.type === "Ready" && c.status === "False" && c.reason === "InvalidMetadata") ? true : undefined;
    });
    await backend.stop(s.name, "test");
    expect(fake.controllerErrors).toEqual([]);
    // Only these two were refused (the "sent only valid objects" check above ran before them).
    expect(fake.rejected.map((r) => [r.kind, r.code])).toEqual([["SandboxClaim", 400], ["SandboxClaim", 422]]);
    fake.rejected.length = 0;
  });
});

describe("Kubernetes API errors", () => {
  let backend: KubernetesSandboxBackend;
  beforeAll(async () => {
    backend = await makeBackend({ retries: 2, requestTimeoutMs: 1_000 });
  });
  afterAll(async () => {
    await backend?.shutdown();
  });

  it("403: says the ServiceAccount lacks the permission", async () => {
    fake.injectFault({ status: 403, reason: "Forbidden", message: 'sandboxes.agents.x-k8s.io is forbidden: User "system:serviceaccount:berth:berth" cannot create resource "sandboxes"', match: (r) => r.method === "POST" && r.path.endsWith("/sandboxes") });
    const error = await backend.provision(spec()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KubeApiError);
    expect((error as Error).message).toMatch(/create sandboxes\/.*forbidden by the Kubernetes API \(sandboxes.agents.x-k8s.io is forbidden.*rbac\.yaml/);
  });

  it("422: names what the API refused", async () => {
    fake.injectFault({ status: 422, reason: "Invalid", message: 'Sandbox.agents.x-k8s.io "x" is invalid: spec.podTemplate: Required value', match: (r) => r.method === "POST" && r.path.endsWith("/sandboxes") });
    const error = await backend.provision(spec()).catch((e: unknown) => e);
    expect((error as KubeApiError).status).toBe(422);
    expect((error as Error).message).toContain("rejected as invalid by the Kubernetes API (Sandbox.agents.x-k8s.io \"x\" is invalid: spec.podTemplate: Required value)");
  });

  it("a create that fails transiently is retried; an attempt that did land comes back as 409 and is adopted", async () => {
    fake.injectFault({ status: 503, reason: "ServiceUnavailable", times: 2, match: (r) => r.method === "POST" && r.path.endsWith("/sandboxes") });
    const s = spec();
    await expect(backend.provision(s)).resolves.toMatchObject({ name: s.name });
    await backend.stop(s.name, "done");

    // The Sandbox and the Secret are created, but the answers are lost: the retries see 409s.
    fake.injectFault({ status: 504, reason: "Timeout", afterDispatch: true, match: (r) => r.method === "POST" && r.path.endsWith("/sandboxes") });
    fake.injectFault({ status: 504, reason: "Timeout", afterDispatch: true, match: (r) => r.method === "POST" && r.path.endsWith("/secrets") });
    const t = spec();
    const provisioned = await backend.provision(t);
    expect((await run(backend, provisioned.address, "echo $GREETING")).stdout).toBe("hello from the agent\n");
    const conflicts = fake.requests.filter((r) => r.method === "POST" && r.status === 409 && JSON.stringify(r.body).includes(t.name));
    expect(conflicts.length).toBe(2);
    await backend.stop(t.name, "done");
  });

  it("says so when the agent-sandbox CRDs are not installed", async () => {
    fake.injectFault({ status: 404, reason: "NotFound", message: "the server could not find the requested resource", match: (r) => r.method === "GET" && r.path.endsWith("/sandboxes") });
    const error = await makeBackend().catch((e: unknown) => e);
    expect((error as Error).message).toBe("the agent-sandbox CRDs (sandboxes.agents.x-k8s.io v1beta1) are not installed in the cluster: install agent-sandbox (see docs/kubernetes.md)");
  });

  it("404 from status and stop is no error: the sandbox is gone", async () => {
    expect(await backend.status("s-nothing-here")).toBe("gone");
    await expect(backend.stop("s-nothing-here", "test")).resolves.toBeUndefined();
  });

  it("500s and timeouts on safe calls are retried with backoff", async () => {
    fake.injectFault({ status: 500, times: 2, match: (r) => r.method === "GET" && r.path.endsWith("/sandboxes") });
    expect(Array.isArray(await backend.list())).toBe(true);
    fake.injectFault({ status: 503, delayMs: 1_500, match: (r) => r.method === "GET" && r.path.includes("/sandboxes/") });
    expect(await backend.status("s-nothing-here")).toBe("gone");
  });

  it("a 409 on create of the same generation adopts the existing Sandbox; another session's is refused", async () => {
    const s = spec();
    await backend.provision(s);
    // The same spec again (a retried job): adopted.
    await expect(backend.provision(s)).resolves.toMatchObject({ name: s.name });
    const other = spec({ name: s.name });
    const error = await backend.provision(other).catch((e: unknown) => e);
    expect((error as KubeApiError).status).toBe(409);
    expect((error as Error).message).toContain("belongs to another session");
    await backend.stop(s.name, "done");
  });

  it("an unreachable or silent API is a SandboxUnavailableError, after retries", async () => {
    fake.injectFault({ status: 500, delayMs: 3_000, times: 3, match: (r) => r.method === "GET" && r.path.includes("/sandboxes/") });
    const timedOut = await backend.status("s-slow").catch((e: unknown) => e);
    expect(timedOut).toBeInstanceOf(SandboxUnavailableError);
    expect((timedOut as Error).message).toMatch(/did not answer in time/);

    const port = await freePort();
    const kc = new KubeConfig();
    kc.loadFromString(fake.kubeconfig(NAMESPACE).replace(`127.0.0.1:${fake.port}`, `127.0.0.1:${port}`));
    const error = await KubernetesSandboxBackend.create({ ...settings(), kubeConfig: kc, tokenFor, gatewayTokenFor, logger: createLogger("silent"), retries: 1, retryBaseMs: 10 }).catch((e: unknown) => e);
    expect((error as Error).message).toMatch(/cannot start: list sandboxes: the Kubernetes API is unreachable \(ECONNREFUSED\)/);
  }, 30_000);

  it("a Sandbox that fails while starting is reported, cleaned up, and never hangs provision", async () => {
    const s = spec();
    s.name = s.name.replace(/^s-/, "s-bad-");
    const error = await backend.provision(s).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SandboxUnavailableError);
    expect((error as Error).message).toMatch(/failed: its pod finished \(PodFailed: container sandboxd terminated \(exit code 1\)\)/);
    await waitFor("failed sandbox deleted", () => fake.get("sandboxes", NAMESPACE, s.name) === undefined);
  });
});

describe("resource shapes", () => {
  it("the template depends on the agent version's shape, not on the session", () => {
    const a = spec();
    const b = spec({ agentId: a.agentId });
    expect(buildSandboxTemplate(a, settings()).metadata!.name).toBe(buildSandboxTemplate(b, settings()).metadata!.name);
    expect(buildSandboxTemplate({ ...a, resources: { cpuMillis: 1000, memoryMb: 512, diskMb: 2048 } }, settings()).metadata!.name).not.toBe(buildSandboxTemplate(a, settings()).metadata!.name);
    const gvisor = buildSandboxTemplate(a, { ...settings(), runtimeClassName: "gvisor" });
    const pod = (gvisor.spec!.podTemplate as { spec: { runtimeClassName?: string } }).spec;
    expect(pod.runtimeClassName).toBe("gvisor");
    // Not the agent's network: every pod's way out is the gateway, which applies the policy.
    const open: SandboxSpec = { ...a, network: "egress" };
    expect(buildSandboxTemplate(open, settings())).toEqual(buildSandboxTemplate(a, settings()));
    expect(buildWarmPoolTemplate(open, settings())).toEqual(buildWarmPoolTemplate(a, settings()));
    // The gateway's address and CA are: pods never start with a stale one.
    const base = settings().gateway!;
    expect(buildSandboxTemplate(a, { ...settings(), gateway: { ...base, caPem: CA_PEM.replace("TUlJ", "T1RI") } }).metadata!.name).not.toBe(buildSandboxTemplate(a, settings()).metadata!.name);
    expect(buildSandboxTemplate(a, { ...settings(), gateway: { ...base, address: "10.96.0.42:8081" } }).metadata!.name).not.toBe(buildSandboxTemplate(a, settings()).metadata!.name);
    expect(JSON.stringify(gvisor.spec!.networkPolicy)).not.toContain("ipBlock");
    expect(JSON.stringify(gvisor.spec!.networkPolicy)).toContain(`"port":${gatewayPort}`);
    // Without a gateway, no egress at all.
    expect(buildSandboxTemplate(a, { ...settings(), gateway: null }).spec!.networkPolicy).toEqual({ egress: [] });
    expect(JSON.stringify(buildSandboxTemplate(a, { ...settings(), gateway: null }))).not.toContain("BERTH_DAEMON_GATEWAY");
  });

  it("a warm pool's workspace claim template requests the agent's diskMb, and another diskMb is another pool", () => {
    const a = spec({ resources: { cpuMillis: 500, memoryMb: 512, diskMb: 256 } });
    const claimTemplates = (buildWarmPoolTemplate(a, settings()).spec as { volumeClaimTemplates: Array<{ spec: { resources: { requests: { storage: string } } } }> }).volumeClaimTemplates;
    expect(claimTemplates.map((t) => t.spec.resources.requests.storage)).toEqual(["256Mi"]);
    const bigger = { ...a, resources: { ...a.resources, diskMb: 4096 } };
    expect(warmPoolNameFor(bigger, settings())).not.toBe(warmPoolNameFor(a, settings()));
    // The cold template (the pod) does not depend on the disk quota: the claim is the Sandbox's own.
    expect(buildSandboxTemplate(bigger, settings()).metadata!.name).toBe(buildSandboxTemplate(a, settings()).metadata!.name);
  });

  it("reads Kubernetes storage quantities", () => {
    expect(quantityBytes("256Mi")).toBe(256 * 2 ** 20);
    expect(quantityBytes("5Gi")).toBe(5 * 2 ** 30);
    expect(quantityBytes("1G")).toBe(1e9);
    expect(quantityBytes("1.5Gi")).toBe(1.5 * 2 ** 30);
    expect(quantityBytes("1073741824")).toBe(2 ** 30);
    expect(quantityBytes("lots")).toBeNull();
  });

});
