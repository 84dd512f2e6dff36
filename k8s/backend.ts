/**
 * The `kubernetes` sandbox backend: each session generation is an agent-sandbox `Sandbox`
 * (agents.x-k8s.io/v1beta1) running the sandbox daemon, built from a `SandboxTemplate` per agent
 * version. The session's environment lives in a per-generation Secret (never in the shared
 * template); its workspace in a per-session PersistentVolumeClaim that outlives generations.
 * Readiness comes from the Sandbox's `Ready` condition (watched), the address from
 * `status.serviceFQDN`; a list-watch notices sandboxes that stop being ready or disappear.
 */
import type { KubeConfig } from "@kubernetes/client-node";
import { createDaemonClient } from "../server/sandbox/daemon-client";
import {
  DaemonRequestError,
  SandboxUnavailableError,
  type DaemonClient,
  type ListedSandbox,
  type ProvisionedSandbox,
  type SandboxBackend,
  type SandboxLoss,
  type SandboxSpec,
  type SandboxState,
  type WarmPoolSpec,
} from "../server/sandbox/port";
import type { Logger } from "../server/logger";
import { isConflict, isNotFound, KubeApiError, KubeClient, type ObjectRef } from "./kube";
import {
  API_VERSION,
  buildEnvSecret,
  buildPoolTokenSecret,
  buildSandboxClaim,
  buildWarmPool,
  buildWarmPoolTemplate,
  CLAIM_LABEL,
  CLAIM_SELECTOR,
  CONTROLLER_LABELS,
  pooledWorkspaceClaimName,
  quantityBytes,
  POOLED_LABEL,
  SANDBOX_CLAIMS,
  SANDBOX_WARM_POOLS,
  WARM_POOL_SELECTOR,
  warmPoolNameFor,
  WORKSPACE_ANNOTATION,
  WORKSPACE_SELECTOR,
  workspaceStorage,
  type SandboxClaimObject,
  type WarmPoolShape,
  buildSandbox,
  buildSandboxTemplate,
  buildWorkspaceClaim,
  ENV_SECRET_SELECTOR,
  EXTENSIONS_GROUP,
  isReady,
  LABELS,
  readyCondition,
  SANDBOX_GROUP,
  SANDBOX_SELECTOR,
  SANDBOX_TEMPLATES,
  SANDBOXES,
  TEMPLATE_ANNOTATION,
  terminalReason,
  type KubeObject,
  type KubernetesSandboxSettings,
  type SandboxObject,
} from "./resources";
import { ListWatch, watchOnce } from "./watch";

export const SANDBOX_REF: ObjectRef = { group: SANDBOX_GROUP, version: API_VERSION, plural: SANDBOXES };
export const TEMPLATE_REF: ObjectRef = { group: EXTENSIONS_GROUP, version: API_VERSION, plural: SANDBOX_TEMPLATES };
export const CLAIM_REF: ObjectRef = { group: EXTENSIONS_GROUP, version: API_VERSION, plural: SANDBOX_CLAIMS };
export const WARM_POOL_REF: ObjectRef = { group: EXTENSIONS_GROUP, version: API_VERSION, plural: SANDBOX_WARM_POOLS };

export type KubernetesBackendOptions = KubernetesSandboxSettings & {
  kubeConfig: KubeConfig;
  /** The daemon token of a sandbox, derived from its name exactly as for the local backend. */
  tokenFor: (name: string) => string;
  /**
   * The egress gateway token of a sandbox (or a warm pool), derived from its name; required with
   * `gateway`. The gateway finds a sandbox's session by that name in the `sandboxes` table.
   */
  gatewayTokenFor?: (name: string) => string;
  logger: Logger;
  /** Longest wait for a new Sandbox to be Ready and its daemon to answer. */
  readyTimeoutMs?: number;
  requestTimeoutMs?: number;
  retries?: number;
  retryBaseMs?: number;
  watchMinBackoffMs?: number;
  watchMaxBackoffMs?: number;
};

const DEFAULT_READY_TIMEOUT_MS = 180_000;
/** Env Secrets whose Sandbox is gone are removed once this old (a provision may be between the two creates). */
const ORPHAN_SECRET_AGE_MS = 5 * 60_000;

type Known = { ready: boolean; host: string | null };

export class KubernetesSandboxBackend implements SandboxBackend {
  readonly name = "kubernetes" as const;
  private readonly kube: KubeClient;
  private readonly logger: Logger;
  private readonly lossListeners: Array<(loss: SandboxLoss) => void> = [];
  /** What the watch last saw of each labelled Sandbox. */
  private readonly known = new Map<string, Known>();
  /** Daemon host -> sandbox name, for connect() when the host is an IP rather than the Service's DNS name. */
  private readonly hostNames = new Map<string, string>();
  /** Sandboxes this process is deleting on purpose: their disappearance is no loss. */
  private readonly stopping = new Set<string>();
  /** Sandboxes whose resume is waiting for their new pod: their old pod's status is not trusted. */
  private readonly resuming = new Set<string>();
  private readonly reported = new Set<string>();
  private readonly templatesSeen = new Set<string>();
  /** Session id -> the name of its workspace PVC, once known. */
  private readonly workspaces = new Map<string, string>();
  /** `<claim>:<diskMb>` pairs already checked by fitWorkspace. */
  private readonly workspacesFitted = new Set<string>();
  private readonly poolsSeen = new Set<string>();
  private readonly watch: ListWatch<SandboxObject>;

