/**
 * The egress gateway's certificate authority. Each installation has one CA (in the data folder, or in
 * a Kubernetes Secret that every replica shares); sandboxes trust its certificate, and the gateway
 * terminates their TLS to the hosts it brokers credentials for with short-lived leaf certificates
 * signed here. Key material is never logged and never part of an error message.
 */
import { createPrivateKey, randomBytes, X509Certificate as NodeX509Certificate, type KeyObject } from "node:crypto";
import { mkdir, mkdtemp, open, readFile, rename, rm } from "node:fs/promises";
import { isIP } from "node:net";
import path from "node:path";
import tls from "node:tls";
import type * as X509 from "@peculiar/x509";

export type CaMaterial = { certPem: string; keyPem: string };

export interface CaStore {
  load(): Promise<CaMaterial | null>;
  /** Stores a new CA unless one is there already; returns what is stored (another replica's, if it won). */
  save(material: CaMaterial): Promise<CaMaterial>;
  /** Where the CA lives, for messages ("/data/egress-ca", "Secret berth/berth-egress-ca"). */
  describe: string;
}

export type EgressLeaf = { certPem: string; keyPem: string; secureContext: tls.SecureContext };

export type EgressCaOptions = {
  /** Hosts whose leaves are kept (least recently used go first). */
  maxCachedHosts?: number;
  /** Milliseconds since the epoch; tests move it to see leaves renewed. */
  now?: () => number;
};

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const CA_VALIDITY = 3652 * DAY;
const LEAF_VALIDITY = 30 * DAY;
/** Clocks in sandboxes and clients may lag the platform's a little. */
const BACKDATE = HOUR;
const RENEW_BEFORE_EXPIRY = DAY;
const DEFAULT_MAX_CACHED_HOSTS = 1000;
const P256_KEY: EcKeyGenParams = { name: "ECDSA", namedCurve: "P-256" };

// ---------------------------------------------------------------- the file store

const CERT_FILE = "ca.pem";
const KEY_FILE = "ca.key";

/**
 * `<dataDir>/egress-ca/ca.pem` (0644) and `ca.key` (0600) in a 0700 folder. A new pair is written into
 * a private staging folder that is then renamed into place: both files appear at once, complete, and a
 * rename onto a folder that already holds a CA fails, so of two processes saving at the same time one
 * wins and the other reads the winner's. A crash leaves at most a stray `.egress-ca-*` folder, never
 * half a CA.
 */
export function fileCaStore(dataDir: string): CaStore {
  const dir = path.join(dataDir, "egress-ca");
  const load = async (): Promise<CaMaterial | null> => {
    const [certPem, keyPem] = await Promise.all([readIfExists(path.join(dir, CERT_FILE)), readIfExists(path.join(dir, KEY_FILE))]);
    if (certPem === null && keyPem === null) return null;
    if (certPem === null || keyPem === null) throw new Error(`The egress CA in ${dir} is incomplete: ${certPem === null ? CERT_FILE : KEY_FILE} is missing`);
    return { certPem, keyPem };
  };
  return {
    describe: dir,
    load,
    async save(material) {
      await mkdir(dataDir, { recursive: true });
      const staging = await mkdtemp(path.join(dataDir, ".egress-ca-"));
      try {
        await writeNewFile(path.join(staging, KEY_FILE), material.keyPem, 0o600);
        await writeNewFile(path.join(staging, CERT_FILE), material.certPem, 0o644);
        await rename(staging, dir);
      } catch (error) {
        await rm(staging, { recursive: true, force: true });
        const code = (error as NodeJS.ErrnoException).code;
        if (code !== "ENOTEMPTY" && code !== "EEXIST") throw error;
        const stored = await load();
        if (!stored) throw new Error(`Cannot save the egress CA: ${dir} exists and holds no ${CERT_FILE} / ${KEY_FILE}`, { cause: error });
        return stored;
      }
      await syncDirectory(dataDir);
      return material;
    },
  };
}

