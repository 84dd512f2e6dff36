import { describe, expect, it } from "vitest";
import {
  decideEgress,
  describeRule,
  egressHost,
  egressPolicy,
  egressRule,
  formatAllowRule,
  hostMatches,
  needsInspection,
  networkOf,
  parseAllowFlag,
  policyFromNetwork,
  type EgressPolicy,
  type EgressRule,
} from "./policy";

const rule = (input: unknown) => egressRule.parse(input);
const ruleError = (input: unknown) => {
  const result = egressRule.safeParse(input);
  expect(result.success).toBe(false);
  return result.error?.issues.map((issue) => issue.message).join("; ") ?? "";
};
const allowlist = (...rules: unknown[]): EgressPolicy => egressPolicy.parse({ mode: "allowlist", allow: rules });

describe("egressRule host", () => {
  it("lower-cases names, drops one trailing dot and the brackets around IPv6", () => {
    expect(rule({ host: "API.Example.COM." }).host).toBe("api.example.com");
    expect(rule({ host: "*.GitHub.com" }).host).toBe("*.github.com");
    expect(rule({ host: "[::1]" }).host).toBe("::1");
    expect(rule({ host: "2001:DB8:0:0:0:0:0:1" }).host).toBe("2001:db8::1");
    expect(rule({ host: "192.0.2.10" }).host).toBe("192.0.2.10");
    expect(rule({ host: "my_service.internal-zone.example" }).host).toBe("my_service.internal-zone.example");
  });

  it("refuses ports, schemes and paths with a message that says where they go", () => {
    expect(ruleError({ host: "a.com:443" })).toMatch(/must not contain a port: write "a.com" and put 443 in "ports"/);
    expect(ruleError({ host: "[::1]:443" })).toMatch(/must not contain a port/);
    expect(ruleError({ host: "https://api.example.com/v1" })).toMatch(/not a URL: write "api.example.com" without "https:\/\/"/);
    expect(ruleError({ host: "api.example.com/v1" })).toMatch(/without a path/);
  });

  it("refuses empty, spaced and malformed names", () => {
    expect(ruleError({ host: "" })).toMatch(/must not be empty/);
    expect(ruleError({ host: "a b.com" })).toMatch(/spaces/);
    expect(ruleError({ host: "a..com" })).toMatch(/empty label/);
    expect(ruleError({ host: ".a.com" })).toMatch(/empty label/);
    expect(ruleError({ host: "a.com.." })).toMatch(/empty label/);
    expect(ruleError({ host: "exämple.com" })).toMatch(/punycode/);
    expect(ruleError({ host: "a%2e.com" })).toMatch(/not a valid host name/);
    expect(ruleError({ host: `${"a".repeat(64)}.com` })).toMatch(/longer than 63/);
    expect(ruleError({ host: `${"abcdefghi.".repeat(26)}com` })).toMatch(/at most 253/);
    expect(ruleError({ host: "[::1" })).toMatch(/without its "]"/);
    expect(ruleError({ host: "[1.2.3.4]" })).toMatch(/not an IPv6 address/);
    expect(ruleError({ host: "fe80::1%eth0" })).toMatch(/zone ids/);
    expect(ruleError({ host: 42 })).toMatch(/host name or IP address/);
  });

  it("refuses names that parsers read as odd IPv4 forms", () => {
    for (const host of ["2130706433", "0x7f.1", "127.1", "017700000001", "010.0.0.1", "1.2.3.4.5", "*.1.2.3"]) {
      expect(ruleError({ host }), host).toMatch(/not a valid IP address/);
    }
  });

  it("takes *.suffix with at least two labels, and no other wildcard", () => {
    expect(rule({ host: "*.example.com" }).host).toBe("*.example.com");
    expect(ruleError({ host: "*" })).toMatch(/use mode "open"/);
    expect(ruleError({ host: "*.com" })).toMatch(/top-level domain/);
    expect(ruleError({ host: "*.com." })).toMatch(/top-level domain/);
    expect(ruleError({ host: "a.*.com" })).toMatch(/only allowed as the whole first label/);
    expect(ruleError({ host: "*foo.com" })).toMatch(/only allowed as the whole first label/);
    expect(ruleError({ host: "*.*.example.com" })).toMatch(/only allowed as the whole first label/);
  });
});