  constructor(private readonly options: KubernetesBackendOptions) {
    if (options.gateway && !options.gatewayTokenFor) throw new Error("the Kubernetes backend's gateway needs gatewayTokenFor");
    this.logger = options.logger.child({ component: "sandbox-kubernetes", namespace: options.namespace });
    this.kube = new KubeClient(options.kubeConfig, {
      namespace: options.namespace,
      requestTimeoutMs: options.requestTimeoutMs ?? 15_000,
      retries: options.retries ?? 4,
      retryBaseMs: options.retryBaseMs ?? 250,
      logger: this.logger,
    });
    this.watch = new ListWatch<SandboxObject>({
      kubeConfig: options.kubeConfig,
      path: this.sandboxesPath(),
      labelSelector: SANDBOX_SELECTOR,
      list: () => this.kube.listObjects<SandboxObject>(SANDBOX_REF, SANDBOX_SELECTOR),
      onSync: (items) => this.onSync(items),
      onEvent: (type, object) => this.onWatchEvent(type, object),
      logger: this.logger,
      minBackoffMs: options.watchMinBackoffMs,
      maxBackoffMs: options.watchMaxBackoffMs,
    });
  }

  /** Checks the API answers and the agent-sandbox CRDs are installed, then starts watching. */
  static async create(options: KubernetesBackendOptions): Promise<KubernetesSandboxBackend> {
    const backend = new KubernetesSandboxBackend(options);
    try {
      await backend.kube.listObjects(SANDBOX_REF, SANDBOX_SELECTOR);
    } catch (error) {
      if (isNotFound(error)) {
        throw new Error(
          `the agent-sandbox CRDs (sandboxes.${SANDBOX_GROUP} ${API_VERSION}) are not installed in the cluster: install agent-sandbox (see docs/kubernetes.md)`,
        );
      }
      throw new Error(`the Kubernetes sandbox backend cannot start: ${(error as Error).message}`);
    }
    backend.watch.start();
    await backend.watch.waitForSync();
    return backend;
  }

  private sandboxesPath(): string {
    return `/apis/${SANDBOX_GROUP}/${API_VERSION}/namespaces/${encodeURIComponent(this.options.namespace)}/${SANDBOXES}`;
  }

  onLost(listener: (loss: SandboxLoss) => void): void {
    this.lossListeners.push(listener);
  }

  connect(address: string): DaemonClient {
    return createDaemonClient({ address, token: this.options.tokenFor(this.nameOf(address)) });
  }

  /** The sandbox behind an address: the Service is named after its Sandbox (first DNS label). */
  private nameOf(address: string): string {
    let host: string;
    try {
      host = new URL(address).hostname.replace(/^\[(.*)\]$/, "$1");
    } catch {
      throw new SandboxUnavailableError(`not a Kubernetes sandbox address: ${address}`);
    }
    const mapped = this.hostNames.get(host);
    if (mapped) return mapped;
    if (/^[0-9.]+$/.test(host) || host.includes(":")) throw new SandboxUnavailableError(`no known sandbox at ${address}`);
    return host.split(".")[0]!;
  }

  async provision(spec: SandboxSpec): Promise<ProvisionedSandbox> {
    const started = performance.now();
    const settings = this.options;
    const template = await this.ensureTemplate(spec);
    const existingWorkspace = await this.workspaceOf(spec.sessionId);
    // Only a session's first sandbox can come from the pool: later generations need its workspace.
    if (!existingWorkspace && (spec.warmPoolSize ?? 0) > 0) return this.provisionFromPool(spec, started);
    if (existingWorkspace) await this.fitWorkspace(existingWorkspace, spec);
    const workspace = existingWorkspace ?? (await this.ensureWorkspace(spec));
    const suspended = await this.suspendedSandboxOf(spec, template.metadata!.name!);
    if (suspended) return this.resume(spec, suspended, started);
    // A cold Sandbox keeps spec.name, the name its sandboxes row gets: its gateway token is for that.
    const secret = buildEnvSecret(spec, settings, this.options.tokenFor(spec.name), this.gatewayTokenFor(spec.name));
    await this.putEnvSecret(secret);

    let created: SandboxObject;
    try {
      created = await this.createSandbox(spec, buildSandbox(spec, settings, template, workspace));
    } catch (error) {
      await this.kube.deleteSecret(secret.metadata!.name!).catch(() => {});
      throw error;
    }
    // The Secret goes with its Sandbox (garbage collection by owner), whoever deletes it.
    if (created.metadata?.uid) {
      await this.kube
        .patchSecret(secret.metadata!.name!, {
          metadata: { ownerReferences: [{ apiVersion: `${SANDBOX_GROUP}/${API_VERSION}`, kind: "Sandbox", name: spec.name, uid: created.metadata.uid, blockOwnerDeletion: false }] },
        })
        .catch((error: unknown) => this.logger.warn({ sandbox: spec.name, error: (error as Error).message }, "could not set the env Secret's owner"));
    }

    try {
      const deadline = Date.now() + (this.options.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS);
      const ready = await this.waitForReady(spec.name, created, deadline);
      const address = this.addressOf(ready);
      await this.waitForDaemon(spec.name, address, deadline);
      return { name: spec.name, address, hostPid: null, fromWarmPool: false, startMs: performance.now() - started };
    } catch (error) {
      await this.stop(spec.name, "did not become ready").catch(() => {});
      if (error instanceof SandboxUnavailableError) throw error;
      throw new SandboxUnavailableError(`sandbox ${spec.name} did not become ready: ${(error as Error).message}`, { cause: error });
    }
  }

