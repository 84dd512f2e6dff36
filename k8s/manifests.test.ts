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
import { EgressCa } from "../server/egress/ca";
import { createLogger } from "../server/logger";
import type { SandboxSpec } from "../server/sandbox/port";
import { CrdSchemas, FakeKubeApi } from "../tests/helpers/fake-kube-api";
import { freePort, waitFor } from "../tests/helpers/processes";
import { KubernetesSandboxBackend } from "./backend";
import { kubeSecretCaStore } from "./ca-secret";
import { KubeClient } from "./kube";
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

/** The placeholder the examples show where the installation's egress CA goes. */
const EXAMPLE_CA = "-----BEGIN CERTIFICATE-----\n(the installation's egress CA: tls.crt of the Secret berth-egress-ca)\n-----END CERTIFICATE-----\n";
/** What the examples (and k8s/manifests/deployment.yaml's defaults) are built with. */
const EXAMPLE_SETTINGS: KubernetesSandboxSettings = {
  namespace: "berth",
  image: "berth:latest",
  runtimeClassName: undefined,
  daemonPort: 8080,
  storageClassName: undefined,
  gateway: { address: "berth-egress.berth.svc:8081", listenPort: 8081, caPem: EXAMPLE_CA },
};

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
    const built = buildSandboxTemplate(spec({ network: "none", resources: { cpuMillis: 1000, memoryMb: 1024, diskMb: 2048 }, teamId: "00000000-0000-4000-8000-000000000001", agentId: "00000000-0000-4000-8000-000000000002" }), EXAMPLE_SETTINGS);
    expect(template.spec).toEqual(built.spec);
    // The name is the builder's but for the agent-id part (a hash of the very shape shown).
    expect(template.metadata.name.replace("berth-example-", "berth-00000000-")).toBe(built.metadata!.name);
    expect(JSON.stringify(template)).toContain("BERTH_DAEMON_GATEWAY");
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
    const settings = EXAMPLE_SETTINGS;
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
    // The egress gateway: a container port, BERTH_EGRESS_PORT on it, and the Service the pods dial by default.
    const container = deployment.spec.template.spec.containers[0]! as unknown as { ports: Array<{ name: string; containerPort: number }>; env: Array<{ name: string; value?: string }> };
    expect(container.ports).toContainEqual({ name: "egress", containerPort: 8081 });
    expect(env).toContainEqual({ name: "BERTH_EGRESS_PORT", value: "8081" });
    const egress = find("Service", "berth-egress") as Doc & { spec: { type: string; selector: Record<string, string>; ports: Array<{ port: number; targetPort: string }> } };
    expect(egress.spec.type).toBe("ClusterIP");
    expect(egress.spec.selector).toEqual((deployment.spec as unknown as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels);
    expect(egress.spec.ports).toEqual([{ name: "egress", port: 8081, targetPort: "egress", protocol: "TCP" }]);
    // What the platform defaults to (BERTH_K8S_EGRESS_ADDRESS unset) is that Service, in the pods' namespace.
    expect(EXAMPLE_SETTINGS.gateway!.address).toBe(`${egress.metadata.name}.${egress.metadata.namespace}.svc:${egress.spec.ports[0]!.port}`);
    const binding = find("RoleBinding") as Doc & { subjects: Array<{ name: string }>; roleRef: { name: string } };
    expect(binding.subjects).toEqual([{ kind: "ServiceAccount", name: "berth", namespace: "berth" }]);
    expect(binding.roleRef.name).toBe(find("Role")!.metadata.name);
  });

  it("the NetworkPolicies: sandbox pods reach only the gateway port of the Berth pods and DNS, whatever their agent's network; the gateway port accepts sandbox pods only", () => {
    type Peer = { podSelector?: { matchLabels: Record<string, string> }; namespaceSelector?: { matchLabels: Record<string, string> }; ipBlock?: unknown };
    type Rule = { to?: Peer[]; from?: Peer[]; ports?: Array<{ protocol: string; port: number }> };
    type Policy = Doc & { spec: { podSelector: { matchLabels: Record<string, string> }; policyTypes: string[]; egress?: Rule[]; ingress?: Rule[] } };
    const policies = all.filter((d) => d.doc.kind === "NetworkPolicy").map((d) => d.doc as Policy);
    expect(policies.map((p) => p.metadata.name).sort()).toEqual(["berth-platform-ingress", "berth-sandboxes-default-deny", "berth-sandboxes-gateway"]);
    const deny = find("NetworkPolicy", "berth-sandboxes-default-deny") as Policy;
    const gateway = find("NetworkPolicy", "berth-sandboxes-gateway") as Policy;
    const platform = find("NetworkPolicy", "berth-platform-ingress") as Policy;
    const deployment = find("Deployment", "berth") as Doc & { spec: { template: { metadata: { labels: Record<string, string> } } } };
    const platformLabels = deployment.spec.template.metadata.labels;
    const selects = (selector: { matchLabels: Record<string, string> } | undefined, labels: Record<string, string>) => Boolean(selector) && Object.entries(selector!.matchLabels).every(([k, v]) => labels[k] === v);
    const settings = EXAMPLE_SETTINGS;
    const podLabels = (network: "none" | "egress") => {
      const s = spec({ network });
      return (buildSandbox(s, settings, buildSandboxTemplate(s, settings)).spec as { podTemplate: { metadata: { labels: Record<string, string> } } }).podTemplate.metadata.labels;
    };
    const pooledLabels = (network: "none" | "egress") => (buildWarmPoolTemplate(spec({ network }), settings).spec as { podTemplate: { metadata: { labels: Record<string, string> } } }).podTemplate.metadata.labels;
    const sandboxPods = [podLabels("none"), podLabels("egress"), pooledLabels("none"), pooledLabels("egress")];

    // The agent's network setting no longer shapes the pod: same labels, same template, same pool.
    expect(podLabels("none")).toEqual(podLabels("egress"));
    expect(JSON.stringify(sandboxPods)).not.toContain("berth.dev/network");
    expect(buildSandboxTemplate(spec({ network: "none" }), settings).metadata!.name).toBe(buildSandboxTemplate(spec({ network: "egress" }), settings).metadata!.name);

    // Every sandbox pod, pooled or not: both sandbox policies select it, the platform's does not.
    for (const labels of sandboxPods) {
      expect(selects(deny.spec.podSelector, labels)).toBe(true);
      expect(selects(gateway.spec.podSelector, labels)).toBe(true);
      expect(selects(platform.spec.podSelector, labels)).toBe(false);
    }
    expect(selects(platform.spec.podSelector, platformLabels)).toBe(true);
    expect(selects(deny.spec.podSelector, platformLabels)).toBe(false);

    // In: only the platform, on the daemon port. Out: nothing but what the gateway policy lists.
    expect(deny.spec.policyTypes).toEqual(["Ingress", "Egress"]);
    expect(deny.spec.egress).toEqual([]);
    expect(deny.spec.ingress).toEqual([{ from: [{ podSelector: { matchLabels: platformLabels } }], ports: [{ protocol: "TCP", port: 8080 }] }]);
    expect(gateway.spec.policyTypes).toEqual(["Egress"]);
    const [toGateway, toDns, ...others] = gateway.spec.egress!;
    expect(others).toEqual([]);
    expect(toGateway).toEqual({ to: [{ podSelector: { matchLabels: platformLabels } }], ports: [{ protocol: "TCP", port: 8081 }] });
    expect(toDns!.to).toEqual([{ namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "kube-system" } }, podSelector: { matchLabels: { "k8s-app": "kube-dns" } } }]);
    expect(toDns!.ports).toEqual([
      { protocol: "UDP", port: 53 },
      { protocol: "TCP", port: 53 },
    ]);
    expect(JSON.stringify(policies)).not.toContain("ipBlock");
    // The templates say the same (informational: networkPolicyManagement Unmanaged).
    expect((buildSandboxTemplate(spec(), settings).spec as { networkPolicy: unknown }).networkPolicy).toEqual({ egress: gateway.spec.egress });
    expect((buildWarmPoolTemplate(spec(), settings).spec as { networkPolicy: unknown }).networkPolicy).toEqual({ egress: gateway.spec.egress });

    // The Berth pods: HTTP from anywhere (as without a policy), the gateway port from sandbox pods only.
    const egressService = find("Service", "berth-egress") as Doc & { spec: { ports: Array<{ port: number }> } };
    expect(platform.spec.policyTypes).toEqual(["Ingress"]);
    expect(platform.spec.ingress).toEqual([
      { ports: [{ protocol: "TCP", port: 3000 }] },
      { from: [{ podSelector: { matchLabels: deny.spec.podSelector.matchLabels } }], ports: [{ protocol: "TCP", port: egressService.spec.ports[0]!.port }] },
    ]);
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

  let kubeConfig: KubeConfig;
  const caStore = () =>
    kubeSecretCaStore({ kube: new KubeClient(kubeConfig, { namespace: "berth", requestTimeoutMs: 5_000, retries: 2, retryBaseMs: 20, logger: createLogger("silent") }), namespace: "berth" });

  beforeAll(async () => {
    fake = await new FakeKubeApi().start();
    kubeConfig = new KubeConfig();
    kubeConfig.loadFromString(fake.kubeconfig("berth"));
    // The egress CA (what server/main.ts opens through kubernetesCaStore): the first replica creates it.
    const ca = await EgressCa.open(caStore());
    backend = await KubernetesSandboxBackend.create({
      namespace: "berth",
      image: "berth:test",
      runtimeClassName: undefined,
      daemonPort: await freePort(),
      storageClassName: undefined,
      gateway: { address: `127.0.0.1:${await freePort()}`, listenPort: 8081, caPem: ca.certificatePem },
      kubeConfig,
      tokenFor: (name) => `token-${name}-${"y".repeat(32)}`,
      gatewayTokenFor: (name) => `${name}~gateway-${"z".repeat(32)}`,
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
    // Another replica starting: it reads the egress CA the first one made.
    await EgressCa.open(caStore());

    const role = find("Role") as Doc & { rules: Array<{ apiGroups: string[]; resources: string[]; resourceNames?: string[]; verbs: string[] }> };
    // A rule with resourceNames grants its verbs on those objects only: "group/resource/verb:name".
    const granted = new Set(
      role.rules.flatMap((rule) =>
        rule.apiGroups.flatMap((g) => rule.resources.flatMap((r) => rule.verbs.flatMap((v) => (rule.resourceNames ? rule.resourceNames.map((n) => `${g}/${r}/${v}:${n}`) : [`${g}/${r}/${v}`])))),
      ),
    );
    const used = new Set<string>();
    for (const request of fake.requests) {
      const core = /^\/api\/v1\/namespaces\/[^/]+\/([^/]+)(?:\/([^/]+))?$/.exec(request.path);
      const grouped = /^\/apis\/([^/]+)\/[^/]+\/namespaces\/[^/]+\/([^/]+)(?:\/([^/]+))?$/.exec(request.path);
      const [group, resource, name] = core ? ["", core[1]!, core[2]] : [grouped![1]!, grouped![2]!, grouped![3]];
      const verb =
        request.method === "GET" ? (name ? "get" : request.query.watch ? "watch" : "list") : ({ POST: "create", PUT: "update", PATCH: "patch", DELETE: "delete" } as Record<string, string>)[request.method]!;
      // Counted against a named grant when there is one for exactly this object, otherwise against the resource-wide one.
      const key = name && granted.has(`${group}/${resource}/${verb}:${name}`) ? `${group}/${resource}/${verb}:${name}` : `${group}/${resource}/${verb}`;
      used.add(key);
    }
    expect(used).toContain("/secrets/get:berth-egress-ca");
    expect([...used].sort()).toEqual([...granted].sort());
  });
});
