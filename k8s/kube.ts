/**
 * A thin layer over @kubernetes/client-node (object-parameter API) for the calls the backend makes:
 * a deadline on every request, retries with backoff where they are safe, and Kubernetes API errors
 * turned into errors that say what failed and why. Nothing here logs request bodies (they carry the
 * sessions' environment).
 */
import { ApiException, CoreV1Api, CustomObjectsApi, KubeConfig, Observable, PatchStrategy, setHeaderOptions, type ConfigurationOptions } from "@kubernetes/client-node";
import { SandboxUnavailableError } from "../server/sandbox/port";
import type { Logger } from "../server/logger";

/** A Kubernetes API answer that is not a success, with the API's own reason and message. */
export class KubeApiError extends Error {
  override name = "KubeApiError";
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

export type KubeStatus = { kind?: string; status?: string; message?: string; reason?: string; code?: number; details?: unknown };

/** Loads credentials the way kubectl does: in a pod its ServiceAccount, elsewhere KUBECONFIG / ~/.kube/config. */
export function loadKubeConfig(): KubeConfig {
  const kc = new KubeConfig();
  if (process.env.KUBERNETES_SERVICE_HOST && process.env.KUBERNETES_SERVICE_PORT) kc.loadFromCluster();
  else kc.loadFromDefault();
  if (!kc.getCurrentCluster()) {
    throw new Error("BERTH_SANDBOX_BACKEND=kubernetes: no Kubernetes cluster configured (not in a pod, and no KUBECONFIG or ~/.kube/config)");
  }
  return kc;
}

function parseStatus(body: unknown): KubeStatus | null {
  if (body && typeof body === "object") return body as KubeStatus;
  if (typeof body !== "string" || !body) return null;
  try {
    const parsed = JSON.parse(body) as unknown;
    return parsed && typeof parsed === "object" ? (parsed as KubeStatus) : null;
  } catch {
    return { message: body.slice(0, 300) };
  }
}

const NETWORK_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH", "ENETUNREACH", "EAI_AGAIN", "ENOTFOUND", "UND_ERR_SOCKET"]);

/** Turns whatever a client call threw into a KubeApiError (API answered) or a network failure. */
export function toKubeError(error: unknown, action: string): KubeApiError | SandboxUnavailableError {
  if (error instanceof KubeApiError || error instanceof SandboxUnavailableError) return error;
  if (error instanceof ApiException) {
    const status = parseStatus(error.body);
    const code = Number(error.code);
    const reason = status?.reason ?? (code === 401 ? "Unauthorized" : "Unknown");
    const detail = status?.message ?? (code === 401 ? "the credentials were refused" : `HTTP ${code}`);
    return new KubeApiError(code, reason, `${action}: ${describe(code, detail)}`);
  }
  const err = error as { name?: string; code?: string; type?: string; message?: string; cause?: { code?: string } };
  if (err?.name === "AbortError" || err?.name === "TimeoutError" || err?.type === "request-timeout") {
    return new SandboxUnavailableError(`${action}: the Kubernetes API did not answer in time`, { cause: error });
  }
  const networkCode = err?.code ?? err?.cause?.code;
  if (err?.type === "system" || (networkCode && NETWORK_CODES.has(networkCode))) {
    return new SandboxUnavailableError(`${action}: the Kubernetes API is unreachable (${networkCode ?? err?.message ?? "network error"})`, { cause: error });
  }
  return new SandboxUnavailableError(`${action}: ${err?.message ?? String(error)}`, { cause: error });
}

function describe(code: number, message: string): string {
  switch (code) {
    case 401:
      return `not authenticated to the Kubernetes API (${message})`;
    case 403:
      return `forbidden by the Kubernetes API (${message}); the platform's ServiceAccount needs the Role in k8s/manifests/rbac.yaml`;
    case 404:
      return `not found (${message})`;
    case 409:
      return `conflict (${message})`;
    case 400:
    case 422:
      return `rejected as invalid by the Kubernetes API (${message})`;
    case 429:
      return `throttled by the Kubernetes API (${message})`;
    default:
      return code >= 500 ? `the Kubernetes API failed (${code}: ${message})` : `${code}: ${message}`;
  }
}

export function isNotFound(error: unknown): boolean {
  return error instanceof KubeApiError && error.status === 404;
}

export function isConflict(error: unknown): boolean {
  return error instanceof KubeApiError && error.status === 409;
}

/** Worth trying again: the API was unreachable, slow, overloaded or failing. Never 4xx (but 429). */
function isTransient(error: KubeApiError | SandboxUnavailableError): boolean {
  if (error instanceof SandboxUnavailableError) return true;
  return error.status === 429 || error.status >= 500;
}

export type KubeClientOptions = {
  namespace: string;
  /** Deadline for one request. */
  requestTimeoutMs: number;
  /** Attempts after the first, for calls that are safe to repeat. */
  retries: number;
  /** First backoff delay; doubles each time (with jitter). */
  retryBaseMs: number;
  logger: Logger;
};

export type ObjectRef = { group: string; version: string; plural: string };

/** The calls the backend uses, in its namespace. Bodies are plain JSON in the wire format. */
export class KubeClient {
  private readonly custom: CustomObjectsApi;
  private readonly core: CoreV1Api;

