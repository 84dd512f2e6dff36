import { z } from "zod";

/**
 * An agent's egress policy: what its sandbox may reach through the egress gateway.
 *
 * Pure code (no Node modules) so the web UI can validate rules with the same schema.
 * Which addresses the gateway may connect to at all is a separate question (addresses.ts): a rule
 * naming `10.0.0.5` still cannot reach it unless the operator allows that range.
 */

export const EGRESS_MODES = ["none", "allowlist", "open"] as const;
export type EgressMode = (typeof EGRESS_MODES)[number];

/** A rule without `ports` covers plain HTTP and HTTPS only: any other port must be named. */
export const DEFAULT_PORTS: readonly number[] = [80, 443];

export const MAX_RULES = 200;
export const MAX_PORTS = 32;
export const MAX_METHODS = 16;
export const MAX_PATHS = 32;
export const MAX_PATH_LENGTH = 1024;
const MAX_HOST_LENGTH = 253;
const MAX_LABEL_LENGTH = 63;

export type EgressRule = { host: string; ports?: number[]; methods?: string[]; paths?: string[] };

// ---------------------------------------------------------------------------------------------
// Hosts

export type HostKind = "name" | "wildcard" | "ipv4" | "ipv6";
export type NormalisedHost = { host: string; kind: HostKind } | { error: string };

