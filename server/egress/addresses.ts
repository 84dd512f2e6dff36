import { promises as dns } from "node:dns";
import { isIP } from "node:net";
import os from "node:os";
import { endsInNumber, normaliseHost } from "./policy";

/**
 * Which addresses the egress gateway may connect to, checked on the address a name RESOLVED to;
 * the gateway must then connect to exactly that address (no second lookup), so a name whose DNS
 * answer changes between check and connect (DNS rebinding) cannot lead it inside.
 *
 * Classification works on the address bytes rather than node:net's BlockList so that the forms
 * that embed an IPv4 address (mapped, compatible, translated, NAT64, 6to4, Teredo) can be unpacked
 * and judged by the IPv4 address they reach, and so IPv4 and IPv6 ranges never match across
 * families by accident.
 */

export type Cidr = { family: 4 | 6; network: string; prefix: number };

type Address = { family: 4 | 6; bytes: Uint8Array };

export class EgressRefusedError extends Error {
  override readonly name = "EgressRefusedError";
  constructor(
    readonly reason: string,
    readonly kind: "address" | "resolve",
  ) {
    super(reason);
  }
}

// ---------------------------------------------------------------------------------------------
// Parsing and formatting addresses

function parseIPv4(text: string): Uint8Array | null {
  if (isIP(text) !== 4) return null;
  return Uint8Array.from(text.split(".").map(Number));
}

/** Also accepts a trailing dotted IPv4 part (`::ffff:1.2.3.4`); a zone id (`%eth0`) is ignored. */
function parseIPv6(text: string): Uint8Array | null {
  const address = text.split("%")[0] ?? "";
  if (isIP(address) !== 6) return null;
  let body = address;
  const tail: number[] = [];
  const lastColon = address.lastIndexOf(":");
  const last = address.slice(lastColon + 1);
  if (last.includes(".")) {
    const v4 = parseIPv4(last);
    if (!v4) return null;
    tail.push(((v4[0] ?? 0) << 8) | (v4[1] ?? 0), ((v4[2] ?? 0) << 8) | (v4[3] ?? 0));
    body = address.slice(0, lastColon + 1);
    if (!body.endsWith("::")) body = body.slice(0, -1);
  }
  const halves = body.split("::");
  if (halves.length > 2) return null;
  const words = (part: string | undefined) => (part ? part.split(":").map((word) => Number.parseInt(word, 16)) : []);
  const head = words(halves[0]);
  const rest = [...words(halves[1]), ...tail];
  const missing = 8 - head.length - rest.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  const all = [...head, ...Array<number>(halves.length === 1 ? 0 : missing).fill(0), ...rest];
  if (all.some((word) => !(word >= 0 && word <= 0xffff))) return null;
  const bytes = new Uint8Array(16);
  all.forEach((word, index) => {
    bytes[index * 2] = word >> 8;
    bytes[index * 2 + 1] = word & 0xff;
  });
  return bytes;
}

function parseAddress(text: string): Address | null {
  const v4 = parseIPv4(text);
  if (v4) return { family: 4, bytes: v4 };
  const v6 = parseIPv6(text);
  return v6 ? { family: 6, bytes: v6 } : null;
}