describe("egressRule ports, methods and paths", () => {
  it("takes 1 to 65535, removes duplicates, and at most 32", () => {
    expect(rule({ host: "a.com", ports: [443, 8443, 443] }).ports).toEqual([443, 8443]);
    expect(ruleError({ host: "a.com", ports: [0] })).toMatch(/port number from 1 to 65535/);
    expect(ruleError({ host: "a.com", ports: [65536] })).toMatch(/port number from 1 to 65535/);
    expect(ruleError({ host: "a.com", ports: [1.5] })).toMatch(/port number/);
    expect(ruleError({ host: "a.com", ports: ["443"] })).toMatch(/port number/);
    expect(ruleError({ host: "a.com", ports: Array.from({ length: 33 }, (_, i) => i + 1) })).toMatch(/at most 32 ports/);
  });

  it("upper-cases method tokens, removes duplicates, and at most 16", () => {
    expect(rule({ host: "a.com", methods: ["get", "Post", "GET"] }).methods).toEqual(["GET", "POST"]);
    expect(rule({ host: "a.com", methods: ["PROPFIND"] }).methods).toEqual(["PROPFIND"]);
    expect(ruleError({ host: "a.com", methods: ["GET POST"] })).toMatch(/HTTP method/);
    expect(ruleError({ host: "a.com", methods: [""] })).toMatch(/HTTP method/);
    expect(ruleError({ host: "a.com", methods: Array.from({ length: 17 }, (_, i) => `M${i}`) })).toMatch(/at most 16 methods/);
  });

  it("takes exact paths and prefixes ending in *", () => {
    expect(rule({ host: "a.com", paths: ["/v1/*", "/repo.git*", "/exact", "/v1/*"] }).paths).toEqual(["/v1/*", "/repo.git*", "/exact"]);
    expect(rule({ host: "a.com", paths: ["/.well-known/*", "/api/v4/projects/group%2Fproject/*"] }).paths).toHaveLength(2);
  });

  it("refuses paths that could not match what they seem to say", () => {
    expect(ruleError({ host: "a.com", paths: ["v1/*"] })).toMatch(/must start with "\/"/);
    expect(ruleError({ host: "a.com", paths: ["/v1/*/x"] })).toMatch(/"\*" only at the end/);
    expect(ruleError({ host: "a.com", paths: ["/v1?x=1"] })).toMatch(/without the query string/);
    expect(ruleError({ host: "a.com", paths: ["/a b"] })).toMatch(/spaces/);
    expect(ruleError({ host: "a.com", paths: ["/a,b"] })).toMatch(/%2C/);
    expect(ruleError({ host: "a.com", paths: ["/a%zz"] })).toMatch(/two hex digits/);
    for (const path of ["/v1/../admin", "/v1/./x", "/v1/%2e%2e/admin", "/v1/..", "/a/.*", "/v1/..;/x", "/v1/..%2Fx"]) {
      expect(ruleError({ host: "a.com", paths: [path] }), path).toMatch(/"\." or "\.\." segments/);
    }
    expect(ruleError({ host: "a.com", paths: [`/${"a".repeat(1024)}`] })).toMatch(/at most 1024/);
    expect(ruleError({ host: "a.com", paths: Array.from({ length: 33 }, (_, i) => `/p${i}`) })).toMatch(/at most 32 paths/);
  });

  it("reads empty lists as absent, and refuses unknown fields", () => {
    expect(rule({ host: "a.com", ports: [], methods: [], paths: [] })).toEqual({ host: "a.com" });
    expect(ruleError({ host: "a.com", port: 443 })).toMatch(/port/);
  });
});

