import { createHmac, timingSafeEqual } from "node:crypto";

/**
 * A sandbox's gateway token: `<sandbox name>~<MAC>`. Derived from the secret key, not stored, so
 * every replica checks any sandbox's token and a sandbox restarted elsewhere keeps its own. It is
 * the sandbox's credential at the egress gateway (proxy user `berth`, and the model relay's API
 * key); it opens nothing else. URL-safe, so it can sit in a proxy URL as it is.
 */
export type GatewayTokens = {
  issue(sandboxName: string): string;
  /** The sandbox a token belongs to, or null when it is not one of ours. */
  verify(token: string): string | null;
};

const SEPARATOR = "~";

export function createGatewayTokens(secretKey: Buffer): GatewayTokens {
  const mac = (name: string) => createHmac("sha256", secretKey).update(`egress-gateway:${name}`).digest("base64url");
  return {
    issue(sandboxName) {
      if (sandboxName.includes(SEPARATOR)) throw new Error(`a sandbox name cannot contain "${SEPARATOR}"`);
      return `${sandboxName}${SEPARATOR}${mac(sandboxName)}`;
    },
    verify(token) {
      const at = token.lastIndexOf(SEPARATOR);
      if (at <= 0 || token.length > 512) return null;
      const name = token.slice(0, at);
      const presented = Buffer.from(token.slice(at + 1));
      const expected = Buffer.from(mac(name));
      return presented.length === expected.length && timingSafeEqual(presented, expected) ? name : null;
    },
  };
}
