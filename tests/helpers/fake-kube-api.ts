/**
 * A stand-in Kubernetes API server for tests, speaking the real REST and watch wire format for the
 * resources the kubernetes sandbox backend uses, and playing the agent-sandbox controller.
 *
 * API: create / get / list (label and field selectors) / replace / merge- and JSON-patch / delete,
 * `?watch=true` streams of newline-delimited `{type, object}` events from a resourceVersion (410 Gone
 * once that version is compacted away), Status objects for 400/404/409/410/422, optimistic
 * concurrency on replace. Every Sandbox / SandboxTemplate / SandboxClaim / SandboxWarmPool body is
 * validated against the openAPIV3Schema of k8s/crds/ (the vendored agent-sandbox CRDs) (with ajv): a
 * schema violation is a 422 Invalid, an unknown field is a 400 under `fieldValidation=Strict` and is
 * pruned (with a Warning header) otherwise, exactly as a real API server treats structural schemas.
 * Defaults from the schema are applied. CEL rules (x-kubernetes-validations) are not evaluated.
 * PersistentVolumeClaims get core/v1's checks (access modes, a storage request that is a positive
 * quantity) and, on update, the resize rules: only the storage request may change, it never shrinks,
 * and it grows only when the StorageClass allows expansion (`volumeExpansion`, default yes).
 *
 * Secrets get core/v1's checks too: data keys, and a `kubernetes.io/tls` Secret must hold `tls.crt`
 * and `tls.key`; a Secret's type cannot change.
 *
 * Controller: each Sandbox in operatingMode Running gets a "pod": a real sandbox daemon process
 * (build/sandboxd.js, or sandboxd/main.ts through tsx) with the pod's resolved environment (env and
 * envFrom Secrets, secretKeyRef values), its workspace volume mapped to a folder per
 * PersistentVolumeClaim, listening on the container's port at a loopback address of its own
 * (127.0.0.N = the pod IP). Once the daemon prints READY the Sandbox gets `status.serviceFQDN` (that
 * address), podIPs and Ready=True. Pods share the host's network (no NetworkPolicy): a daemon given
 * `BERTH_DAEMON_GATEWAY=tcp:127.0.0.1:<port>` reaches a gateway listening there. What an image
 * carries beyond the host's files (`imageFiles`, e.g. a harness binary at /opt/berth/bin/opencode)
 * is bound at its path for that image's pods with bubblewrap (a mount namespace, nothing else).
 * `killDaemon` ends the process (restartPolicy Never: the pod fails, Ready=False PodFailed),
 * `deletePod` removes the pod (Ready=False until the controller makes a new one), deleting the
 * Sandbox stops its pod and garbage-collects objects it owns.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import Ajv, { type ValidateFunction } from "ajv";
import YAML from "yaml";
import { unchrootPrefix } from "../../server/host-root";

const ROOT = path.resolve(import.meta.dirname, "../..");
export const CRD_DIR = path.resolve(ROOT, "k8s/crds");
/** Where an image with files (imageFiles) carries the daemon: beside the harness binaries (a tmpfs over a checkout at /opt/berth would hide it all). */
const IMAGE_DAEMON = "/opt/berth/bin/sandboxd.js";

type Json = Record<string, unknown>;
type Obj = Json & { apiVersion?: string; kind?: string; metadata: Meta; spec?: Json; status?: Json };
type Meta = {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  creationTimestamp?: string;
  generation?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences?: Array<{ uid?: string; kind?: string; name?: string }>;
  deletionTimestamp?: string;
  [key: string]: unknown;
};

type ResourceType = {
  group: string; // "" = core
  plural: string;
  kind: string;
  versions: string[];
  /** openAPIV3Schema per version, for CRDs. */
  schemas?: Record<string, Json>;
  statusSubresource: boolean;
};

type WatchEvent = { rv: number; type: "ADDED" | "MODIFIED" | "DELETED"; key: string; object: Obj };

type Watcher = { res: http.ServerResponse; type: ResourceType; namespace: string; labelSelector: string | null; fieldSelector: string | null };

type Pod = {
  sandbox: string;
  ip: string;
  child: ChildProcess | null;
  /** Why the pod was ended on purpose (suspend, delete): its exit is then not a failure. */
  ending: string | null;
  env: Record<string, string>;
  workspace: string;
  output: string;
};

export type RecordedRequest = { method: string; path: string; query: Record<string, string>; status: number; body?: unknown };

export type Fault = {
  status: number;
  reason?: string;
  message?: string;
  /** Only requests for which this returns true; default every request. */
  match?: (request: { method: string; path: string }) => boolean;
  /** Answer after this long (a request timeout test). */
  delayMs?: number;
  /** How many matching requests get it (default 1). */
  times?: number;
  /** Carry the request out first, then answer with the fault (the reply was lost on the way). */
  afterDispatch?: boolean;
};

const OBJECT_META_FIELDS = new Set([
  "name", "generateName", "namespace", "uid", "resourceVersion", "creationTimestamp", "generation", "labels", "annotations",
  "ownerReferences", "finalizers", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink",
]);

// ---------------------------------------------------------------- schema validation

/** Loads the CRDs and compiles one validator per kind and version. */
export class CrdSchemas {
  readonly types: ResourceType[] = [];
  private readonly validators = new Map<string, ValidateFunction>();
  private readonly ajv: Ajv;

  constructor(dir = CRD_DIR) {
    // strict: false lets the x-kubernetes-* extensions through as annotations, as the API server reads them.
    this.ajv = new Ajv({ strict: false, allErrors: true });
    for (const format of ["int32", "int64", "double", "float", "byte", "binary", "password", "quantity"]) this.ajv.addFormat(format, true);
    this.ajv.addFormat("date-time", /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i);
    for (const file of ["agents.x-k8s.io_sandboxes.yaml", "extensions.agents.x-k8s.io_sandboxtemplates.yaml", "extensions.agents.x-k8s.io_sandboxclaims.yaml", "extensions.agents.x-k8s.io_sandboxwarmpools.yaml"]) {
      const crd = YAML.parse(readFileSync(path.join(dir, file), "utf8")) as {
        spec: { group: string; names: { plural: string; kind: string }; versions: Array<{ name: string; schema: { openAPIV3Schema: Json }; subresources?: { status?: unknown } }> };
      };
      const schemas: Record<string, Json> = {};
      for (const version of crd.spec.versions) schemas[version.name] = version.schema.openAPIV3Schema;
      this.types.push({
        group: crd.spec.group,
        plural: crd.spec.names.plural,
        kind: crd.spec.names.kind,
        versions: crd.spec.versions.map((v) => v.name),
        schemas,
        statusSubresource: crd.spec.versions.some((v) => v.subresources?.status !== undefined),
      });
    }
  }

  schema(kind: string, version = "v1beta1"): Json {
    const type = this.types.find((t) => t.kind === kind);
    if (!type?.schemas?.[version]) throw new Error(`no CRD schema for ${kind} ${version}`);
    return type.schemas[version];
  }