describe("egressPolicy", () => {
  it("takes the three modes; allow defaults to empty and keeps rules in every mode", () => {
    expect(egressPolicy.parse({ mode: "open" })).toEqual({ mode: "open", allow: [] });
    expect(egressPolicy.parse({ mode: "allowlist", allow: [] })).toEqual({ mode: "allowlist", allow: [] });
    expect(egressPolicy.parse({ mode: "none", allow: [{ host: "A.com" }] })).toEqual({ mode: "none", allow: [{ host: "a.com" }] });
    const bad = egressPolicy.safeParse({ mode: "all" });
    expect(bad.error?.issues[0]?.message).toBe('must be "none", "allowlist" or "open"');
  });

  it("takes at most 200 rules and names the bad one", () => {
    expect(egressPolicy.safeParse({ mode: "allowlist", allow: Array.from({ length: 201 }, () => ({ host: "a.com" })) }).error?.issues[0]?.message).toBe(
      "at most 200 allow rules",
    );
    const bad = egressPolicy.safeParse({ mode: "allowlist", allow: [{ host: "a.com" }, { host: "b.com:80" }] });
    expect(bad.error?.issues[0]?.path).toEqual(["allow", 1, "host"]);
  });

  it("maps to and from the older network field", () => {
    expect(policyFromNetwork("none")).toEqual({ mode: "none", allow: [] });
    expect(policyFromNetwork("egress")).toEqual({ mode: "open", allow: [] });
    expect(networkOf({ mode: "none", allow: [] })).toBe("none");
    expect(networkOf({ mode: "open", allow: [] })).toBe("egress");
    expect(networkOf({ mode: "allowlist", allow: [] })).toBe("egress");
  });
});

