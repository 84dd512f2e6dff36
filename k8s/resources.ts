/**
 * The Kubernetes objects the `kubernetes` sandbox backend writes, built as plain JSON in the
 * agent-sandbox v1beta1 wire format (field names from the vendored CRDs in k8s/crds/).
 * Pure functions: no API calls here, so the shapes are easy to test against the CRD schemas.
 */
import { createHash } from "node:crypto";
import type { SandboxSpec } from "../server/sandbox/port";

export const SANDBOX_GROUP = "agents.x-k8s.io";
export const EXTENSIONS_GROUP = "extensions.agents.x-k8s.io";
export const API_VERSION = "v1beta1";
export const SANDBOXES = "sandboxes";
export const SANDBOX_TEMPLATES = "sandboxtemplates";

export const LABELS = {
  managedBy: "app.kubernetes.io/managed-by",
  component: "berth.dev/component",
  team: "berth.dev/team",
  agent: "berth.dev/agent",
  session: "berth.dev/session",
  generation: "berth.dev/generation",
  sandbox: "berth.dev/sandbox",
} as const;
export const MANAGED_BY = "berth";
export const TEMPLATE_ANNOTATION = "berth.dev/sandbox-template";
/** The session's workspace PVC a Sandbox mounts (berth-ws-<session>, or the PVC its pooled first generation got). */
export const WORKSPACE_ANNOTATION = "berth.dev/workspace";

/** Selects every Sandbox this backend made. */
export const SANDBOX_SELECTOR = `${LABELS.managedBy}=${MANAGED_BY},${LABELS.component}=sandbox`;
export const ENV_SECRET_SELECTOR = `${LABELS.managedBy}=${MANAGED_BY},${LABELS.component}=sandbox-env`;

const CONTAINER = "sandboxd";
export const WORKSPACE_VOLUME = "workspace";
export const WORKSPACE_MOUNT = "/workspace";
/** The daemon inside the Berth image (see the Dockerfile: the build lands in /app/build). */
export const DAEMON_COMMAND = ["node", "/app/build/sandboxd.js"];
/** The image's `berth` user: runAsNonRoot needs a numeric uid to verify. */
const SANDBOX_UID = 10001;

export type KubernetesSandboxSettings = {
  namespace: string;
  /** The Berth image (it carries build/sandboxd.js); an agent's own sandboxImage overrides it. */
  image: string;
  runtimeClassName: string | undefined;
  daemonPort: number;
  storageClassName: string | undefined;
  /** The egress gateway, the sandbox pods' only way out; null: pods without one (no egress at all). */
  gateway: SandboxGateway | null;
};

/** Where sandbox pods reach the egress gateway in the Berth pods, and what they trust. */
export type SandboxGateway = {
  /** HOST:PORT the pods dial (BERTH_K8S_EGRESS_ADDRESS; by default the `berth-egress` Service). */
  address: string;
  /** The port the Berth pods' gateway listens on (BERTH_EGRESS_PORT): the one port their NetworkPolicy opens. */
  listenPort: number;
  /** PEM of the installation's egress CA (the gateway terminates TLS of inspected hosts with it). Public. */
  caPem: string;
};

export type KubeObject = {
  apiVersion?: string;
  kind?: string;
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    deletionTimestamp?: string;
    creationTimestamp?: string;
    ownerReferences?: Array<Record<string, unknown>>;
  };
  spec?: Record<string, unknown>;
  status?: Record<string, unknown>;
  [key: string]: unknown;
};

export type Condition = { type: string; status: "True" | "False" | "Unknown"; reason?: string; message?: string; lastTransitionTime?: string };

export type SandboxObject = KubeObject & {
  spec?: { operatingMode?: "Running" | "Suspended"; [key: string]: unknown };
  status?: { serviceFQDN?: string; service?: string; conditions?: Condition[]; podIPs?: string[]; [key: string]: unknown };
};

/**
 * The identity of a template: everything that shapes the pod except the session's own env and volume.
 * Not the agent's network mode or egress policy: every pod is alike there (its one way out is the
 * gateway, which decides per connection), so agents that differ only in that share templates. The
 * gateway's address and CA are in it: a new CA (or address) is a new template, never a pod that
 * trusts the wrong one.
 */
