/** Builds the Kubernetes sandbox backend from the platform's configuration (used by server/main.ts). */
import type { Config } from "../server/config";
import type { Logger } from "../server/logger";
import { KubernetesSandboxBackend } from "./backend";
import { loadKubeConfig } from "./kube";

export { KubernetesSandboxBackend } from "./backend";

export async function createKubernetesBackend(config: Config, tokenFor: (name: string) => string, logger: Logger): Promise<KubernetesSandboxBackend> {
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
    tokenFor,
    logger,
  });
}
