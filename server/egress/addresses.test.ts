import { describe, expect, it } from "vitest";
import { AddressRules, EgressRefusedError, parseCidrList, parseResolveMap, resolveTarget, type Lookup, type LookupResult } from "./addresses";

// Pure checks only: nothing here opens a connection or asks a real resolver. Public addresses
// below are just numbers that must be classified as public.

const rules = (allowPrivate = "", ownAddresses: string[] = []) => new AddressRules({ allowPrivate: parseCidrList(allowPrivate), ownAddresses });

describe("AddressRules.refusal", () => {
  const plain = rules();

  it("lets public addresses through", () => {
    for (const address of ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450:4001:82b::200e", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]) {
      expect(plain.refusal(address), address).toBeNull();
    }
  });

  it.each([
    ["127.0.0.1", "127.0.0.1 is loopback"],
    ["127.255.255.254", "127.255.255.254 is loopback"],
    ["::1", "::1 is loopback"],
    ["10.1.2.3", "10.1.2.3 is a private address"],
    ["172.16.0.1", "172.16.0.1 is a private address"],
    ["172.31.255.255", "172.31.255.255 is a private address"],
    ["192.168.1.1", "192.168.1.1 is a private address"],
    ["100.64.0.1", "100.64.0.1 is in the shared address space (CGNAT)"],
    ["100.100.100.200", "100.100.100.200 is in the shared address space (CGNAT)"],
    ["169.254.169.254", "169.254.169.254 is link-local (cloud metadata)"],
    ["169.254.170.2", "169.254.170.2 is link-local (cloud metadata)"],
    ["169.254.1.1", "169.254.1.1 is link-local"],
    ["fe80::1", "fe80::1 is link-local"],
    ["fe80::1%eth0", "fe80::1%eth0 is link-local"],
    ["febf::1", "febf::1 is link-local"],
    ["fc00::1", "fc00::1 is a unique-local (private) address"],
    ["fd12:3456::1", "fd12:3456::1 is a unique-local (private) address"],
    ["fd00:ec2::254", "fd00:ec2::254 is a unique-local address (cloud metadata)"],
    ["fec0::1", "fec0::1 is a site-local (private) address"],
    ["0.0.0.0", "0.0.0.0 is unspecified (on Linux, 0.0.0.0 reaches this host)"],
    ["0.1.2.3", "0.1.2.3 is unspecified (on Linux, 0.0.0.0 reaches this host)"],
    ["::", ":: is unspecified"],
    ["224.0.0.1", "224.0.0.1 is multicast"],
    ["239.255.255.250", "239.255.255.250 is multicast"],
    ["ff02::1", "ff02::1 is multicast"],
    ["255.255.255.255", "255.255.255.255 is the broadcast address"],
    ["240.0.0.1", "240.0.0.1 is reserved"],
    ["192.0.0.170", "192.0.0.170 is reserved (IETF protocol assignments)"],
    ["192.0.2.1", "192.0.2.1 is a documentation address"],
    ["198.51.100.1", "198.51.100.1 is a documentation address"],
    ["203.0.113.1", "203.0.113.1 is a documentation address"],
    ["2001:db8::1", "2001:db8::1 is a documentation address"],
    ["3fff::1", "3fff::1 is a documentation address"],
    ["198.18.0.1", "198.18.0.1 is a benchmarking address"],
    ["198.19.255.255", "198.19.255.255 is a benchmarking address"],
    ["2001:2::1", "2001:2::1 is a benchmarking address"],
    ["192.88.99.1", "192.88.99.1 is reserved (6to4 relay anycast)"],
    ["64:ff9b:1::1", "64:ff9b:1::1 is a local-use NAT64 address"],
    ["100::1", "100::1 is reserved (not a global unicast address)"],
    ["4000::1", "4000::1 is reserved (not a global unicast address)"],
  ])("refuses %s", (address, reason) => {
    expect(plain.refusal(address)).toBe(reason);
  });

  it("does not refuse the neighbours of refused ranges", () => {
    for (const address of ["9.255.255.255", "11.0.0.0", "172.15.255.255", "172.32.0.0", "192.167.255.255", "192.169.0.0", "100.63.255.255", "100.128.0.0", "169.253.255.255", "169.255.0.0", "126.255.255.255", "128.0.0.0", "223.255.255.255", "198.17.255.255", "198.20.0.0", "2001:200::1"]) {
      expect(plain.refusal(address), address).toBeNull();
    }
  });

  it.each([
    ["::ffff:127.0.0.1", "::ffff:127.0.0.1 embeds IPv4 127.0.0.1 (IPv4-mapped): 127.0.0.1 is loopback"],
    ["::ffff:7f00:1", "::ffff:7f00:1 embeds IPv4 127.0.0.1 (IPv4-mapped): 127.0.0.1 is loopback"],
    ["::FFFF:A9FE:A9FE", "::FFFF:A9FE:A9FE embeds IPv4 169.254.169.254 (IPv4-mapped): 169.254.169.254 is link-local (cloud metadata)"],
    ["0:0:0:0:0:ffff:10.0.0.1", "0:0:0:0:0:ffff:10.0.0.1 embeds IPv4 10.0.0.1 (IPv4-mapped): 10.0.0.1 is a private address"],
    ["::ffff:0:a00:1", "::ffff:0:a00:1 embeds IPv4 10.0.0.1 (IPv4-translated): 10.0.0.1 is a private address"],
    ["::127.0.0.1", "::127.0.0.1 embeds IPv4 127.0.0.1 (IPv4-compatible): 127.0.0.1 is loopback"],
    ["::2", "::2 embeds IPv4 0.0.0.2 (IPv4-compatible): 0.0.0.2 is unspecified (on Linux, 0.0.0.0 reaches this host)"],
    ["64:ff9b::a9fe:a9fe", "64:ff9b::a9fe:a9fe embeds IPv4 169.254.169.254 (NAT64): 169.254.169.254 is link-local (cloud metadata)"],
    ["64:ff9b::192.168.0.1", "64:ff9b::192.168.0.1 embeds IPv4 192.168.0.1 (NAT64): 192.168.0.1 is a private address"],
    ["2002:7f00:0001::", "2002:7f00:0001:: embeds IPv4 127.0.0.1 (6to4): 127.0.0.1 is loopback"],
    ["2002:7f00:1:1234::5", "2002:7f00:1:1234::5 embeds IPv4 127.0.0.1 (6to4): 127.0.0.1 is loopback"],
    ["2002:a9fe:a9fe::1", "2002:a9fe:a9fe::1 embeds IPv4 169.254.169.254 (6to4): 169.254.169.254 is link-local (cloud metadata)"],
    // Teredo: server 8.8.8.8, client 127.0.0.1 stored inverted (80ff:fffe).
    ["2001:0:808:808::80ff:fffe", "2001:0:808:808::80ff:fffe embeds IPv4 127.0.0.1 (Teredo): 127.0.0.1 is loopback"],
    ["2001:0:a00:1::f7f7:f7f7", "2001:0:a00:1::f7f7:f7f7 embeds IPv4 10.0.0.1 (Teredo): 10.0.0.1 is a private address"],
  ])("refuses %s by the IPv4 address it embeds", (address, reason) => {
    expect(plain.refusal(address)).toBe(reason);
  });

  it("lets embedding forms of public IPv4 addresses through", () => {
    expect(plain.refusal("2001:0:808:808::f7f7:f7f7")).toBeNull();
    expect(plain.refusal("::ffff:1.1.1.1")).toBeNull();
  });

  it("refuses what is not an address", () => {
    expect(plain.refusal("example.com")).toBe("example.com is not an IP address");
    expect(plain.refusal("2130706433")).toBe("2130706433 is not an IP address");
    expect(plain.refusal("127.1")).toBe("127.1 is not an IP address");
    expect(plain.refusal("010.0.0.1")).toBe("010.0.0.1 is not an IP address");
    expect(plain.refusal("")).toBe(" is not an IP address");
  });

  it("refuses the platform's own addresses, public ones included, in any spelling", () => {
    const own = rules("", ["203.0.113.9", "8.8.4.4", "2606:4700::1", "10.0.0.5"]);
    expect(own.refusal("8.8.4.4")).toBe("8.8.4.4 is an address of the platform itself");
    expect(own.refusal("2606:4700:0:0::1")).toBe("2606:4700:0:0::1 is an address of the platform itself");
    expect(own.refusal("::ffff:8.8.4.4")).toBe("::ffff:8.8.4.4 embeds IPv4 8.8.4.4 (IPv4-mapped): 8.8.4.4 is an address of the platform itself");
    // A refused category names the category.
    expect(own.refusal("10.0.0.5")).toBe("10.0.0.5 is a private address");
    expect(own.refusal("8.8.8.8")).toBeNull();
  });

  it("refuses bad own addresses at construction", () => {
    expect(() => rules("", ["not-an-address"])).toThrow("not-an-address is not an IP address");
    expect(() => new AddressRules({ allowPrivate: [{ family: 4, network: "::1", prefix: 8 }], ownAddresses: [] })).toThrow(/not a CIDR range/);
  });
});

