import { describe, expect, it } from "vitest";
import { clientAddressOf, parseTrustedProxies } from "./client-address";

const headers = (values: Record<string, string>) => new Headers(values);

describe("clientAddressOf", () => {
  it("takes the connection's peer, and ignores every header unless one is named", () => {
    expect(clientAddressOf(headers({ "x-forwarded-for": "192.0.2.1", "fly-client-ip": "192.0.2.2" }), "10.0.0.9", {})).toBe("10.0.0.9");
    expect(clientAddressOf(headers({}), undefined, {})).toBeNull();
  });

  it("takes the named header's last entry, the one the nearest proxy wrote", () => {
    expect(clientAddressOf(headers({ "x-forwarded-for": "198.51.100.1, 203.0.113.5" }), "10.0.0.9", { header: "x-forwarded-for" })).toBe("203.0.113.5");
    expect(clientAddressOf(headers({ "fly-client-ip": "203.0.113.8" }), "10.0.0.9", { header: "fly-client-ip" })).toBe("203.0.113.8");
    // A proxy that appends to what the client sent: the client's own value is to the left.
    expect(clientAddressOf(headers({ "x-real-ip": "1.2.3.4, 203.0.113.9" }), null, { header: "x-real-ip" })).toBe("203.0.113.9");
  });

  it("falls back to the peer when the named header is missing or empty", () => {
    expect(clientAddressOf(headers({}), "10.0.0.9", { header: "x-forwarded-for" })).toBe("10.0.0.9");
    expect(clientAddressOf(headers({ "x-forwarded-for": " , " }), "10.0.0.9", { header: "x-forwarded-for" })).toBe("10.0.0.9");
  });

  it("drops a port some proxies add to the address", () => {
    expect(clientAddressOf(headers({ "x-forwarded-for": "203.0.113.5:51234" }), "10.0.0.9", { header: "x-forwarded-for" })).toBe("203.0.113.5");
    expect(clientAddressOf(headers({ "x-forwarded-for": "[2001:db8::5]:51234" }), "10.0.0.9", { header: "x-forwarded-for" })).toBe("2001:db8::5");
    expect(clientAddressOf(headers({ "x-forwarded-for": "2001:db8::5" }), "10.0.0.9", { header: "x-forwarded-for" })).toBe("2001:db8::5");
  });

  describe("with trusted proxies", () => {
    const policy = { header: "x-forwarded-for", trustedProxies: parseTrustedProxies("10.0.0.0/8, fd00::/8") };

    it("believes the header only on a connection from a trusted proxy", () => {
      expect(clientAddressOf(headers({ "x-forwarded-for": "203.0.113.5" }), "10.1.2.3", policy)).toBe("203.0.113.5");
      // Straight to Berth from outside: the header is the caller's own claim.
      expect(clientAddressOf(headers({ "x-forwarded-for": "203.0.113.5" }), "198.51.100.77", policy)).toBe("198.51.100.77");
      expect(clientAddressOf(headers({ "x-forwarded-for": "203.0.113.5" }), null, policy)).toBeNull();
      // Node reports IPv4 peers on a dual-stack socket as IPv4-mapped IPv6.
      expect(clientAddressOf(headers({ "x-forwarded-for": "203.0.113.5" }), "::ffff:10.1.2.3", policy)).toBe("203.0.113.5");
    });

    it("skips trusted hops from the right and stops at the first other address", () => {
      expect(clientAddressOf(headers({ "x-forwarded-for": "192.0.2.66, 203.0.113.5, 10.9.9.9, fd00::4" }), "10.1.2.3", policy)).toBe("203.0.113.5");
      // Every hop a proxy of ours: the farthest one is the best known.
      expect(clientAddressOf(headers({ "x-forwarded-for": "10.4.4.4, 10.9.9.9" }), "10.1.2.3", policy)).toBe("10.4.4.4");
      expect(clientAddressOf(headers({}), "10.1.2.3", policy)).toBe("10.1.2.3");
    });

    it("stops at the last known hop when a proxy passed on something that is not an address", () => {
      expect(clientAddressOf(headers({ "x-forwarded-for": "203.0.113.5, not-an-address, 10.9.9.9" }), "10.1.2.3", policy)).toBe("10.9.9.9");
      expect(clientAddressOf(headers({ "x-forwarded-for": "unknown" }), "10.1.2.3", policy)).toBe("10.1.2.3");
    });
  });
});

describe("parseTrustedProxies", () => {
  it("reads addresses, ranges and the names loopback, linklocal and uniquelocal", () => {
    const proxies = parseTrustedProxies("192.0.2.7, 2001:db8::/32, loopback, LinkLocal, uniquelocal");
    for (const inside of ["192.0.2.7", "2001:db8:1::1", "127.0.0.1", "::1", "169.254.1.1", "fe80::1", "10.0.0.1", "172.31.255.255", "192.168.1.1", "fd12::1"]) {
      expect(proxies.matches(inside), inside).toBe(true);
    }
    for (const outside of ["192.0.2.8", "2001:db9::1", "172.32.0.1", "8.8.8.8", "not-an-address", ""]) {
      expect(proxies.matches(outside), outside).toBe(false);
    }
  });

  it("refuses what is neither", () => {
    expect(() => parseTrustedProxies("10.0.0.0/33")).toThrow('"10.0.0.0/33" is not an IP address');
    expect(() => parseTrustedProxies("10.0.0.0/8/1")).toThrow("is not an IP address");
    expect(() => parseTrustedProxies("10.0.0.0/x")).toThrow("is not an IP address");
    expect(() => parseTrustedProxies("fd00::/129")).toThrow("is not an IP address");
    expect(() => parseTrustedProxies("proxy.internal")).toThrow("is not an IP address");
    expect(() => parseTrustedProxies(" , ")).toThrow("names no proxy");
  });
});