  /** Schema errors ("spec.operatingMode: must be equal to one of the allowed values"), or []. */
  validate(kind: string, version: string, object: unknown): string[] {
    const key = `${kind}/${version}`;
    let validate = this.validators.get(key);
    if (!validate) {
      validate = this.ajv.compile(this.schema(kind, version));
      this.validators.set(key, validate);
    }
    if (validate(object)) return [];
    return (validate.errors ?? []).map((error) => {
      const where = error.instancePath.replace(/^\//, "").replace(/\//g, ".") || "<root>";
      const allowed = (error.params as { allowedValues?: unknown[] }).allowedValues;
      return `${where}: ${error.message}${allowed ? ` (${allowed.map((v) => JSON.stringify(v)).join(", ")})` : ""}`;
    });
  }

  /** Paths of fields the schema does not declare (what a strict decoder calls "unknown field"). */
  unknownFields(kind: string, version: string, object: unknown): string[] {
    const found: string[] = [];
    const schema = this.schema(kind, version);
    const root = object as Json;
    for (const [key, value] of Object.entries(root)) {
      if (key === "metadata") {
        for (const metaKey of Object.keys((value as Json) ?? {})) if (!OBJECT_META_FIELDS.has(metaKey)) found.push(`metadata.${metaKey}`);
        continue;
      }
      const child = (schema.properties as Record<string, Json> | undefined)?.[key];
      if (!child) found.push(key);
      else walkUnknown(value, child, key, found);
    }
    return found;
  }

  /** Removes unknown fields in place (what the API server does without strict validation). */
  prune(kind: string, version: string, object: Json): void {
    for (const field of this.unknownFields(kind, version, object)) {
      const parts = splitPath(field);
      let target: unknown = object;
      for (const part of parts.slice(0, -1)) target = (target as Record<string, unknown>)?.[part];
      if (target && typeof target === "object") delete (target as Record<string, unknown>)[parts.at(-1)!];
    }
  }

  applyDefaults(kind: string, version: string, object: Json): void {
    applyDefaults(object, this.schema(kind, version));
  }
}

function splitPath(field: string): string[] {
  return field.split(".").flatMap((part) => {
    const match = /^(.*)\[(\d+)\]$/.exec(part);
    return match ? [match[1]!, match[2]!] : [part];
  });
}

function walkUnknown(value: unknown, schema: Json, where: string, found: string[]): void {
  if (schema["x-kubernetes-preserve-unknown-fields"] === true) return;
  if (Array.isArray(value)) {
    const items = schema.items as Json | undefined;
    if (items) value.forEach((item, index) => walkUnknown(item, items, `${where}[${index}]`, found));
    return;
  }
  if (!value || typeof value !== "object") return;
  const properties = schema.properties as Record<string, Json> | undefined;
  const additional = schema.additionalProperties;
  for (const [key, child] of Object.entries(value as Json)) {
    const childSchema = properties?.[key] ?? (additional && typeof additional === "object" ? (additional as Json) : undefined);
    if (!childSchema) {
      if (properties || additional === false) found.push(`${where}.${key}`);
      continue;
    }
    walkUnknown(child, childSchema, `${where}.${key}`, found);
  }
}

function applyDefaults(value: unknown, schema: Json): void {
  if (Array.isArray(value)) {
    const items = schema.items as Json | undefined;
    if (items) for (const item of value) applyDefaults(item, items);
    return;
  }
  if (!value || typeof value !== "object") return;
  const properties = schema.properties as Record<string, Json> | undefined;
  if (!properties) return;
  const object = value as Json;
  for (const [key, child] of Object.entries(properties)) {
    if (object[key] === undefined && child.default !== undefined) object[key] = structuredClone(child.default);
    if (object[key] !== undefined) applyDefaults(object[key], child);
  }
}

// ---------------------------------------------------------------- selectors, patches, statuses

function matchesLabels(labels: Record<string, string> | undefined, selector: string | null): boolean {
  if (!selector) return true;
  const have = labels ?? {};
  for (const raw of selector.split(",").map((s) => s.trim()).filter(Boolean)) {
    let m: RegExpExecArray | null;
    if ((m = /^([^!=]+)!=(.*)$/.exec(raw))) {
      if (have[m[1]!.trim()] === m[2]!.trim()) return false;
    } else if ((m = /^([^!=]+)==?(.*)$/.exec(raw))) {
      if (have[m[1]!.trim()] !== m[2]!.trim()) return false;
    } else if (raw.startsWith("!")) {
      if (raw.slice(1).trim() in have) return false;
    } else if (!(raw in have)) return false;
  }
  return true;
}

function matchesFields(object: Obj, selector: string | null): boolean {
  if (!selector) return true;
  for (const raw of selector.split(",").map((s) => s.trim()).filter(Boolean)) {
    const m = /^([^!=]+)(!=|==|=)(.*)$/.exec(raw);
    if (!m) return false;
    const field = m[1]!.trim();
    const actual = field === "metadata.name" ? object.metadata.name : field === "metadata.namespace" ? object.metadata.namespace : undefined;
    if ((m[2] === "!=") === (actual === m[3])) return false;
  }
  return true;
}

function mergePatch(target: unknown, patch: unknown): unknown {
  if (!patch || typeof patch !== "object" || Array.isArray(patch)) return structuredClone(patch);
  const result: Json = target && typeof target === "object" && !Array.isArray(target) ? { ...(target as Json) } : {};
  for (const [key, value] of Object.entries(patch as Json)) {
    if (value === null) delete result[key];
    else result[key] = mergePatch(result[key], value);
  }
  return result;
}

function jsonPatch(target: Json, operations: Array<{ op: string; path: string; value?: unknown }>): Json {
  const doc = structuredClone(target);
  for (const operation of operations) {
    const parts = operation.path.split("/").slice(1).map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"));
    const last = parts.pop()!;
    let parent: Record<string, unknown> = doc;
    for (const part of parts) parent = parent[part] as Record<string, unknown>;
    if (!parent) throw new Error(`path ${operation.path} does not exist`);
    if (operation.op === "remove") delete parent[last];
    else if (operation.op === "add" || operation.op === "replace") {
      if (Array.isArray(parent) && last === "-") parent.push(operation.value);
      else parent[last] = operation.value;
    } else throw new Error(`unsupported JSON patch op ${operation.op}`);
  }
  return doc;
}

function statusBody(code: number, reason: string, message: string, details?: Json): Json {
  return { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message, reason, code, ...(details ? { details } : {}) };
}

function now(): string {
  return new Date().toISOString().replace(/\.\d+Z$/, "Z");
}

const NAME_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_VALUE_RE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const LABEL_NAME_RE = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;

const PVC_SPEC_FIELDS = new Set(["accessModes", "resources", "storageClassName", "volumeMode", "volumeName", "selector", "dataSource", "dataSourceRef", "volumeAttributesClassName"]);
const ACCESS_MODES = new Set(["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]);
const STORAGE_QUANTITY = /^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$/;
const STORAGE_FACTORS: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

function storageBytes(value: unknown): number | null {
  const match = typeof value === "string" ? STORAGE_QUANTITY.exec(value) : null;
  return match ? Number(match[1]) * (match[2] ? STORAGE_FACTORS[match[2]]! : 1) : null;
}

/**
 * A PersistentVolumeClaim as core/v1 validation and the resize admission plugin see it: access
 * modes, a positive storage request that is a quantity, unknown spec fields (Strict), and on update
 * a spec that only changes its storage request, which can only grow, and only when the StorageClass
 * allows volume expansion.
 */
function persistentVolumeClaimProblem(
  object: Obj,
  existing: Obj | undefined,
  fieldValidation: string | undefined,
  volumeExpansion: boolean,
): { code: number; reason: string; message: string } | null {
  const name = object.metadata.name;
  const invalid = (detail: string) => ({ code: 422, reason: "Invalid", message: `PersistentVolumeClaim "${name}" is invalid: ${detail}` });
  const spec = (object.spec ?? {}) as Json & { accessModes?: unknown; resources?: { requests?: Record<string, unknown> } };
  const unknown = Object.keys(spec).filter((key) => !PVC_SPEC_FIELDS.has(key));
  if (unknown.length && fieldValidation === "Strict") {
    return { code: 400, reason: "BadRequest", message: `PersistentVolumeClaim in version "v1" cannot be handled as a PersistentVolumeClaim: strict decoding error: ${unknown.map((f) => `unknown field "spec.${f}"`).join(", ")}` };
  }
  if (!Array.isArray(spec.accessModes) || spec.accessModes.length === 0) return invalid("spec.accessModes: Required value: at least 1 access mode is required");
  const badMode = spec.accessModes.find((mode) => !ACCESS_MODES.has(mode as string));
  if (badMode !== undefined) return invalid(`spec.accessModes: Unsupported value: ${JSON.stringify(badMode)}`);
  const storage = spec.resources?.requests?.storage;
  if (storage === undefined) return invalid("spec.resources[storage]: Required value");
  const bytes = storageBytes(storage);
  if (bytes === null) return invalid(`spec.resources.requests[storage]: Invalid value: ${JSON.stringify(storage)}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'`);
  if (bytes <= 0) return invalid(`spec.resources[storage]: Invalid value: ${JSON.stringify(storage)}: must be greater than zero`);
  if (!existing) return null;
  const before = (existing.spec ?? {}) as typeof spec;
  const withoutRequests = (value: typeof spec) => JSON.stringify({ ...value, resources: { ...value.resources, requests: undefined } });
  if (withoutRequests(spec) !== withoutRequests(before)) {
    return invalid("spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims");
  }
  const previous = storageBytes(before.resources?.requests?.storage) ?? 0;
  if (bytes < previous) return invalid("spec.resources.requests.storage: Forbidden: field can not be less than previous value");
  if (bytes > previous && !volumeExpansion) {
    return { code: 403, reason: "Forbidden", message: `persistentvolumeclaims "${name}" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize` };
  }
  return null;
}

function metadataErrors(meta: Meta): string[] {
  const errors: string[] = [];
  if (!meta.name || meta.name.length > 253 || !NAME_RE.test(meta.name)) errors.push(`metadata.name: Invalid value: ${JSON.stringify(meta.name)}: a lowercase RFC 1123 subdomain is required`);
  for (const [key, value] of Object.entries(meta.labels ?? {})) {
    if (typeof value !== "string" || value.length > 63 || !LABEL_VALUE_RE.test(value)) errors.push(`metadata.labels: Invalid value: ${JSON.stringify(value)}: a valid label value is required`);
    if (!LABEL_NAME_RE.test(key) || key.split("/").at(-1)!.length > 63) errors.push(`metadata.labels: Invalid value: ${JSON.stringify(key)}: a valid label key is required`);
  }
  return errors;
}

class HttpError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: Json,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------- the server

export type FakeKubeApiOptions = {
  /** Folder for workspace volumes and daemon sockets; default a new temp folder. */
  dataDir?: string;
  /** Delay before a deleted pod is replaced by the controller. */
  podRecreateDelayMs?: number;
  /** Bearer token every request must carry. */
  token?: string;
  /**
   * Whether the workspace claims' StorageClass has `allowVolumeExpansion` (default true): without it
   * a request for more storage on an existing claim is refused (403), as the resize admission does.
   */
  volumeExpansion?: boolean;
  /**
   * What an image carries besides the host's own filesystem, by image name: path in the pod → host
   * file (e.g. `{ "berth:e2e": { "/opt/berth/bin/opencode": "/…/node_modules/…/opencode" } }`). A pod
   * of such an image runs its daemon under bubblewrap (`bwrap --dev-bind / /`, the host's network,
   * a mount namespace of its own) with each file bound read-only at its path, on a tmpfs over its
   * deepest folder that exists on the host (e.g. /opt: the host's /opt is hidden from that pod), and
   * a /tmp of its own (its `tmp` emptyDir), its workspace folder bound back in.
   */
  imageFiles?: Record<string, Record<string, string>>;
  /**
   * As the kubelet: each daemon runs as its pod's `securityContext` user and group (runAsUser,
   * runAsGroup; the container's win), with its volumes group-owned by `fsGroup` and group-writable.
   * Needs root (tests running as root); off by default (daemons run as the test's own user).
   */
  runAsPodUser?: boolean;
};

export class FakeKubeApi {
  readonly schemas = new CrdSchemas();
  readonly requests: RecordedRequest[] = [];
  /** Bodies refused (400/422) with why: proves validation ran. */
  readonly rejected: Array<{ kind: string; name: string | undefined; code: number; message: string }> = [];
  /** Every CRD and PersistentVolumeClaim body accepted (after validation), in order. */
  readonly accepted: Array<{ kind: string; version: string; object: Obj }> = [];
  readonly dataDir: string;
  /** The claims' StorageClass allows volume expansion (FakeKubeApiOptions.volumeExpansion; tests may flip it). */
  volumeExpansion: boolean;
  private readonly types: ResourceType[];
  private readonly objects = new Map<string, Obj>();
  private readonly history: WatchEvent[] = [];
  private compactedThrough = 0;
  private rv = 100;
  private readonly watchers = new Set<Watcher>();
  private readonly pods = new Map<string, Pod>();
  private readonly faults: Fault[] = [];
  private nextIp = 2;
  private server: http.Server | null = null;
  private readonly ownsDataDir: boolean;
  port = 0;

  constructor(private readonly options: FakeKubeApiOptions = {}) {
    this.ownsDataDir = !options.dataDir;
    this.volumeExpansion = options.volumeExpansion ?? true;
    this.dataDir = options.dataDir ?? mkdtempSync(path.join(os.tmpdir(), "fake-kube-"));
    this.types = [
      ...this.schemas.types,
      { group: "", plural: "secrets", kind: "Secret", versions: ["v1"], statusSubresource: false },
      { group: "", plural: "persistentvolumeclaims", kind: "PersistentVolumeClaim", versions: ["v1"], statusSubresource: true },
    ];
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<this> {
    this.server = http.createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as { port: number }).port;
    return this;
  }

  async stop(): Promise<void> {
    for (const watcher of this.watchers) watcher.res.destroy();
    this.watchers.clear();
    await Promise.all([...this.pods.keys()].map((name) => this.endPod(name, "api server stopped")));
    if (this.server) {
      this.server.closeAllConnections();
      await new Promise<void>((resolve) => this.server!.close(() => resolve()));
    }
    if (this.ownsDataDir) rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** A kubeconfig (YAML) pointing at this server, for KUBECONFIG or KubeConfig.loadFromString. */
  kubeconfig(namespace = "berth"): string {
    return YAML.stringify({
      apiVersion: "v1",
      kind: "Config",
      // Plain HTTP: client-node only allows it with TLS verification off (there is no TLS to verify).
      clusters: [{ name: "fake", cluster: { server: this.url, "insecure-skip-tls-verify": true } }],
      users: [{ name: "fake", user: this.options.token ? { token: this.options.token } : {} }],
      contexts: [{ name: "fake", context: { cluster: "fake", user: "fake", namespace } }],
      "current-context": "fake",
    });
  }

  // ---- test controls

  /** The next matching request(s) get this answer instead. */
  injectFault(fault: Fault): void {
    this.faults.push({ times: 1, ...fault });
  }

  /** Ends every open watch connection (a dropped connection / API server restart). */
  dropWatches(): void {
    for (const watcher of this.watchers) watcher.res.destroy();
    this.watchers.clear();
  }

  /** Forgets watch history: a watch from an older resourceVersion gets 410 Gone. */
  compact(): void {
    this.compactedThrough = this.rv;
    this.history.length = 0;
  }

  get(plural: string, namespace: string, name: string): Obj | undefined {
    const object = this.objects.get(`${plural}/${namespace}/${name}`);
    return object ? structuredClone(object) : undefined;
  }

  list(plural: string, namespace?: string): Obj[] {
    return [...this.objects.entries()].filter(([key]) => key.startsWith(`${plural}/${namespace ?? ""}`)).map(([, object]) => structuredClone(object));
  }

  pod(name: string): { ip: string; pid: number | undefined; env: Record<string, string>; workspace: string; output: string } | undefined {
    const pod = this.pods.get(name);
    return pod ? { ip: pod.ip, pid: pod.child?.pid, env: { ...pod.env }, workspace: pod.workspace, output: pod.output } : undefined;
  }

  /**
   * false: the controller is slow to report a suspension, so the Sandbox keeps its old pod's Ready
   * status (and address) after the pod is gone, until a new pod reports.
   */
  reportsSuspension = true;

  /** SIGKILLs a sandbox's daemon: with restartPolicy Never its pod fails. */
  killDaemon(name: string): void {
    const pod = this.pods.get(name);
    if (!pod?.child) throw new Error(`no running pod for sandbox ${name}`);
    pod.child.kill("SIGKILL");
  }

  /** Deletes a sandbox's pod (eviction, node drain): Ready goes False, then the controller makes a new pod. */
  async deletePod(name: string): Promise<void> {
    await this.endPod(name, "pod deleted");
    this.setSandboxStatus(name, (status) => ({
      ...status,
      podIPs: undefined,
      conditions: [condition("Ready", "False", "DependenciesNotReady", "Pod does not exist")],
    }));
    setTimeout(() => this.reconcileSandbox(name), this.options.podRecreateDelayMs ?? 300).unref();
  }

  /** Deletes an object as another client would (kubectl delete). */
  deleteObject(plural: string, namespace: string, name: string): void {
    const type = this.types.find((t) => t.plural === plural)!;
    this.remove(type, namespace, name);
  }

  // ---- HTTP

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://fake");
    const query = Object.fromEntries(url.searchParams);
    const method = req.method ?? "GET";
    const record: RecordedRequest = { method, path: url.pathname, query, status: 0 };
    this.requests.push(record);
    const send = (code: number, body: unknown, headers: Record<string, string> = {}) => {
      record.status = code;
      if (!res.headersSent) res.writeHead(code, { "content-type": "application/json", ...headers });
      res.end(JSON.stringify(body));
    };
    try {
      const raw = await readBody(req);
      if (this.options.token && req.headers.authorization !== `Bearer ${this.options.token}`) {
        throw new HttpError(401, "Unauthorized", "Unauthorized");
      }
      const fault = this.faults.find((f) => (f.times ?? 1) > 0 && (!f.match || f.match({ method, path: url.pathname })));
      const route = this.route(url.pathname);
      const body = raw.length ? (JSON.parse(raw) as unknown) : undefined;
      record.body = body;
      if (fault) {
        fault.times = (fault.times ?? 1) - 1;
        if (fault.afterDispatch) this.dispatch(method, route, body, query, req.headers["content-type"] ?? "");
        if (fault.delayMs) await new Promise((resolve) => setTimeout(resolve, fault.delayMs));
        if (res.destroyed) return;
        throw new HttpError(fault.status, fault.reason ?? "InternalError", fault.message ?? `injected ${fault.status}`);
      }
      if (method === "GET" && !route.name && (query.watch === "true" || query.watch === "1")) {
        this.watch(res, route.type, route.namespace, query);
        record.status = 200;
        return;
      }
      const result = this.dispatch(method, route, body, query, req.headers["content-type"] ?? "");
      send(result.code, result.body, result.warning ? { warning: `299 - "${result.warning}"` } : {});
    } catch (error) {
      if (error instanceof HttpError) send(error.code, statusBody(error.code, error.reason, error.message, error.details));
      else send(500, statusBody(500, "InternalError", (error as Error).message));
    }
  }

  private route(pathname: string): { type: ResourceType; version: string; namespace: string; name?: string; subresource?: string } {
    const core = /^\/api\/v1\/namespaces\/([^/]+)\/([^/]+)(?:\/([^/]+))?(?:\/([^/]+))?$/.exec(pathname);
    const grouped = /^\/apis\/([^/]+)\/([^/]+)\/namespaces\/([^/]+)\/([^/]+)(?:\/([^/]+))?(?:\/([^/]+))?$/.exec(pathname);
    let group: string, version: string, namespace: string, plural: string, name: string | undefined, subresource: string | undefined;
    if (core) [group, version, namespace, plural, name, subresource] = ["", "v1", core[1]!, core[2]!, core[3], core[4]];
    else if (grouped) [group, version, namespace, plural, name, subresource] = [grouped[1]!, grouped[2]!, grouped[3]!, grouped[4]!, grouped[5], grouped[6]];
    else throw new HttpError(404, "NotFound", "the server could not find the requested resource");
    const type = this.types.find((t) => t.group === group && t.plural === plural && t.versions.includes(version));
    if (!type || (subresource && !(subresource === "status" && type.statusSubresource))) {
      throw new HttpError(404, "NotFound", "the server could not find the requested resource");
    }
    return { type, version, namespace, name, subresource };
  }

  private key(type: ResourceType, namespace: string, name: string): string {
    return `${type.plural}/${namespace}/${name}`;
  }

  private notFound(type: ResourceType, name: string): HttpError {
    return new HttpError(404, "NotFound", `${type.plural}${type.group ? `.${type.group}` : ""} "${name}" not found`, { name, group: type.group, kind: type.plural });
  }

  private dispatch(
    method: string,
    route: ReturnType<FakeKubeApi["route"]>,
    body: unknown,
    query: Record<string, string>,
    contentType: string,
  ): { code: number; body: unknown; warning?: string } {
    const { type, namespace, name, version } = route;
    if (method === "GET" && !name) {
      const items = [...this.objects.values()]
        .filter((o) => this.objectType(o) === type && o.metadata.namespace === namespace)
        .filter((o) => matchesLabels(o.metadata.labels, query.labelSelector ?? null) && matchesFields(o, query.fieldSelector ?? null))
        .sort((a, b) => a.metadata.name!.localeCompare(b.metadata.name!));
      return { code: 200, body: { apiVersion: type.group ? `${type.group}/${version}` : "v1", kind: `${type.kind}List`, metadata: { resourceVersion: String(this.rv) }, items } };
    }
    if (method === "GET") {
      const object = this.objects.get(this.key(type, namespace, name!));
      if (!object) throw this.notFound(type, name!);
      return { code: 200, body: object };
    }
    if (method === "POST" && !name) return this.create(type, version, namespace, body as Obj, query.fieldValidation);
    if (method === "DELETE" && name) {
      const removed = this.remove(type, namespace, name);
      if (!removed) throw this.notFound(type, name);
      return { code: 200, body: removed };
    }
    if ((method === "PUT" || method === "PATCH") && name) {
      const existing = this.objects.get(this.key(type, namespace, name));
      if (!existing) throw this.notFound(type, name);
      let next: Obj;
      if (method === "PUT") {
        next = structuredClone(body as Obj);
        const given = next.metadata?.resourceVersion;
        if (given && given !== existing.metadata.resourceVersion) {
          throw new HttpError(409, "Conflict", `Operation cannot be fulfilled on ${type.plural} "${name}": the object has been modified; please apply your changes to the latest version and try again`);
        }
      } else if (contentType.includes("json-patch")) {
        next = jsonPatch(existing, body as Array<{ op: string; path: string; value?: unknown }>) as Obj;
      } else {
        next = mergePatch(existing, body) as Obj;
      }
      return this.update(type, version, namespace, existing, next, route.subresource === "status", query.fieldValidation);
    }
    throw new HttpError(405, "MethodNotAllowed", `${method} is not supported on ${route.type.plural}`);
  }

  private objectType(object: Obj): ResourceType | undefined {
    const group = object.apiVersion?.includes("/") ? object.apiVersion.split("/")[0] : "";
    return this.types.find((t) => t.group === group && t.kind === object.kind);
  }

  /** Validates a body the way the API server would; returns the warning for pruned fields. */
  private admit(type: ResourceType, version: string, object: Obj, fieldValidation: string | undefined, existing?: Obj): string | undefined {
    const name = object.metadata?.name;
    const reject = (code: number, reason: string, message: string) => {
      this.rejected.push({ kind: type.kind, name, code, message });
      throw new HttpError(code, reason, message, { name, group: type.group, kind: type.kind });
    };
    const expectedApiVersion = type.group ? `${type.group}/${version}` : "v1";
    if (object.apiVersion !== expectedApiVersion || object.kind !== type.kind) {
      reject(400, "BadRequest", `the API version in the data (${object.apiVersion}) / kind (${object.kind}) does not match the expected ${expectedApiVersion} ${type.kind}`);
    }
    const metaErrors = metadataErrors(object.metadata);
    if (metaErrors.length) reject(422, "Invalid", `${type.kind} "${name}" is invalid: ${metaErrors.join(", ")}`);
    if (!type.schemas) {
      if (type.kind === "PersistentVolumeClaim") {
        const problem = persistentVolumeClaimProblem(object, existing, fieldValidation, this.volumeExpansion);
        if (problem) reject(problem.code, problem.reason, problem.message);
        this.accepted.push({ kind: type.kind, version, object: structuredClone(object) });
      }
      if (type.kind === "Secret") {
        const data = (object.data ?? {}) as Record<string, string>;
        for (const [key, value] of Object.entries((object.stringData ?? {}) as Record<string, string>)) data[key] = Buffer.from(value).toString("base64");
        for (const key of Object.keys(data)) if (!/^[-._a-zA-Z0-9]+$/.test(key)) reject(422, "Invalid", `Secret "${name}" is invalid: data[${key}]: Invalid value: a valid config key must consist of alphanumeric characters, '-', '_' or '.'`);
        object.data = data;
        delete object.stringData;
        object.type ??= "Opaque";
        if (object.type === "kubernetes.io/tls") {
          for (const key of ["tls.crt", "tls.key"]) if (!(key in data)) reject(422, "Invalid", `Secret "${name}" is invalid: data[${key}]: Required value`);
        }
        if (existing && (existing.type ?? "Opaque") !== object.type) reject(422, "Invalid", `Secret "${name}" is invalid: type: Invalid value: ${JSON.stringify(object.type)}: field is immutable`);
      }
      return undefined;
    }
    let warning: string | undefined;
    const unknown = this.schemas.unknownFields(type.kind, version, object);
    if (unknown.length) {
      if (fieldValidation === "Strict") {
        reject(400, "BadRequest", `${type.kind} in version "${version}" cannot be handled as a ${type.kind}: strict decoding error: ${unknown.map((f) => `unknown field "${f}"`).join(", ")}`);
      }
      if (fieldValidation !== "Ignore") warning = `unknown field ${unknown.map((f) => `"${f}"`).join(", ")}`;
      this.schemas.prune(type.kind, version, object);
    }
    this.schemas.applyDefaults(type.kind, version, object);
    const errors = this.schemas.validate(type.kind, version, object);
    if (errors.length) reject(422, "Invalid", `${type.kind}.${type.group} "${name}" is invalid: ${errors.join("; ")}`);
    this.accepted.push({ kind: type.kind, version, object: structuredClone(object) });
    return warning;
  }

  private create(type: ResourceType, version: string, namespace: string, body: Obj, fieldValidation: string | undefined) {
    if (!body || typeof body !== "object") throw new HttpError(400, "BadRequest", "the body of the request was in an unknown format");
    const object = structuredClone(body);
    object.metadata = { ...(object.metadata ?? {}) };
    if (!object.metadata.name && object.metadata.generateName) object.metadata.name = `${object.metadata.generateName}${randomUUID().slice(0, 5)}`;
    if (object.metadata.namespace && object.metadata.namespace !== namespace) {
      throw new HttpError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request");
    }
    object.metadata.namespace = namespace;
    if (type.statusSubresource) delete object.status;
    const warning = this.admit(type, version, object, fieldValidation);
    const key = this.key(type, namespace, object.metadata.name!);
    if (this.objects.has(key)) {
      throw new HttpError(409, "AlreadyExists", `${type.plural}${type.group ? `.${type.group}` : ""} "${object.metadata.name}" already exists`, { name: object.metadata.name, group: type.group, kind: type.plural });
    }
    object.metadata.uid = randomUUID();
    object.metadata.creationTimestamp = now();
    object.metadata.generation = 1;
    object.metadata.resourceVersion = String(++this.rv);
    this.objects.set(key, object);
    this.emit("ADDED", key, object);
    if (type.kind === "Sandbox") queueMicrotask(() => this.reconcileSandbox(object.metadata.name!));
    this.scheduleExtensions(type);
    return { code: 201, body: object, warning };
  }

  private update(type: ResourceType, version: string, namespace: string, existing: Obj, next: Obj, statusOnly: boolean, fieldValidation: string | undefined) {
    const name = existing.metadata.name!;
    next.metadata = { ...next.metadata, name, namespace, uid: existing.metadata.uid, creationTimestamp: existing.metadata.creationTimestamp };
    if (type.statusSubresource) {
      if (statusOnly) next = { ...structuredClone(existing), status: next.status } as Obj;
      else next.status = existing.status;
    }
    const warning = this.admit(type, version, next, fieldValidation, existing);
    if (JSON.stringify(next.spec) !== JSON.stringify(existing.spec)) next.metadata.generation = (existing.metadata.generation ?? 1) + 1;
    next.metadata.resourceVersion = String(++this.rv);
    const key = this.key(type, namespace, name);
    this.objects.set(key, next);
    this.emit("MODIFIED", key, next);
    if (type.kind === "Sandbox" && !statusOnly) queueMicrotask(() => this.reconcileSandbox(name));
    this.scheduleExtensions(type);
    return { code: 200, body: next, warning };
  }

  private remove(type: ResourceType, namespace: string, name: string): Obj | undefined {
    const key = this.key(type, namespace, name);
    const existing = this.objects.get(key);
    if (!existing) return undefined;
    this.objects.delete(key);
    const gone = { ...existing, metadata: { ...existing.metadata, resourceVersion: String(++this.rv) } };
    this.emit("DELETED", key, gone);
    if (type.kind === "Sandbox") void this.endPod(name, "sandbox deleted");
    this.scheduleExtensions(type);
    // Garbage collection: whatever this object owned goes too.
    for (const [otherKey, other] of [...this.objects.entries()]) {
      if (other.metadata.ownerReferences?.some((ref) => ref.uid === existing.metadata.uid)) {
        const otherType = this.objectType(other);
        if (otherType) this.remove(otherType, other.metadata.namespace!, other.metadata.name!);
        else this.objects.delete(otherKey);
      }
    }
    return gone;
  }

  private emit(type: WatchEvent["type"], key: string, object: Obj): void {
    const event: WatchEvent = { rv: this.rv, type, key, object: structuredClone(object) };
    this.history.push(event);
    if (this.history.length > 5000) {
      this.compactedThrough = this.history[0]!.rv;
      this.history.shift();
    }
    for (const watcher of this.watchers) this.deliver(watcher, event);
  }

  private deliver(watcher: Watcher, event: WatchEvent): void {
    const object = event.object;
    if (this.objectType(object) !== watcher.type || object.metadata.namespace !== watcher.namespace) return;
    if (!matchesLabels(object.metadata.labels, watcher.labelSelector) || !matchesFields(object, watcher.fieldSelector)) return;
    watcher.res.write(`${JSON.stringify({ type: event.type, object })}\n`);
  }

  private watch(res: http.ServerResponse, type: ResourceType, namespace: string, query: Record<string, string>): void {
    res.writeHead(200, { "content-type": "application/json", "transfer-encoding": "chunked" });
    res.flushHeaders();
    const watcher: Watcher = { res, type, namespace, labelSelector: query.labelSelector ?? null, fieldSelector: query.fieldSelector ?? null };
    const from = query.resourceVersion && query.resourceVersion !== "0" ? Number(query.resourceVersion) : null;
    if (from !== null && from < this.compactedThrough) {
      res.end(`${JSON.stringify({ type: "ERROR", object: statusBody(410, "Expired", `too old resource version: ${from} (${this.compactedThrough})`) })}\n`);
      return;
    }
    if (from === null) {
      for (const object of this.objects.values()) this.deliver(watcher, { rv: this.rv, type: "ADDED", key: "", object });
    } else {
      for (const event of this.history) if (event.rv > from) this.deliver(watcher, event);
    }
    this.watchers.add(watcher);
    const timeout = query.timeoutSeconds ? setTimeout(() => res.end(), Number(query.timeoutSeconds) * 1000) : null;
    res.on("close", () => {
      if (timeout) clearTimeout(timeout);
      this.watchers.delete(watcher);
    });
  }

  // ---- the controller

  private sandboxType(): ResourceType {
    return this.types.find((t) => t.kind === "Sandbox")!;
  }

  private findSandbox(name: string): Obj | undefined {
    return [...this.objects.values()].find((o) => o.kind === "Sandbox" && o.metadata.name === name);
  }

  private setSandboxStatus(name: string, change: (status: Json) => Json): void {
    const sandbox = this.findSandbox(name);
    if (!sandbox) return;
    const status = change(structuredClone(sandbox.status ?? {}));
    for (const key of Object.keys(status)) if (status[key] === undefined) delete status[key];
    const version = sandbox.apiVersion!.split("/")[1]!;
    // The controller's own writes are validated too: a malformed status would be refused by a real server.
    this.update(this.sandboxType(), version, sandbox.metadata.namespace!, sandbox, { ...structuredClone(sandbox), status }, true, "Strict");
  }

  private reconcileSandbox(name: string): void {
    const sandbox = this.findSandbox(name);
    if (!sandbox) return;
    const spec = (sandbox.spec ?? {}) as { operatingMode?: string };
    const pod = this.pods.get(name);
    if (spec.operatingMode === "Suspended") {
      if (pod) {
        void this.endPod(name, "suspended").then(() => {
          if (!this.reportsSuspension) return;
          // Resumed while the pod was still ending: the new pod owns the status now.
          const current = this.findSandbox(name);
          if (!current || (current.spec as { operatingMode?: string } | undefined)?.operatingMode !== "Suspended" || this.pods.has(name)) return;
          this.setSandboxStatus(name, (status) => ({
            ...status,
            podIPs: undefined,
            nodeName: undefined,
            conditions: [condition("Ready", "False", "SandboxSuspended", "Sandbox is suspended"), condition("Suspended", "True", "PodTerminated", "Pod terminated")],
          }));
        });
      }
      return;
    }
    if (!pod) void this.startPod(sandbox);
  }

  /**
   * While set, pods of warm-pool Sandboxes stay not ready (their image is still being pulled, say):
   * a test of the claim's cold path must not race the pool's first sandbox.
   */
  holdWarmPoolPods = false;

  private async startPod(sandbox: Obj): Promise<void> {
    const name = sandbox.metadata.name!;
    const namespace = sandbox.metadata.namespace!;
    const ip = this.allocateIp();
    const pod: Pod = { sandbox: name, ip, child: null, ending: null, env: {}, workspace: "", output: "" };
    this.pods.set(name, pod);
    this.setSandboxStatus(name, (status) => ({ ...status, conditions: [condition("Ready", "False", "DependenciesNotReady", "Pod is not ready")] }));
    while (this.holdWarmPoolPods && sandbox.metadata.labels?.["agents.x-k8s.io/warm-pool-sandbox"] && !pod.ending) await new Promise((resolve) => setTimeout(resolve, 50));
    try {
      this.reconcileVolumeClaims(sandbox, namespace);
      const { env, workspace, port, image, user } = await this.resolvePod(sandbox, namespace);
      if (pod.ending) return;
      pod.env = env;
      pod.workspace = workspace;
      const script = path.join(ROOT, "build/sandboxd.js");
      const files = this.options.imageFiles?.[image ?? ""];
      // An image with files carries the daemon too: the pod's user may not reach this checkout (a
      // clone in root's 0700 home).
      const inImage = files && Object.keys(files).length > 0 && existsSync(script);
      const daemon = [process.execPath, ...(inImage ? [IMAGE_DAEMON] : existsSync(script) ? [script] : ["--import", "tsx", path.join(ROOT, "sandboxd/main.ts")])];
      const asUser = user ? ["setpriv", `--reuid=${user.uid}`, `--regid=${user.gid}`, "--clear-groups", "--"] : [];
      const mounts = podMounts(inImage ? { ...files, [IMAGE_DAEMON]: script } : files, workspace);
      const [command, ...args] = [...mounts, ...asUser, ...daemon];
      // The pod's own /tmp (an emptyDir; with image files bwrap gives it a private one): what the
      // daemon writes there (its CA files) goes with the stand-in's folder, not the host's /tmp.
      const podTmp = mounts.length === 0 ? path.join(this.dataDir, "pod-tmp", name) : null;
      if (podTmp) {
        mkdirSync(podTmp, { recursive: true, mode: 0o1777 });
        chmodSync(podTmp, 0o1777);
      }
      const child = spawn(command!, args, {
        cwd: workspace,
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...(podTmp ? { TMPDIR: podTmp } : {}), ...env, BERTH_DAEMON_LISTEN: `tcp:${ip}:${port}`, BERTH_WORKSPACE: workspace } as unknown as NodeJS.ProcessEnv,
        stdio: ["ignore", "pipe", "pipe"],
        detached: true,
      });
      pod.child = child;
      child.stderr!.on("data", (chunk) => (pod.output = (pod.output + chunk).slice(-4000)));
      const ready = await new Promise<boolean>((resolve) => {
        let buffer = "";
        child.stdout!.on("data", (chunk) => {
          buffer += chunk;
          if (buffer.includes("READY")) resolve(true);
        });
        child.once("exit", () => resolve(false));
      });
      child.once("exit", (code, signal) => this.onPodExit(pod, code, signal));
      if (!ready) {
        this.onPodExit(pod, child.exitCode, child.signalCode);
        return;
      }
      if (pod.ending || this.pods.get(name) !== pod) return;
      this.setSandboxStatus(name, (status) => ({
        ...status,
        serviceFQDN: ip,
        service: name,
        podIPs: [ip],
        nodeName: "fake-node",
        selector: `agents.x-k8s.io/sandbox-name-hash=${name}`,
        conditions: [condition("Ready", "True", "DependenciesReady", "Pod is Ready; Service Exists")],
      }));
    } catch (error) {
      if (this.pods.get(name) === pod) this.pods.delete(name);
      this.setSandboxStatus(name, (status) => ({ ...status, conditions: [condition("Ready", "False", "DependenciesNotReady", (error as Error).message.slice(0, 500))] }));
      // The controller keeps trying, as it would while a Secret or claim is missing.
      setTimeout(() => this.reconcileSandbox(name), 500).unref();
    }
  }

  private onPodExit(pod: Pod, code: number | null, signal: string | null): void {
    if (pod.ending || this.pods.get(pod.sandbox) !== pod) return;
    pod.ending = "exited";
    const message = `container sandboxd terminated (${signal ?? `exit code ${code}`})`;
    this.setSandboxStatus(pod.sandbox, (status) => ({
      ...status,
      conditions: [condition("Ready", "False", "PodFailed", message), condition("Finished", "True", "PodFailed", message)],
    }));
  }

  private async endPod(name: string, why: string): Promise<void> {
    const pod = this.pods.get(name);
    if (!pod) return;
    pod.ending = why;
    this.pods.delete(name);
    const child = pod.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        child.kill("SIGKILL");
      }
      await exited;
    }
  }