describe("decideEgress: connections", () => {
  it("mode none allows nothing, mode open everything", () => {
    expect(decideEgress({ mode: "none", allow: [{ host: "a.com" }] }, { host: "a.com", port: 443 })).toEqual({
      allowed: false,
      reason: "the agent's egress policy (mode none) allows no connections",
    });
    expect(decideEgress({ mode: "open", allow: [] }, { host: "anything.example", port: 25 })).toEqual({ allowed: true, rule: "open" });
  });

  it("an empty allowlist denies everything", () => {
    expect(decideEgress(allowlist(), { host: "a.com", port: 443 })).toEqual({ allowed: false, reason: "no allow rule for host a.com port 443" });
  });

  it("matches exact hosts case-insensitively and with a trailing dot", () => {
    const policy = allowlist({ host: "api.example.com" });
    expect(decideEgress(policy, { host: "API.EXAMPLE.com", port: 443 })).toEqual({ allowed: true, rule: "api.example.com" });
    expect(decideEgress(policy, { host: "api.example.com.", port: 443 }).allowed).toBe(true);
    expect(decideEgress(policy, { host: "example.com", port: 443 }).allowed).toBe(false);
    expect(decideEgress(policy, { host: "x.api.example.com", port: 443 }).allowed).toBe(false);
    expect(decideEgress(policy, { host: "api.example.com.evil.test", port: 443 }).allowed).toBe(false);
  });

  it("without ports allows 80 and 443 only; listed ports replace them", () => {
    const policy = allowlist({ host: "a.com" }, { host: "b.com", ports: [8443] });
    expect(decideEgress(policy, { host: "a.com", port: 80 }).allowed).toBe(true);
    expect(decideEgress(policy, { host: "a.com", port: 443 }).allowed).toBe(true);
    expect(decideEgress(policy, { host: "a.com", port: 22 })).toEqual({ allowed: false, reason: "no allow rule for host a.com port 22" });
    expect(decideEgress(policy, { host: "b.com", port: 8443 })).toEqual({ allowed: true, rule: "b.com:8443" });
    expect(decideEgress(policy, { host: "b.com", port: 443 }).allowed).toBe(false);
  });

  it("*.suffix matches subdomains at any depth, not the suffix itself nor look-alikes", () => {
    const policy = allowlist({ host: "*.github.com", ports: [443] });
    expect(decideEgress(policy, { host: "api.github.com", port: 443 })).toEqual({ allowed: true, rule: "*.github.com:443" });
    expect(decideEgress(policy, { host: "a.b.c.GitHub.com", port: 443 }).allowed).toBe(true);
    expect(decideEgress(policy, { host: "github.com", port: 443 }).allowed).toBe(false);
    expect(decideEgress(policy, { host: "evilgithub.com", port: 443 }).allowed).toBe(false);
    expect(decideEgress(policy, { host: "github.com.evil.test", port: 443 }).allowed).toBe(false);
    // The literal wildcard, or a malformed name, is not a subdomain.
    expect(decideEgress(policy, { host: "*.github.com", port: 443 }).allowed).toBe(false);
    expect(decideEgress(policy, { host: "a..github.com", port: 443 }).allowed).toBe(false);
  });

  it("matches IP literals in either spelling, and never through a wildcard", () => {
    const policy = allowlist({ host: "[2001:db8::1]", ports: [8080] }, { host: "192.0.2.7" });
    expect(decideEgress(policy, { host: "[2001:DB8:0::1]", port: 8080 })).toEqual({ allowed: true, rule: "[2001:db8::1]:8080" });
    expect(decideEgress(policy, { host: "2001:db8:0:0:0:0:0:1", port: 8080 }).allowed).toBe(true);
    expect(decideEgress(policy, { host: "192.0.2.7", port: 443 }).allowed).toBe(true);
    expect(decideEgress(policy, { host: "192.0.2.8", port: 443 }).allowed).toBe(false);
    // Other spellings of 192.0.2.7 are not IP literals here (addresses.ts refuses them too).
    expect(decideEgress(policy, { host: "3221226247", port: 443 }).reason).toMatch(/not a valid host/);
    expect(decideEgress(policy, { host: "[2001:db8::1]", port: 8080 }).allowed).toBe(true);
    expect(decideEgress(allowlist({ host: "*.example.com" }), { host: "::ffff:c000:207", port: 443 }).reason).toBe(
      "no allow rule for host [::ffff:c000:207] port 443",
    );
  });

  it("refuses malformed targets and ports with a reason", () => {
    const policy = allowlist({ host: "a.com" });
    expect(decideEgress(policy, { host: "a.com:443", port: 443 }).reason).toMatch(/not a valid host/);
    expect(decideEgress(policy, { host: "", port: 443 }).reason).toMatch(/not a valid host/);
    expect(decideEgress(policy, { host: "a.com", port: 0 }).reason).toBe("0 is not a port number");
    expect(decideEgress(policy, { host: "a.com", port: 70000 }).allowed).toBe(false);
  });

  it("allows the connection when only a restricted rule matches (requests are checked later)", () => {
    const policy = allowlist({ host: "api.example.com", ports: [443], methods: ["GET"], paths: ["/v1/*"] });
    expect(decideEgress(policy, { host: "api.example.com", port: 443 })).toEqual({ allowed: true, rule: "api.example.com:443 GET /v1/*" });
  });

  it("reports the unrestricted rule when there is one", () => {
    const policy = allowlist({ host: "a.com", methods: ["GET"] }, { host: "*.a.com" }, { host: "a.com" });
    expect(decideEgress(policy, { host: "a.com", port: 443 }).rule).toBe("a.com");
  });
});