/** Dotted decimal, or RFC 5952 IPv6 (lower case, the first longest run of two or more zero words as `::`). */
function formatAddress({ family, bytes }: Address): string {
  if (family === 4) return Array.from(bytes).join(".");
  const words = Array.from({ length: 8 }, (_, i) => ((bytes[i * 2] ?? 0) << 8) | (bytes[i * 2 + 1] ?? 0));
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let end = i;
    while (end < 8 && words[end] === 0) end++;
    if (end - i > bestLength) [bestStart, bestLength] = [i, end - i];
    i = end;
  }
  const hex = (list: number[]) => list.map((word) => word.toString(16)).join(":");
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLength))}`;
}

const keyOf = (address: Address) => `${address.family}:${Buffer.from(address.bytes).toString("hex")}`;

function inRange(address: Address, range: { family: 4 | 6; bytes: Uint8Array; prefix: number }): boolean {
  if (address.family !== range.family) return false;
  const fullBytes = Math.floor(range.prefix / 8);
  for (let i = 0; i < fullBytes; i++) if (address.bytes[i] !== range.bytes[i]) return false;
  const bits = range.prefix % 8;
  if (bits === 0) return true;
  const mask = (0xff << (8 - bits)) & 0xff;
  return ((address.bytes[fullBytes] ?? 0) & mask) === ((range.bytes[fullBytes] ?? 0) & mask);
}

function parseRange(text: string): { family: 4 | 6; bytes: Uint8Array; prefix: number } {
  const [network = "", prefix = ""] = text.split("/");
  const address = parseAddress(network);
  if (!address) throw new Error(`bad built-in range ${text}`);
  return { ...address, prefix: Number(prefix) };
}

// ---------------------------------------------------------------------------------------------
// What is refused

type Verdict =
  /** `hard`: no operator setting makes it reachable (nothing useful is there, and 0.0.0.0 means this host). */
  | { refused: string; hard?: boolean }
  /** IPv6 forms that carry an IPv4 address: judged by what they embed. */
  | { embeds: string; extract: (bytes: Uint8Array) => Uint8Array[] };

type RangeRule = { range: ReturnType<typeof parseRange>; verdict: Verdict };

const lastFour = (bytes: Uint8Array) => [bytes.slice(12, 16)];

/** First match wins: more specific ranges come before the ranges that contain them. */
const RANGES: RangeRule[] = (
  [
    ["0.0.0.0/8", { refused: "is unspecified (on Linux, 0.0.0.0 reaches this host)", hard: true }],
    ["127.0.0.0/8", { refused: "is loopback" }],
    ["10.0.0.0/8", { refused: "is a private address" }],
    ["172.16.0.0/12", { refused: "is a private address" }],
    ["192.168.0.0/16", { refused: "is a private address" }],
    ["100.64.0.0/10", { refused: "is in the shared address space (CGNAT)" }],
    ["169.254.169.254/32", { refused: "is link-local (cloud metadata)" }],
    ["169.254.170.2/32", { refused: "is link-local (cloud metadata)" }],
    ["169.254.0.0/16", { refused: "is link-local" }],
    ["192.0.0.0/24", { refused: "is reserved (IETF protocol assignments)" }],
    ["192.0.2.0/24", { refused: "is a documentation address" }],
    ["198.51.100.0/24", { refused: "is a documentation address" }],
    ["203.0.113.0/24", { refused: "is a documentation address" }],
    ["192.88.99.0/24", { refused: "is reserved (6to4 relay anycast)" }],
    ["198.18.0.0/15", { refused: "is a benchmarking address" }],
    ["224.0.0.0/4", { refused: "is multicast", hard: true }],
    ["255.255.255.255/32", { refused: "is the broadcast address", hard: true }],
    ["240.0.0.0/4", { refused: "is reserved" }],

    ["::/128", { refused: "is unspecified", hard: true }],
    ["::1/128", { refused: "is loopback" }],
    ["::ffff:0:0/96", { embeds: "IPv4-mapped", extract: lastFour }],
    ["::ffff:0:0:0/96", { embeds: "IPv4-translated", extract: lastFour }],
    ["::/96", { embeds: "IPv4-compatible", extract: lastFour }],
    ["64:ff9b::/96", { embeds: "NAT64", extract: lastFour }],
    ["64:ff9b:1::/48", { refused: "is a local-use NAT64 address" }],
    ["2001::/32", { embeds: "Teredo", extract: (bytes) => [bytes.slice(4, 8), bytes.slice(12, 16).map((byte) => byte ^ 0xff)] }],
    ["2001:2::/48", { refused: "is a benchmarking address" }],
    ["2001:db8::/32", { refused: "is a documentation address" }],
    ["3fff::/20", { refused: "is a documentation address" }],
    ["2001::/23", { refused: "is reserved (IETF protocol assignments)" }],
    ["2002::/16", { embeds: "6to4", extract: (bytes) => [bytes.slice(2, 6)] }],
    ["fd00:ec2::254/128", { refused: "is a unique-local address (cloud metadata)" }],
    ["fc00::/7", { refused: "is a unique-local (private) address" }],
    ["fe80::/10", { refused: "is link-local" }],
    ["fec0::/10", { refused: "is a site-local (private) address" }],
    ["ff00::/8", { refused: "is multicast", hard: true }],
  ] as Array<[string, Verdict]>
).map(([text, verdict]) => ({ range: parseRange(text), verdict }));

/** Everything in IPv6 outside global unicast (2000::/3) is unassigned or special. */
const GLOBAL_UNICAST = parseRange("2000::/3");

function verdictOf(address: Address): Verdict | null {
  const match = RANGES.find((rule) => inRange(address, rule.range));
  if (match) return match.verdict;
  if (address.family === 6 && !inRange(address, GLOBAL_UNICAST)) return { refused: "is reserved (not a global unicast address)" };
  return null;
}

export class AddressRules {
  private readonly allowed: Array<ReturnType<typeof parseRange>>;
  private readonly own: Set<string>;

  /**
   * `allowPrivate` (BERTH_EGRESS_ALLOW_PRIVATE) makes addresses inside those ranges reachable even
   * though they are loopback, private, link-local, CGNAT, unique-local, reserved or the platform's
   * own; only unspecified, multicast and broadcast stay refused. Allowing 169.254.0.0/16 (or a
   * range containing it) exposes the cloud metadata service, with its credentials, to sandboxes;
   * allowing a range that holds the platform's host exposes every port on it.
   */
  constructor(options: { allowPrivate: Cidr[]; ownAddresses: string[] }) {
    this.allowed = options.allowPrivate.map((cidr) => {
      const address = parseAddress(cidr.network);
      if (!address || address.family !== cidr.family) throw new Error(`${cidr.network}/${cidr.prefix} is not a CIDR range`);
      return { ...address, prefix: cidr.prefix };
    });
    this.own = new Set(
      options.ownAddresses.map((text) => {
        const address = parseAddress(text);
        if (!address) throw new Error(`${text} is not an IP address`);
        return keyOf(address);
      }),
    );
  }

  /** Every address on this machine's interfaces (IPv4 and IPv6, loopback included). */
  static ownHostAddresses(): string[] {
    const addresses = Object.values(os.networkInterfaces())
      .flat()
      .map((entry) => entry?.address)
      .filter((address): address is string => typeof address === "string");
    return [...new Set(addresses)];
  }

  /** Null when the gateway may connect to `address`; otherwise why not. */
  refusal(address: string): string | null {
    const parsed = parseAddress(address);
    if (!parsed) return `${address} is not an IP address`;
    return this.judge(parsed, address)?.reason ?? null;
  }

  private isAllowed(address: Address): boolean {
    return this.allowed.some((range) => inRange(address, range));
  }

  private judge(address: Address, text: string): { reason: string; hard: boolean } | null {
    const verdict = verdictOf(address);
    if (verdict && "embeds" in verdict) {
      for (const bytes of verdict.extract(address.bytes)) {
        const inner = { family: 4 as const, bytes };
        const innerText = formatAddress(inner);
        const refused = this.judge(inner, innerText);
        if (refused && (refused.hard || !this.isAllowed(address))) {
          return { reason: `${text} embeds IPv4 ${innerText} (${verdict.embeds}): ${refused.reason}`, hard: refused.hard };
        }
      }
    } else if (verdict) {
      if (verdict.hard) return { reason: `${text} ${verdict.refused}`, hard: true };
      if (!this.isAllowed(address)) return { reason: `${text} ${verdict.refused}`, hard: false };
      return null;
    }
    if (this.own.has(keyOf(address)) && !this.isAllowed(address)) return { reason: `${text} is an address of the platform itself`, hard: false };
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Operator and test settings

/** BERTH_EGRESS_ALLOW_PRIVATE: `10.0.0.0/8, fd00::/8, 192.168.1.7` (a bare address is one host). */
export function parseCidrList(text: string | undefined): Cidr[] {
  const entries = (text ?? "")
    .split(",")
    .map((entry) => entry.trim())
    .filter(Boolean);
  return entries.map((entry) => {
    const [network = "", prefixText, ...extra] = entry.split("/");
    const address = parseAddress(network);
    if (!address || network.includes("%") || extra.length > 0) {
      throw new Error(`"${entry}" is not an IP address or CIDR range (such as 10.0.0.0/8 or fd00::/8)`);
    }
    const maxPrefix = address.family === 4 ? 32 : 128;
    const prefix = prefixText === undefined ? maxPrefix : /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : Number.NaN;
    if (!(prefix >= 0 && prefix <= maxPrefix)) {
      throw new Error(`"${entry}" has a bad prefix length: it must be 0 to ${maxPrefix} for IPv${address.family}`);
    }
    const masked = Uint8Array.from(address.bytes, (byte, index) => {
      const bitsHere = Math.min(8, Math.max(0, prefix - index * 8));
      return byte & ((0xff << (8 - bitsHere)) & 0xff);
    });
    const networkText = formatAddress({ family: address.family, bytes: masked });
    if (keyOf({ family: address.family, bytes: masked }) !== keyOf(address)) {
      throw new Error(`"${entry}" has bits set after the prefix: write the network, ${networkText}/${prefix}`);
    }
    return { family: address.family, network: networkText, prefix };
  });
}

export type ResolveMap = Map<string, { address: string; port: number | null }>;

/**
 * BERTH_EGRESS_RESOLVE (tests only): `api.example.test=127.0.0.1:8080,other.test=127.0.0.1,v6.test=[::1]:8080`.
 * IPv6 addresses always take brackets (`::1:8080` is itself an address). Names are matched case-insensitively and without a trailing dot; without a port the requested
 * port is kept.
 */
export function parseResolveMap(text: string | undefined): ResolveMap {
  const map: ResolveMap = new Map();
  const entries = (text ?? "")
    .split(",")
    .map((entry) => entry.trim())
    .filter(Boolean);
  const example = "api.example.test=127.0.0.1:8080";
  for (const entry of entries) {
    const equals = entry.indexOf("=");
    if (equals < 0) throw new Error(`"${entry}" has no "=": write host=address[:port], as in ${example}`);
    const hostText = entry.slice(0, equals).trim();
    const target = entry.slice(equals + 1).trim();
    const host = normaliseHost(hostText, { wildcard: false });
    if ("error" in host) throw new Error(`"${entry}": the host ${host.error}`);

    let addressText = target;
    let portText: string | undefined;
    const bracketed = /^\[([^\]]+)\](?::(.*))?$/.exec(target);
    if (bracketed) [, addressText = "", portText] = bracketed;
    else if (target.split(":").length > 2) throw new Error(`"${entry}": write IPv6 addresses in brackets, as in [::1] or [::1]:8080`);
    else if (target.includes(":")) [addressText = "", portText] = target.split(":");
    const address = parseAddress(addressText);
    if (!address || addressText.includes("%")) {
      throw new Error(`"${entry}": "${addressText}" is not an IP address`);
    }
    let port: number | null = null;
    if (portText !== undefined) {
      port = /^\d{1,5}$/.test(portText) ? Number(portText) : Number.NaN;
      if (!(port >= 1 && port <= 65535)) throw new Error(`"${entry}": "${portText}" is not a port number (1 to 65535)`);
    }
    if (map.has(host.host)) throw new Error(`"${host.host}" is named twice`);
    map.set(host.host, { address: formatAddress(address), port });
  }
  return map;
}

// ---------------------------------------------------------------------------------------------
// Resolution

export type LookupResult = Array<{ address: string; family: 4 | 6 }>;
export type Lookup = (host: string) => Promise<LookupResult>;

export type ResolvedTarget = {
  address: string;
  port: number;
  family: 4 | 6;
  /** True when the address came from BERTH_EGRESS_RESOLVE (address rules were not applied). */
  mapped: boolean;
  /** Every address the name resolved to, all checked, in resolver order (`address` is the first): for trying the next on failure. */
  addresses: Array<{ address: string; family: 4 | 6 }>;
};

const defaultLookup: Lookup = async (host) => {
  const results = await dns.lookup(host, { all: true, verbatim: true });
  return results.map((result) => ({ address: result.address, family: result.family === 6 ? 6 : 4 }));
};

const NOT_FOUND_CODES = new Set(["ENOTFOUND", "ENODATA", "EAI_NONAME", "EAI_NODATA"]);

/**
 * Where the gateway should connect for `host:port`. Name-like numbers (`2130706433`, `0x7f.1`,
 * `017700000001`, `127.1`) are refused, not normalised: resolvers read them with inet_aton's
 * rules, and whatever we computed could differ from what some other parser computes.
 */
export async function resolveTarget(
  host: string,
  port: number,
  deps: { rules: AddressRules; resolveMap: ResolveMap; lookup?: Lookup },
): Promise<ResolvedTarget> {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new EgressRefusedError(`${port} is not a port number`, "address");
  const normalised = normaliseHost(host, { wildcard: false });
  if ("error" in normalised) {
    const bare = host.toLowerCase().replace(/^\[(.*)\]$/, "$1").replace(/\.$/, "");
    const numeric = /^[0-9a-fx.]+$/i.test(bare) && endsInNumber(bare);
    throw new EgressRefusedError(
      numeric ? `${host} is not a canonical IPv4 address: write four decimal numbers, such as 192.0.2.1` : `"${host}" is not a valid host: ${normalised.error}`,
      numeric ? "address" : "resolve",
    );
  }
  const name = normalised.host;

  const mapped = deps.resolveMap.get(name);
  if (mapped) {
    const family = isIP(mapped.address) === 6 ? 6 : 4;
    return { address: mapped.address, port: mapped.port ?? port, family, mapped: true, addresses: [{ address: mapped.address, family }] };
  }

  const checked = (address: string, refusalPrefix: string) => {
    const parsed = parseAddress(address);
    if (!parsed) throw new EgressRefusedError(`${name} resolved to "${address}", which is not an IP address`, "resolve");
    const refusal = deps.rules.refusal(address);
    if (refusal) throw new EgressRefusedError(`${refusalPrefix}${refusal}`, "address");
    return { address: formatAddress(parsed), family: parsed.family };
  };

  if (normalised.kind === "ipv4" || normalised.kind === "ipv6") {
    const target = checked(name, "");
    return { ...target, port, mapped: false, addresses: [target] };
  }

  let results: LookupResult;
  try {
    results = await (deps.lookup ?? defaultLookup)(name);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException | undefined)?.code;
    if (code !== undefined && NOT_FOUND_CODES.has(code)) throw new EgressRefusedError(`${name} does not resolve`, "resolve");
    throw new EgressRefusedError(`${name} could not be resolved (${code ?? (error instanceof Error ? error.message : String(error))})`, "resolve");
  }
  if (results.length === 0) throw new EgressRefusedError(`${name} does not resolve`, "resolve");

  // One refused address refuses the name, even when others are public. An honest public service
  // does not publish internal addresses; a name that does is either split-horizon DNS (which the
  // sandbox must not see through) or an attacker mixing a public address in so that a retry or a
  // resolver reordering lands inside. Refusing the whole name also makes the answer independent
  // of the order the resolver happens to return.
  const addresses = results.map((result) => checked(result.address, `${name} resolves to a refused address: `));
  const [first] = addresses;
  if (!first) throw new EgressRefusedError(`${name} does not resolve`, "resolve");
  return { ...first, port, mapped: false, addresses };
}
