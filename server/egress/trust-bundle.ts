import { existsSync, readFileSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";

/** Where distributions keep the bundle of trusted roots (Debian/Ubuntu, Fedora/RHEL, Alpine/others). */
const SYSTEM_BUNDLES = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/**
 * `<dataDir>/egress-trust.pem`: the host's trusted roots plus the installation's egress CA, which
 * local jails see in place of their trust store (so programs that read it directly, not through
 * SSL_CERT_FILE, trust the certificates the gateway makes for the hosts it inspects). Rewritten at
 * every start, so a renewed system bundle reaches new jails.
 */
export async function writeTrustBundle(dataDir: string, caPem: string): Promise<string> {
  const system = SYSTEM_BUNDLES.find((candidate) => existsSync(candidate));
  const roots = system ? readFileSync(system, "utf8") : "";
  const target = path.join(dataDir, "egress-trust.pem");
  const partial = `${target}.${process.pid}.partial`;
  await fs.writeFile(partial, `${roots.trimEnd()}\n# Berth egress CA of this installation\n${caPem.trim()}\n`, { mode: 0o644 });
  await fs.rename(partial, target);
  return target;
}
