import { createPrivateKey, X509Certificate } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import { afterAll, describe, expect, it } from "vitest";
import { EgressCa, fileCaStore, type CaMaterial, type CaStore } from "./ca";

const roots: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), "berth-egress-ca-"));
  roots.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of roots) rmSync(dir, { recursive: true, force: true });
});

const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** The library is loaded (with its Reflect stubs) by the first EgressCa.open; after that it imports as is. */
const x509 = () => import("@peculiar/x509");

describe("fileCaStore", () => {
  it("generates a CA once, with private files, and reopens the same one", async () => {
    const dataDir = tempDir();
    const ca = await EgressCa.open(fileCaStore(dataDir));
    const folder = path.join(dataDir, "egress-ca");
    expect(statSync(folder).mode & 0o777).toBe(0o700);
    expect(statSync(path.join(folder, "ca.key")).mode & 0o777).toBe(0o600);
    expect(statSync(path.join(folder, "ca.pem")).mode & 0o777).toBe(0o644);
    expect(readFileSync(path.join(folder, "ca.pem"), "utf8")).toBe(ca.certificatePem);
    expect(readFileSync(path.join(folder, "ca.key"), "utf8")).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(ca.certificatePem).not.toContain("PRIVATE KEY");
    expect(readdirSync(dataDir)).toEqual(["egress-ca"]);

    const again = await EgressCa.open(fileCaStore(dataDir));
    expect(again.certificatePem).toBe(ca.certificatePem);
  });

  it("makes a P-256 CA certificate: CA:true pathlen 0 and keyCertSign+cRLSign (both critical), a key id, ten years from an hour ago", async () => {
    const before = Date.now();
    const ca = await EgressCa.open(fileCaStore(tempDir()));
    const cert = new X509Certificate(ca.certificatePem);
    expect(cert.subject).toMatch(/^O=Berth\nCN=Berth egress CA [0-9a-f]{8}$/);
    expect(cert.issuer).toBe(cert.subject);
    expect(cert.ca).toBe(true);
    expect(cert.verify(cert.publicKey)).toBe(true);
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    const notBefore = Date.parse(cert.validFrom);
    expect(Math.abs(notBefore - (before - HOUR))).toBeLessThan(60_000);
    expect(Date.parse(cert.validTo) - notBefore).toBeGreaterThanOrEqual(3650 * DAY);
    expect(Date.parse(cert.validTo) - notBefore).toBeLessThanOrEqual(3653 * DAY);

    const { X509Certificate: Parsed, BasicConstraintsExtension, KeyUsagesExtension, KeyUsageFlags, SubjectKeyIdentifierExtension } = await x509();
    const parsed = new Parsed(ca.certificatePem);
    const basic = parsed.getExtension(BasicConstraintsExtension);
    expect({ ca: basic?.ca, pathLength: basic?.pathLength, critical: basic?.critical }).toEqual({ ca: true, pathLength: 0, critical: true });
    const usage = parsed.getExtension(KeyUsagesExtension);
    expect({ usages: usage?.usages, critical: usage?.critical }).toEqual({ usages: KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign, critical: true });
    expect(parsed.getExtension(SubjectKeyIdentifierExtension)?.keyId).toMatch(/^[0-9a-f]{40}$/);
  });

  it("two opens racing on one empty folder end with one CA", async () => {
    const dataDir = tempDir();
    const [a, b] = await Promise.all([EgressCa.open(fileCaStore(dataDir)), EgressCa.open(fileCaStore(dataDir))]);
    expect(a.certificatePem).toBe(b.certificatePem);
    expect(readFileSync(path.join(dataDir, "egress-ca", "ca.pem"), "utf8")).toBe(a.certificatePem);
    expect(readdirSync(dataDir)).toEqual(["egress-ca"]);
  });

  it("of many saves at once, one is stored and every caller gets it", async () => {
    const dataDir = tempDir();
    const materials: CaMaterial[] = Array.from({ length: 8 }, (_, i) => ({ certPem: `cert ${i}\n`, keyPem: `key ${i}\n` }));
    const results = await Promise.all(materials.map((material) => fileCaStore(dataDir).save(material)));
    const stored = await fileCaStore(dataDir).load();
    expect(materials).toContainEqual(stored);
    for (const result of results) expect(result).toEqual(stored);
    expect(readdirSync(dataDir)).toEqual(["egress-ca"]);
  });

  it("refuses half a CA, a certificate that is not a CA, and a key that is not the certificate's", async () => {
    const half = tempDir();
    mkdirSync(path.join(half, "egress-ca"));
    writeFileSync(path.join(half, "egress-ca", "ca.pem"), "x");
    await expect(EgressCa.open(fileCaStore(half))).rejects.toThrow(/egress-ca is incomplete: ca.key is missing/);

    const a = await EgressCa.open(fileCaStore(tempDir()));
    const otherDir = tempDir();
    await EgressCa.open(fileCaStore(otherDir));
    const otherKey = (await fileCaStore(otherDir).load())!.keyPem;
    const mixed = memoryStore({ certPem: a.certificatePem, keyPem: otherKey });
    const error = await EgressCa.open(mixed).catch((e: Error) => e);
    expect(String(error)).toMatch(/The egress CA in memory cannot be used: its private key does not belong to its certificate/);
    expect(String(error)).not.toContain("PRIVATE KEY");

    const leaf = await a.leafFor("not-a-ca.example.com");
    await expect(EgressCa.open(memoryStore({ certPem: leaf.certPem, keyPem: leaf.keyPem }))).rejects.toThrow(/is not a CA certificate/);
  });
});

