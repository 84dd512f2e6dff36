/**
 * The Kubernetes objects the `kubernetes` sandbox backend writes, built as plain JSON in the
 * agent-sandbox v1beta1 wire format (field names from the vendored CRDs in k8s/crds/).
 * Pure functions: no API calls here, so the shapes are easy to test against the CRD schemas.
 */
import { createHash } from "node:crypto";
import type { NetworkMode, SandboxSpec } from "../server/sandbox/port";

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
  network: "berth.dev/network",
  sandbox: "berth.dev/sandbox",
} as const;
export const MANAGED_BY = "berth";
export const TEMPLATE_ANNOTATION = "berth.dev/sandbox-template";

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
  workspaceSize: string;
  storageClassName: string | undefined;
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

/** The identity of a template: everything that shapes the pod except the session's own env and volume. */
function templateShape(spec: SandboxSpec, settings: KubernetesSandboxSettings) {
  return {
    image: spec.image ?? settings.image,
    cpuMillis: spec.resources.cpuMillis,
    memoryMb: spec.resources.memoryMb,
    network: spec.network,
    runtimeClassName: settings.runtimeClassName ?? null,
    daemonPort: settings.daemonPort,
  };
}

/**
 * One SandboxTemplate per agent version: the name is the agent plus a hash of what shapes its pod,
 * so every session of that version (and an unchanged later version) shares it.
 */
export function templateNameFor(spec: SandboxSpec, settings: KubernetesSandboxSettings): string {
  const hash = createHash("sha256").update(JSON.stringify(templateShape(spec, settings))).digest("hex").slice(0, 12);
  return `berth-${spec.agentId.slice(0, 8).toLowerCase()}-${hash}`;
}

export function workspaceClaimName(sessionId: string): string {
  return `berth-ws-${sessionId.toLowerCase()}`;
}

export function envSecretName(sandboxName: string): string {
  return `${sandboxName}-env`;
}

function baseLabels(spec: SandboxSpec, component: string): Record<string, string> {
  return { [LABELS.managedBy]: MANAGED_BY, [LABELS.component]: component, [LABELS.team]: spec.teamId, [LABELS.agent]: spec.agentId };
}

/** The pod every sandbox of this agent version runs: no session data in it, ever. */
export function buildPodTemplate(spec: SandboxSpec, settings: KubernetesSandboxSettings) {
  const shape = templateShape(spec, settings);
  const memory = `${shape.memoryMb}Mi`;
  const labels: Record<string, string> = { [LABELS.managedBy]: MANAGED_BY, [LABELS.component]: "sandbox", [LABELS.network]: spec.network };
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
            { name: "HOME", value: WORKSPACE_MOUNT },
          ],
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

/** Egress "on": the public internet only; metadata, link-local and private (cluster) ranges stay closed. */
export function egressRules(network: NetworkMode): Array<Record<string, unknown>> {
  if (network === "none") return [];
  return [
    {
      to: [
        { ipBlock: { cidr: "0.0.0.0/0", except: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10", "127.0.0.0/8"] } },
        { ipBlock: { cidr: "::/0", except: ["fc00::/7", "fe80::/10", "::1/128"] } },
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
      labels: { ...baseLabels(spec, "template"), [LABELS.network]: spec.network },
    },
    spec: {
      podTemplate: buildPodTemplate(spec, settings),
      service: true,
      // Berth creates Sandboxes itself (not through claims), and its own NetworkPolicies (k8s/manifests/)
      // select the pods by Berth's labels; the controller's per-template policy would block the platform.
      networkPolicyManagement: "Unmanaged",
      networkPolicy: { egress: egressRules(spec.network) },
      envVarsInjectionPolicy: "Disallowed",
    },
  };
}

/** The per-generation Secret holding the session's environment and the daemon token. */
export function buildEnvSecret(spec: SandboxSpec, settings: KubernetesSandboxSettings, token: string): KubeObject {
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
    stringData: { ...Object.fromEntries(Object.entries(spec.env).filter(([key]) => !key.startsWith("BERTH_DAEMON_"))), BERTH_DAEMON_TOKEN: token },
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
      resources: { requests: { storage: settings.workspaceSize } },
      ...(settings.storageClassName ? { storageClassName: settings.storageClassName } : {}),
    },
  };
}

/**
 * The Sandbox of one session generation: the template's pod, plus the session's env (from its own
 * Secret, never the shared template) and its workspace claim.
 */
export function buildSandbox(spec: SandboxSpec, settings: KubernetesSandboxSettings, template: KubeObject): SandboxObject {
  const templateSpec = (template.spec ?? {}) as { podTemplate?: ReturnType<typeof buildPodTemplate> };
  const podTemplate = structuredClone(templateSpec.podTemplate ?? buildPodTemplate(spec, settings));
  const labels = { ...baseLabels(spec, "sandbox"), [LABELS.session]: spec.sessionId, [LABELS.generation]: String(spec.generation), [LABELS.network]: spec.network };
  podTemplate.metadata = { labels: { ...podTemplate.metadata?.labels, ...labels, [LABELS.sandbox]: spec.name } };
  for (const container of podTemplate.spec.containers) {
    (container as Record<string, unknown>).envFrom = [{ secretRef: { name: envSecretName(spec.name) } }];
  }
  podTemplate.spec.volumes = podTemplate.spec.volumes.map((volume) =>
    volume.name === WORKSPACE_VOLUME ? ({ name: WORKSPACE_VOLUME, persistentVolumeClaim: { claimName: workspaceClaimName(spec.sessionId) } } as never) : volume,
  );
  return {
    apiVersion: `${SANDBOX_GROUP}/${API_VERSION}`,
    kind: "Sandbox",
    metadata: {
      name: spec.name,
      namespace: settings.namespace,
      labels,
      annotations: { [TEMPLATE_ANNOTATION]: template.metadata?.name ?? "" },
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