describe("AddressRules with operator-allowed ranges", () => {
  it("makes private, loopback and link-local addresses inside them reachable", () => {
    const allowed = rules("10.0.0.0/8, 192.168.1.0/24, 127.0.0.1, fd00::/8, 169.254.0.0/16", ["10.0.0.5"]);
    expect(allowed.refusal("10.1.2.3")).toBeNull();
    expect(allowed.refusal("192.168.1.200")).toBeNull();
    expect(allowed.refusal("192.168.2.1")).toBe("192.168.2.1 is a private address");
    expect(allowed.refusal("127.0.0.1")).toBeNull();
    expect(allowed.refusal("127.0.0.2")).toBe("127.0.0.2 is loopback");
    expect(allowed.refusal("fd12::1")).toBeNull();
    expect(allowed.refusal("fc00::1")).toBe("fc00::1 is a unique-local (private) address");
    // 169.254.0.0/16 exposes the metadata service: the operator asked for it.
    expect(allowed.refusal("169.254.169.254")).toBeNull();
    // The platform's own address inside an allowed range is reachable too.
    expect(allowed.refusal("10.0.0.5")).toBeNull();
    // Embedded forms follow the IPv4 address they reach.
    expect(allowed.refusal("::ffff:10.9.9.9")).toBeNull();
    expect(allowed.refusal("64:ff9b::7f00:2")).toBe("64:ff9b::7f00:2 embeds IPv4 127.0.0.2 (NAT64): 127.0.0.2 is loopback");
  });

  it("an allowed IPv6 range covers the embedding form itself", () => {
    const allowed = rules("64:ff9b::/96");
    expect(allowed.refusal("64:ff9b::a00:1")).toBeNull();
    expect(rules().refusal("64:ff9b::a00:1")).toMatch(/private address/);
  });

  it("never makes unspecified, multicast or broadcast reachable", () => {
    const everything = rules("0.0.0.0/0, ::/0");
    expect(everything.refusal("10.0.0.1")).toBeNull();
    expect(everything.refusal("0.0.0.0")).toMatch(/unspecified/);
    expect(everything.refusal("::")).toMatch(/unspecified/);
    expect(everything.refusal("224.0.0.1")).toMatch(/multicast/);
    expect(everything.refusal("ff02::1")).toMatch(/multicast/);
    expect(everything.refusal("255.255.255.255")).toMatch(/broadcast/);
    expect(everything.refusal("::ffff:0.0.0.0")).toMatch(/unspecified/);
    expect(everything.refusal("::ffff:224.0.0.1")).toMatch(/multicast/);
  });

  it("ranges do not match across families except through embedding", () => {
    const v6only = rules("::/0");
    expect(v6only.refusal("10.0.0.1")).toBe("10.0.0.1 is a private address");
    const v4only = rules("0.0.0.0/0");
    expect(v4only.refusal("fd00::1")).toBe("fd00::1 is a unique-local (private) address");
  });
});