function templateShape(spec: Pick<SandboxSpec, "image" | "resources">, settings: KubernetesSandboxSettings) {
  return {
    image: spec.image ?? settings.image,
    cpuMillis: spec.resources.cpuMillis,
    memoryMb: spec.resources.memoryMb,
    runtimeClassName: settings.runtimeClassName ?? null,
    daemonPort: settings.daemonPort,
    gateway: settings.gateway ? { address: settings.gateway.address, listenPort: settings.gateway.listenPort, ca: createHash("sha256").update(settings.gateway.caPem).digest("hex") } : null,
  };
}

/**
 * One SandboxTemplate per agent version: the name is the agent plus a hash of what shapes its pod,
 * so every session of that version (and an unchanged later version) shares it.
 */
export function templateNameFor(spec: Pick<SandboxSpec, "agentId" | "image" | "resources">, settings: KubernetesSandboxSettings): string {
  const hash = createHash("sha256").update(JSON.stringify(templateShape(spec, settings))).digest("hex").slice(0, 12);
  return `berth-${spec.agentId.slice(0, 8).toLowerCase()}-${hash}`;
}

export function workspaceClaimName(sessionId: string): string {
  return `berth-ws-${sessionId.toLowerCase()}`;
}

/** A workspace claim's requested storage: the agent version's disk quota (`diskMb`), in MiB. */
export function workspaceStorage(spec: Pick<SandboxSpec, "resources">): string {
  return `${spec.resources.diskMb}Mi`;
}

const QUANTITY = /^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$/;
const QUANTITY_FACTORS: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18, m: 1e-3 };

/** Bytes of a Kubernetes storage quantity (`5Gi`, `2048Mi`, `1G`, `1073741824`); null when it is not one this reads. */
export function quantityBytes(quantity: unknown): number | null {
  if (typeof quantity === "number") return quantity;
  if (typeof quantity !== "string") return null;
  const match = QUANTITY.exec(quantity.trim());
  if (!match) return null;
  return Number(match[1]) * (match[2] ? QUANTITY_FACTORS[match[2]]! : 1);
}

export function envSecretName(sandboxName: string): string {
  return `${sandboxName}-env`;
}

function baseLabels(spec: Pick<SandboxSpec, "teamId" | "agentId">, component: string): Record<string, string> {
  return { [LABELS.managedBy]: MANAGED_BY, [LABELS.component]: component, [LABELS.team]: spec.teamId, [LABELS.agent]: spec.agentId };
}

/**
 * The pod every sandbox of this agent version runs: no session data in it, ever. With the gateway,
 * the daemon forwards a loopback port to it and gives commands the proxy variables; the sandbox's
 * own gateway token comes from its env Secret (cold) or its bind (warm pool), never from here.
 */
