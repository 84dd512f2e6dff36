import { BlockList, isIP } from "node:net";

/**
 * Which connections may say who the client is: the proxies in front of Berth, as addresses and
 * CIDR ranges (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`) or the names `loopback`, `linklocal` and
 * `uniquelocal` (the private ranges), as in Express's `trust proxy`. Built on node:net's BlockList
 * (Node and Bun), which also matches IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`).
 */
export type TrustedProxies = { matches(address: string): boolean };

const NAMED_RANGES: Record<string, Array<[string, number]>> = {
  loopback: [
    ["127.0.0.0", 8],
    ["::1", 128],
  ],
  linklocal: [
    ["169.254.0.0", 16],
    ["fe80::", 10],
  ],
  uniquelocal: [
    ["10.0.0.0", 8],
    ["172.16.0.0", 12],
    ["192.168.0.0", 16],
    ["fc00::", 7],
  ],
};

/** Parses a comma-separated list; throws an Error naming the first entry that is neither an address, a range nor a known name. */
export function parseTrustedProxies(list: string): TrustedProxies {
  const blocks = new BlockList();
  const entries = list
    .split(",")
    .map((entry) => entry.trim())
    .filter(Boolean);
  if (entries.length === 0) throw new Error("names no proxy");
  for (const entry of entries) {
    const named = NAMED_RANGES[entry.toLowerCase()];
    if (named) {
      for (const [network, prefix] of named) blocks.addSubnet(network, prefix, isIP(network) === 6 ? "ipv6" : "ipv4");
      continue;
    }
    const [network = "", prefixText, ...rest] = entry.split("/");
    const family = isIP(network);
    const maxPrefix = family === 6 ? 128 : 32;
    const prefix = prefixText === undefined ? maxPrefix : /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : Number.NaN;
    if (family === 0 || rest.length > 0 || !(prefix >= 0 && prefix <= maxPrefix)) {
      throw new Error(`"${entry}" is not an IP address, a CIDR range (such as 10.0.0.0/8) or one of loopback, linklocal, uniquelocal`);
    }
    blocks.addSubnet(network, prefix, family === 6 ? "ipv6" : "ipv4");
  }
  return {
    matches(address) {
      const family = isIP(address);
      return family !== 0 && blocks.check(address, family === 6 ? "ipv6" : "ipv4");
    },
  };
}

/** `203.0.113.5:4711` and `[2001:db8::5]:4711` (some proxies add the client's port) as the bare address. */
function withoutPort(entry: string): string {
  const trimmed = entry.trim();
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(trimmed);
  if (bracketed) return bracketed[1]!;
  const ipv4WithPort = /^(\d{1,3}(?:\.\d{1,3}){3}):\d+$/.exec(trimmed);
  return ipv4WithPort ? ipv4WithPort[1]! : trimmed;
}

/** Where the caller's address comes from (server/config.ts: BERTH_CLIENT_ADDRESS_HEADER, BERTH_TRUSTED_PROXIES). */
export type ClientAddressPolicy = { header?: string; trustedProxies?: TrustedProxies };

/**
 * The caller's address: the connection's peer, unless the operator named the header a proxy in
 * front of Berth sets (a client can send any header, so it is never read otherwise).
 * - Without trusted proxies, the header's last entry: the one the nearest proxy wrote. What a client
 *   wrote to its left (X-Forwarded-For, or a proxy that appends to a header the client sent) is not
 *   believed. This trusts every sender, so Berth must be reachable only through the proxy.
 * - With trusted proxies, the header counts only on a connection from one of them; its entries are
 *   read from the right, skipping further trusted proxies, and the first other address is the
 *   client. A connection from anywhere else is its own peer address, whatever it sends.
 */
export function clientAddressOf(headers: Headers, peerAddress: string | null | undefined, policy: ClientAddressPolicy): string | null {
  const peer = peerAddress ?? null;
  if (!policy.header) return peer;
  const { trustedProxies } = policy;
  if (trustedProxies && !(peer !== null && trustedProxies.matches(peer))) return peer;
  const entries = (headers.get(policy.header) ?? "")
    .split(",")
    .map(withoutPort)
    .filter(Boolean);
  if (!trustedProxies) return entries.at(-1) ?? peer;
  let nearest = peer;
  for (let index = entries.length - 1; index >= 0; index--) {
    const entry = entries[index]!;
    // Not an address: a proxy passed on something a client wrote; stay with the last hop that is known.
    if (isIP(entry) === 0) return nearest;
    if (!trustedProxies.matches(entry)) return entry;
    nearest = entry;
  }
  return nearest;
}