describe("AddressRules.ownHostAddresses", () => {
  it("lists this machine's interface addresses, loopback included", () => {
    const own = AddressRules.ownHostAddresses();
    expect(own.some((address) => address === "127.0.0.1" || address === "::1")).toBe(true);
    expect(new Set(own).size).toBe(own.length);
    expect(() => new AddressRules({ allowPrivate: [], ownAddresses: own })).not.toThrow();
  });
});

describe("parseCidrList", () => {
  it("parses ranges and single addresses, IPv4 and IPv6", () => {
    expect(parseCidrList(undefined)).toEqual([]);
    expect(parseCidrList("  ")).toEqual([]);
    expect(parseCidrList("10.0.0.0/8, 192.168.1.7 ,fd00::/8,,2001:DB8:0::/48, 0.0.0.0/0, ::1")).toEqual([
      { family: 4, network: "10.0.0.0", prefix: 8 },
      { family: 4, network: "192.168.1.7", prefix: 32 },
      { family: 6, network: "fd00::", prefix: 8 },
      { family: 6, network: "2001:db8::", prefix: 48 },
      { family: 4, network: "0.0.0.0", prefix: 0 },
      { family: 6, network: "::1", prefix: 128 },
    ]);
  });

  it("names the bad entry", () => {
    expect(() => parseCidrList("10.0.0.0/8, example.com")).toThrow('"example.com" is not an IP address or CIDR range (such as 10.0.0.0/8 or fd00::/8)');
    expect(() => parseCidrList("10.0.0.0/33")).toThrow('"10.0.0.0/33" has a bad prefix length: it must be 0 to 32 for IPv4');
    expect(() => parseCidrList("fd00::/129")).toThrow(/0 to 128 for IPv6/);
    expect(() => parseCidrList("10.0.0.0/")).toThrow(/bad prefix length/);
    expect(() => parseCidrList("10.0.0.0/x")).toThrow(/bad prefix length/);
    expect(() => parseCidrList("10.0.0.0/8/9")).toThrow(/not an IP address or CIDR range/);
    expect(() => parseCidrList("10.0.0.1/8")).toThrow('"10.0.0.1/8" has bits set after the prefix: write the network, 10.0.0.0/8');
    expect(() => parseCidrList("fd00::1/8")).toThrow(/write the network, fd00::\/8/);
    expect(() => parseCidrList("172.16.0.0/11")).toThrow(/write the network, 172.0.0.0\/11/);
    expect(() => parseCidrList("fe80::1%eth0")).toThrow(/not an IP address or CIDR range/);
    expect(() => parseCidrList("010.0.0.0/8")).toThrow(/not an IP address or CIDR range/);
  });
});

