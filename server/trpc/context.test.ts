import { describe, expect, it } from "vitest";
import { clientAddressOf } from "./context";

const request = (headers: Record<string, string>) => new Request("http://berth.test/api/trpc/auth.login", { headers });

describe("clientAddressOf", () => {
  it("takes the connection's peer, and ignores every header unless one is named", () => {
    expect(clientAddressOf(request({ "x-forwarded-for": "192.0.2.1", "fly-client-ip": "192.0.2.2" }), { peerAddress: "10.0.0.9" }, undefined)).toBe("10.0.0.9");
    expect(clientAddressOf(request({}), {}, undefined)).toBeNull();
  });

  it("takes the named header's last entry, the one the nearest proxy wrote", () => {
    expect(clientAddressOf(request({ "x-forwarded-for": "198.51.100.1, 203.0.113.5" }), { peerAddress: "10.0.0.9" }, "x-forwarded-for")).toBe("203.0.113.5");
    expect(clientAddressOf(request({ "fly-client-ip": "203.0.113.8" }), { peerAddress: "10.0.0.9" }, "fly-client-ip")).toBe("203.0.113.8");
    // A proxy that appends to what the client sent: the client's own value is to the left.
    expect(clientAddressOf(request({ "x-real-ip": "1.2.3.4, 203.0.113.9" }), {}, "x-real-ip")).toBe("203.0.113.9");
  });

  it("falls back to the peer when the named header is missing or empty", () => {
    expect(clientAddressOf(request({}), { peerAddress: "10.0.0.9" }, "x-forwarded-for")).toBe("10.0.0.9");
    expect(clientAddressOf(request({ "x-forwarded-for": " , " }), { peerAddress: "10.0.0.9" }, "x-forwarded-for")).toBe("10.0.0.9");
  });
});