  constructor(
    readonly kubeConfig: KubeConfig,
    readonly options: KubeClientOptions,
  ) {
    this.custom = kubeConfig.makeApiClient(CustomObjectsApi);
    this.core = kubeConfig.makeApiClient(CoreV1Api);
  }

  get namespace(): string {
    return this.options.namespace;
  }

  /** A per-request deadline (the generated client has none of its own). */
  private deadline(extra?: ConfigurationOptions): ConfigurationOptions {
    const ms = this.options.requestTimeoutMs;
    return {
      ...extra,
      middleware: [
        ...(extra?.middleware ?? []),
        {
          pre: (context) => {
            context.setSignal(AbortSignal.timeout(ms));
            return new Observable(Promise.resolve(context));
          },
          post: (response) => new Observable(Promise.resolve(response)),
        },
      ],
      middlewareMergeStrategy: "append",
    };
  }

  /** Runs a call, mapping its errors; repeats transient failures when `idempotent`. */
  async call<T>(action: string, idempotent: boolean, run: (options: ConfigurationOptions) => Promise<T>): Promise<T> {
    const attempts = idempotent ? this.options.retries + 1 : 1;
    for (let attempt = 1; ; attempt++) {
      try {
        return await run(this.deadline());
      } catch (raw) {
        const error = toKubeError(raw, action);
        if (attempt >= attempts || !isTransient(error)) throw error;
        const delay = Math.min(10_000, this.options.retryBaseMs * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
        this.options.logger.warn({ action, attempt, delayMs: Math.round(delay), error: error.message }, "Kubernetes API call failed; retrying");
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  getObject<T>(ref: ObjectRef, name: string): Promise<T> {
    return this.call(`get ${ref.plural}/${name}`, true, (options) =>
      this.custom.getNamespacedCustomObject({ ...ref, namespace: this.namespace, name }, options) as Promise<T>,
    );
  }

  listObjects<T>(ref: ObjectRef, labelSelector: string): Promise<{ items: T[]; metadata?: { resourceVersion?: string } }> {
    return this.call(`list ${ref.plural}`, true, async (options) => {
      const items: T[] = [];
      let continueToken: string | undefined;
      let resourceVersion: string | undefined;
      do {
        const page = (await this.custom.listNamespacedCustomObject({ ...ref, namespace: this.namespace, labelSelector, limit: 500, _continue: continueToken }, options)) as {
          items: T[];
          metadata?: { resourceVersion?: string; continue?: string };
        };
        items.push(...page.items);
        continueToken = page.metadata?.continue || undefined;
        resourceVersion = page.metadata?.resourceVersion;
      } while (continueToken);
      return { items, metadata: { resourceVersion } };
    });
  }

  /**
   * Creates an object with strict field validation, so a field the CRD does not know is an error
   * rather than silently dropped. Transient failures are retried: an attempt that reached the server
   * before failing shows up as a 409 on the next, and every caller handles 409 (reuse the template
   * or claim, replace the Secret, adopt its own Sandbox).
   */
  createObject<T>(ref: ObjectRef, body: object): Promise<T> {
    const name = (body as { metadata?: { name?: string } }).metadata?.name ?? "";
    return this.call(`create ${ref.plural}/${name}`, true, (options) =>
      this.custom.createNamespacedCustomObject({ ...ref, namespace: this.namespace, body, fieldValidation: "Strict" }, options) as Promise<T>,
    );
  }

  mergePatchObject<T>(ref: ObjectRef, name: string, patch: object): Promise<T> {
    return this.call(`patch ${ref.plural}/${name}`, true, (options) =>
      this.custom.patchNamespacedCustomObject(
        { ...ref, namespace: this.namespace, name, body: patch, fieldValidation: "Strict" },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch, options),
      ) as Promise<T>,
    );
  }

  /** Deletes; a missing object counts as deleted. */
  async deleteObject(ref: ObjectRef, name: string): Promise<void> {
    try {
      await this.call(`delete ${ref.plural}/${name}`, true, (options) =>
        this.custom.deleteNamespacedCustomObject({ ...ref, namespace: this.namespace, name, propagationPolicy: "Background" }, options),
      );
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
  }

  createSecret(body: object): Promise<unknown> {
    const name = (body as { metadata?: { name?: string } }).metadata?.name ?? "";
    return this.call(`create secrets/${name}`, true, (options) => this.core.createNamespacedSecret({ namespace: this.namespace, body: body as never, fieldValidation: "Strict" }, options));
  }

  replaceSecret(name: string, body: object): Promise<unknown> {
    return this.call(`replace secrets/${name}`, true, (options) => this.core.replaceNamespacedSecret({ namespace: this.namespace, name, body: body as never }, options));
  }

  patchSecret(name: string, patch: object): Promise<unknown> {
    return this.call(`patch secrets/${name}`, true, (options) =>
      this.core.patchNamespacedSecret({ namespace: this.namespace, name, body: patch }, setHeaderOptions("Content-Type", PatchStrategy.MergePatch, options)),
    );
  }

  async deleteSecret(name: string): Promise<void> {
    try {
      await this.call(`delete secrets/${name}`, true, (options) => this.core.deleteNamespacedSecret({ namespace: this.namespace, name }, options));
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
  }

  /** Secret metadata only is used by callers; values are never read back. */
  async listSecrets(labelSelector: string): Promise<Array<{ metadata?: { name?: string; labels?: Record<string, string>; creationTimestamp?: Date | string } }>> {
    const list = await this.call(`list secrets`, true, (options) => this.core.listNamespacedSecret({ namespace: this.namespace, labelSelector }, options));
    return list.items;
  }

  /** Workspace claims (metadata is all callers use). */
  async listPersistentVolumeClaims(
    labelSelector: string,
  ): Promise<Array<{ metadata?: { name?: string; labels?: Record<string, string>; creationTimestamp?: Date | string; deletionTimestamp?: Date | string } }>> {
    const list = await this.call(`list persistentvolumeclaims`, true, (options) => this.core.listNamespacedPersistentVolumeClaim({ namespace: this.namespace, labelSelector }, options));
    return list.items;
  }

  /** Deletes a claim (and, through its reclaim policy, usually its volume); a missing one counts as deleted. */
  async deletePersistentVolumeClaim(name: string): Promise<void> {
    try {
      await this.call(`delete persistentvolumeclaims/${name}`, true, (options) => this.core.deleteNamespacedPersistentVolumeClaim({ namespace: this.namespace, name }, options));
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
  }

  /** A workspace claim's requested storage (what a resize compares with). */
  async getPersistentVolumeClaim(name: string): Promise<{ spec?: { resources?: { requests?: Record<string, unknown> } } }> {
    return this.call(`get persistentvolumeclaims/${name}`, true, (options) => this.core.readNamespacedPersistentVolumeClaim({ namespace: this.namespace, name }, options));
  }

  patchPersistentVolumeClaim(name: string, patch: object): Promise<unknown> {
    return this.call(`patch persistentvolumeclaims/${name}`, true, (options) =>
      this.core.patchNamespacedPersistentVolumeClaim({ namespace: this.namespace, name, body: patch }, setHeaderOptions("Content-Type", PatchStrategy.MergePatch, options)),
    );
  }

  createPersistentVolumeClaim(body: object): Promise<unknown> {
    const name = (body as { metadata?: { name?: string } }).metadata?.name ?? "";
    return this.call(`create persistentvolumeclaims/${name}`, true, (options) =>
      this.core.createNamespacedPersistentVolumeClaim({ namespace: this.namespace, body: body as never, fieldValidation: "Strict" }, options),
    );
  }
}