describe("decideEgress: requests", () => {
  const policy = allowlist(
    { host: "api.example.com", ports: [443], methods: ["GET", "POST"], paths: ["/v1/*"] },
    { host: "api.example.com", ports: [443], methods: ["GET"], paths: ["/health"] },
    { host: "git.example.com", paths: ["/repo.git*"] },
    { host: "gitlab.example.com", paths: ["/api/v4/*", "/exact/a%2Fb"] },
    { host: "open.example.com" },
  );
  const decide = (host: string, method: string | undefined, path: string | undefined, port = 443) => decideEgress(policy, { host, port, method, path });

  it("checks methods and paths of the rules that list them", () => {
    expect(decide("api.example.com", "GET", "/v1/models")).toEqual({ allowed: true, rule: "api.example.com:443 GET,POST /v1/*" });
    expect(decide("api.example.com", "post", "/v1/chat/completions?stream=true").allowed).toBe(true);
    expect(decide("api.example.com", "GET", "/health")).toEqual({ allowed: true, rule: "api.example.com:443 GET /health" });
    expect(decide("api.example.com", "DELETE", "/v1/models")).toEqual({ allowed: false, reason: "no allow rule for DELETE /v1/models on api.example.com" });
    expect(decide("api.example.com", "GET", "/admin?x=1")).toEqual({ allowed: false, reason: "no allow rule for GET /admin on api.example.com" });
    expect(decide("api.example.com", "POST", "/health").allowed).toBe(false);
    expect(decide("api.example.com", "GET", "/health/x").allowed).toBe(false);
    expect(decide("api.example.com", "GET", "/v1/models", 80).reason).toBe("no allow rule for host api.example.com port 80");
  });

  it("a rule without methods or paths allows every request", () => {
    expect(decide("open.example.com", "DELETE", "/anything/../at/all")).toEqual({ allowed: true, rule: "open.example.com" });
    expect(decide("git.example.com", "PUT", "/repo.git/info/refs").allowed).toBe(true);
  });

  it("a prefix matches below itself, not the bare directory", () => {
    expect(decide("api.example.com", "GET", "/v1/").allowed).toBe(true);
    expect(decide("api.example.com", "GET", "/v1/x/y").allowed).toBe(true);
    expect(decide("api.example.com", "GET", "/v1").allowed).toBe(false);
    expect(decide("api.example.com", "GET", "/v10/x").allowed).toBe(false);
    expect(decide("git.example.com", "GET", "/repo.git").allowed).toBe(true);
    expect(decide("git.example.com", "GET", "/repo.github/x").allowed).toBe(true);
    expect(decide("git.example.com", "GET", "/other.git").allowed).toBe(false);
  });

  it("a rule with methods or paths does not match when they are unknown", () => {
    expect(decide("api.example.com", undefined, "/v1/models").allowed).toBe(false);
    expect(decide("api.example.com", "GET", undefined).allowed).toBe(false);
    expect(decide("git.example.com", "GET", undefined).allowed).toBe(false);
    expect(decide("git.example.com", undefined, "/repo.git/x").allowed).toBe(true);
  });

  it("dot segments, in any encoding, cannot climb out of a prefix", () => {
    for (const path of ["/v1/../admin", "/v1/%2e%2e/admin", "/v1/%2E%2E/admin", "/v1/.%2e/admin", "/v1/x/../../admin", "/v1/../../../admin"]) {
      expect(decide("api.example.com", "GET", path), path).toEqual({ allowed: false, reason: `no allow rule for GET ${path} on api.example.com` });
    }
    // Dot segments that stay inside the prefix are fine.
    expect(decide("api.example.com", "GET", "/v1/x/../y").allowed).toBe(true);
    expect(decide("api.example.com", "GET", "/admin/../v1/models").allowed).toBe(true);
    expect(decide("api.example.com", "GET", "/v1/./models").allowed).toBe(true);
  });

  it("encoded slashes, backslashes, doubled slashes and ;params cannot climb out either", () => {
    for (const path of [
      "/v1/..%2Fadmin",
      "/v1/..%2fadmin",
      "/v1/%2E%2E%2Fadmin",
      "/v1/..%5Cadmin",
      "/v1/..\\admin",
      "/v1\\..\\admin",
      "/v1//../admin",
      "/v1/..;/admin",
      "/v1/..;x=1/admin",
    ]) {
      expect(decide("api.example.com", "GET", path).allowed, path).toBe(false);
    }
  });

  it("an encoded slash inside an allowed prefix still passes, and exact rules compare encodings", () => {
    expect(decide("gitlab.example.com", "GET", "/api/v4/projects/group%2Fproject/issues").allowed).toBe(true);
    expect(decide("gitlab.example.com", "GET", "/api/v4/projects/group%2fproject").allowed).toBe(true);
    expect(decide("gitlab.example.com", "GET", "/exact/a%2Fb").allowed).toBe(true);
    expect(decide("gitlab.example.com", "GET", "/exact/a%2fb").allowed).toBe(true);
    // Same text in the lenient reading, but a different path to a server that follows the RFC.
    expect(decide("gitlab.example.com", "GET", "/exact/a/b").allowed).toBe(false);
    expect(decide("api.example.com", "GET", "/v1/a;b").allowed).toBe(true);
    expect(decide("api.example.com", "GET", "/health;x").allowed).toBe(false);
  });

  it("decodes unreserved escapes before comparing", () => {
    expect(decide("api.example.com", "GET", "/%76%31/models").allowed).toBe(true);
    expect(decide("api.example.com", "GET", "/%68ealth").allowed).toBe(true);
    // A reserved character stays encoded: %3F is not the start of a query.
    expect(decide("api.example.com", "GET", "/health%3Fx").allowed).toBe(false);
  });

  it("matches no path rule for malformed or non-origin-form paths", () => {
    expect(decide("api.example.com", "GET", "/v1/%zz").allowed).toBe(false);
    expect(decide("api.example.com", "GET", "/v1/%2").allowed).toBe(false);
    expect(decide("api.example.com", "GET", "v1/models").allowed).toBe(false);
    expect(decide("api.example.com", "GET", "https://api.example.com/v1/models").allowed).toBe(false);
    expect(decide("api.example.com", "GET", "").allowed).toBe(false);
    expect(decide("api.example.com", "GET", "*").allowed).toBe(false);
  });

  it("shortens long paths in reasons", () => {
    const reason = decide("api.example.com", "GET", `/x${"a".repeat(5000)}`).reason ?? "";
    expect(reason.length).toBeLessThan(300);
  });
});