  private gatewayTokenFor(name: string): string | null {
    return this.options.gateway && this.options.gatewayTokenFor ? this.options.gatewayTokenFor(name) : null;
  }

  /** Idle suspension: `operatingMode: Suspended` stops the pod and keeps the Sandbox for a resume. */
  async suspend(name: string): Promise<void> {
    this.logger.debug({ sandbox: name }, "suspending sandbox");
    try {
      await this.kube.mergePatchObject(SANDBOX_REF, name, { spec: { operatingMode: "Suspended" } });
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
  }

  /** The session's suspended Sandbox, when it can be resumed as this spec (same template); others are deleted. */
  private async suspendedSandboxOf(spec: SandboxSpec, templateName: string): Promise<SandboxObject | null> {
    const { items } = await this.kube.listObjects<SandboxObject>(SANDBOX_REF, `${SANDBOX_SELECTOR},${LABELS.session}=${spec.sessionId}`);
    let found: SandboxObject | null = null;
    for (const sandbox of items) {
      if (sandbox.spec?.operatingMode !== "Suspended" || sandbox.metadata?.deletionTimestamp) continue;
      // A pooled Sandbox (its daemon was bound through the API, not its pod's env) is not resumed: a
      // new pod would start unbound. The session goes on cold on the same workspace.
      // The template's name hashes the pod's shape (image, resources, runtime class, the gateway's
      // address and CA); the agent's network or egress policy is not part of it: the gateway applies
      // the current one to every connection.
      const sameShape = sandbox.metadata?.annotations?.[TEMPLATE_ANNOTATION] === templateName && !sandbox.metadata?.labels?.[CLAIM_LABEL];
      if (sameShape && !found) found = sandbox;
      else await this.stop(sandbox.metadata!.name!, "suspended with another shape: replaced");
    }
    return found;
  }

  /**
   * Resumes a suspended Sandbox as the session's new generation: the env Secret gets this
   * generation's values (rotation), then `operatingMode: Running` brings a new pod up on the same
   * workspace. The Sandbox keeps its name, so the daemon token stays the same.
   */
  private async resume(spec: SandboxSpec, sandbox: SandboxObject, started: number): Promise<ProvisionedSandbox> {
    const name = sandbox.metadata!.name!;
    // The resumed Sandbox's name becomes the new generation's row name: both tokens are for it.
    const secret = buildEnvSecret({ ...spec, name }, this.options, this.options.tokenFor(name), this.gatewayTokenFor(name));
    secret.metadata!.ownerReferences = [{ apiVersion: `${SANDBOX_GROUP}/${API_VERSION}`, kind: "Sandbox", name, uid: sandbox.metadata!.uid!, blockOwnerDeletion: false }];
    await this.putEnvSecret(secret);
    this.logger.debug({ sandbox: name, generation: spec.generation }, "resuming suspended sandbox");
    // Not ready until its new pod is (the loss watch may not have seen the suspension yet).
    this.known.set(name, { ready: false, host: null });
    this.resuming.add(name);
    try {
      const running = await this.kube.mergePatchObject<SandboxObject>(SANDBOX_REF, name, {
        metadata: { labels: { [LABELS.generation]: String(spec.generation) } },
        spec: { operatingMode: "Running" },
      });
      const deadline = Date.now() + (this.options.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS);
      // The patch's answer still carries the suspended pod's status (Ready, at its old address) until
      // the controller has seen the change: only what the watch shows after it counts.
      const ready = await this.waitForReady(name, running, deadline, { trustInitial: false });
      const address = this.addressOf(ready);
      await this.waitForDaemon(name, address, deadline);
      this.resuming.delete(name);
      this.known.set(name, { ready: true, host: ready.status?.serviceFQDN ?? null });
      return { name, address, hostPid: null, fromWarmPool: false, startMs: performance.now() - started };
    } catch (error) {
      this.resuming.delete(name);
      await this.stop(name, "did not resume").catch(() => {});
      if (error instanceof SandboxUnavailableError) throw error;
      throw new SandboxUnavailableError(`sandbox ${name} did not resume: ${(error as Error).message}`, { cause: error });
    }
  }

  private async ensureTemplate(spec: SandboxSpec): Promise<KubeObject> {
    const wanted = buildSandboxTemplate(spec, this.options);
    const name = wanted.metadata!.name!;
    if (this.templatesSeen.has(name)) return wanted;
    try {
      await this.kube.createObject(TEMPLATE_REF, wanted);
    } catch (error) {
      // Same name = same hash of the pod's shape: an existing one is the same template.
      if (!isConflict(error)) throw error;
    }
    this.templatesSeen.add(name);
    return wanted;
  }

  private async ensureWorkspace(spec: SandboxSpec): Promise<string> {
    const claim = buildWorkspaceClaim(spec, this.options);
    const name = claim.metadata!.name!;
    try {
      await this.kube.createPersistentVolumeClaim(claim);
    } catch (error) {
      if (!isConflict(error)) throw error; // kept from an earlier generation: that is the point
      await this.fitWorkspace(name, spec);
    }
    this.workspaces.set(spec.sessionId, name);
    return name;
  }

  /**
   * A session's claim requests the agent version's diskMb; one made before that (an older Berth, which
   * sized every claim by BERTH_K8S_WORKSPACE_SIZE) may request less. Claims only grow, so a smaller
   * one gets an expansion request, which the API server grants when the claim's StorageClass has
   * `allowVolumeExpansion` (the volume then grows online or at the next pod start). A refusal is
   * logged and the sandbox starts on the claim as it is; a larger claim is left alone (none shrink).
   */
  private async fitWorkspace(name: string, spec: SandboxSpec): Promise<void> {
    const key = `${name}:${spec.resources.diskMb}`;
    if (this.workspacesFitted.has(key)) return;
    try {
      const claim = await this.kube.getPersistentVolumeClaim(name);
      const requested = claim.spec?.resources?.requests?.storage;
      const have = quantityBytes(requested);
      const wanted = workspaceStorage(spec);
      if (have !== null && have < spec.resources.diskMb * 2 ** 20) {
        await this.kube.patchPersistentVolumeClaim(name, { spec: { resources: { requests: { storage: wanted } } } });
        this.logger.info({ claim: name, from: requested, to: wanted }, "asked to expand a workspace claim to the agent's diskMb");
      }
      this.workspacesFitted.add(key);
    } catch (error) {
      if (error instanceof KubeApiError && error.status >= 400 && error.status < 500) {
        this.workspacesFitted.add(key); // refused (no volume expansion in its StorageClass): the same answer next time
        this.logger.warn({ claim: name, diskMb: spec.resources.diskMb, err: error.message }, "could not expand a workspace claim to the agent's diskMb; the session keeps its smaller workspace");
        return;
      }
      throw error;
    }
  }

  /**
   * The session's workspace PVC, if it has one: `berth-ws-<session>`, or the PVC the pooled Sandbox
   * of its first generation got from the pool's volumeClaimTemplate (labelled for the session at
   * adoption). Found by label, so any replica knows it.
   */
  private async workspaceOf(sessionId: string): Promise<string | null> {
    const known = this.workspaces.get(sessionId);
    if (known) return known;
    const claims = (await this.kube.listPersistentVolumeClaims(`${WORKSPACE_SELECTOR},${LABELS.session}=${sessionId}`))
      .filter((claim) => claim.metadata?.name && !claim.metadata.deletionTimestamp)
      .sort((a, b) => new Date(b.metadata!.creationTimestamp ?? 0).getTime() - new Date(a.metadata!.creationTimestamp ?? 0).getTime());
    const name = claims[0]?.metadata?.name ?? null;
    if (name) this.workspaces.set(sessionId, name);
    return name;
  }

  // ---- warm pools

  /**
   * Creates what a warm pool needs if it is missing: its SandboxTemplate (unbound daemon, the pool's
   * token, a workspace volumeClaimTemplate), the token Secret, the SandboxWarmPool. With `replicas`
   * set, an existing pool is scaled to it.
   */
  private async ensureWarmPool(shape: WarmPoolShape, size: number, scale: boolean): Promise<string> {
    const name = warmPoolNameFor(shape, this.options);
    if (this.poolsSeen.has(name) && !scale) return name;
    const token = buildPoolTokenSecret(shape, this.options, this.options.tokenFor(name), this.gatewayTokenFor(name));
    try {
      await this.kube.createSecret(token);
    } catch (error) {
      if (!isConflict(error)) throw error; // same name, same derived value
    }
    try {
      await this.kube.createObject(TEMPLATE_REF, buildWarmPoolTemplate(shape, this.options));
    } catch (error) {
      if (!isConflict(error)) throw error;
    }
    try {
      await this.kube.createObject(WARM_POOL_REF, buildWarmPool(shape, this.options, size));
      this.logger.info({ pool: name, replicas: size }, "created warm pool");
    } catch (error) {
      if (!isConflict(error)) throw error;
      if (scale) {
        const pool = await this.kube.getObject<KubeObject>(WARM_POOL_REF, name);
        if ((pool.spec as { replicas?: number } | undefined)?.replicas !== size) {
          await this.kube.mergePatchObject(WARM_POOL_REF, name, { spec: { replicas: size } });
          this.logger.info({ pool: name, replicas: size }, "scaled warm pool");
        }
      }
    }
    this.poolsSeen.add(name);
    return name;
  }

  /**
   * Makes the warm pools match the agents' current versions: each wanted pool exists with its size;
   * Berth's pools nobody wants any more (an agent changed shape, its pool size went to 0, it was
   * deleted) are deleted with their template and token Secret. Their unclaimed Sandboxes go with them;
   * claimed ones belong to their claims and are not touched.
   */
  async syncWarmPools(wanted: WarmPoolSpec[]): Promise<void> {
    const names = new Set<string>();
    for (const pool of wanted) {
      if (pool.size <= 0) continue;
      names.add(await this.ensureWarmPool(pool, pool.size, true));
    }
    const { items } = await this.kube.listObjects<KubeObject>(WARM_POOL_REF, WARM_POOL_SELECTOR);
    for (const pool of items) {
      const name = pool.metadata?.name;
      if (!name || names.has(name) || pool.metadata?.deletionTimestamp) continue;
      this.logger.info({ pool: name }, "deleting warm pool no agent version wants");
      this.poolsSeen.delete(name);
      await this.kube.deleteObject(WARM_POOL_REF, name);
      await this.kube.deleteObject(TEMPLATE_REF, name);
      await this.kube.deleteSecret(`${name}-token`);
    }
  }

  /**
   * A session's first sandbox through a SandboxClaim on the agent's SandboxWarmPool: the controller
   * adopts a ready pooled Sandbox (or, with none ready, creates one from the pool's template); Berth
   * then binds the session's env through the daemon with the pool's token, rotating it to the
   * sandbox's own in the same call, and labels the Sandbox and its workspace PVC for the session.
   */
  private async provisionFromPool(spec: SandboxSpec, started: number): Promise<ProvisionedSandbox> {
    const pool = await this.ensureWarmPool(spec, spec.warmPoolSize!, false);
    const claim = buildSandboxClaim(spec, this.options, pool);
    let created: SandboxClaimObject;
    try {
      created = await this.kube.createObject<SandboxClaimObject>(CLAIM_REF, claim);
    } catch (error) {
      if (!isConflict(error)) throw error;
      created = await this.kube.getObject<SandboxClaimObject>(CLAIM_REF, spec.name);
      if (created.metadata?.labels?.[LABELS.session] !== spec.sessionId) {
        throw new KubeApiError(409, "AlreadyExists", `create sandboxclaims/${spec.name}: a SandboxClaim of that name exists and belongs to another session`);
      }
    }
    let sandboxName: string | null = null;
    try {
      const deadline = Date.now() + (this.options.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS);
      sandboxName = await this.waitForClaim(spec.name, created, deadline);
      this.stopping.delete(sandboxName);
      const initial = await this.kube.getObject<SandboxObject>(SANDBOX_REF, sandboxName);
      const ready = await this.waitForReady(sandboxName, initial, deadline);
      const address = this.addressOf(ready);
      const poolToken = this.options.tokenFor(pool);
      try {
        await this.waitForDaemon(sandboxName, address, deadline, poolToken);
      } catch (error) {
        // 401: it answers, but no longer to the pool's token (bound already); bindPooled checks whose.
        if (!(error instanceof SandboxUnavailableError && error.cause instanceof DaemonRequestError && error.cause.status === 401)) throw error;
      }
      await this.bindPooled(sandboxName, address, spec, poolToken);
      // The workspace the controller made for this Sandbox is the session's from now on.
      const workspace = pooledWorkspaceClaimName(sandboxName);
      await this.kube.patchPersistentVolumeClaim(workspace, {
        metadata: { labels: { [LABELS.managedBy]: "berth", [LABELS.component]: "workspace", [LABELS.team]: spec.teamId, [LABELS.agent]: spec.agentId, [LABELS.session]: spec.sessionId } },
      });
      this.workspaces.set(spec.sessionId, workspace);
      // Now Berth's: the watch (loss) and reconciliation see it under this name.
      await this.kube.mergePatchObject(SANDBOX_REF, sandboxName, {
        metadata: {
          labels: {
            [LABELS.managedBy]: "berth",
            [LABELS.component]: "sandbox",
            [LABELS.team]: spec.teamId,
            [LABELS.agent]: spec.agentId,
            [LABELS.session]: spec.sessionId,
            [LABELS.generation]: String(spec.generation),
            [CLAIM_LABEL]: spec.name,
            [POOLED_LABEL]: "true",
          },
          annotations: { [WORKSPACE_ANNOTATION]: workspace },
        },
      });
      const fromWarmPool = sandboxName !== spec.name;
      this.logger.debug({ sandbox: sandboxName, claim: spec.name, fromWarmPool }, "claimed sandbox from warm pool");
      return { name: sandboxName, address, hostPid: null, fromWarmPool, startMs: performance.now() - started };
    } catch (error) {
      await this.stopClaim(spec.name, sandboxName, "did not become ready").catch(() => {});
      if (error instanceof SandboxUnavailableError) throw error;
      throw new SandboxUnavailableError(`sandbox claim ${spec.name} did not become ready: ${(error as Error).message}`, { cause: error });
    }
  }

  /** Watches a SandboxClaim until the controller names its Sandbox (status.sandbox.name). */
  private async waitForClaim(name: string, initial: SandboxClaimObject, deadline: number): Promise<string> {
    let version = initial.metadata?.resourceVersion;
    let found: string | null = initial.status?.sandbox?.name || null;
    let failure: Error | null = null;
    const path = `/apis/${EXTENSIONS_GROUP}/${API_VERSION}/namespaces/${encodeURIComponent(this.options.namespace)}/${SANDBOX_CLAIMS}`;
    while (!found && !failure) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new SandboxUnavailableError(`sandbox claim ${name} got no Sandbox within ${this.options.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS} ms`);
      if (!version) {
        try {
          const current = await this.kube.getObject<SandboxClaimObject>(CLAIM_REF, name);
          found = current.status?.sandbox?.name || null;
          version = current.metadata?.resourceVersion;
          if (found) break;
        } catch (error) {
          if (isNotFound(error)) throw new SandboxUnavailableError(`sandbox claim ${name} was deleted while starting`);
          throw error;
        }
      }
      try {
        const outcome = await watchOnce<SandboxClaimObject>(
          this.options.kubeConfig,
          path,
          { fieldSelector: `metadata.name=${name}`, resourceVersion: version, allowWatchBookmarks: true, timeoutSeconds: Math.ceil(Math.min(remaining, 60_000) / 1000) },
          (type, claim) => {
            if (claim?.metadata?.resourceVersion) version = claim.metadata.resourceVersion;
            if (type === "BOOKMARK") return;
            if (type === "DELETED" || claim.metadata?.deletionTimestamp) failure = new SandboxUnavailableError(`sandbox claim ${name} was deleted while starting`);
            else found = claim.status?.sandbox?.name || null;
            return Boolean(found || failure);
          },
          AbortSignal.timeout(Math.min(remaining, 60_000)),
        );
        if (outcome === "expired") version = undefined;
      } catch (error) {
        this.logger.debug({ claim: name, error: (error as Error).message }, "claim watch failed; checking again");
        version = undefined;
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
    if (failure) throw failure;
    return found!;
  }

  /**
   * Gives a pooled daemon its session: env, its own daemon token in place of the pool's, and its own
   * gateway token in place of the pool's. Both are for `name`, the adopted Sandbox's: the name the
   * session's sandboxes row gets (provision returns it), which the gateway looks the session up by.
   */
  private async bindPooled(name: string, address: string, spec: SandboxSpec, poolToken: string): Promise<void> {
    const env = Object.fromEntries(Object.entries(spec.env).filter(([key]) => !key.startsWith("BERTH_DAEMON_")));
    const own = this.options.tokenFor(name);
    const gatewayToken = this.gatewayTokenFor(name);
    try {
      await createDaemonClient({ address, token: poolToken, timeoutMs: 10_000 }).bind({ sessionId: spec.sessionId, env, token: own, ...(gatewayToken ? { gatewayToken } : {}) });
    } catch (error) {
      // A retried provision may find it bound already, by this session, with its own token.
      const health = await createDaemonClient({ address, token: own, timeoutMs: 5_000 })
        .health()
        .catch(() => null);
      if (!health?.bound) throw new SandboxUnavailableError(`could not bind the pooled sandbox ${name}: ${(error as Error).message}`, { cause: error });
    }
  }

  /**
   * Ends a claimed sandbox: its workspace PVC is released first (owner reference and the
   * controller's tracking label removed), so deleting the claim and its Sandbox keeps the session's
   * workspace, as `stop` does for cold sandboxes.
   */
  private async stopClaim(claimName: string, sandboxName: string | null, reason: string): Promise<void> {
    this.logger.debug({ claim: claimName, sandbox: sandboxName, reason }, "deleting sandbox claim");
    if (sandboxName) {
      this.stopping.add(sandboxName);
      setTimeout(() => this.stopping.delete(sandboxName), 60_000).unref();
      try {
        await this.kube.patchPersistentVolumeClaim(pooledWorkspaceClaimName(sandboxName), {
          metadata: { ownerReferences: null, labels: { [CONTROLLER_LABELS.sandboxNameHash]: null } },
        });
      } catch (error) {
        if (!isNotFound(error)) throw error;
      }
    }
    await this.kube.deleteObject(CLAIM_REF, claimName);
    if (sandboxName) await this.kube.deleteObject(SANDBOX_REF, sandboxName);
  }

  private async putEnvSecret(secret: KubeObject): Promise<void> {
    try {
      await this.kube.createSecret(secret);
    } catch (error) {
      if (!isConflict(error)) throw error;
      // Left by an attempt that failed half-way: this generation's values win.
      await this.kube.replaceSecret(secret.metadata!.name!, secret);
    }
  }

  private async createSandbox(spec: SandboxSpec, body: SandboxObject): Promise<SandboxObject> {
    try {
      return await this.kube.createObject<SandboxObject>(SANDBOX_REF, body);
    } catch (error) {
      if (!isConflict(error)) throw error;
      // A retried provision of the same generation: adopt it if it is ours.
      const existing = await this.kube.getObject<SandboxObject>(SANDBOX_REF, spec.name);
      if (existing.metadata?.labels?.[LABELS.session] !== spec.sessionId) {
        throw new KubeApiError(409, "AlreadyExists", `create sandboxes/${spec.name}: a Sandbox of that name exists and belongs to another session`);
      }
      return existing;
    }
  }

  /** Watches one Sandbox until Ready=True with a serviceFQDN; fails fast on a terminal state or deletion. */
  private async waitForReady(name: string, initial: SandboxObject, deadline: number, options: { trustInitial?: boolean } = {}): Promise<SandboxObject> {
    let version = initial.metadata?.resourceVersion;
    let result: SandboxObject | Error | null = null;
    let first = options.trustInitial ?? true;
    for (;;) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new SandboxUnavailableError(`sandbox ${name} was not Ready within ${this.options.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS} ms`);
      const inspect = (sandbox: SandboxObject, deleted: boolean) => {
        if (deleted || sandbox.metadata?.deletionTimestamp) result = new SandboxUnavailableError(`sandbox ${name} was deleted while starting`);
        else if (isReady(sandbox)) result = sandbox;
        else {
          const terminal = terminalReason(sandbox);
          if (terminal) result = new SandboxUnavailableError(`sandbox ${name} failed: ${terminal}`);
        }
      };
      if (first) {
        // An adopted Sandbox may be Ready already: a watch from its version would show nothing new.
        first = false;
        inspect(initial, false);
        if (result) break;
      }
      if (!version) {
        let current: SandboxObject;
        try {
          current = await this.kube.getObject<SandboxObject>(SANDBOX_REF, name);
        } catch (error) {
          if (isNotFound(error)) throw new SandboxUnavailableError(`sandbox ${name} was deleted while starting`);
          throw error;
        }
        inspect(current, false);
        if (result) break;
        version = current.metadata?.resourceVersion;
      }
      const timeout = AbortSignal.timeout(Math.min(remaining, 60_000));
      try {
        const outcome = await watchOnce<SandboxObject>(
          this.options.kubeConfig,
          this.sandboxesPath(),
          { fieldSelector: `metadata.name=${name}`, resourceVersion: version, allowWatchBookmarks: true, timeoutSeconds: Math.ceil(Math.min(remaining, 60_000) / 1000) },
          (type, object) => {
            if (object?.metadata?.resourceVersion) version = object.metadata.resourceVersion;
            if (type === "BOOKMARK") return;
            inspect(object, type === "DELETED");
            return result !== null;
          },
          timeout,
        );
        if (outcome === "expired") version = undefined;
      } catch (error) {
        this.logger.debug({ sandbox: name, error: (error as Error).message }, "readiness watch failed; checking again");
        version = undefined;
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      if (result) break;
    }
    const outcome = result as SandboxObject | Error;
    if (outcome instanceof Error) throw outcome;
    return outcome;
  }

  private addressOf(sandbox: SandboxObject): string {
    const host = sandbox.status!.serviceFQDN!;
    this.hostNames.set(host, sandbox.metadata!.name!);
    return `http://${host.includes(":") ? `[${host}]` : host}:${this.options.daemonPort}`;
  }

  /** Ready means the pod is up; the Service's DNS name may still be propagating: ask the daemon itself. */
  private async waitForDaemon(name: string, address: string, deadline: number, token = this.options.tokenFor(name)): Promise<void> {
    const client = createDaemonClient({ address, token, timeoutMs: 5_000 });
    let delay = 100;
    for (;;) {
      try {
        await client.health();
        return;
      } catch (error) {
        if (!(error instanceof SandboxUnavailableError) || Date.now() + delay > deadline) {
          throw new SandboxUnavailableError(`sandbox ${name} is Ready but its daemon does not answer at ${address}: ${(error as Error).message}`, { cause: error });
        }
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(2_000, delay * 2);
      }
    }
  }

  async stop(name: string, reason: string): Promise<void> {
    this.stopping.add(name);
    // A claimed sandbox: the name is its Sandbox's (labelled with its claim), or, for a claim that
    // never got that far, the claim's own.
    const claimed = await this.claimOf(name);
    if (claimed) {
      try {
        await this.stopClaim(claimed.claim, claimed.sandbox, reason);
      } finally {
        setTimeout(() => this.stopping.delete(name), 60_000).unref();
      }
      return;
    }
    this.logger.debug({ sandbox: name, reason }, "deleting sandbox");
    try {
      await this.kube.deleteObject(SANDBOX_REF, name);
      await this.kube.deleteSecret(`${name}-env`);
    } finally {
      // Keep the mark a while: the watch may deliver the deletion after this returns.
      setTimeout(() => this.stopping.delete(name), 60_000).unref();
    }
  }

  private async claimOf(name: string): Promise<{ claim: string; sandbox: string | null } | null> {
    try {
      const sandbox = await this.kube.getObject<SandboxObject>(SANDBOX_REF, name);
      const claim = sandbox.metadata?.labels?.[CLAIM_LABEL];
      if (claim) return { claim, sandbox: name };
      if (sandbox.metadata?.labels?.[LABELS.managedBy] === "berth") return null; // a cold one
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
    try {
      const claim = await this.kube.getObject<SandboxClaimObject>(CLAIM_REF, name);
      if (claim.metadata?.labels?.[LABELS.managedBy] !== "berth") return null;
      return { claim: name, sandbox: claim.status?.sandbox?.name || null };
    } catch (error) {
      if (!isNotFound(error)) throw error;
      return null;
    }
  }

  async status(name: string): Promise<SandboxState> {
    let sandbox: SandboxObject;
    try {
      sandbox = await this.kube.getObject<SandboxObject>(SANDBOX_REF, name);
    } catch (error) {
      if (isNotFound(error)) return "gone";
      throw error;
    }
    if (sandbox.metadata?.deletionTimestamp) return "gone";
    if (sandbox.spec?.operatingMode === "Suspended") return "suspended";
    return isReady(sandbox) ? "running" : "gone";
  }

  async list(): Promise<ListedSandbox[]> {
    const { items } = await this.kube.listObjects<SandboxObject>(SANDBOX_REF, SANDBOX_SELECTOR);
    const listed = items
      .filter((sandbox) => sandbox.metadata?.name && !sandbox.metadata.deletionTimestamp)
      .map((sandbox) => ({
        name: sandbox.metadata!.name!,
        sessionId: sandbox.metadata?.labels?.[LABELS.session] ?? null,
        state: (sandbox.spec?.operatingMode === "Suspended" ? "suspended" : "running") as SandboxState,
      }));
    await this.removeOrphanSecrets(new Set(items.map((sandbox) => sandbox.metadata?.name ?? ""))).catch((error: unknown) =>
      this.logger.warn({ error: (error as Error).message }, "could not clean up env Secrets of deleted sandboxes"),
    );
    // Claims whose Sandbox is not (yet) labelled as Berth's: in flight (the session's row still has
    // the claim's name) or left by a provision that died half-way (reconciliation removes those).
    const claimedBy = new Set(items.map((sandbox) => sandbox.metadata?.labels?.[CLAIM_LABEL]).filter(Boolean));
    const claims = await this.kube.listObjects<SandboxClaimObject>(CLAIM_REF, CLAIM_SELECTOR);
    for (const claim of claims.items) {
      const name = claim.metadata?.name;
      if (!name || claim.metadata?.deletionTimestamp || claimedBy.has(name)) continue;
      listed.push({ name, sessionId: claim.metadata?.labels?.[LABELS.session] ?? null, state: "running" });
    }
    return listed;
  }

  async listWorkspaces(): Promise<string[]> {
    const claims = await this.kube.listPersistentVolumeClaims(WORKSPACE_SELECTOR);
    const sessions = claims.filter((claim) => !claim.metadata?.deletionTimestamp).map((claim) => claim.metadata?.labels?.[LABELS.session]);
    return [...new Set(sessions.filter((session): session is string => Boolean(session)))];
  }

  /** Every claim labelled for the session: its own `berth-ws-<session>` or the one its pooled first generation brought. */
  async deleteWorkspace(sessionId: string): Promise<void> {
    const claims = await this.kube.listPersistentVolumeClaims(`${WORKSPACE_SELECTOR},${LABELS.session}=${sessionId}`);
    for (const claim of claims) {
      const name = claim.metadata?.name;
      if (name && !claim.metadata?.deletionTimestamp) await this.kube.deletePersistentVolumeClaim(name);
    }
    this.workspaces.delete(sessionId);
  }

  /** Env Secrets whose Sandbox no longer exists (owner references normally take care of this). */
  private async removeOrphanSecrets(sandboxNames: Set<string>): Promise<void> {
    for (const secret of await this.kube.listSecrets(ENV_SECRET_SELECTOR)) {
      const owner = secret.metadata?.labels?.[LABELS.sandbox];
      const created = secret.metadata?.creationTimestamp ? new Date(secret.metadata.creationTimestamp).getTime() : 0;
      if (!owner || sandboxNames.has(owner) || Date.now() - created < ORPHAN_SECRET_AGE_MS) continue;
      await this.kube.deleteSecret(secret.metadata!.name!);
    }
  }

  async shutdown(): Promise<void> {
    // Sandboxes are not this process's children: other replicas (and the next start) keep using them.
    await this.watch.stop();
  }

  // ---- loss detection ----

  private onSync(items: SandboxObject[]): void {
    const present = new Set<string>();
    for (const sandbox of items) {
      const name = sandbox.metadata?.name;
      if (!name) continue;
      present.add(name);
      const before = this.known.get(name);
      this.observe(sandbox, before);
      // First sight after a (re)start: only a sandbox that can never recover counts as lost; one
      // that is still starting belongs to a provision in progress somewhere.
      if (!before) {
        const terminal = terminalReason(sandbox);
        if (terminal && !sandbox.metadata?.deletionTimestamp) this.lose(name, `sandbox failed: ${terminal}`);
      }
    }
    for (const [name, state] of this.known) {
      if (present.has(name)) continue;
      this.known.delete(name);
      if (state.ready) this.lose(name, "sandbox was deleted");
    }
  }

  private onWatchEvent(type: "ADDED" | "MODIFIED" | "DELETED", sandbox: SandboxObject): void {
    const name = sandbox.metadata?.name;
    if (!name) return;
    const before = this.known.get(name);
    if (type === "DELETED") {
      this.known.delete(name);
      if (before?.ready) this.lose(name, "sandbox was deleted");
      return;
    }
    this.observe(sandbox, before);
  }

  /** Records what a sandbox looks like now, and reports it lost when a ready one stopped being ready. */
  private observe(sandbox: SandboxObject, before: Known | undefined): void {
    const name = sandbox.metadata!.name!;
    // A suspended or resuming Sandbox is not ready, whatever a controller that has not caught up
    // still reports of its old pod: its new pod starting (not ready yet) is not a loss.
    const ready = isReady(sandbox) && sandbox.spec?.operatingMode !== "Suspended" && !this.resuming.has(name);
    const host = sandbox.status?.serviceFQDN ?? null;
    if (host) this.hostNames.set(host, name);
    this.known.set(name, { ready, host });
    if (!before?.ready || ready) return;
    if (sandbox.spec?.operatingMode === "Suspended") return;
    if (sandbox.metadata?.deletionTimestamp) {
      this.lose(name, "sandbox is being deleted");
      return;
    }
    const condition = readyCondition(sandbox);
    this.lose(name, `sandbox is no longer ready (${condition?.reason ?? "no Ready condition"}${condition?.message ? `: ${condition.message}` : ""})`);
  }

  private lose(name: string, reason: string): void {
    if (this.stopping.has(name) || this.reported.has(name)) return;
    this.reported.add(name);
    setTimeout(() => this.reported.delete(name), 10 * 60_000).unref();
    this.logger.warn({ sandbox: name, reason }, "sandbox lost");
    for (const listener of this.lossListeners) {
      try {
        listener({ name, reason });
      } catch (error) {
        this.logger.error({ err: error, sandbox: name }, "a sandbox-loss listener failed");
      }
    }
    // The session moves to a new generation; this one will not be used again.
    void this.stop(name, `lost: ${reason}`).catch((error: unknown) => this.logger.warn({ sandbox: name, error: (error as Error).message }, "could not delete a lost sandbox"));
  }
}