describe("parseResolveMap", () => {
  it("parses names to addresses with or without ports", () => {
    const map = parseResolveMap("API.example.test=127.0.0.1:8080, other.test=127.0.0.1,v6.test=[::1]:9090,v6b.test.=[0:0::1],1.2.3.4=127.0.0.1:81");
    expect([...map]).toEqual([
      ["api.example.test", { address: "127.0.0.1", port: 8080 }],
      ["other.test", { address: "127.0.0.1", port: null }],
      ["v6.test", { address: "::1", port: 9090 }],
      ["v6b.test", { address: "::1", port: null }],
      ["1.2.3.4", { address: "127.0.0.1", port: 81 }],
    ]);
    expect(parseResolveMap(undefined).size).toBe(0);
    expect(parseResolveMap("").size).toBe(0);
  });

  it("names the bad entry", () => {
    expect(() => parseResolveMap("api.example.test")).toThrow('"api.example.test" has no "=": write host=address[:port], as in api.example.test=127.0.0.1:8080');
    expect(() => parseResolveMap("api.example.test=localhost:80")).toThrow(/"localhost" is not an IP address/);
    expect(() => parseResolveMap("a.test=127.0.0.1:0")).toThrow('"a.test=127.0.0.1:0": "0" is not a port number (1 to 65535)');
    expect(() => parseResolveMap("a.test=127.0.0.1:65536")).toThrow(/not a port number/);
    expect(() => parseResolveMap("a.test=127.0.0.1:")).toThrow(/"" is not a port number/);
    expect(() => parseResolveMap("a.test=[::1]:x")).toThrow(/"x" is not a port number/);
    expect(() => parseResolveMap("a.test=::1:8080")).toThrow('"a.test=::1:8080": write IPv6 addresses in brackets, as in [::1] or [::1]:8080');
    expect(() => parseResolveMap("a.test=::1")).toThrow(/in brackets/);
    expect(() => parseResolveMap("a.test=::1.2:80")).toThrow(/in brackets/);
    expect(() => parseResolveMap("a.test=127.0.0:80")).toThrow('"a.test=127.0.0:80": "127.0.0" is not an IP address');
    expect(() => parseResolveMap("a b.test=127.0.0.1")).toThrow(/the host must not contain spaces/);
    expect(() => parseResolveMap("*.test.example=127.0.0.1")).toThrow(/the host/);
    expect(() => parseResolveMap("a.test=127.0.0.1,A.TEST=127.0.0.2")).toThrow('"a.test" is named twice');
  });
});

