import fs from "node:fs";
import os from "node:os";
import path from "node:path";

/**
 * What commands need to use the egress gateway through the daemon's forwarder (gateway-forward.ts):
 * proxy variables carrying the sandbox's gateway token, the model base URL and key, and the
 * installation's egress CA (the gateway terminates TLS of CONNECTs with certificates it issues).
 */

/** A sandbox's gateway token: opaque, URL-safe (it goes into proxy URLs as is), at least 32 characters. */
export const GATEWAY_TOKEN = /^[A-Za-z0-9._~-]{32,1024}$/;
export const GATEWAY_TOKEN_RULE = "must be 32 to 1024 characters of A-Z a-z 0-9 . _ ~ -";

/** The system's CA bundle, the first of these that can be read (Debian/Ubuntu/Alpine, Fedora/RHEL, others). */
const SYSTEM_BUNDLES = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/** Hosts commands reach directly, never through the proxy: the forwarder itself (the model base URL) and other loopback services. */
const NO_PROXY = "localhost,127.0.0.1,::1";

export type CaFiles = {
  /** A folder of the daemon's own (created fresh, removed at exit or when bind replaces the CA). */
  dir: string;
  /** The system's roots followed by the Berth CA. */
  bundle: string;
  /** The Berth CA alone. */
  ca: string;
};

export type GatewaySession = { port: number; token: string; ca: CaFiles | null };

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([A-Za-z0-9+/=\r\n]+?)-----END \1-----/g;

/**
 * The certificates of a PEM text, normalised (`\n` line ends, one block after another). Throws on
 * text with no certificate, on anything that is not a certificate (a private key pasted by mistake
 * must never be written to a world-readable file) and on a BEGIN without its END.
 */
export function parseCertificates(pem: string): string[] {
  const certificates: string[] = [];
  for (const match of pem.matchAll(PEM_BLOCK)) {
    if (match[1] !== "CERTIFICATE") throw new Error(`only CERTIFICATE blocks are allowed, found ${match[1]}`);
    certificates.push(`-----BEGIN CERTIFICATE-----\n${match[2]!.replace(/\r/g, "").trimEnd()}\n-----END CERTIFICATE-----\n`);
  }
  const begins = pem.split("-----BEGIN ").length - 1;
  if (begins !== certificates.length) throw new Error("malformed PEM: a -----BEGIN line without its -----END line, or bad base64 inside");
  if (certificates.length === 0) throw new Error("no -----BEGIN CERTIFICATE----- block");
  return certificates;
}

const certificateBody = (block: string) => block.replace(/-----[A-Z ]+-----|\s/g, "");

/**
 * Writes the Berth CA alone and the system's roots + the Berth CA to a new private folder under the
 * temporary directory ($TMPDIR or /tmp): mkdtemp never reuses or follows anything that exists, and
 * the files are created exclusively without following links. Folder 0755, files 0644: readable by
 * any user the commands run as.
 */
export function writeCaFiles(certificates: string[], tmpDir = os.tmpdir()): CaFiles {
  let system = "";
  for (const candidate of SYSTEM_BUNDLES) {
    try {
      system = fs.readFileSync(candidate, "utf8");
      break;
    } catch {
      // the next one
    }
  }
  // A system bundle that already holds the Berth CA (a backend bound the combined bundle over it) does not get it twice.
  const known = new Set(Array.from(system.matchAll(PEM_BLOCK), (match) => certificateBody(match[0])));
  const extra = certificates.filter((certificate) => !known.has(certificateBody(certificate))).join("");
  const bundleText = system === "" ? extra : `${system}${system.endsWith("\n") ? "" : "\n"}${extra}`;

  const dir = fs.mkdtempSync(path.join(tmpDir, "berth-ca-"));
  try {
    fs.chmodSync(dir, 0o755);
    const files: CaFiles = { dir, bundle: path.join(dir, "ca-bundle.pem"), ca: path.join(dir, "berth-ca.pem") };
    writeNew(files.ca, certificates.join(""));
    writeNew(files.bundle, bundleText);
    return files;
  } catch (error) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

function writeNew(file: string, text: string): void {
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  const fd = fs.openSync(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o644);
  try {
    fs.fchmodSync(fd, 0o644); // whatever the umask
    fs.writeFileSync(fd, text);
  } finally {
    fs.closeSync(fd);
  }
}

export function removeCaFiles(files: CaFiles | null): void {
  if (files) fs.rmSync(files.dir, { recursive: true, force: true });
}

/** The variables every command gets (they win over the session's own). */
export function gatewayEnv(gateway: GatewaySession | null): Record<string, string> {
  if (!gateway) return {};
  // curl, git, pip and npm send `Proxy-Authorization: Basic base64(berth:<token>)` from the userinfo.
  // The token is URL-safe (GATEWAY_TOKEN), so it goes in as is.
  const proxy = `http://berth:${gateway.token}@127.0.0.1:${gateway.port}`;
  const env: Record<string, string> = {
    HTTP_PROXY: proxy,
    HTTPS_PROXY: proxy,
    ALL_PROXY: proxy,
    http_proxy: proxy,
    https_proxy: proxy,
    all_proxy: proxy,
    NO_PROXY,
    no_proxy: NO_PROXY,
    // Origin-form requests on the same port are the gateway's model route.
    BERTH_MODEL_BASE_URL: `http://127.0.0.1:${gateway.port}/v1`,
    BERTH_MODEL_API_KEY: gateway.token,
  };
  if (gateway.ca) {
    // These replace the default roots, hence the combined bundle (system roots + the Berth CA).
    for (const name of ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT"]) env[name] = gateway.ca.bundle;
    // Node adds this file to its built-in roots, hence the Berth CA alone. npm needs nothing more:
    // npm_config_cafile would REPLACE its roots (and only for npm's own requests), so it is not set.
    env.NODE_EXTRA_CA_CERTS = gateway.ca.ca;
  }
  return env;
}
