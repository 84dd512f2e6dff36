/**
 * The egress CA kept in a Kubernetes Secret (type kubernetes.io/tls), so every Berth replica in a
 * cluster signs with the same CA and a sandbox trusts whichever replica's gateway it reaches. The
 * first replica to start creates it; the API server's AlreadyExists decides races.
 */
import { CoreV1Api, type V1Secret } from "@kubernetes/client-node";
import type { CaMaterial, CaStore } from "../server/egress/ca";
import { isConflict, isNotFound, type KubeClient } from "./kube";
import { LABELS, MANAGED_BY } from "./resources";

export const EGRESS_CA_SECRET = "berth-egress-ca";
const TLS_SECRET_TYPE = "kubernetes.io/tls";

export type KubeSecretCaStoreOptions = {
  kube: KubeClient;
  namespace: string;
  /** Default "berth-egress-ca". */
  name?: string;
};

/** Needs `get` and `create` on secrets in `namespace`. */
export function kubeSecretCaStore(options: KubeSecretCaStoreOptions): CaStore {
  const { kube, namespace } = options;
  const name = options.name ?? EGRESS_CA_SECRET;
  const core = kube.kubeConfig.makeApiClient(CoreV1Api);
  const describe = `Secret ${namespace}/${name}`;

  const load = async (): Promise<CaMaterial | null> => {
    let secret: V1Secret;
    try {
      secret = await kube.call(`get secrets/${name}`, true, (callOptions) => core.readNamespacedSecret({ namespace, name }, callOptions));
    } catch (error) {
      if (isNotFound(error)) return null;
      throw error;
    }
    const cert = secret.data?.["tls.crt"];
    const key = secret.data?.["tls.key"];
    if (secret.type !== TLS_SECRET_TYPE || !cert || !key) {
      throw new Error(`${describe} is not an egress CA: it needs type ${TLS_SECRET_TYPE} with tls.crt and tls.key (delete it to have Berth make one)`);
    }
    return { certPem: Buffer.from(cert, "base64").toString("utf8"), keyPem: Buffer.from(key, "base64").toString("utf8") };
  };

  const body = (material: CaMaterial) => ({
    apiVersion: "v1",
    kind: "Secret",
    metadata: { name, namespace, labels: { [LABELS.managedBy]: MANAGED_BY, [LABELS.component]: "egress-ca" } },
    type: TLS_SECRET_TYPE,
    data: { "tls.crt": Buffer.from(material.certPem).toString("base64"), "tls.key": Buffer.from(material.keyPem).toString("base64") },
  });

  return {
    describe,
    load,
    async save(material) {
      // Another replica may create it between our 404 and our create, or delete it between a 409 and our read.
      for (let attempt = 1; ; attempt++) {
        try {
          // A retried create whose first attempt did land answers 409 and reads back our own CA.
          await kube.call(`create secrets/${name}`, true, (callOptions) =>
            core.createNamespacedSecret({ namespace, body: body(material) as V1Secret, fieldValidation: "Strict" }, callOptions),
          );
          return material;
        } catch (error) {
          if (!isConflict(error)) throw error;
        }
        const stored = await load();
        if (stored) return stored;
        if (attempt >= 3) throw new Error(`${describe} keeps appearing and disappearing; cannot settle on an egress CA`);
      }
    },
  };
}
