import { describe, expect, it } from "vitest";
import { egressFigures, egressTarget, formatBytes, summariseEgress, type EgressEventPayload } from "./egress";
import { parseAllowRules } from "./egress-rules";

describe("allow rules written one a line", () => {
  it("parses each rule, skips blank lines and comments, and keeps each rule's line", () => {
    const parsed = parseAllowRules("api.example.com\n\n# the registry\nregistry.npmjs.org:443 GET /*\n*.github.com:443\n");
    expect(parsed.errors).toEqual([]);
    expect(parsed.rules).toEqual([{ host: "api.example.com" }, { host: "registry.npmjs.org", ports: [443], methods: ["GET"], paths: ["/*"] }, { host: "*.github.com", ports: [443] }]);
    expect(parsed.lines).toEqual([1, 4, 5]);
  });

  it("names the line of each bad rule, without repeating the rule", () => {
    const parsed = parseAllowRules("api.example.com\nhttps://example.com/x\nexample.com:99999");
    expect(parsed.rules).toHaveLength(1);
    expect(parsed.errors.map((error) => error.line)).toEqual([2, 3]);
    expect(parsed.errors[0]!.message).toMatch(/is a URL/);
    expect(parsed.errors[0]!.message).not.toMatch(/^invalid allow rule/);
  });
});

describe("egress events as read", () => {
  const event = (overrides: Partial<EgressEventPayload>): EgressEventPayload => ({ host: "api.example.com", port: 443, decision: "allowed", bytesOut: 1234, bytesIn: 3400, durationMs: 12, ...overrides });

  it("describes requests, tunnels and their figures", () => {
    expect(egressTarget(event({ method: "GET", path: "/v1/x" }))).toBe("GET api.example.com:443/v1/x");
    expect(egressTarget(event({}))).toBe("CONNECT api.example.com:443");
    expect(egressTarget(event({ host: "2001:db8::1", port: 8080 }))).toBe("CONNECT [2001:db8::1]:8080");
    expect(egressFigures(event({}))).toBe("1.2 kB out · 3.4 kB in · 12 ms");
    expect([0, 999, 1000, 15_500, 2_500_000].map(formatBytes)).toEqual(["0 B", "999 B", "1 kB", "16 kB", "2.5 MB"]);
  });

  it("sums counts per host, denials first, and collects leaked stubs", () => {
    const summary = summariseEgress([
      event({ count: 3 }),
      event({ host: "evil.example", decision: "denied", reason: "no allow rule", bytesOut: 0, bytesIn: 0 }),
      event({ host: "paste.example", stubsSeen: ["GITHUB_TOKEN"] }),
    ]);
    expect(summary).toMatchObject({ allowed: 4, denied: 1 });
    expect(summary.hosts.map((host) => host.host)).toEqual(["evil.example", "api.example.com", "paste.example"]);
    expect(summary.hosts[0]!.reasons).toEqual(["no allow rule"]);
    expect(summary.stubs).toEqual([{ secret: "GITHUB_TOKEN", host: "paste.example", port: 443, count: 1 }]);
  });
});