  /** What the kubelet would give the container: env (incl. envFrom Secrets), volumes, port. */
  private async resolvePod(
    sandbox: Obj,
    namespace: string,
  ): Promise<{ env: Record<string, string>; workspace: string; port: number; image: string | undefined; user: { uid: number; gid: number } | null }> {
    type SecurityContext = { runAsUser?: number; runAsGroup?: number; fsGroup?: number };
    const podSpec = ((sandbox.spec as Json).podTemplate as Json).spec as {
      securityContext?: SecurityContext;
      containers: Array<{ image?: string; securityContext?: SecurityContext; env?: Array<{ name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }>; envFrom?: Array<{ secretRef?: { name: string }; prefix?: string }>; volumeMounts?: Array<{ name: string; mountPath: string }>; ports?: Array<{ containerPort: number }> }>;
      volumes?: Array<{ name: string; persistentVolumeClaim?: { claimName: string }; emptyDir?: unknown }>;
    };
    const container = podSpec.containers[0]!;
    const secretData = (secretName: string): Record<string, string> => {
      const secret = this.objects.get(`secrets/${namespace}/${secretName}`);
      if (!secret) throw new Error(`secret "${secretName}" not found`);
      return Object.fromEntries(Object.entries((secret.data ?? {}) as Record<string, string>).map(([k, v]) => [k, Buffer.from(v, "base64").toString("utf8")]));
    };
    const env: Record<string, string> = {};
    for (const source of container.envFrom ?? []) {
      if (source.secretRef) for (const [k, v] of Object.entries(secretData(source.secretRef.name))) env[`${source.prefix ?? ""}${k}`] = v;
    }
    for (const variable of container.env ?? []) {
      if (variable.value !== undefined) env[variable.name] = variable.value;
      else if (variable.valueFrom?.secretKeyRef) env[variable.name] = secretData(variable.valueFrom.secretKeyRef.name)[variable.valueFrom.secretKeyRef.key] ?? "";
    }
    const listen = /^tcp:[^:]+:(\d+)$/.exec(env.BERTH_DAEMON_LISTEN ?? "");
    const port = listen ? Number(listen[1]) : container.ports?.[0]?.containerPort;
    if (!port) throw new Error("the container has no port to listen on");
    const mountPath = env.BERTH_WORKSPACE ?? "/workspace";
    const mount = container.volumeMounts?.find((m) => m.mountPath === mountPath);
    const vct = ((sandbox.spec as Json).volumeClaimTemplates as Array<{ metadata?: { name?: string } }> | undefined)?.find((t) => t.metadata?.name === mount?.name);
    // The controller mounts a volumeClaimTemplate's PVC in place of a volume of the same name.
    const volume = vct ? { name: mount!.name, persistentVolumeClaim: { claimName: `${mount!.name}-${sandbox.metadata.name}` } } : podSpec.volumes?.find((v) => v.name === mount?.name);
    let workspace: string;
    if (volume?.persistentVolumeClaim) {
      const claim = volume.persistentVolumeClaim.claimName;
      if (!this.objects.has(`persistentvolumeclaims/${namespace}/${claim}`)) throw new Error(`persistentvolumeclaim "${claim}" not found`);
      workspace = path.join(this.dataDir, "volumes", claim);
    } else {
      workspace = path.join(this.dataDir, "emptydir", `${sandbox.metadata.uid}-${mount?.name ?? "workspace"}`);
    }
    mkdirSync(workspace, { recursive: true });
    for (const [key, value] of Object.entries(env)) if (value === mountPath) env[key] = workspace;
    let user: { uid: number; gid: number } | null = null;
    if (this.options.runAsPodUser) {
      const uid = container.securityContext?.runAsUser ?? podSpec.securityContext?.runAsUser ?? 0;
      const gid = container.securityContext?.runAsGroup ?? podSpec.securityContext?.runAsGroup ?? 0;
      user = { uid, gid };
      // The kubelet makes a volume group-owned by fsGroup, group-writable, setgid; the folders above it are traversable.
      const fsGroup = podSpec.securityContext?.fsGroup;
      if (fsGroup !== undefined) {
        chownSync(workspace, 0, fsGroup);
        chmodSync(workspace, 0o2775);
      }
      for (let folder = path.dirname(workspace); folder.startsWith(this.dataDir); folder = path.dirname(folder)) chmodSync(folder, 0o711);
    }
    return { env, workspace, port, image: container.image, user };
  }

