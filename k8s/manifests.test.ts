/**
 * The manifests under k8s/manifests: they parse, the example SandboxTemplate passes the CRD schema,
 * the NetworkPolicies select the pods the backend makes, and the Role grants exactly the calls the
 * backend is seen making against the stand-in API server: nothing more, nothing missing.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { KubeConfig } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { createLogger } from "../server/logger";
import type { SandboxSpec } from "../server/sandbox/port";
import { CrdSchemas, FakeKubeApi } from "../tests/helpers/fake-kube-api";
import { freePort, waitFor } from "../tests/helpers/processes";
import { KubernetesSandboxBackend } from "./backend";
import { buildSandbox, buildSandboxClaim, buildSandboxTemplate, buildWarmPool, buildWarmPoolTemplate, type KubernetesSandboxSettings } from "./resources";

const DIR = path.join(import.meta.dirname, "manifests");
type Doc = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; [key: string]: unknown };

function load(file: string): Doc[] {
  const docs = YAML.parseAllDocuments(readFileSync(path.join(DIR, file), "utf8"));
  for (const doc of docs) expect(doc.errors, `${file}: ${doc.errors.map((e) => e.message).join("; ")}`).toEqual([]);
  return docs.map((doc) => doc.toJS() as Doc).filter(Boolean);
}

const files = readdirSync(DIR).filter((file) => file.endsWith(".yaml"));
const all = files.flatMap((file) => load(file).map((doc) => ({ file, doc })));
const find = (kind: string, name?: string) => all.map((d) => d.doc).find((doc) => doc.kind === kind && (!name || doc.metadata.name === name));

function spec(overrides: Partial<SandboxSpec> = {}): SandboxSpec {
  return {
    name: "s-rbac-g1",
    teamId: "11111111-2222-4333-8444-555555555555",
    agentId: "99999999-8888-4777-8666-555555555555",
    sessionId: "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
    generation: 1,
    network: "egress",
    env: { A: "b" },
    resources: { cpuMillis: 250, memoryMb: 256, diskMb: 2048 },
    image: null,
    ...overrides,
  };
}

describe("k8s/manifests", () => {
  it("every file parses as YAML into named Kubernetes objects, namespaced ones in berth", () => {
    expect(files.length).toBeGreaterThanOrEqual(7);
    for (const { file, doc } of all) {
      if (file === "kustomization.yaml") continue;
      expect(doc.apiVersion, file).toBeTruthy();
      expect(doc.kind, file).toBeTruthy();
      expect(doc.metadata?.name, file).toBeTruthy();
      if (doc.kind !== "Namespace") expect(doc.metadata.namespace, `${file} ${doc.kind}`).toBe("berth");
    }
    const kustomization = find("Kustomization")!;
    for (const resource of kustomization.resources as string[]) expect(existsSync(path.join(DIR, resource)), resource).toBe(true);
  });

  it("the example SandboxTemplate passes the CRD schema, with no unknown fields, and matches what the backend builds", () => {
    const schemas = new CrdSchemas();
    const template = find("SandboxTemplate")!;
    expect(template.apiVersion).toBe("extensions.agents.x-k8s.io/v1beta1");
    expect(schemas.unknownFields("SandboxTemplate", "v1beta1", template)).toEqual([]);
    expect(schemas.validate("SandboxTemplate", "v1beta1", template)).toEqual([]);
    const built = buildSandboxTemplate(spec({ network: "none", resources: { cpuMillis: 1000, memoryMb: 1024, diskMb: 2048 }, teamId: "00000000-0000-4000-8000-000000000001", agentId: "00000000-0000-4000-8000-000000000002" }), {
      namespace: "berth",
      image: "berth:latest",
      runtimeClassName: undefined,
      daemonPort: 8080,
      storageClassName: undefined,
    });
    expect(template.spec).toEqual(built.spec);
    // And a broken copy is refused, so the check above means something.
    const broken = structuredClone(template) as Doc & { spec: Record<string, unknown> };
    broken.spec.envVarsInjectionPolicy = "Sometimes";
    expect(schemas.validate("SandboxTemplate", "v1beta1", broken).join()).toContain("spec.envVarsInjectionPolicy");
  });

  it("the example warm pool (template, SandboxWarmPool, SandboxClaim) passes the CRD schemas and matches what the backend builds", () => {
    const schemas = new CrdSchemas();
    const docs = all.filter((d) => d.file === "sandbox-warm-pool.example.yaml").map((d) => d.doc);
    expect(docs.map((d) => d.kind)).toEqual(["SandboxTemplate", "SandboxWarmPool", "SandboxClaim"]);
    const s = spec({ name: "s-0000000a-g1-x7k2p", sessionId: "00000000-0000-4000-8000-00000000000a", network: "none", resources: { cpuMillis: 1000, memoryMb: 1024, diskMb: 2048 }, teamId: "00000000-0000-4000-8000-000000000001", agentId: "00000000-0000-4000-8000-000000000002", env: {}, warmPoolSize: 2 });
    const settings = { namespace: "berth", image: "berth:latest", runtimeClassName: undefined, daemonPort: 8080, storageClassName: undefined };
    const pool = buildWarmPool(s, settings, 2);
    const built = [buildWarmPoolTemplate(s, settings), pool, buildSandboxClaim(s, settings, pool.metadata!.name!)];
    for (const [index, doc] of docs.entries()) {
      expect(schemas.unknownFields(doc.kind, "v1beta1", doc)).toEqual([]);
      expect(schemas.validate(doc.kind, "v1beta1", doc)).toEqual([]);
      expect(doc).toEqual(built[index]);
    }
    expect(JSON.stringify(docs)).toContain("BERTH_DAEMON_UNBOUND");
  });

  it("the Deployment runs several replicas under the berth ServiceAccount with the kubernetes backend", () => {
    const deployment = find("Deployment", "berth") as Doc & { spec: { replicas: number; template: { spec: { serviceAccountName: string; containers: Array<{ env: Array<{ name: string; value?: string }> }> } } } };
    expect(deployment.spec.replicas).toBeGreaterThan(1);
    expect(deployment.spec.template.spec.serviceAccountName).toBe("berth");
    const env = deployment.spec.template.spec.containers[0]!.env;
    expect(env).toContainEqual({ name: "BERTH_SANDBOX_BACKEND", value: "kubernetes" });
    expect(find("ServiceAccount", "berth")).toBeDefined();
    expect(find("Service", "berth")).toBeDefined();
    const binding = find("RoleBinding") as Doc & { subjects: Array<{ name: string }>; roleRef: { name: string } };
    expect(binding.subjects).toEqual([{ kind: "ServiceAccount", name: "berth", namespace: "berth" }]);
    expect(binding.roleRef.name).toBe(find("Role")!.metadata.name);
  });

  it("the NetworkPolicies select the sandbox pods the backend makes: no egress by default, no metadata or cluster ranges with egress", () => {
    type Policy = Doc & { spec: { podSelector: { matchLabels: Record<string, string> }; policyTypes: string[]; egress: Array<{ to?: Array<{ ipBlock?: { cidr: string; except: string[] } }> }>; ingress?: unknown[] } };
    const deny = find("NetworkPolicy", "berth-sandboxes-default-deny") as Policy;
    const egress = find("NetworkPolicy", "berth-sandboxes-egress") as Policy;
    const settings: KubernetesSandboxSettings = { namespace: "berth", image: "berth:latest", runtimeClassName: undefined, daemonPort: 8080, storageClassName: undefined };
    const podLabels = (network: "none" | "egress") => {
      const s = spec({ network });
      return (buildSandbox(s, settings, buildSandboxTemplate(s, settings)).spec as { podTemplate: { metadata: { labels: Record<string, string> } } }).podTemplate.metadata.labels;
    };
    const selects = (policy: Policy, labels: Record<string, string>) => Object.entries(policy.spec.podSelector.matchLabels).every(([k, v]) => labels[k] === v);
    expect(selects(deny, podLabels("none"))).toBe(true);
    expect(selects(deny, podLabels("egress"))).toBe(true);
    expect(selects(egress, podLabels("none"))).toBe(false);
    expect(selects(egress, podLabels("egress"))).toBe(true);
    // Pooled pods (warm pools) are selected the same way.
    const pooledLabels = (network: "none" | "egress") => (buildWarmPoolTemplate(spec({ network }), settings).spec as { podTemplate: { metadata: { labels: Record<string, string> } } }).podTemplate.metadata.labels;
    expect(selects(deny, pooledLabels("none"))).toBe(true);
    expect(selects(egress, pooledLabels("none"))).toBe(false);
    expect(selects(egress, pooledLabels("egress"))).toBe(true);
    expect(deny.spec.policyTypes).toEqual(["Ingress", "Egress"]);
    expect(deny.spec.egress).toEqual([]);
    const blocked = egress.spec.egress.flatMap((rule) => rule.to ?? []).flatMap((peer) => peer.ipBlock?.except ?? []);
    for (const range of ["169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]) expect(blocked).toContain(range);
  });
});

describe("bin/kind-up.sh and bin/eks-up.sh", () => {
  it("are valid bash, pin the agent-sandbox release, and apply only manifests that exist", () => {
    for (const script of ["kind-up.sh", "eks-up.sh"]) {
      const file = path.join(import.meta.dirname, "..", "bin", script);
      execFileSync("bash", ["-n", file]);
      const text = readFileSync(file, "utf8");
      expect(text).toMatch(/AGENT_SANDBOX_VERSION="\$\{AGENT_SANDBOX_VERSION:-v\d+\.\d+\.\d+\}"/);
      for (const [, manifest] of text.matchAll(/k8s\/manifests\/([a-z.-]+\.yaml)/g)) expect(existsSync(path.join(DIR, manifest!)), `${script}: ${manifest}`).toBe(true);
    }
  });
});

describe("the Role grants exactly what the backend calls", () => {
  let fake: FakeKubeApi;
  let backend: KubernetesSandboxBackend;

  beforeAll(async () => {
    fake = await new FakeKubeApi().start();
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromString(fake.kubeconfig("berth"));
    backend = await KubernetesSandboxBackend.create({
      namespace: "berth",
      image: "berth:test",
      runtimeClassName: undefined,
      daemonPort: await freePort(),
      storageClassName: undefined,
      kubeConfig,
      tokenFor: (name) => `token-${name}-${"y".repeat(32)}`,
      logger: createLogger("silent"),
      // A wait that hangs fails with its own message (which sandbox, which condition), well inside the test's timeout.
      readyTimeoutMs: 30_000,
    });
  });
  afterAll(async () => {
    await backend?.shutdown();
    await fake?.stop();
  });

  it("every verb on every resource, and only those", { timeout: 180_000 }, async () => {
    const lost: string[] = [];
    backend.onLost((loss) => lost.push(loss.name));
    const s = spec();
    await backend.provision(s);
    await backend.provision(s); // a retried provision: Secret replaced, Sandbox adopted
    await backend.status(s.name);
    await backend.list();
    await backend.suspend(s.name); // idle: operatingMode Suspended
    await waitFor("pod gone", () => (fake.pod(s.name) ? undefined : true));
    await backend.provision(spec({ name: "s-rbac-g2", generation: 2 })); // resumes s-rbac-g1
    fake.killDaemon(s.name);
    await waitFor("loss", () => (lost.includes(s.name) ? true : undefined));
    await backend.stop(s.name, "done");
    await backend.listWorkspaces();
    await backend.deleteWorkspace(s.sessionId); // terminated: its claim goes

    // An agent with a warm pool: pool made, resized, a session claims from it, stops, pool removed.
    const p = spec({ name: "s-rbacpool-g1", sessionId: "22222222-2222-4222-8222-222222222222", warmPoolSize: 1 });
    const wanted = { teamId: p.teamId, agentId: p.agentId, network: p.network, resources: p.resources, image: p.image };
    await backend.syncWarmPools([{ ...wanted, size: 1 }]);
    await backend.syncWarmPools([{ ...wanted, size: 2 }]);
    const pooled = await backend.provision(p);
    await backend.list();
    await backend.stop(pooled.name, "done");
    await backend.syncWarmPools([]);

    const used = new Set<string>();
    for (const request of fake.requests) {
      const core = /^\/api\/v1\/namespaces\/[^/]+\/([^/]+)(\/[^/]+)?$/.exec(request.path);
      const grouped = /^\/apis\/([^/]+)\/[^/]+\/namespaces\/[^/]+\/([^/]+)(\/[^/]+)?$/.exec(request.path);
      const [group, resource, named] = core ? ["", core[1]!, Boolean(core[2])] : [grouped![1]!, grouped![2]!, Boolean(grouped![3])];
      const verb =
        request.method === "GET" ? (named ? "get" : request.query.watch ? "watch" : "list") : ({ POST: "create", PUT: "update", PATCH: "patch", DELETE: "delete" } as Record<string, string>)[request.method]!;
      used.add(`${group}/${resource}/${verb}`);
    }
    const role = find("Role") as Doc & { rules: Array<{ apiGroups: string[]; resources: string[]; verbs: string[] }> };
    const granted = new Set(role.rules.flatMap((rule) => rule.apiGroups.flatMap((g) => rule.resources.flatMap((r) => rule.verbs.map((v) => `${g}/${r}/${v}`)))));
    expect([...used].sort()).toEqual([...granted].sort());
  });
});