async function readIfExists(file: string): Promise<string | null> {
  try {
    return await readFile(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
}

/** Written, given its exact mode (the umask would loosen or tighten it), and flushed before the rename publishes it. */
async function writeNewFile(file: string, content: string, mode: number): Promise<void> {
  const handle = await open(file, "wx", mode);
  try {
    await handle.writeFile(content);
    await handle.chmod(mode);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Makes the rename itself durable; where a folder cannot be fsynced, the rename still happened. */
async function syncDirectory(dir: string): Promise<void> {
  try {
    const handle = await open(dir, "r");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    // Best effort only.
  }
}

// ---------------------------------------------------------------- @peculiar/x509, loaded on first use

type X509Module = typeof X509;
let x509Module: Promise<X509Module> | undefined;

/**
 * @peculiar/x509 registers its algorithms through tsyringe, which refuses to load without a Reflect
 * metadata polyfill. It reads metadata only while the library's classes are being declared, and none
 * of those take constructor parameters, so "no metadata" is the right answer. Lending two stubs for
 * the import and taking them back afterwards spares a global polyfill (and a second dependency). The
 * import is deferred to the first CA opened: the library costs ~150 ms to load.
 */
function loadX509(): Promise<X509Module> {
  x509Module ??= (async () => {
    const reflect = Reflect as unknown as Record<string, unknown>;
    const stub = () => undefined;
    const lent = ["getMetadata", "getOwnMetadata"].filter((name) => typeof reflect[name] !== "function");
    for (const name of lent) reflect[name] = stub;
    try {
      return await import("@peculiar/x509");
    } finally {
      for (const name of lent) if (reflect[name] === stub) delete reflect[name];
    }
  })();
  return x509Module;
}

// ---------------------------------------------------------------- the CA

/** What signing with the CA's key needs, whatever kind of key an operator's own CA has. */
type Signer = {
  key: CryptoKey;
  algorithm: Algorithm | EcdsaParams;
  issuer: X509.Name;
  authorityKeyIdentifier: X509.AuthorityKeyIdentifierExtension;
  notAfter: number;
};

type HostName = { name: string; kind: "dns" | "ip" };

type CachedLeaf = { leaf: Promise<EgressLeaf>; renewAt: number };

export class EgressCa {
  private readonly leaves = new Map<string, CachedLeaf>();
  private readonly maxCachedHosts: number;
  private readonly now: () => number;

  private constructor(
    readonly certificatePem: string,
    private readonly signer: Signer,
    private readonly x509: X509Module,
    options: EgressCaOptions,
  ) {
    this.maxCachedHosts = Math.max(1, options.maxCachedHosts ?? DEFAULT_MAX_CACHED_HOSTS);
    this.now = options.now ?? Date.now;
  }

  /** The store's CA; a new one (saved there) when it has none. */
  static async open(store: CaStore, options: EgressCaOptions = {}): Promise<EgressCa> {
    const x509 = await loadX509();
    const now = options.now?.() ?? Date.now();
    const material = (await store.load()) ?? (await store.save(await generateCa(x509, now)));
    const signer = await signerFor(x509, material, now).catch((error: unknown) => {
      throw new Error(`The egress CA in ${store.describe} cannot be used: ${(error as Error).message}`, { cause: error });
    });
    return new EgressCa(material.certPem, signer, x509, options);
  }

  /**
   * A certificate for `hostname` (a DNS name, or an IPv4 / IPv6 literal) with its key and a ready
   * TLS context. The same host gets the same object until it is a day from expiry; concurrent calls
   * share one issuance.
   */
  leafFor(hostname: string): Promise<EgressLeaf> {
    let host: HostName;
    try {
      host = parseHostName(hostname);
    } catch (error) {
      return Promise.reject(error as Error);
    }
    const now = this.now();
    const cached = this.leaves.get(host.name);
    this.leaves.delete(host.name);
    if (cached && now < cached.renewAt) {
      this.leaves.set(host.name, cached);
      return cached.leaf;
    }
    const notBefore = now - BACKDATE;
    const notAfter = Math.min(notBefore + LEAF_VALIDITY, this.signer.notAfter);
    if (notAfter <= now) return Promise.reject(new Error(`The egress CA expired on ${new Date(this.signer.notAfter).toISOString()}`));
    // Near the CA's own expiry a leaf cannot outlive it; renew halfway rather than on every call.
    const entry: CachedLeaf = { leaf: this.issue(host, notBefore, notAfter), renewAt: Math.max(notAfter - RENEW_BEFORE_EXPIRY, now + (notAfter - now) / 2) };
    this.leaves.set(host.name, entry);
    entry.leaf.catch(() => {
      if (this.leaves.get(host.name) === entry) this.leaves.delete(host.name);
    });
    for (const oldest of this.leaves.keys()) {
      if (this.leaves.size <= this.maxCachedHosts) break;
      this.leaves.delete(oldest);
    }
    return entry.leaf;
  }

  private async issue(host: HostName, notBefore: number, notAfter: number): Promise<EgressLeaf> {
    const { x509, signer } = this;
    const keys = await crypto.subtle.generateKey(P256_KEY, true, ["sign", "verify"]);
    // A CN is for DNS names of up to 64 characters (RFC 5280); otherwise the subject is empty and the SAN critical.
    const hasCommonName = host.kind === "dns" && host.name.length <= 64;
    const certificate = await x509.X509CertificateGenerator.create(
      {
        serialNumber: serialNumber(),
        subject: hasCommonName ? [{ CN: [host.name] }] : [],
        issuer: signer.issuer,
        notBefore: new Date(notBefore),
        notAfter: new Date(notAfter),
        publicKey: keys.publicKey,
        signingKey: signer.key,
        signingAlgorithm: signer.algorithm,
        extensions: [
          new x509.SubjectAlternativeNameExtension([{ type: host.kind, value: host.name }], !hasCommonName),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          signer.authorityKeyIdentifier,
        ],
      },
      crypto,
    );
    const certPem = certificate.toString("pem");
    const keyPem = x509.PemConverter.encode(await crypto.subtle.exportKey("pkcs8", keys.privateKey), "PRIVATE KEY");
    const secureContext = tls.createSecureContext({ key: keyPem, cert: `${certPem}\n${this.certificatePem}` });
    return { certPem, keyPem, secureContext };
  }
}

async function generateCa(x509: X509Module, now: number): Promise<CaMaterial> {
  const keys = await crypto.subtle.generateKey(P256_KEY, true, ["sign", "verify"]);
  const name: X509.JsonName = [{ O: ["Berth"] }, { CN: [`Berth egress CA ${randomBytes(4).toString("hex")}`] }];
  const certificate = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: serialNumber(),
      name,
      notBefore: new Date(now - BACKDATE),
      notAfter: new Date(now - BACKDATE + CA_VALIDITY),
      keys,
      signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } as EcdsaParams,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
      ],
    },
    crypto,
  );
  return {
    certPem: certificate.toString("pem"),
    keyPem: x509.PemConverter.encode(await crypto.subtle.exportKey("pkcs8", keys.privateKey), "PRIVATE KEY"),
  };
}

