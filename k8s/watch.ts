/**
 * Kubernetes watches for the backend: one watch request (`?watch=true`, newline-delimited events) and
 * a list-then-watch loop that restarts on any error with exponential backoff, relisting when the
 * API says the resourceVersion expired (410 Gone).
 */
import { Watch, type KubeConfig } from "@kubernetes/client-node";
import type { Logger } from "../server/logger";
import type { KubeObject } from "./resources";

export type WatchEventType = "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";

export type WatchOutcome = "ended" | "expired" | "stopped";

/**
 * Runs one watch until the server ends it, it fails, `onEvent` returns true, or `signal` aborts.
 * Resolves "expired" on a 410 ERROR event; rejects on transport errors and other ERROR events.
 */
export async function watchOnce<T extends KubeObject>(
  kubeConfig: KubeConfig,
  path: string,
  query: Record<string, string | number | boolean | undefined>,
  onEvent: (type: WatchEventType, object: T) => boolean | void,
  signal?: AbortSignal,
): Promise<WatchOutcome> {
  if (signal?.aborted) return "stopped";
  return new Promise<WatchOutcome>((resolve, reject) => {
    let settled = false;
    let controller: AbortController | undefined;
    const finish = (outcome: WatchOutcome | Error) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener("abort", onAbort);
      controller?.abort();
      if (outcome instanceof Error) reject(outcome);
      else resolve(outcome);
    };
    const onAbort = () => finish("stopped");
    signal?.addEventListener("abort", onAbort, { once: true });
    new Watch(kubeConfig)
      .watch(
        path,
        query,
        (type: string, object: unknown) => {
          if (settled) return;
          if (type === "ERROR") {
            const status = object as { code?: number; message?: string; reason?: string };
            if (status?.code === 410 || status?.reason === "Expired" || status?.reason === "Gone") finish("expired");
            else finish(new Error(`watch error from the Kubernetes API: ${status?.message ?? JSON.stringify(object)}`));
            return;
          }
          try {
            if (onEvent(type as WatchEventType, object as T) === true) finish("stopped");
          } catch (error) {
            finish(error as Error);
          }
        },
        (error: unknown) => {
          if (!error) finish("ended");
          else if ((error as { name?: string }).name === "AbortError") finish("stopped");
          else if ((error as { statusCode?: number }).statusCode === 410) finish("expired");
          else finish(error instanceof Error ? error : new Error(String(error)));
        },
      )
      .then((c) => {
        controller = c;
        if (settled) c.abort();
      }, (error: unknown) => finish(error instanceof Error ? error : new Error(String(error))));
  });
}

export type ListWatchOptions<T extends KubeObject> = {
  kubeConfig: KubeConfig;
  path: string;
  labelSelector: string;
  list: () => Promise<{ items: T[]; metadata?: { resourceVersion?: string } }>;
  /** The full current set, after every (re)list. */
  onSync: (items: T[]) => void;
  onEvent: (type: "ADDED" | "MODIFIED" | "DELETED", object: T) => void;
  logger: Logger;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Server-side watch timeout; the loop simply watches again from the last resourceVersion. */
  watchTimeoutSeconds?: number;
};

/** An informer in miniature: list, watch from the list's resourceVersion, repeat on any failure. */
export class ListWatch<T extends KubeObject> {
  private readonly abort = new AbortController();
  private running: Promise<void> | null = null;
  private syncedOnce = false;
  private readonly synced: Promise<void>;
  private resolveSynced!: () => void;

  constructor(private readonly options: ListWatchOptions<T>) {
    this.synced = new Promise((resolve) => (this.resolveSynced = resolve));
  }

  start(): void {
    this.running ??= this.loop();
  }

  /** Resolves after the first successful list. */
  waitForSync(): Promise<void> {
    return this.synced;
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.running;
  }

  private async loop(): Promise<void> {
    const { logger } = this.options;
    const minBackoff = this.options.minBackoffMs ?? 500;
    const maxBackoff = this.options.maxBackoffMs ?? 30_000;
    let backoff = minBackoff;
    let resourceVersion: string | undefined;
    while (!this.abort.signal.aborted) {
      try {
        if (!resourceVersion) {
          const list = await this.options.list();
          if (this.abort.signal.aborted) return;
          resourceVersion = list.metadata?.resourceVersion;
          this.options.onSync(list.items);
          if (!this.syncedOnce) {
            this.syncedOnce = true;
            this.resolveSynced();
          }
        }
        const outcome = await watchOnce<T>(
          this.options.kubeConfig,
          this.options.path,
          { labelSelector: this.options.labelSelector, resourceVersion, allowWatchBookmarks: true, timeoutSeconds: this.options.watchTimeoutSeconds ?? 300 },
          (type, object) => {
            const version = object?.metadata?.resourceVersion;
            if (version) resourceVersion = version;
            if (type === "ADDED" || type === "MODIFIED" || type === "DELETED") this.options.onEvent(type, object);
          },
          this.abort.signal,
        );
        backoff = minBackoff;
        if (outcome === "expired") {
          logger.info({ path: this.options.path }, "watch resourceVersion expired; listing again");
          resourceVersion = undefined;
        }
      } catch (error) {
        if (this.abort.signal.aborted) return;
        logger.warn({ path: this.options.path, error: (error as Error).message, retryInMs: backoff }, "Kubernetes watch failed; restarting");
        await sleep(backoff, this.abort.signal);
        backoff = Math.min(maxBackoff, backoff * 2);
        // After a failure, list again: events may have been missed while disconnected.
        resourceVersion = undefined;
      }
    }
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}