describe("leafFor", () => {
  let ca: EgressCa;
  const caCert = () => new X509Certificate(ca.certificatePem);

  it("issues a P-256 leaf for a DNS name that the CA signed, for serverAuth, valid ~30 days from an hour ago", async () => {
    ca = await EgressCa.open(fileCaStore(tempDir()));
    const before = Date.now();
    const leaf = await ca.leafFor("api.example.com");
    const cert = new X509Certificate(leaf.certPem);
    expect(cert.verify(caCert().publicKey)).toBe(true);
    expect(cert.checkIssued(caCert())).toBe(true);
    expect(cert.ca).toBe(false);
    expect(cert.subjectAltName).toBe("DNS:api.example.com");
    expect(cert.subject).toBe("CN=api.example.com");
    expect(cert.checkHost("api.example.com")).toBe("api.example.com");
    expect(cert.checkHost("other.example.com")).toBeUndefined();
    expect(cert.keyUsage).toEqual([SERVER_AUTH]);
    expect(cert.serialNumber).toMatch(/^[4-7][0-9A-F]{31}$/);
    const notBefore = Date.parse(cert.validFrom);
    expect(Math.abs(notBefore - (before - HOUR))).toBeLessThan(60_000);
    expect(Date.parse(cert.validTo) - notBefore).toBe(30 * DAY);

    const key = createPrivateKey(leaf.keyPem);
    expect(key.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    expect(cert.checkPrivateKey(key)).toBe(true);

    const { X509Certificate: Parsed, AuthorityKeyIdentifierExtension, KeyUsagesExtension, KeyUsageFlags, SubjectKeyIdentifierExtension } = await x509();
    const parsed = new Parsed(leaf.certPem);
    const usage = parsed.getExtension(KeyUsagesExtension);
    expect({ usages: usage?.usages, critical: usage?.critical }).toEqual({ usages: KeyUsageFlags.digitalSignature, critical: true });
    expect(parsed.getExtension(AuthorityKeyIdentifierExtension)?.keyId).toBe(new Parsed(ca.certificatePem).getExtension(SubjectKeyIdentifierExtension)?.keyId);
  });

  it("puts IP literals in an IP SAN, in canonical form", async () => {
    const v4 = new X509Certificate((await ca.leafFor("127.0.0.1")).certPem);
    expect(v4.subjectAltName).toBe("IP Address:127.0.0.1");
    expect(v4.checkIP("127.0.0.1")).toBe("127.0.0.1");
    expect(v4.subject ?? "").toBe("");
    expect(v4.checkHost("127.0.0.1")).toBeUndefined();
    expect(v4.verify(caCert().publicKey)).toBe(true);

    const v6 = await ca.leafFor("[::1]");
    expect(new X509Certificate(v6.certPem).checkIP("::1")).toBe("::1");
    expect(await ca.leafFor("0:0:0:0:0:0:0:1")).toBe(v6);
  });

  it("names too long for a CN go only in the SAN", async () => {
    const long = `${"a".repeat(60)}.example.com`;
    const cert = new X509Certificate((await ca.leafFor(long)).certPem);
    expect(cert.subject ?? "").toBe("");
    expect(cert.checkHost(long)).toBe(long);
  });

  it("gives each leaf its own key and serial", async () => {
    const [a, b] = await Promise.all([ca.leafFor("a.example.com"), ca.leafFor("b.example.com")]);
    expect(a.keyPem).not.toBe(b.keyPem);
    expect(new X509Certificate(a.certPem).serialNumber).not.toBe(new X509Certificate(b.certPem).serialNumber);
  });

  it("rejects what is neither a DNS name nor an IP literal", async () => {
    for (const bad of [
      "",
      ".",
      "*.example.com",
      "exa mple.com",
      "-bad.example.com",
      "bad-.example.com",
      "a..b",
      `${"a".repeat(64)}.com`,
      `${"abcdefghi.".repeat(25)}info`,
      "1.2.3",
      "example.0x7f",
      "fe80::1%eth0",
      "[example.com]",
      "example.com:443",
      "http://example.com",
      "ünïcode.example",
      "example.com/",
    ]) {
      await expect(ca.leafFor(bad), bad).rejects.toThrow(/Not a DNS name or an IP address/);
    }
  });
});

describe("TLS with a leaf", () => {
  it("a client trusting the CA completes a handshake for the SNI name; one trusting another CA does not", async () => {
    const ca = await EgressCa.open(fileCaStore(tempDir()));
    const other = await EgressCa.open(fileCaStore(tempDir()));
    const server = tls.createServer(
      {
        SNICallback: (servername, callback) => {
          ca.leafFor(servername).then(
            (leaf) => callback(null, leaf.secureContext),
            (error: Error) => callback(error, undefined),
          );
        },
      },
      (socket) => socket.end("hello over tls"),
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const { port } = server.address() as AddressInfo;
    try {
      const connect = (trusted: string, servername: string) =>
        new Promise<string>((resolve, reject) => {
          const socket = tls.connect({ host: "127.0.0.1", port, ca: trusted, servername }, () => {
            let data = "";
            socket.setEncoding("utf8");
            socket.on("data", (chunk: string) => (data += chunk));
            socket.on("end", () => resolve(data));
          });
          socket.on("error", reject);
        });
      expect(await connect(ca.certificatePem, "api.example.com")).toBe("hello over tls");
      expect(await connect(ca.certificatePem, "API.example.com")).toBe("hello over tls");
      await expect(connect(other.certificatePem, "api.example.com")).rejects.toMatchObject({ code: expect.stringMatching(/SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE/) });
      await expect(connect(ca.certificatePem, "*.example.com")).rejects.toThrow();
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe("the leaf cache", () => {
  it("gives the same object for the same host, concurrent calls included, and another for another host", async () => {
    const ca = await EgressCa.open(fileCaStore(tempDir()));
    const concurrent = await Promise.all([ca.leafFor("one.example.com"), ca.leafFor("one.example.com"), ca.leafFor("ONE.example.com.")]);
    expect(concurrent[1]).toBe(concurrent[0]);
    expect(concurrent[2]).toBe(concurrent[0]);
    expect(await ca.leafFor("one.example.com")).toBe(concurrent[0]);
    const two = await ca.leafFor("two.example.com");
    expect(two).not.toBe(concurrent[0]);
    expect(two.certPem).not.toBe(concurrent[0]!.certPem);
  });

  it("re-issues a leaf within a day of its expiry", async () => {
    let now = Date.now();
    const ca = await EgressCa.open(fileCaStore(tempDir()), { now: () => now });
    const first = await ca.leafFor("renew.example.com");
    now += 28 * DAY;
    expect(await ca.leafFor("renew.example.com")).toBe(first);
    now += DAY;
    const renewed = await ca.leafFor("renew.example.com");
    expect(renewed).not.toBe(first);
    expect(Date.parse(new X509Certificate(renewed.certPem).validTo)).toBe(Math.floor((now - HOUR + 30 * DAY) / 1000) * 1000);
  });

  it("keeps the most recently used hosts", async () => {
    const ca = await EgressCa.open(fileCaStore(tempDir()), { maxCachedHosts: 2 });
    const a = await ca.leafFor("a.example.com");
    const b = await ca.leafFor("b.example.com");
    expect(await ca.leafFor("a.example.com")).toBe(a);
    await ca.leafFor("c.example.com");
    expect(await ca.leafFor("a.example.com")).toBe(a);
    expect(await ca.leafFor("b.example.com")).not.toBe(b);
  });
});

function memoryStore(material: CaMaterial | null): CaStore {
  let stored = material;
  return {
    describe: "memory",
    load: async () => stored,
    save: async (next) => (stored ??= next),
  };
}