  // ---- the extensions controller: SandboxWarmPool and SandboxClaim (extensions/controllers/)

  private extensionsQueued = false;

  private scheduleExtensions(type: ResourceType): void {
    if (!["Sandbox", "SandboxClaim", "SandboxWarmPool", "SandboxTemplate"].includes(type.kind) || this.extensionsQueued) return;
    this.extensionsQueued = true;
    setImmediate(() => {
      this.extensionsQueued = false;
      try {
        for (const pool of this.ofKind("SandboxWarmPool")) this.reconcileWarmPool(pool);
        for (const claim of this.ofKind("SandboxClaim")) this.reconcileClaim(claim);
      } catch (error) {
        // A controller error is logged and retried, never fatal.
        this.controllerErrors.push((error as Error).message);
        setTimeout(() => this.scheduleExtensions(type), 200).unref();
      }
    });
  }

  /** Errors the stand-in controller hit (a real controller would log and requeue). */
  readonly controllerErrors: string[] = [];

  private ofKind(kind: string): Obj[] {
    return [...this.objects.values()].filter((o) => o.kind === kind && !o.metadata.deletionTimestamp);
  }

  private typeOf(kind: string): ResourceType {
    return this.types.find((t) => t.kind === kind)!;
  }

  private controllerRef(owner: Obj) {
    return { apiVersion: owner.apiVersion, kind: owner.kind, name: owner.metadata.name, uid: owner.metadata.uid, controller: true, blockOwnerDeletion: true };
  }

