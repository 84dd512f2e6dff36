/**
 * The egress CA's Kubernetes Secret store against the stand-in API server
 * (tests/helpers/fake-kube-api.ts), through @kubernetes/client-node and the KubeClient the backend uses.
 */
import { X509Certificate } from "node:crypto";
import { KubeConfig } from "@kubernetes/client-node";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createLogger } from "../server/logger";
import { EgressCa } from "../server/egress/ca";
import { FakeKubeApi } from "../tests/helpers/fake-kube-api";
import { EGRESS_CA_SECRET, kubeSecretCaStore } from "./ca-secret";
import { KubeClient } from "./kube";

const NAMESPACE = "berth-test";
let fake: FakeKubeApi;

function kubeClient(): KubeClient {
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromString(fake.kubeconfig(NAMESPACE));
  return new KubeClient(kubeConfig, { namespace: NAMESPACE, requestTimeoutMs: 5_000, retries: 3, retryBaseMs: 10, logger: createLogger("silent") });
}

const store = (name?: string) => kubeSecretCaStore({ kube: kubeClient(), namespace: NAMESPACE, name });
const decode = (value: unknown) => Buffer.from(String(value), "base64").toString("utf8");

beforeAll(async () => {
  fake = await new FakeKubeApi().start();
});
afterAll(async () => {
  await fake?.stop();
});
beforeEach(() => {
  for (const secret of fake.list("secrets", NAMESPACE)) fake.deleteObject("secrets", NAMESPACE, secret.metadata.name!);
  fake.requests.length = 0;
});

describe("kubeSecretCaStore", () => {
  it("has nothing until a CA is opened, then a kubernetes.io/tls Secret that later opens give back", async () => {
    expect(await store().load()).toBeNull();
    const ca = await EgressCa.open(store());
    const secret = fake.get("secrets", NAMESPACE, EGRESS_CA_SECRET)!;
    expect(secret.type).toBe("kubernetes.io/tls");
    expect(secret.metadata.labels).toEqual({ "app.kubernetes.io/managed-by": "berth", "berth.dev/component": "egress-ca" });
    const data = secret.data as Record<string, string>;
    expect(Object.keys(data).sort()).toEqual(["tls.crt", "tls.key"]);
    expect(decode(data["tls.crt"])).toBe(ca.certificatePem);
    expect(decode(data["tls.key"])).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(store().describe).toBe(`Secret ${NAMESPACE}/${EGRESS_CA_SECRET}`);

    const again = await EgressCa.open(store());
    expect(again.certificatePem).toBe(ca.certificatePem);
    const leaf = await again.leafFor("api.example.com");
    expect(new X509Certificate(leaf.certPem).verify(new X509Certificate(ca.certificatePem).publicKey)).toBe(true);
  });

  it("replicas starting together end with one CA: the second create is refused and reads the first", async () => {
    const opened = await Promise.all([EgressCa.open(store()), EgressCa.open(store()), EgressCa.open(store())]);
    expect(new Set(opened.map((ca) => ca.certificatePem)).size).toBe(1);
    expect(decode((fake.get("secrets", NAMESPACE, EGRESS_CA_SECRET)!.data as Record<string, string>)["tls.crt"])).toBe(opened[0]!.certificatePem);
    const creates = fake.requests.filter((request) => request.method === "POST").map((request) => request.status);
    expect(creates.filter((status) => status === 201)).toHaveLength(1);
  });

  it("save keeps what is there and returns it", async () => {
    const first = await store().save({ certPem: "first cert", keyPem: "first key" });
    expect(first).toEqual({ certPem: "first cert", keyPem: "first key" });
    expect(await store().save({ certPem: "second cert", keyPem: "second key" })).toEqual(first);
  });

  it("a create whose answer was lost is retried, and the retry's 409 reads back its own CA", async () => {
    fake.injectFault({ status: 503, afterDispatch: true, match: (request) => request.method === "POST" });
    const material = { certPem: "mine", keyPem: "my key" };
    expect(await store().save(material)).toEqual(material);
    expect(fake.requests.map((request) => `${request.method} ${request.status}`)).toEqual(["POST 503", "POST 409", "GET 200"]);
  });

  it("retries a failing read", async () => {
    await store().save({ certPem: "c", keyPem: "k" });
    fake.injectFault({ status: 500, match: (request) => request.method === "GET" });
    expect(await store().load()).toEqual({ certPem: "c", keyPem: "k" });
  });

  it("uses the given name, and refuses a Secret of that name that is not a TLS Secret", async () => {
    await store("other-ca").save({ certPem: "c", keyPem: "k" });
    expect(fake.get("secrets", NAMESPACE, "other-ca")?.type).toBe("kubernetes.io/tls");
    expect(fake.get("secrets", NAMESPACE, EGRESS_CA_SECRET)).toBeUndefined();

    const kube = kubeClient();
    await kube.createSecret({ apiVersion: "v1", kind: "Secret", metadata: { name: "opaque" }, type: "Opaque", data: { "tls.crt": "eA==", "tls.key": "eA==" } });
    await expect(store("opaque").load()).rejects.toThrow(`Secret ${NAMESPACE}/opaque is not an egress CA: it needs type kubernetes.io/tls with tls.crt and tls.key`);
    await expect(EgressCa.open(store("opaque"))).rejects.toThrow(/is not an egress CA/);
  });

  it("needs only get and create on secrets", async () => {
    await EgressCa.open(store());
    await EgressCa.open(store());
    const verbs = new Set(fake.requests.map((request) => `${request.method} ${request.path}`));
    expect([...verbs].sort()).toEqual([`GET /api/v1/namespaces/${NAMESPACE}/secrets/${EGRESS_CA_SECRET}`, `POST /api/v1/namespaces/${NAMESPACE}/secrets`]);
  });
});