export function buildPodTemplate(spec: Pick<SandboxSpec, "image" | "resources">, settings: KubernetesSandboxSettings) {
  const shape = templateShape(spec, settings);
  const memory = `${shape.memoryMb}Mi`;
  const labels: Record<string, string> = { [LABELS.managedBy]: MANAGED_BY, [LABELS.component]: "sandbox" };
  const gateway = settings.gateway;
  return {
    metadata: { labels },
    spec: {
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      restartPolicy: "Never",
      ...(shape.runtimeClassName ? { runtimeClassName: shape.runtimeClassName } : {}),
      securityContext: {
        runAsNonRoot: true,
        runAsUser: SANDBOX_UID,
        runAsGroup: SANDBOX_UID,
        fsGroup: SANDBOX_UID,
        seccompProfile: { type: "RuntimeDefault" },
      },
      containers: [
        {
          name: CONTAINER,
          image: shape.image,
          command: DAEMON_COMMAND,
          workingDir: WORKSPACE_MOUNT,
          ports: [{ name: "daemon", containerPort: shape.daemonPort, protocol: "TCP" }],
          env: [
            { name: "BERTH_DAEMON_LISTEN", value: `tcp:0.0.0.0:${shape.daemonPort}` },
            { name: "BERTH_WORKSPACE", value: WORKSPACE_MOUNT },
            // The pod has a PID namespace of its own (no shareProcessNamespace), the daemon is its PID 1:
            // what an exec leaves behind is swept when the last exec ends.
            { name: "BERTH_DAEMON_SWEEP", value: "1" },
            { name: "HOME", value: WORKSPACE_MOUNT },
            ...(gateway
              ? [
                  { name: "BERTH_DAEMON_GATEWAY", value: `tcp:${gateway.address}` },
                  // Public (a certificate): the template may carry it; it is in the template's name hash.
                  { name: "BERTH_DAEMON_CA_PEM", value: gateway.caPem },
                ]
              : []),
          ] as Array<{ name: string; value?: string; valueFrom?: unknown }>,
          resources: {
            requests: { cpu: `${shape.cpuMillis}m`, memory },
            limits: { cpu: `${shape.cpuMillis}m`, memory },
          },
          securityContext: {
            allowPrivilegeEscalation: false,
            readOnlyRootFilesystem: true,
            runAsNonRoot: true,
            capabilities: { drop: ["ALL"] },
            seccompProfile: { type: "RuntimeDefault" },
          },
          readinessProbe: { tcpSocket: { port: shape.daemonPort }, periodSeconds: 2, failureThreshold: 3 },
          volumeMounts: [
            { name: WORKSPACE_VOLUME, mountPath: WORKSPACE_MOUNT },
            { name: "tmp", mountPath: "/tmp" },
          ],
        },
      ],
      volumes: [
        // Placeholder: each Sandbox replaces it with its session's PersistentVolumeClaim.
        { name: WORKSPACE_VOLUME, emptyDir: {} },
        { name: "tmp", emptyDir: { sizeLimit: "1Gi" } },
      ],
    },
  };
}

/** The Berth pods (k8s/manifests/deployment.yaml): where the egress gateway runs. */
export const PLATFORM_POD_LABELS = { "app.kubernetes.io/name": "berth", "app.kubernetes.io/component": "platform" } as const;

/**
 * What a sandbox pod may reach, whatever its agent's egress policy (the gateway applies that, per
 * connection): the Berth pods' gateway port, and cluster DNS so the gateway's Service name resolves
 * (the one other channel; an address given as an IP, BERTH_K8S_EGRESS_ADDRESS, needs no DNS). The
 * same rules as the `berth-sandboxes-gateway` NetworkPolicy in k8s/manifests/networkpolicies.yaml;
 * none without a gateway.
 */
export function egressRules(gateway: SandboxGateway | null): Array<Record<string, unknown>> {
  if (!gateway) return [];
  return [
    { to: [{ podSelector: { matchLabels: { ...PLATFORM_POD_LABELS } } }], ports: [{ protocol: "TCP", port: gateway.listenPort }] },
    {
      to: [{ namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "kube-system" } }, podSelector: { matchLabels: { "k8s-app": "kube-dns" } } }],
      ports: [
        { protocol: "UDP", port: 53 },
        { protocol: "TCP", port: 53 },
      ],
    },
  ];
}

export function buildSandboxTemplate(spec: SandboxSpec, settings: KubernetesSandboxSettings): KubeObject {
  return {
    apiVersion: `${EXTENSIONS_GROUP}/${API_VERSION}`,
    kind: "SandboxTemplate",
    metadata: {
      name: templateNameFor(spec, settings),
      namespace: settings.namespace,
      labels: baseLabels(spec, "template"),
    },
    spec: {
      podTemplate: buildPodTemplate(spec, settings),
      service: true,
      // Berth creates Sandboxes itself (not through claims), and its own NetworkPolicies (k8s/manifests/)
      // select the pods by Berth's labels; the controller's per-template policy would block the platform.
      // `networkPolicy` says what those allow out (informational while Unmanaged).
      networkPolicyManagement: "Unmanaged",
      networkPolicy: { egress: egressRules(settings.gateway) },
      envVarsInjectionPolicy: "Disallowed",
    },
  };
}

/**
 * The per-generation Secret holding the session's environment, the daemon token and (with the
 * gateway) the sandbox's gateway token, issued for `spec.name`: the name its `sandboxes` row ends
 * up with, which is how the gateway finds its session.
 */