/** Checks the material is a usable CA (possibly an operator's own, RSA or ECDSA) and imports its key for signing. */
async function signerFor(x509: X509Module, material: CaMaterial, now: number): Promise<Signer> {
  const certificate = new NodeX509Certificate(material.certPem);
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(material.keyPem);
  } catch {
    throw new Error("its private key cannot be read");
  }
  if (!certificate.ca) throw new Error(`its certificate (${certificate.subject.replace(/\n/g, ", ")}) is not a CA certificate`);
  if (!certificate.checkPrivateKey(privateKey)) throw new Error("its private key does not belong to its certificate");
  const notAfter = Date.parse(certificate.validTo);
  if (!(notAfter > now)) throw new Error(`it expired on ${new Date(notAfter).toISOString()}; remove it to have a new one made (sandboxes then trust the new one)`);
  const { importAlgorithm, algorithm } = signingAlgorithmFor(privateKey);
  const pkcs8 = privateKey.export({ type: "pkcs8", format: "der" });
  const key = await crypto.subtle.importKey("pkcs8", pkcs8, importAlgorithm, false, ["sign"]);
  const parsed = new x509.X509Certificate(material.certPem);
  const subjectKeyIdentifier = parsed.getExtension(x509.SubjectKeyIdentifierExtension);
  const authorityKeyIdentifier = subjectKeyIdentifier
    ? new x509.AuthorityKeyIdentifierExtension(subjectKeyIdentifier.keyId)
    : await x509.AuthorityKeyIdentifierExtension.create(parsed.publicKey, false, crypto);
  return { key, algorithm, issuer: parsed.subjectName, authorityKeyIdentifier, notAfter };
}