describe("needsInspection", () => {
  it("is true only when every rule for the host and port restricts methods or paths", () => {
    const policy = allowlist(
      { host: "api.example.com", methods: ["GET"] },
      { host: "*.example.com", ports: [8443], paths: ["/x"] },
      { host: "cdn.example.com" },
      { host: "*.example.com", ports: [8080] },
    );
    expect(needsInspection(policy, "api.example.com", 443)).toBe(true);
    expect(needsInspection(policy, "API.example.com.", 80)).toBe(true);
    expect(needsInspection(policy, "cdn.example.com", 443)).toBe(false);
    expect(needsInspection(policy, "cdn.example.com", 8443)).toBe(true);
    expect(needsInspection(policy, "a.example.com", 8080)).toBe(false);
    expect(needsInspection(policy, "other.test", 443)).toBe(false);
    expect(needsInspection(policy, "bad host", 443)).toBe(false);
    expect(needsInspection({ ...policy, mode: "open" }, "api.example.com", 443)).toBe(false);
    expect(needsInspection({ ...policy, mode: "none" }, "api.example.com", 443)).toBe(false);
  });
});

describe("parseAllowFlag and formatAllowRule", () => {
  it("parses the one-line syntax", () => {
    expect(parseAllowFlag("api.example.com")).toEqual({ host: "api.example.com" });
    expect(parseAllowFlag("*.github.com:443")).toEqual({ host: "*.github.com", ports: [443] });
    expect(parseAllowFlag("registry.npmjs.org:443 GET /*")).toEqual({ host: "registry.npmjs.org", ports: [443], methods: ["GET"], paths: ["/*"] });
    expect(parseAllowFlag("[::1]:8080")).toEqual({ host: "::1", ports: [8080] });
    expect(parseAllowFlag("[::1]")).toEqual({ host: "::1" });
    expect(parseAllowFlag("2001:db8::1")).toEqual({ host: "2001:db8::1" });
    expect(parseAllowFlag("  API.example.com:443,8443   get,post   /v1/*,/health  ")).toEqual({
      host: "api.example.com",
      ports: [443, 8443],
      methods: ["GET", "POST"],
      paths: ["/v1/*", "/health"],
    });
    expect(parseAllowFlag("a.com /x GET")).toEqual({ host: "a.com", methods: ["GET"], paths: ["/x"] });
  });

  it("explains what is wrong", () => {
    expect(() => parseAllowFlag("")).toThrow(/invalid allow rule "": empty: write HOST/);
    expect(() => parseAllowFlag("https://api.example.com/v1")).toThrow(/is a URL: write the host alone \("api.example.com"\)/);
    expect(() => parseAllowFlag("a.com:https")).toThrow(/"https" is not a port number/);
    expect(() => parseAllowFlag("a.com:")).toThrow(/"" is not a port number/);
    expect(() => parseAllowFlag("a.com:0")).toThrow(/ports: must be a port number from 1 to 65535/);
    expect(() => parseAllowFlag("a.com:443:80")).toThrow(/host: .*not a host name or IP address/);
    expect(() => parseAllowFlag("[::1]x")).toThrow(/unexpected "x"/);
    expect(() => parseAllowFlag("[::1")).toThrow(/without its "]"/);
    expect(() => parseAllowFlag("a.com GET POST")).toThrow(/methods were given already/);
    expect(() => parseAllowFlag("a.com GET /x /y")).toThrow(/too many parts/);
    expect(() => parseAllowFlag("a.com /x /y")).toThrow(/paths given twice/);
    expect(() => parseAllowFlag("a.com GET,,POST")).toThrow(/empty entry/);
    expect(() => parseAllowFlag("*.com")).toThrow(/host: .*top-level domain/);
    expect(() => parseAllowFlag("a.com GET /v1/../x")).toThrow(/paths: .*segments/);
  });

  it("round-trips", () => {
    const rules: EgressRule[] = [
      { host: "api.example.com" },
      { host: "*.github.com", ports: [443] },
      { host: "registry.npmjs.org", ports: [443], methods: ["GET"], paths: ["/*"] },
      { host: "::1", ports: [8080, 8081] },
      { host: "2001:db8::1" },
      { host: "192.0.2.1", methods: ["GET", "HEAD"] },
      { host: "a.com", paths: ["/x", "/repo.git*", "/a%2Fb"] },
    ];
    for (const original of rules) {
      const text = formatAllowRule(original);
      expect(parseAllowFlag(text), text).toEqual(original);
      expect(formatAllowRule(parseAllowFlag(text))).toBe(text);
    }
    expect(formatAllowRule({ host: "::1", ports: [8080] })).toBe("[::1]:8080");
    expect(describeRule({ host: "api.example.com", ports: [443], methods: ["GET", "POST"], paths: ["/v1/*"] })).toBe("api.example.com:443 GET,POST /v1/*");
  });
});

describe("egressHost and hostMatches (shared with other host lists)", () => {
  it("egressHost is the rule host schema", () => {
    expect(egressHost.parse("*.Example.com.")).toBe("*.example.com");
    expect(egressHost.safeParse("a.com:443").error?.issues[0]?.message).toMatch(/must not contain a port/);
  });

  it("hostMatches compares a pattern with a requested host", () => {
    expect(hostMatches("api.example.com", "API.example.com.")).toBe(true);
    expect(hostMatches("*.example.com", "a.b.example.com")).toBe(true);
    expect(hostMatches("*.example.com", "example.com")).toBe(false);
    expect(hostMatches("*.example.com", "*.example.com")).toBe(false);
    expect(hostMatches("::1", "[0:0::1]")).toBe(true);
    expect(hostMatches("a.com", "a.com:443")).toBe(false);
    expect(hostMatches("not a pattern", "not a pattern")).toBe(false);
  });
});
