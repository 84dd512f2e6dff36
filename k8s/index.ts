/** Builds the Kubernetes sandbox backend and the egress CA's store from the platform's configuration (used by server/main.ts). */
import type { Config } from "../server/config";
import type { CaStore } from "../server/egress/ca";
import { createLogger, type Logger } from "../server/logger";
import { KubernetesSandboxBackend } from "./backend";
import { EGRESS_CA_SECRET, kubeSecretCaStore } from "./ca-secret";
import { KubeClient, loadKubeConfig } from "./kube";

export { KubernetesSandboxBackend } from "./backend";

/** What the backend needs of the egress gateway: where pods reach it, their tokens, the CA they trust. */
export type KubernetesEgress = {
  /** HOST:PORT sandbox pods dial (BERTH_K8S_EGRESS_ADDRESS, by default the berth-egress Service). */
  address: string;
  /** A sandbox's (or a warm pool's) gateway token, by name. */
  tokenFor: (name: string) => string;
  /** PEM of the installation's egress CA. */
  caPem: string;
};

export async function createKubernetesBackend(
  config: Config,
  tokenFor: (name: string) => string,
  egress: KubernetesEgress,
  logger: Logger,
): Promise<KubernetesSandboxBackend> {
  const settings = config.kubernetes;
  if (!settings.image) throw new Error("BERTH_SANDBOX_IMAGE is required when BERTH_SANDBOX_BACKEND=kubernetes");
  return KubernetesSandboxBackend.create({
    kubeConfig: loadKubeConfig(),
    namespace: settings.namespace,
    image: settings.image,
    runtimeClassName: settings.runtimeClassName,
    daemonPort: settings.daemonPort,
    storageClassName: settings.storageClassName,
    readyTimeoutMs: settings.readyTimeoutMs,
    // The Berth pods listen on BERTH_EGRESS_PORT (HOST); the pods' NetworkPolicy opens that port.
    gateway: { address: egress.address, listenPort: config.egress.port, caPem: egress.caPem },
    tokenFor,
    gatewayTokenFor: egress.tokenFor,
    logger,
  });
}

/**
 * The egress CA of a cluster installation: the Secret `berth-egress-ca` (type kubernetes.io/tls) in
 * BERTH_K8S_NAMESPACE, so every replica signs with the same CA and a sandbox pod trusts whichever
 * replica's gateway it reaches. The ServiceAccount needs `get` on that Secret and `create` on
 * secrets (k8s/manifests/rbac.yaml).
 */
export function kubernetesCaStore(config: Config, logger?: Logger): CaStore {
  const kube = new KubeClient(loadKubeConfig(), {
    namespace: config.kubernetes.namespace,
    requestTimeoutMs: 15_000,
    retries: 4,
    retryBaseMs: 250,
    logger: (logger ?? createLogger(config.logLevel)).child({ component: "egress-ca", namespace: config.kubernetes.namespace }),
  });
  return kubeSecretCaStore({ kube, namespace: config.kubernetes.namespace, name: EGRESS_CA_SECRET });
}
