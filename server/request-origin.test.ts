import { describe, expect, it } from "vitest";
import { parseTrustedProxies } from "./client-address";
import { crossOriginReason } from "./request-origin";

const headers = (entries: Record<string, string>) => new Headers(entries);
const PEER = "203.0.113.9";

describe("the same-origin check of cookie-authenticated mutations", () => {
  it("allows a request without Origin when Sec-Fetch-Site says same-origin (or is absent: not a browser)", () => {
    expect(crossOriginReason(headers({ host: "berth.example.com", "sec-fetch-site": "same-origin" }), PEER, {})).toBeNull();
    expect(crossOriginReason(headers({ host: "berth.example.com" }), PEER, {})).toBeNull();
  });

  it("refuses Sec-Fetch-Site cross-site and same-site, whatever Origin says", () => {
    expect(crossOriginReason(headers({ host: "berth.example.com", "sec-fetch-site": "cross-site" }), PEER, {})).toBe("cross-site request refused");
    expect(crossOriginReason(headers({ host: "berth.example.com", origin: "https://berth.example.com", "sec-fetch-site": "same-site" }), PEER, {})).toBe(
      "cross-site request refused",
    );
  });

  it("refuses Origin: null and origins that are not http(s) URLs, instead of failing on them", () => {
    for (const origin of ["null", "not a url", "file:///tmp/x.html", "chrome-extension://abc"]) {
      expect(crossOriginReason(headers({ host: "berth.example.com", origin }), PEER, {})).toBe("request from an opaque or invalid origin refused");
    }
  });

  it("compares Origin with the request's own Host, default ports and case aside", () => {
    expect(crossOriginReason(headers({ host: "berth.example.com", origin: "https://berth.example.com" }), PEER, {})).toBeNull();
    expect(crossOriginReason(headers({ host: "Berth.Example.com:443", origin: "https://berth.example.com" }), PEER, {})).toBeNull();
    expect(crossOriginReason(headers({ host: "127.0.0.1:3000", origin: "http://127.0.0.1:3000" }), PEER, {})).toBeNull();
    expect(crossOriginReason(headers({ host: "berth.example.com", origin: "https://evil.example" }), PEER, {})).toBe("cross-origin request refused");
    expect(crossOriginReason(headers({ host: "127.0.0.1:3000", origin: "http://127.0.0.1:3001" }), PEER, {})).toBe("cross-origin request refused");
    expect(crossOriginReason(headers({ host: "berth.example.com@evil.example", origin: "https://evil.example" }), PEER, {})).toBe("cross-origin request refused");
    expect(crossOriginReason(headers({ origin: "https://berth.example.com" }), PEER, {})).toBe("cross-origin request refused");
  });

  it("ignores X-Forwarded-Host and X-Forwarded-Proto from a peer that is not a trusted proxy", () => {
    const forged = { host: "berth.internal:3000", origin: "https://evil.example", "x-forwarded-host": "evil.example", "x-forwarded-proto": "https" };
    expect(crossOriginReason(headers(forged), PEER, {})).toBe("cross-origin request refused");
    expect(crossOriginReason(headers(forged), PEER, { trustedProxies: parseTrustedProxies("10.0.0.0/8") })).toBe("cross-origin request refused");
    expect(crossOriginReason(headers(forged), null, { trustedProxies: parseTrustedProxies("10.0.0.0/8") })).toBe("cross-origin request refused");
  });

  it("believes X-Forwarded-Host and X-Forwarded-Proto (their last entry) from a trusted proxy", () => {
    const trustedProxies = parseTrustedProxies("10.0.0.0/8");
    const proxied = { host: "berth.internal:3000", "x-forwarded-host": "berth.example.com", "x-forwarded-proto": "https" };
    expect(crossOriginReason(headers({ ...proxied, origin: "https://berth.example.com" }), "10.1.2.3", { trustedProxies })).toBeNull();
    expect(crossOriginReason(headers({ ...proxied, origin: "https://berth.example.com" }), "::ffff:10.1.2.3", { trustedProxies })).toBeNull();
    expect(crossOriginReason(headers({ ...proxied, origin: "http://berth.example.com" }), "10.1.2.3", { trustedProxies })).toBe("cross-origin request refused");
    expect(crossOriginReason(headers({ ...proxied, origin: "http://berth.internal:3000" }), "10.1.2.3", { trustedProxies })).toBe("cross-origin request refused");
    // What a client wrote to the left of the proxy's own entry does not count.
    const appended = { ...proxied, "x-forwarded-host": "evil.example, berth.example.com" };
    expect(crossOriginReason(headers({ ...appended, origin: "https://evil.example" }), "10.1.2.3", { trustedProxies })).toBe("cross-origin request refused");
    expect(crossOriginReason(headers({ ...appended, origin: "https://berth.example.com" }), "10.1.2.3", { trustedProxies })).toBeNull();
  });

  it("with BERTH_PUBLIC_URL, accepts its origin only, whatever Host and forwarding headers say", () => {
    const policy = { publicUrl: "https://berth.example.com", trustedProxies: parseTrustedProxies("loopback") };
    expect(crossOriginReason(headers({ host: "10.0.0.5:3000", origin: "https://berth.example.com" }), PEER, policy)).toBeNull();
    expect(crossOriginReason(headers({ host: "10.0.0.5:3000", origin: "http://10.0.0.5:3000" }), PEER, policy)).toBe("cross-origin request refused");
    expect(crossOriginReason(headers({ host: "berth.example.com", origin: "http://berth.example.com" }), PEER, policy)).toBe("cross-origin request refused");
    const forwarded = { host: "evil.example", "x-forwarded-host": "evil.example", origin: "https://evil.example" };
    expect(crossOriginReason(headers(forwarded), "127.0.0.1", policy)).toBe("cross-origin request refused");
    expect(crossOriginReason(headers({ host: "berth.example.com", origin: "null" }), PEER, policy)).toBe("request from an opaque or invalid origin refused");
  });
});