export function buildEnvSecret(spec: SandboxSpec, settings: KubernetesSandboxSettings, token: string, gatewayToken: string | null = null): KubeObject {
  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: {
      name: envSecretName(spec.name),
      namespace: settings.namespace,
      labels: { ...baseLabels(spec, "sandbox-env"), [LABELS.session]: spec.sessionId, [LABELS.sandbox]: spec.name },
    },
    type: "Opaque",
    // The daemon's own settings are not the session's to choose.
    stringData: {
      ...Object.fromEntries(Object.entries(spec.env).filter(([key]) => !key.startsWith("BERTH_DAEMON_"))),
      BERTH_DAEMON_TOKEN: token,
      ...(settings.gateway && gatewayToken ? { BERTH_DAEMON_GATEWAY_TOKEN: gatewayToken } : {}),
    },
  };
}

/** The session's workspace: one claim per session, kept across generations and suspension. */
export function buildWorkspaceClaim(spec: SandboxSpec, settings: KubernetesSandboxSettings): KubeObject {
  return {
    apiVersion: "v1",
    kind: "PersistentVolumeClaim",
    metadata: {
      name: workspaceClaimName(spec.sessionId),
      namespace: settings.namespace,
      labels: { ...baseLabels(spec, "workspace"), [LABELS.session]: spec.sessionId },
    },
    spec: {
      accessModes: ["ReadWriteOnce"],
      resources: { requests: { storage: workspaceStorage(spec) } },
      ...(settings.storageClassName ? { storageClassName: settings.storageClassName } : {}),
    },
  };
}

/**
 * The Sandbox of one session generation: the template's pod, plus the session's env (from its own
 * Secret, never the shared template) and its workspace claim.
 */
export function buildSandbox(spec: SandboxSpec, settings: KubernetesSandboxSettings, template: KubeObject, workspaceClaim = workspaceClaimName(spec.sessionId)): SandboxObject {
  const templateSpec = (template.spec ?? {}) as { podTemplate?: ReturnType<typeof buildPodTemplate> };
  const podTemplate = structuredClone(templateSpec.podTemplate ?? buildPodTemplate(spec, settings));
  const labels = { ...baseLabels(spec, "sandbox"), [LABELS.session]: spec.sessionId, [LABELS.generation]: String(spec.generation) };
  podTemplate.metadata = { labels: { ...podTemplate.metadata?.labels, ...labels, [LABELS.sandbox]: spec.name } };
  for (const container of podTemplate.spec.containers) {
    (container as Record<string, unknown>).envFrom = [{ secretRef: { name: envSecretName(spec.name) } }];
  }
  podTemplate.spec.volumes = podTemplate.spec.volumes.map((volume) =>
    volume.name === WORKSPACE_VOLUME ? ({ name: WORKSPACE_VOLUME, persistentVolumeClaim: { claimName: workspaceClaim } } as never) : volume,
  );
  return {
    apiVersion: `${SANDBOX_GROUP}/${API_VERSION}`,
    kind: "Sandbox",
    metadata: {
      name: spec.name,
      namespace: settings.namespace,
      labels,
      annotations: { [TEMPLATE_ANNOTATION]: template.metadata?.name ?? "", [WORKSPACE_ANNOTATION]: workspaceClaim },
    },
    spec: {
      podTemplate,
      service: true,
      operatingMode: "Running",
    },
  };
}

export function readyCondition(sandbox: SandboxObject): Condition | undefined {
  return sandbox.status?.conditions?.find((condition) => condition.type === "Ready");
}

export function isReady(sandbox: SandboxObject): boolean {
  return readyCondition(sandbox)?.status === "True" && Boolean(sandbox.status?.serviceFQDN);
}

/** A Sandbox that will not become ready by waiting: its pod finished, or it expired. */
export function terminalReason(sandbox: SandboxObject): string | null {
  const finished = sandbox.status?.conditions?.find((condition) => condition.type === "Finished" && condition.status === "True");
  if (finished) return `its pod finished (${finished.reason ?? "unknown"}${finished.message ? `: ${finished.message}` : ""})`;
  const ready = readyCondition(sandbox);
  if (ready?.status === "False" && ready.reason && ["PodFailed", "PodSucceeded", "SandboxExpired", "MultiplePods"].includes(ready.reason)) {
    return `${ready.reason}${ready.message ? `: ${ready.message}` : ""}`;
  }
  return null;
}