  private ownedBy(owner: Obj): Obj[] {
    return this.ofKind("Sandbox").filter((sandbox) => sandbox.metadata.ownerReferences?.some((ref) => ref.uid === owner.metadata.uid && (ref as { controller?: boolean }).controller));
  }

  private isSandboxReady(sandbox: Obj): boolean {
    const conditions = ((sandbox.status ?? {}) as { conditions?: Array<{ type: string; status: string }> }).conditions ?? [];
    return conditions.some((c) => c.type === "Ready" && c.status === "True");
  }

  /** A Sandbox built from a template's blueprint (podTemplate, service, volumeClaimTemplates). */
  private blueprint(template: Obj): Json {
    const spec = structuredClone(template.spec ?? {}) as Json;
    return {
      podTemplate: spec.podTemplate,
      ...(spec.service !== undefined ? { service: spec.service } : {}),
      ...(spec.volumeClaimTemplates ? { volumeClaimTemplates: spec.volumeClaimTemplates } : {}),
    };
  }

  private shortHash(value: string): string {
    let hash = 0;
    for (const char of value) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
    return hash.toString(16);
  }

  /** Keeps `replicas` Sandboxes owned by the pool (made from its template); the status says how many are ready. */
  private reconcileWarmPool(pool: Obj): void {
    const namespace = pool.metadata.namespace!;
    const spec = (pool.spec ?? {}) as { replicas?: number; sandboxTemplateRef?: { name?: string } };
    const template = this.objects.get(`sandboxtemplates/${namespace}/${spec.sandboxTemplateRef?.name}`);
    const members = this.ownedBy(pool);
    const replicas = spec.replicas ?? 1;
    if (template && members.length < replicas) {
      const podTemplate = structuredClone((template.spec as Json).podTemplate as { metadata?: { labels?: Record<string, string> } });
      const poolLabels = {
        "agents.x-k8s.io/warm-pool-sandbox": this.shortHash(pool.metadata.name!),
        "agents.x-k8s.io/sandbox-template-ref-hash": this.shortHash(template.metadata.name!),
      };
      podTemplate.metadata = { ...podTemplate.metadata, labels: { ...podTemplate.metadata?.labels, ...poolLabels } };
      for (let i = members.length; i < replicas; i++) {
        this.create(this.sandboxType(), "v1beta1", namespace, {
          apiVersion: "agents.x-k8s.io/v1beta1",
          kind: "Sandbox",
          metadata: {
            generateName: `${pool.metadata.name}-`,
            labels: { ...poolLabels, "agents.x-k8s.io/launch-type": "warm", "agents.x-k8s.io/created-by": "controller" },
            annotations: { "agents.x-k8s.io/sandbox-template-ref": template.metadata.name! },
            ownerReferences: [this.controllerRef(pool)],
          },
          spec: { ...this.blueprint(template), podTemplate },
        } as Obj, "Strict");
      }
    } else if (members.length > replicas) {
      const extra = [...members].sort((a, b) => Number(this.isSandboxReady(a)) - Number(this.isSandboxReady(b))).slice(0, members.length - replicas);
      for (const sandbox of extra) this.remove(this.sandboxType(), namespace, sandbox.metadata.name!);
    }
    const current = this.ownedBy(pool);
    const status = { replicas: current.length, readyReplicas: current.filter((s) => this.isSandboxReady(s)).length, selector: `agents.x-k8s.io/warm-pool-sandbox=${this.shortHash(pool.metadata.name!)}`, observedGeneration: pool.metadata.generation ?? 1 };
    if (JSON.stringify(status) !== JSON.stringify(pool.status ?? {})) {
      this.update(this.typeOf("SandboxWarmPool"), "v1beta1", namespace, pool, { ...structuredClone(pool), status }, true, "Strict");
    }
  }