function signingAlgorithmFor(key: KeyObject): { importAlgorithm: EcKeyImportParams | RsaHashedImportParams; algorithm: Algorithm | EcdsaParams } {
  if (key.asymmetricKeyType === "ec") {
    const curve = { prime256v1: ["P-256", "SHA-256"], secp384r1: ["P-384", "SHA-384"], secp521r1: ["P-521", "SHA-512"] }[key.asymmetricKeyDetails?.namedCurve ?? ""];
    if (!curve) throw new Error(`its EC key's curve ${key.asymmetricKeyDetails?.namedCurve ?? "(unknown)"} is not supported (P-256, P-384 or P-521)`);
    return { importAlgorithm: { name: "ECDSA", namedCurve: curve[0]! }, algorithm: { name: "ECDSA", hash: curve[1]! } as EcdsaParams };
  }
  if (key.asymmetricKeyType === "rsa") {
    return { importAlgorithm: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, algorithm: { name: "RSASSA-PKCS1-v1_5" } };
  }
  throw new Error(`its ${key.asymmetricKeyType ?? "unknown"} key is not supported (ECDSA or RSA)`);
}

/** 16 random bytes, top bit clear (a positive INTEGER) and next bit set (no leading zero byte to strip). */
function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x40;
  return bytes.toString("hex");
}

const DNS_LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

/**
 * A DNS name (lower-cased, without a trailing dot) or an IP literal in canonical form (IPv6 may come
 * in brackets, as in a CONNECT authority). Underscores are allowed because real hosts use them.
 */
function parseHostName(hostname: string): HostName {
  const invalid = () => new Error(`Not a DNS name or an IP address: ${JSON.stringify(String(hostname).slice(0, 300))}`);
  if (typeof hostname !== "string") throw invalid();
  const bare = hostname.startsWith("[") && hostname.endsWith("]") ? hostname.slice(1, -1) : hostname;
  const family = isIP(bare);
  if (family) {
    try {
      // WHATWG URL parsing canonicalises (::FFFF:1.2.3.4 is ::ffff:102:304) and rejects zone ids.
      const canonical = new URL(`http://${family === 6 ? `[${bare}]` : bare}/`).hostname;
      return { name: family === 6 ? canonical.slice(1, -1) : canonical, kind: "ip" };
    } catch {
      throw invalid();
    }
  }
  if (bare !== hostname) throw invalid();
  const name = hostname.toLowerCase().replace(/\.$/, "");
  const labels = name.split(".");
  if (name.length > 253 || !labels.every((label) => DNS_LABEL.test(label))) throw invalid();
  // A numeric last label would make it read as an IPv4 address to URL parsers ("1.2.3", "0x7f.1").
  if (/^(?:\d+|0x[0-9a-f]*)$/.test(labels.at(-1)!)) throw invalid();
  return { name, kind: "dns" };
}