describe("resolveTarget", () => {
  const neverLookup: Lookup = () => {
    throw new Error("lookup must not be called");
  };
  const fakeLookup = (answers: Record<string, LookupResult | NodeJS.ErrnoException>) => {
    const calls: string[] = [];
    const lookup: Lookup = async (host) => {
      calls.push(host);
      const answer = answers[host];
      if (answer === undefined) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: "ENOTFOUND" });
      if (answer instanceof Error) throw answer;
      return answer;
    };
    return { lookup, calls };
  };
  const refusedWith = async (promise: Promise<unknown>) => {
    const error = await promise.then(
      () => null,
      (caught: unknown) => caught,
    );
    expect(error).toBeInstanceOf(EgressRefusedError);
    const refused = error as EgressRefusedError;
    expect(refused.message).toBe(refused.reason);
    return { kind: refused.kind, reason: refused.reason };
  };
  const deps = (lookup: Lookup, allowPrivate = "", resolve = "") => ({ rules: rules(allowPrivate, ["8.8.4.4"]), resolveMap: parseResolveMap(resolve), lookup });

  it("takes the test-only map first, without applying address rules", async () => {
    const map = deps(neverLookup, "", "api.example.test=127.0.0.1:4711,other.test=[::1],8.8.8.8=127.0.0.1:1");
    expect(await resolveTarget("API.Example.Test.", 443, map)).toEqual({
      address: "127.0.0.1",
      port: 4711,
      family: 4,
      mapped: true,
      addresses: [{ address: "127.0.0.1", family: 4 }],
    });
    expect(await resolveTarget("other.test", 8443, map)).toMatchObject({ address: "::1", port: 8443, family: 6, mapped: true });
    expect(await resolveTarget("8.8.8.8", 443, map)).toMatchObject({ address: "127.0.0.1", port: 1, mapped: true });
  });

  it("checks IP literals without a lookup", async () => {
    const literal = deps(neverLookup);
    expect(await resolveTarget("8.8.8.8", 443, literal)).toEqual({ address: "8.8.8.8", port: 443, family: 4, mapped: false, addresses: [{ address: "8.8.8.8", family: 4 }] });
    expect(await resolveTarget("[2606:4700:4700:0::1111]", 443, literal)).toMatchObject({ address: "2606:4700:4700::1111", family: 6, mapped: false });
    expect(await refusedWith(resolveTarget("169.254.169.254", 80, literal))).toEqual({ kind: "address", reason: "169.254.169.254 is link-local (cloud metadata)" });
    expect(await refusedWith(resolveTarget("[::ffff:7f00:1]", 80, literal))).toEqual({
      kind: "address",
      reason: "::ffff:7f00:1 embeds IPv4 127.0.0.1 (IPv4-mapped): 127.0.0.1 is loopback",
    });
    expect(await refusedWith(resolveTarget("8.8.4.4", 443, literal))).toEqual({ kind: "address", reason: "8.8.4.4 is an address of the platform itself" });
    expect(await resolveTarget("10.2.3.4", 443, deps(neverLookup, "10.0.0.0/8"))).toMatchObject({ address: "10.2.3.4", mapped: false });
  });

  it("refuses number-like names instead of guessing what they mean", async () => {
    const literal = deps(neverLookup);
    for (const host of ["2130706433", "0x7f.1", "0x7f000001", "017700000001", "127.1", "127.0.1", "0177.0.0.1", "0x7F.0.0.1", "1.2.3.4.5"]) {
      expect(await refusedWith(resolveTarget(host, 80, literal)), host).toEqual({
        kind: "address",
        reason: `${host} is not a canonical IPv4 address: write four decimal numbers, such as 192.0.2.1`,
      });
    }
  });

  it("refuses malformed hosts and ports", async () => {
    const literal = deps(neverLookup);
    expect(await refusedWith(resolveTarget("a b.test", 80, literal))).toMatchObject({ kind: "resolve", reason: expect.stringMatching(/not a valid host/) });
    expect(await refusedWith(resolveTarget("", 80, literal))).toMatchObject({ kind: "resolve" });
    expect(await refusedWith(resolveTarget("fe80::1%eth0", 80, literal))).toMatchObject({ kind: "resolve" });
    expect(await refusedWith(resolveTarget("*.example.com", 80, literal))).toMatchObject({ kind: "resolve" });
    expect(await refusedWith(resolveTarget("8.8.8.8", 0, literal))).toEqual({ kind: "address", reason: "0 is not a port number" });
    expect(await refusedWith(resolveTarget("8.8.8.8", 65536, literal))).toMatchObject({ kind: "address" });
  });

  it("resolves names and returns the first address, with all of them", async () => {
    const { lookup, calls } = fakeLookup({
      "api.example.com": [
        { address: "2606:4700::6810:84e5", family: 6 },
        { address: "104.16.132.229", family: 4 },
      ],
    });
    expect(await resolveTarget("API.example.com.", 443, deps(lookup))).toEqual({
      address: "2606:4700::6810:84e5",
      port: 443,
      family: 6,
      mapped: false,
      addresses: [
        { address: "2606:4700::6810:84e5", family: 6 },
        { address: "104.16.132.229", family: 4 },
      ],
    });
    expect(calls).toEqual(["api.example.com"]);
  });

  it("refuses a name when any of its addresses is refused", async () => {
    const { lookup } = fakeLookup({
      "rebind.example.com": [
        { address: "104.16.132.229", family: 4 },
        { address: "169.254.169.254", family: 4 },
      ],
      "inside.example.com": [{ address: "10.0.0.7", family: 4 }],
      "localhost": [{ address: "127.0.0.1", family: 4 }, { address: "::1", family: 6 }],
      "mapped.example.com": [{ address: "::ffff:192.168.0.1", family: 6 }],
      "self.example.com": [{ address: "8.8.4.4", family: 4 }],
      "garbage.example.com": [{ address: "not-an-address", family: 4 }],
    });
    expect(await refusedWith(resolveTarget("rebind.example.com", 443, deps(lookup)))).toEqual({
      kind: "address",
      reason: "rebind.example.com resolves to a refused address: 169.254.169.254 is link-local (cloud metadata)",
    });
    expect(await refusedWith(resolveTarget("inside.example.com", 443, deps(lookup)))).toEqual({
      kind: "address",
      reason: "inside.example.com resolves to a refused address: 10.0.0.7 is a private address",
    });
    expect(await refusedWith(resolveTarget("localhost", 3000, deps(lookup)))).toMatchObject({ reason: "localhost resolves to a refused address: 127.0.0.1 is loopback" });
    expect(await refusedWith(resolveTarget("mapped.example.com", 443, deps(lookup)))).toMatchObject({ reason: expect.stringMatching(/192.168.0.1 is a private address$/) });
    expect(await refusedWith(resolveTarget("self.example.com", 443, deps(lookup)))).toMatchObject({ reason: expect.stringMatching(/platform itself$/) });
    expect(await refusedWith(resolveTarget("garbage.example.com", 443, deps(lookup)))).toEqual({
      kind: "resolve",
      reason: 'garbage.example.com resolved to "not-an-address", which is not an IP address',
    });
    // The operator's ranges apply to resolved addresses too.
    expect(await resolveTarget("inside.example.com", 443, deps(lookup, "10.0.0.0/24"))).toMatchObject({ address: "10.0.0.7", mapped: false });
  });

  it("reports names that do not resolve", async () => {
    const { lookup } = fakeLookup({
      "empty.example.com": [],
      "nodata.example.com": Object.assign(new Error("queryA ENODATA"), { code: "ENODATA" }),
      "flaky.example.com": Object.assign(new Error("getaddrinfo EAI_AGAIN"), { code: "EAI_AGAIN" }),
      "odd.example.com": new Error("something else"),
    });
    expect(await refusedWith(resolveTarget("api.x.test", 443, deps(lookup)))).toEqual({ kind: "resolve", reason: "api.x.test does not resolve" });
    expect(await refusedWith(resolveTarget("empty.example.com", 443, deps(lookup)))).toEqual({ kind: "resolve", reason: "empty.example.com does not resolve" });
    expect(await refusedWith(resolveTarget("nodata.example.com", 443, deps(lookup)))).toEqual({ kind: "resolve", reason: "nodata.example.com does not resolve" });
    expect(await refusedWith(resolveTarget("flaky.example.com", 443, deps(lookup)))).toEqual({
      kind: "resolve",
      reason: "flaky.example.com could not be resolved (EAI_AGAIN)",
    });
    expect(await refusedWith(resolveTarget("odd.example.com", 443, deps(lookup)))).toEqual({
      kind: "resolve",
      reason: "odd.example.com could not be resolved (something else)",
    });
  });
});