  /**
   * A claim gets a Sandbox: one it owns already; else (no env, no volumeClaimTemplates) a Ready
   * Sandbox of its warm pool, adopted (relabelled, owner moved to the claim); else a new one named
   * after the claim from the pool's template. Its status names the Sandbox and mirrors Ready.
   */
  private reconcileClaim(claim: Obj): void {
    const namespace = claim.metadata.namespace!;
    const spec = (claim.spec ?? {}) as {
      warmPoolRef?: { name?: string };
      env?: Array<{ name: string; value: string; containerName?: string }>;
      volumeClaimTemplates?: unknown[];
      additionalPodMetadata?: { labels?: Record<string, string>; annotations?: Record<string, string> };
    };
    const pool = this.objects.get(`sandboxwarmpools/${namespace}/${spec.warmPoolRef?.name}`);
    const template = pool ? this.objects.get(`sandboxtemplates/${namespace}/${(pool.spec as { sandboxTemplateRef?: { name?: string } }).sandboxTemplateRef?.name}`) : undefined;
    const identity = { "agents.x-k8s.io/claim-uid": claim.metadata.uid! };
    const extraLabels = spec.additionalPodMetadata?.labels ?? {};
    let sandbox = this.ownedBy(claim)[0];
    let problem: { reason: string; message: string } | null = null;
    // As the controller: additionalPodMetadata labels only from allowlisted domains (default sandbox.users.io).
    const badLabel = Object.keys(extraLabels).find((key) => !/^([a-z0-9.-]+\.)?sandbox\.users\.io\//.test(key));
    if (badLabel) problem = { reason: "InvalidMetadata", message: `failed to validate label "${badLabel}": label domain "${badLabel.split("/")[0]}" is not in the allowlist` };
    if (!problem && !sandbox && !spec.env?.length && !spec.volumeClaimTemplates?.length && pool) {
      const candidate = this.ownedBy(pool)
        .filter((s) => this.isSandboxReady(s))
        .sort((a, b) => a.metadata.creationTimestamp!.localeCompare(b.metadata.creationTimestamp!) || a.metadata.name!.localeCompare(b.metadata.name!))[0];
      if (candidate) {
        const adopted = structuredClone(candidate);
        const labels = { ...adopted.metadata.labels };
        delete labels["agents.x-k8s.io/warm-pool-sandbox"];
        delete labels["agents.x-k8s.io/created-by"];
        adopted.metadata.labels = { ...labels, ...identity, "agents.x-k8s.io/launch-type": "warm" };
        adopted.metadata.ownerReferences = [this.controllerRef(claim)];
        adopted.metadata.annotations = { ...adopted.metadata.annotations, "agents.x-k8s.io/pod-name": adopted.metadata.name! };
        const podTemplate = (adopted.spec as { podTemplate: { metadata?: { labels?: Record<string, string> } } }).podTemplate;
        const podLabels = { ...podTemplate.metadata?.labels };
        delete podLabels["agents.x-k8s.io/warm-pool-sandbox"];
        podTemplate.metadata = { ...podTemplate.metadata, labels: { ...podLabels, ...identity, ...extraLabels } };
        sandbox = this.update(this.sandboxType(), "v1beta1", namespace, candidate, adopted, false, "Strict").body;
        this.adoptions.push({ claim: claim.metadata.name!, sandbox: candidate.metadata.name! });
      }
    }
    if (!problem && !sandbox && !this.objects.has(`sandboxes/${namespace}/${claim.metadata.name}`)) {
      const envPolicy = (template?.spec as { envVarsInjectionPolicy?: string } | undefined)?.envVarsInjectionPolicy ?? "Disallowed";
      const vctPolicy = (template?.spec as { volumeClaimTemplatesPolicy?: string } | undefined)?.volumeClaimTemplatesPolicy ?? "Disallowed";
      if (!template) problem = { reason: "TemplateNotFound", message: `the warm pool ${spec.warmPoolRef?.name} or its template was not found` };
      else if (spec.env?.length && envPolicy !== "Allowed" && envPolicy !== "Overrides") problem = { reason: "EnvVarsInjectionRejected", message: "environment variable injection is not allowed by the template policy" };
      else if (spec.volumeClaimTemplates?.length && vctPolicy === "Disallowed") problem = { reason: "VolumeClaimTemplatesError", message: "volume claim templates are disallowed by the template" };
      else {
        const blueprint = this.blueprint(template) as { podTemplate: { metadata?: { labels?: Record<string, string> }; spec: { containers: Array<{ env?: Array<{ name: string; value?: string }> }> } }; volumeClaimTemplates?: unknown[] };
        blueprint.podTemplate.metadata = { ...blueprint.podTemplate.metadata, labels: { ...blueprint.podTemplate.metadata?.labels, ...identity, ...extraLabels } };
        for (const variable of spec.env ?? []) {
          const container = blueprint.podTemplate.spec.containers[0]!;
          container.env = [...(container.env ?? []).filter((e) => e.name !== variable.name), { name: variable.name, value: variable.value }];
        }
        if (spec.volumeClaimTemplates?.length) blueprint.volumeClaimTemplates = [...((blueprint.volumeClaimTemplates as unknown[]) ?? []), ...spec.volumeClaimTemplates];
        sandbox = this.create(this.sandboxType(), "v1beta1", namespace, {
          apiVersion: "agents.x-k8s.io/v1beta1",
          kind: "Sandbox",
          metadata: {
            name: claim.metadata.name,
            labels: { ...identity, "agents.x-k8s.io/launch-type": "cold" },
            annotations: { "agents.x-k8s.io/sandbox-template-ref": template.metadata.name! },
            ownerReferences: [this.controllerRef(claim)],
          },
          spec: blueprint as Json,
        } as Obj, "Strict").body;
      }
    }
    const ready = sandbox ? this.isSandboxReady(sandbox) : false;
    const status: Json = {
      ...(sandbox ? { sandbox: { name: sandbox.metadata.name, ...((sandbox.status as { podIPs?: string[] } | undefined)?.podIPs ? { podIPs: (sandbox.status as { podIPs: string[] }).podIPs } : {}) } } : {}),
      conditions: [
        problem
          ? condition("Ready", "False", problem.reason, problem.message)
          : condition("Ready", ready ? "True" : "False", ready ? "SandboxReady" : "SandboxNotReady", ready ? "Sandbox is ready" : "Sandbox is not ready"),
      ],
    };
    const comparable = (value: unknown) => JSON.stringify(value, (key, v: unknown) => (key === "lastTransitionTime" ? undefined : v));
    if (comparable(status) !== comparable(claim.status ?? {})) {
      this.update(this.typeOf("SandboxClaim"), "v1beta1", namespace, claim, { ...structuredClone(claim), status }, true, "Strict");
    }
  }

  /** Which pooled Sandbox each claim adopted, in order (tests). */
  readonly adoptions: Array<{ claim: string; sandbox: string }> = [];

  /**
   * The Sandbox controller's PVCs for volumeClaimTemplates: `<template name>-<sandbox name>`, owned
   * by the Sandbox and carrying its tracking label; an unowned one with that label is adopted again,
   * an unowned one without it (or one another object owns) is refused.
   */
  private reconcileVolumeClaims(sandbox: Obj, namespace: string): void {
    const templates = ((sandbox.spec as Json).volumeClaimTemplates as Array<{ metadata?: { name?: string; labels?: Record<string, string> }; spec?: Json }> | undefined) ?? [];
    const tracking = this.shortHash(sandbox.metadata.name!);
    const pvcType = this.typeOf("PersistentVolumeClaim");
    for (const template of templates) {
      const name = `${template.metadata?.name}-${sandbox.metadata.name}`;
      const existing = this.objects.get(`persistentvolumeclaims/${namespace}/${name}`);
      if (!existing) {
        this.create(pvcType, "v1", namespace, {
          apiVersion: "v1",
          kind: "PersistentVolumeClaim",
          metadata: { name, labels: { ...template.metadata?.labels, "agents.x-k8s.io/sandbox-name-hash": tracking }, ownerReferences: [this.controllerRef(sandbox)] },
          spec: structuredClone(template.spec ?? {}),
        } as Obj, "Strict");
        continue;
      }
      const controller = existing.metadata.ownerReferences?.find((ref) => (ref as { controller?: boolean }).controller);
      if (controller && controller.uid !== sandbox.metadata.uid) throw new Error(`PVC "${name}" is owned by ${controller.kind}/${controller.name}, not by sandbox "${sandbox.metadata.name}"`);
      if (!controller) {
        if (existing.metadata.labels?.["agents.x-k8s.io/sandbox-name-hash"] !== tracking) throw new Error(`cannot adopt unowned PVC "${name}": missing the sandbox tracking label`);
        this.update(pvcType, "v1", namespace, existing, { ...structuredClone(existing), metadata: { ...structuredClone(existing.metadata), ownerReferences: [this.controllerRef(sandbox)] } }, false, "Strict");
      }
    }
  }

  private allocateIp(): string {
    const n = this.nextIp++;
    return `127.0.${Math.floor(n / 250)}.${(n % 250) + 2}`;
  }
}

/**
 * The command prefix that gives a pod the files its image carries (FakeKubeApiOptions.imageFiles):
 * bubblewrap with the host's root and network; a tmpfs over each file's deepest folder that exists
 * on the host (nothing is created on the host) with the file bound read-only at its path; a /tmp of
 * the pod's own (mode 1777), with the pod's workspace folder (under the stand-in's data dir, often in
 * /tmp) bound back in at its path. No files: [] (the daemon runs on the host as it is).
 */
function podMounts(files: Record<string, string> | undefined, workspace: string): string[] {
  if (!files || Object.keys(files).length === 0) return [];
  const roots = new Map<string, string>([["/tmp", "1777"]]);
  for (const [inPod, onHost] of Object.entries(files)) {
    if (!path.isAbsolute(inPod) || !existsSync(onHost)) throw new Error(`imageFiles: ${inPod} must be absolute and ${onHost} must exist`);
    let folder = path.dirname(inPod);
    while (!existsSync(folder)) folder = path.dirname(folder);
    if (folder === "/") throw new Error(`imageFiles: ${inPod} would need a tmpfs over / (make its top folder exist on the host)`);
    if (![...roots.keys()].some((root) => folder === root || folder.startsWith(`${root}/`))) roots.set(folder, "0755");
  }
  // (In a chroot, bwrap cannot make "/" a slave mount: unchrootPrefix gives it a real root first.)
  const args = [...unchrootPrefix(), "bwrap", "--dev-bind", "/", "/", "--die-with-parent"];
  for (const [root, mode] of roots) args.push("--perms", mode, "--tmpfs", root);
  const made = new Set<string>();
  /** bwrap makes the folders on the way to a mount point 0700: these are made 0755 first. */
  const folders = (target: string) => {
    const root = [...roots.keys()].find((r) => target.startsWith(`${r}/`));
    if (!root) return;
    const chain: string[] = [];
    for (let folder = path.dirname(target); folder !== root; folder = path.dirname(folder)) chain.unshift(folder);
    for (const folder of chain) {
      if (made.has(folder)) continue;
      made.add(folder);
      args.push("--perms", "0755", "--dir", folder);
    }
  };
  for (const [inPod, onHost] of Object.entries(files)) {
    folders(inPod);
    args.push("--ro-bind", onHost, inPod);
  }
  const underRoot = (target: string) => [...roots.keys()].some((root) => target.startsWith(`${root}/`));
  if (underRoot(workspace)) {
    folders(workspace);
    args.push("--bind", workspace, workspace);
  }
  // The daemon (this checkout's build) and the runtime must stay visible when they sit under a folder
  // covered above (a checkout in /tmp).
  for (const keep of new Set([ROOT, path.dirname(realpathSync(process.execPath))])) {
    if (!underRoot(keep)) continue;
    folders(keep);
    args.push("--ro-bind", keep, keep);
  }
  return [...args, "--"];
}

function condition(type: string, status: "True" | "False" | "Unknown", reason: string, message: string) {
  return { type, status, reason, message, lastTransitionTime: now(), observedGeneration: 1 };
}

function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let data = "";
    req.setEncoding("utf8");
    req.on("data", (chunk: string) => (data += chunk));
    req.on("end", () => resolve(data));
    req.on("error", reject);
  });
}