/** Canonical dotted-decimal only: `010.0.0.1` or `0x7f.1` are not IPv4 here (see endsInNumber). */
const IPV4_PATTERN = /^(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const LABEL_PATTERN = /^[a-z0-9_-]+$/;
const SCHEME_PATTERN = /^[a-z][a-z0-9+.-]*:\/\//i;

/** RFC 5952 text (lower case, longest zero run as `::`) through the WHATWG URL parser, or null. */
function canonicalIPv6(text: string): string | null {
  if (!/^[0-9a-f:.]+$/i.test(text) || !text.includes(":")) return null;
  try {
    return new URL(`http://[${text}]/`).hostname.slice(1, -1);
  } catch {
    return null;
  }
}

/**
 * A last label that is a number (`1.2.3`, `2130706433`, `0x7f.1`) makes a URL parser or
 * inet_aton read the whole name as an IPv4 address, with a meaning that differs between parsers.
 * Such names are refused rather than guessed at (WHATWG URL's "ends in a number" rule).
 */
export function endsInNumber(name: string): boolean {
  const last = name.slice(name.lastIndexOf(".") + 1);
  return /^(?:\d+|0x[0-9a-f]*)$/i.test(last);
}

/**
 * Normalises a host as written in a rule (`wildcard: true`) or as asked for by a sandbox:
 * lower case, brackets around IPv6 removed, IPv6 in canonical form, one trailing dot removed.
 * Never accepts a port, scheme, path, zone id or a number-like name.
 */
export function normaliseHost(raw: string, options: { wildcard: boolean }): NormalisedHost {
  if (raw.length === 0) return { error: "must not be empty" };
  if (raw.length > MAX_HOST_LENGTH + 3) return { error: `must be at most ${MAX_HOST_LENGTH} characters` };
  if (/\s/.test(raw)) return { error: "must not contain spaces" };
  if (SCHEME_PATTERN.test(raw)) {
    const rest = raw.replace(SCHEME_PATTERN, "");
    const hostOnly = rest.split(/[/?#]/)[0] ?? "";
    return { error: `must be a host name, not a URL: write "${hostOnly}" without "${raw.slice(0, raw.length - rest.length)}" (and put paths in "paths")` };
  }
  if (/[/?#]/.test(raw)) return { error: 'must be a host name without a path or query: put paths in "paths"' };
  const lowered = raw.toLowerCase();

  if (lowered.startsWith("[")) {
    const bracketed = /^\[([^\]]*)\](.*)$/.exec(lowered);
    if (!bracketed) return { error: `"${raw}" has a "[" without its "]"` };
    const [, inside = "", after = ""] = bracketed;
    if (after !== "") {
      const port = /^:(\d+)$/.exec(after);
      return port
        ? { error: `must not contain a port: write "[${inside}]" and put ${port[1]} in "ports"` }
        : { error: `"${raw}" is not an IPv6 address in brackets` };
    }
    const v6 = canonicalIPv6(inside);
    return v6 ? { host: v6, kind: "ipv6" } : { error: `"${inside}" is not an IPv6 address` };
  }

  if (lowered.includes(":")) {
    const v6 = canonicalIPv6(lowered);
    if (v6) return { host: v6, kind: "ipv6" };
    const withPort = /^([^:]*):(\d+)$/.exec(lowered);
    if (withPort) return { error: `must not contain a port: write "${withPort[1]}" and put ${withPort[2]} in "ports"` };
    return { error: `"${raw}" is not a host name or IP address (IPv6 zone ids are not supported)` };
  }

  const host = lowered.endsWith(".") ? lowered.slice(0, -1) : lowered;
  if (host.length > MAX_HOST_LENGTH) return { error: `must be at most ${MAX_HOST_LENGTH} characters` };
  if (IPV4_PATTERN.test(host)) return { host, kind: "ipv4" };

  if (host === "*") return { error: '"*" alone is not a host: use mode "open" to allow every host' };
  const wildcard = host.startsWith("*.");
  if (wildcard && !options.wildcard) return { error: `"${raw}" is not a host name` };
  const name = wildcard ? host.slice(2) : host;
  if (name.includes("*")) return { error: '"*" is only allowed as the whole first label, as in *.example.com' };
  const labels = name.split(".");
  if (labels.some((label) => label === "")) return { error: `"${raw}" has an empty label (a leading dot or two dots in a row)` };
  for (const label of labels) {
    if (label.length > MAX_LABEL_LENGTH) return { error: `"${label}" is longer than ${MAX_LABEL_LENGTH} characters (the limit for one label)` };
    if (!LABEL_PATTERN.test(label)) {
      return { error: `"${raw}" is not a valid host name: use letters, digits, "-" and "_" (international names in punycode, xn--…)` };
    }
  }
  if (endsInNumber(name)) return { error: `"${raw}" is not a valid IP address: write IPv4 as four decimal numbers, such as 192.0.2.1` };
  if (wildcard && labels.length < 2) {
    return { error: `"${raw}" would match every name under a top-level domain: name at least two labels after "*.", as in *.example.com` };
  }
  return wildcard ? { host: `*.${name}`, kind: "wildcard" } : { host: name, kind: "name" };
}

// ---------------------------------------------------------------------------------------------
// Paths
//
// A path rule is exact (`/v1/models`) or a prefix when it ends in `*` (`/v1/*` matches `/v1/` and
// `/v1/x/y`, not `/v1`; `/repo.git*` matches `/repo.git/info/refs`). The query string never takes
// part. Requests are compared in two readings, and the rule must match both:
//  - standard: percent-encoded unreserved characters decoded (`%41` → `A`, `%2E` → `.`), other
//    escapes upper-cased, then `.` and `..` segments removed (RFC 3986), so `/v1/../admin` and
//    `/v1/%2e%2e/admin` are `/admin`;
//  - lenient, for servers that are looser than the RFC: additionally `%2F`, `%5C` and `\` read as
//    `/`, runs of `/` collapsed, and `;params` dropped from each segment (Tomcat's `..;`), then
//    dot segments removed.
// So `/v1/..%2Fadmin`, `/v1//../admin` and `/v1/..;/admin` do not pass `/v1/*`, while a plain
// encoded slash inside an allowed prefix (GitLab's `/api/v4/projects/group%2Fproject`) still does.
// A path with a malformed escape (`%zz`) matches no path rule. Escapes of reserved characters other
// than `/` and `\` (such as `%252F`) stay encoded and are compared as written.

const UNRESERVED = /[A-Za-z0-9\-._~]/;

/** Decodes unreserved escapes and upper-cases the rest; null when a `%` is not followed by two hex digits. */
function decodeUnreserved(path: string): string | null {
  let out = "";
  for (let i = 0; i < path.length; i++) {
    const char = path[i];
    if (char !== "%") {
      out += char;
      continue;
    }
    const hex = path.slice(i + 1, i + 3);
    if (!/^[0-9a-fA-F]{2}$/.test(hex)) return null;
    const decoded = String.fromCharCode(Number.parseInt(hex, 16));
    out += UNRESERVED.test(decoded) ? decoded : `%${hex.toUpperCase()}`;
    i += 2;
  }
  return out;
}

function removeDotSegments(path: string): string {
  const segments = path.split("/");
  const out: string[] = [];
  for (let i = 1; i < segments.length; i++) {
    const segment = segments[i] ?? "";
    const last = i === segments.length - 1;
    if (segment === "." || segment === "..") {
      if (segment === "..") out.pop();
      if (last) out.push("");
      continue;
    }
    out.push(segment);
  }
  return `/${out.join("/")}`;
}

function lenientForm(decoded: string): string {
  const slashes = decoded.replace(/%2F|%5C|\\/g, "/").replace(/\/{2,}/g, "/");
  const withoutParams = slashes
    .split("/")
    .map((segment) => segment.split(";")[0] ?? "")
    .join("/");
  return removeDotSegments(withoutParams);
}

type PathForms = { standard: string; lenient: string };

function requestPathForms(path: string): PathForms | null {
  const withoutQuery = path.split(/[?#]/)[0] ?? "";
  if (!withoutQuery.startsWith("/")) return null;
  const decoded = decodeUnreserved(withoutQuery);
  if (decoded === null) return null;
  return { standard: removeDotSegments(decoded), lenient: lenientForm(decoded) };
}

type PathPattern = PathForms & { prefix: boolean };

/** Rules hold no dot segments (the schema refuses them), so only the lenient reading changes them. */
function pathPattern(rulePath: string): PathPattern {
  const prefix = rulePath.endsWith("*");
  const body = decodeUnreserved(prefix ? rulePath.slice(0, -1) : rulePath) ?? rulePath;
  const lenientBody = body.replace(/%2F|%5C|\\/g, "/").replace(/\/{2,}/g, "/");
  const lenient = lenientBody
    .split("/")
    .map((segment) => segment.split(";")[0] ?? "")
    .join("/");
  return { standard: body, lenient, prefix };
}

function pathMatches(pattern: PathPattern, request: PathForms): boolean {
  return pattern.prefix
    ? request.standard.startsWith(pattern.standard) && request.lenient.startsWith(pattern.lenient)
    : request.standard === pattern.standard && request.lenient === pattern.lenient;
}

/** Why a rule path is unusable, or null. */
function rulePathProblem(path: string): string | null {
  if (!path.startsWith("/")) return `"${path}" must start with "/"`;
  if (/[\s\p{Cc}]/u.test(path)) return `"${path}" must not contain spaces or control characters (percent-encode them)`;
  if (/[?#]/.test(path)) return `"${path}" must not contain "?" or "#": paths are matched without the query string`;
  if (path.slice(0, -1).includes("*")) return `"${path}" may contain "*" only at the end (a prefix, as in /v1/*)`;
  if (path.includes(",")) return `"${path}" must not contain "," (it separates paths in the one-line rule syntax): write %2C`;
  const decoded = decodeUnreserved(path);
  if (decoded === null) return `"${path}" has a "%" that is not followed by two hex digits`;
  const body = decoded.endsWith("*") ? decoded.slice(0, -1) : decoded;
  const segments = body.replace(/%2F|%5C|\\/g, "/").split("/");
  if (segments.some((segment) => [".", ".."].includes(segment.split(";")[0] ?? ""))) {
    return `"${path}" must not contain "." or ".." segments: write the path they lead to`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Schemas

/** A host as rules write it (exact name, `*.suffix` or IP literal), normalised; also for other host lists such as brokered credentials'. */
export const egressHost = z.string({ error: "must be a host name or IP address" }).transform((value, ctx) => {
  const result = normaliseHost(value, { wildcard: true });
  if ("error" in result) {
    ctx.addIssue({ code: "custom", message: result.error });
    return z.NEVER;
  }
  return result.host;
});

const port = z
  .number({ error: "must be a port number from 1 to 65535" })
  .int("must be a port number from 1 to 65535")
  .min(1, "must be a port number from 1 to 65535")
  .max(65535, "must be a port number from 1 to 65535");

/** RFC 9110 method token. */
const method = z
  .string({ error: "must be an HTTP method such as GET" })
  .max(32, "must be at most 32 characters")
  .regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, "must be an HTTP method such as GET or POST")
  .transform((value) => value.toUpperCase());

const rulePath = z
  .string({ error: "must be a path such as /v1/*" })
  .max(MAX_PATH_LENGTH, `must be at most ${MAX_PATH_LENGTH} characters`)
  .superRefine((value, ctx) => {
    const problem = rulePathProblem(value);
    if (problem) ctx.addIssue({ code: "custom", message: problem });
  });

const unique = <T>(values: T[]): T[] => [...new Set(values)];

/**
 * One allow rule. An empty `ports`, `methods` or `paths` list means the same as leaving it out
 * (a form that sends `[]` for an untouched field must not produce a rule that allows nothing).
 */
export const egressRule = z
  .strictObject({
    host: egressHost,
    ports: z.array(port).max(MAX_PORTS, `at most ${MAX_PORTS} ports`).optional(),
    methods: z.array(method).max(MAX_METHODS, `at most ${MAX_METHODS} methods`).optional(),
    paths: z.array(rulePath).max(MAX_PATHS, `at most ${MAX_PATHS} paths`).optional(),
  })
  .transform((value): EgressRule => {
    const rule: EgressRule = { host: value.host };
    if (value.ports?.length) rule.ports = unique(value.ports);
    if (value.methods?.length) rule.methods = unique(value.methods);
    if (value.paths?.length) rule.paths = unique(value.paths);
    return rule;
  });

/**
 * `allowlist` with no rules is valid and denies everything. `none` and `open` keep any rules they
 * are given but ignore them, so switching the mode back and forth does not lose a list.
 */
export const egressPolicy = z.strictObject({
  mode: z.enum(EGRESS_MODES, { error: 'must be "none", "allowlist" or "open"' }),
  allow: z.array(egressRule).max(MAX_RULES, `at most ${MAX_RULES} allow rules`).default([]),
});

export type EgressPolicy = z.output<typeof egressPolicy>;

export function policyFromNetwork(network: "none" | "egress"): EgressPolicy {
  return { mode: network === "none" ? "none" : "open", allow: [] };
}

export function networkOf(policy: EgressPolicy): "none" | "egress" {
  return policy.mode === "none" ? "none" : "egress";
}

// ---------------------------------------------------------------------------------------------
// Decisions

export type EgressTarget = { host: string; port: number; method?: string; path?: string };
export type EgressDecision = { allowed: boolean; rule?: string; reason?: string };

function ruleHostMatches(ruleHost: string, target: { host: string; kind: HostKind }): boolean {
  if (ruleHost.startsWith("*.")) return target.kind === "name" && target.host.endsWith(ruleHost.slice(1));
  return ruleHost === target.host;
}

/** Whether `host` (as a sandbox asked for it) is `pattern` (as egressHost accepts it) or, for `*.suffix`, below it. */
export function hostMatches(pattern: string, host: string): boolean {
  const rule = normaliseHost(pattern, { wildcard: true });
  const target = normaliseHost(host, { wildcard: false });
  return !("error" in rule) && !("error" in target) && ruleHostMatches(rule.host, target);
}

function rulesForConnection(policy: EgressPolicy, host: { host: string; kind: HostKind }, port: number): EgressRule[] {
  return policy.allow.filter((rule) => (rule.ports ?? DEFAULT_PORTS).includes(port) && ruleHostMatches(rule.host, host));
}

const isRestricted = (rule: EgressRule) => Boolean(rule.methods?.length || rule.paths?.length);

function validPort(port: number): boolean {
  return Number.isInteger(port) && port >= 1 && port <= 65535;
}

function shorten(text: string, max = 200): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/**
 * Decides one connection (no method or path: the gateway only knows host and port, as for a
 * CONNECT it does not open) or one request (method and/or path given). A connection is allowed
 * when any rule matches its host and port, even one that restricts methods or paths: the gateway
 * then has to look inside (needsInspection) and decide each request. A request is allowed when
 * any rule matches host, port, method (if the rule lists methods) and path (if it lists paths);
 * a rule with methods or paths never matches a request whose method or path is unknown.
 */
export function decideEgress(policy: EgressPolicy, target: EgressTarget): EgressDecision {
  if (policy.mode === "none") return { allowed: false, reason: "the agent's egress policy (mode none) allows no connections" };
  if (policy.mode === "open") return { allowed: true, rule: "open" };

  const host = normaliseHost(target.host, { wildcard: false });
  if ("error" in host) return { allowed: false, reason: `"${shorten(target.host)}" is not a valid host: ${host.error}` };
  if (!validPort(target.port)) return { allowed: false, reason: `${target.port} is not a port number` };
  const shownHost = host.kind === "ipv6" ? `[${host.host}]` : host.host;
  const candidates = rulesForConnection(policy, host, target.port);
  if (candidates.length === 0) return { allowed: false, reason: `no allow rule for host ${shownHost} port ${target.port}` };

  if (target.method === undefined && target.path === undefined) {
    const rule = candidates.find((candidate) => !isRestricted(candidate)) ?? candidates[0];
    return { allowed: true, rule: describeRule(rule as EgressRule) };
  }

  const method = target.method?.toUpperCase();
  const path = target.path === undefined ? null : requestPathForms(target.path);
  const rule = candidates.find((candidate) => {
    if (candidate.methods?.length && (method === undefined || !candidate.methods.includes(method))) return false;
    if (candidate.paths?.length && (path === null || !candidate.paths.some((rulePath) => pathMatches(pathPattern(rulePath), path)))) return false;
    return true;
  });
  if (rule) return { allowed: true, rule: describeRule(rule) };
  const what = [method, target.path === undefined ? undefined : shorten(target.path.split(/[?#]/)[0] ?? "")].filter(Boolean).join(" ");
  return { allowed: false, reason: `no allow rule for ${what} on ${shownHost}` };
}

/**
 * True when the gateway must see the HTTP requests (terminate TLS for HTTPS) to apply the policy:
 * some rule for this host and port restricts methods or paths, and no rule for it allows the
 * whole connection outright (an unrestricted rule makes the others' limits irrelevant).
 */
export function needsInspection(policy: EgressPolicy, host: string, port: number): boolean {
  if (policy.mode !== "allowlist") return false;
  const target = normaliseHost(host, { wildcard: false });
  if ("error" in target || !validPort(port)) return false;
  const candidates = rulesForConnection(policy, target, port);
  return candidates.some(isRestricted) && !candidates.some((rule) => !isRestricted(rule));
}

// ---------------------------------------------------------------------------------------------
// One-line syntax: HOST[:PORT[,PORT]] [METHOD[,METHOD]] [PATH[,PATH]]

/** The one-line form of a rule; also what decisions report as `rule`. */
export function formatAllowRule(rule: EgressRule): string {
  const host = rule.host.includes(":") ? `[${rule.host}]` : rule.host;
  let text = rule.ports?.length ? `${host}:${rule.ports.join(",")}` : host;
  if (rule.methods?.length) text += ` ${rule.methods.join(",")}`;
  if (rule.paths?.length) text += ` ${rule.paths.join(",")}`;
  return text;
}

export const describeRule = formatAllowRule;

const SYNTAX = "HOST[:PORT[,PORT]] [METHOD[,METHOD]] [PATH[,PATH]], as in api.example.com:443 GET,POST /v1/*";

/**
 * Parses the one-line syntax. IPv6 must be bracketed when ports follow (`[::1]:8080`); a bare
 * IPv6 address (`2001:db8::1`) is read as an address without ports. Methods and paths may come in
 * either order; paths are told apart by their leading "/".
 */
export function parseAllowFlag(text: string): EgressRule {
  const fail = (problem: string): never => {
    throw new Error(`invalid allow rule "${shorten(text.trim())}": ${problem}`);
  };
  const tokens = text.trim().split(/\s+/).filter(Boolean);
  const [target, ...rest] = tokens;
  if (target === undefined) return fail(`empty: write ${SYNTAX}`);
  if (rest.length > 2) return fail(`too many parts: write ${SYNTAX}`);
  if (SCHEME_PATTERN.test(target)) {
    const hostOnly = target.replace(SCHEME_PATTERN, "").split(/[/?#]/)[0] ?? "";
    return fail(`"${target}" is a URL: write the host alone ("${hostOnly}"), then ports, methods and paths: ${SYNTAX}`);
  }

  let host = target;
  let portsText: string | undefined;
  if (target.startsWith("[")) {
    const close = target.indexOf("]");
    if (close < 0) return fail(`"${target}" has a "[" without its "]"`);
    host = target.slice(0, close + 1);
    const after = target.slice(close + 1);
    if (after.startsWith(":")) portsText = after.slice(1);
    else if (after !== "") return fail(`unexpected "${after}" after "${host}": write ports as ${host}:443`);
  } else if (target.split(":").length === 2) {
    [host = "", portsText] = target.split(":");
  }

  const rule: { host: string; ports?: number[]; methods?: string[]; paths?: string[] } = { host };
  if (portsText !== undefined) {
    rule.ports = portsText.split(",").map((entry) => {
      if (!/^\d{1,5}$/.test(entry)) return fail(`"${entry}" is not a port number (1 to 65535)`);
      return Number(entry);
    });
  }
  for (const token of rest) {
    const entries = token.split(",");
    if (entries.some((entry) => entry === "")) return fail(`"${token}" has an empty entry`);
    if (token.startsWith("/")) {
      if (rule.paths) return fail(`paths given twice: separate them with "," (${SYNTAX})`);
      rule.paths = entries;
    } else {
      if (rule.methods) return fail(`"${token}" is not a path (paths start with "/") and methods were given already`);
      rule.methods = entries;
    }
  }

  const parsed = egressRule.safeParse(rule);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path[0] === undefined ? "" : `${String(issue.path[0])}: `}${issue.message}`);
    return fail(problems.join("; "));
  }
  return parsed.data;
}