// ---------------------------------------------------------------- warm pools (SandboxWarmPool + SandboxClaim)

export const SANDBOX_CLAIMS = "sandboxclaims";
export const SANDBOX_WARM_POOLS = "sandboxwarmpools";
/** The agent-sandbox controller's labels (api/v1beta1/sandbox_types.go, sandbox_controller.go). */
export const CONTROLLER_LABELS = {
  launchType: "agents.x-k8s.io/launch-type",
  warmPoolSandbox: "agents.x-k8s.io/warm-pool-sandbox",
  /** On a PVC made from a volumeClaimTemplate: the Sandbox controller re-adopts an unowned PVC carrying it. */
  sandboxNameHash: "agents.x-k8s.io/sandbox-name-hash",
} as const;
/** On a Sandbox Berth adopted through a claim: the claim's name (stop deletes the claim, not just the Sandbox). */
export const CLAIM_LABEL = "berth.dev/claim";
export const POOLED_LABEL = "berth.dev/pooled";
export const CLAIM_SELECTOR = `${LABELS.managedBy}=${MANAGED_BY},${LABELS.component}=sandbox-claim`;
export const WARM_POOL_SELECTOR = `${LABELS.managedBy}=${MANAGED_BY},${LABELS.component}=warm-pool`;
export const WORKSPACE_SELECTOR = `${LABELS.managedBy}=${MANAGED_BY},${LABELS.component}=workspace`;

/** What a warm pool's pods share: the template's shape plus the workspace volume each pooled Sandbox gets. */
export type WarmPoolShape = Pick<SandboxSpec, "teamId" | "agentId" | "resources" | "image">;

/**
 * One SandboxWarmPool (and its own SandboxTemplate and token Secret, all of the same name) per
 * pod shape of an agent: the cold template's name plus `-p` and a hash of the workspace claim the
 * pool's Sandboxes get (the agent's disk quota, the StorageClass), so a new diskMb is a new pool.
 */
export function warmPoolNameFor(spec: WarmPoolShape, settings: KubernetesSandboxSettings): string {
  const base = templateNameFor(spec, settings);
  const workspace = createHash("sha256").update(JSON.stringify([workspaceStorage(spec), settings.storageClassName ?? null])).digest("hex").slice(0, 4);
  return `${base}-p${workspace}`;
}

export function poolTokenSecretName(poolName: string): string {
  return `${poolName}-token`;
}

/** The PVC the Sandbox controller makes for a pooled Sandbox's workspace volumeClaimTemplate. */
export function pooledWorkspaceClaimName(sandboxName: string): string {
  return `${WORKSPACE_VOLUME}-${sandboxName}`;
}

/**
 * The pool's template: the same pod, but the daemon starts unbound (no session until POST /v1/bind)
 * with the pool's token from the pool's own Secret, and the workspace is a volumeClaimTemplate so
 * every pooled Sandbox gets its own PVC. Nothing of any session is in it.
 */
export function buildWarmPoolTemplate(spec: WarmPoolShape, settings: KubernetesSandboxSettings): KubeObject {
  const name = warmPoolNameFor(spec, settings);
  const podTemplate = buildPodTemplate(spec, settings);
  podTemplate.metadata.labels[LABELS.team] = spec.teamId;
  podTemplate.metadata.labels[LABELS.agent] = spec.agentId;
  podTemplate.metadata.labels[POOLED_LABEL] = "true";
  for (const container of podTemplate.spec.containers) {
    (container.env as Array<Record<string, unknown>>).push(
      { name: "BERTH_DAEMON_UNBOUND", value: "1" },
      { name: "BERTH_DAEMON_TOKEN", valueFrom: { secretKeyRef: { name: poolTokenSecretName(name), key: "BERTH_DAEMON_TOKEN" } } },
      // The pool's gateway token: no sandbox row has the pool's name, so the gateway lets nothing
      // out for it; the claim's bind replaces it with the claimed sandbox's own.
      ...(settings.gateway ? [{ name: "BERTH_DAEMON_GATEWAY_TOKEN", valueFrom: { secretKeyRef: { name: poolTokenSecretName(name), key: "BERTH_DAEMON_GATEWAY_TOKEN" } } }] : []),
    );
  }
  // The controller mounts the volumeClaimTemplate of the same name in its place.
  podTemplate.spec.volumes = podTemplate.spec.volumes.filter((volume) => volume.name !== WORKSPACE_VOLUME);
  return {
    apiVersion: `${EXTENSIONS_GROUP}/${API_VERSION}`,
    kind: "SandboxTemplate",
    metadata: {
      name,
      namespace: settings.namespace,
      labels: { ...baseLabels(spec, "template"), [POOLED_LABEL]: "true" },
    },
    spec: {
      podTemplate,
      volumeClaimTemplates: [
        {
          metadata: { name: WORKSPACE_VOLUME, labels: { ...baseLabels(spec, "pooled-workspace") } },
          spec: {
            accessModes: ["ReadWriteOnce"],
            resources: { requests: { storage: workspaceStorage(spec) } },
            ...(settings.storageClassName ? { storageClassName: settings.storageClassName } : {}),
          },
        },
      ],
      service: true,
      networkPolicyManagement: "Unmanaged",
      networkPolicy: { egress: egressRules(settings.gateway) },
      // A claim carrying env (or volumeClaimTemplates) would bypass the pool: Berth binds env through the daemon.
      envVarsInjectionPolicy: "Disallowed",
      volumeClaimTemplatesPolicy: "Disallowed",
    },
  };
}

/** The pool's daemon and gateway tokens: platform values derived for the pool, never a session's. */
export function buildPoolTokenSecret(spec: WarmPoolShape, settings: KubernetesSandboxSettings, token: string, gatewayToken: string | null = null): KubeObject {
  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: {
      name: poolTokenSecretName(warmPoolNameFor(spec, settings)),
      namespace: settings.namespace,
      labels: { ...baseLabels(spec, "warm-pool-token") },
    },
    type: "Opaque",
    stringData: { BERTH_DAEMON_TOKEN: token, ...(settings.gateway && gatewayToken ? { BERTH_DAEMON_GATEWAY_TOKEN: gatewayToken } : {}) },
  };
}

export function buildWarmPool(spec: WarmPoolShape, settings: KubernetesSandboxSettings, replicas: number): KubeObject {
  const name = warmPoolNameFor(spec, settings);
  return {
    apiVersion: `${EXTENSIONS_GROUP}/${API_VERSION}`,
    kind: "SandboxWarmPool",
    metadata: { name, namespace: settings.namespace, labels: baseLabels(spec, "warm-pool") },
    spec: { replicas, sandboxTemplateRef: { name } },
  };
}

/**
 * A session generation's claim on the pool. No `env` and no `volumeClaimTemplates`: either makes
 * the controller skip the pool (cold start); the session's env is bound through the daemon instead.
 * No `additionalPodMetadata` either: the controller accepts only labels of its allowlisted domains
 * there (default `sandbox.users.io`, from /etc/sandbox-config/allowed-label-domains) and fails the
 * claim otherwise; the identity labels go on the claim, and Berth labels the adopted Sandbox itself.
 */
export function buildSandboxClaim(spec: SandboxSpec, settings: KubernetesSandboxSettings, poolName: string): KubeObject {
  const identity = { [LABELS.session]: spec.sessionId, [LABELS.generation]: String(spec.generation) };
  return {
    apiVersion: `${EXTENSIONS_GROUP}/${API_VERSION}`,
    kind: "SandboxClaim",
    metadata: { name: spec.name, namespace: settings.namespace, labels: { ...baseLabels(spec, "sandbox-claim"), ...identity } },
    spec: { warmPoolRef: { name: poolName } },
  };
}

export type SandboxClaimObject = KubeObject & {
  status?: { sandbox?: { name?: string; podIPs?: string[] }; conditions?: Condition[] };
};
