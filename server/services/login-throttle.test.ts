import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectDatabase, type DatabaseClient } from "../../db/client";
import { createTestDatabase, type TestDatabase } from "../../tests/helpers/database";
import { DomainError } from "./errors";
import { addressKey, LoginThrottle } from "./login-throttle";

describe("LoginThrottle on a real database", () => {
  let database: TestDatabase;
  let client: DatabaseClient;
  let throttle: LoginThrottle;

  beforeAll(async () => {
    database = await createTestDatabase();
    client = connectDatabase(database.url, { max: 12 });
    throttle = new LoginThrottle(client.db, { windowSeconds: 900, perAddressAndEmail: 2, perEmail: 3, perAddress: 4 });
  });
  afterAll(async () => {
    await client?.close();
    await database?.drop();
  });

  const refused = (promise: Promise<unknown>) =>
    promise.then(
      () => null,
      (error: unknown) => (error instanceof DomainError && error.kind === "rate_limited" ? error.message : Promise.reject(error)),
    );

  it("refuses an address and account pair over its limit, with the wait, and leaves other pairs alone until theirs", async () => {
    await throttle.begin("a@x", "10.0.0.1");
    await throttle.begin("a@x", "10.0.0.1");
    expect(await refused(throttle.begin("a@x", "10.0.0.1"))).toBe("too many failed logins; try again in 15 minutes");
    // Refused attempts are not counted: hammering on does not lock the account's owner out sooner.
    for (let i = 0; i < 5; i++) expect(await refused(throttle.begin("a@x", "10.0.0.1"))).not.toBeNull();
    // Another address may still try this account (its own pair), until the account's own limit.
    expect(await refused(throttle.begin("a@x", "10.0.0.2"))).toBeNull();
    expect(await refused(throttle.begin("a@x", "10.0.0.3"))).toMatch(/too many failed logins/);
    // The first address may still try other accounts, until the address's own limit.
    expect(await refused(throttle.begin("b@x", "10.0.0.1"))).toBeNull();
    expect(await refused(throttle.begin("c@x", "10.0.0.1"))).toBeNull();
    expect(await refused(throttle.begin("h@x", "10.0.0.1"))).toMatch(/too many failed logins/);
  });

  it("starts a count over once its window has passed, and prunes ended windows", async () => {
    await throttle.begin("d@x", "10.0.1.1");
    await throttle.begin("d@x", "10.0.1.1");
    expect(await refused(throttle.begin("d@x", "10.0.1.1"))).not.toBeNull();
    await client.sql`update login_failures set window_started_at = now() - interval '16 minutes' where key like '%d@x' or key = 'ip:10.0.1.1'`;
    expect(await refused(throttle.begin("d@x", "10.0.1.1"))).toBeNull();
    const [row] = await client.sql<{ failures: number }[]>`select failures from login_failures where key = 'pair:10.0.1.1 d@x'`;
    expect(row!.failures).toBe(1);

    await client.sql`insert into login_failures values ('ip:old', 7, now() - interval '1 hour')`;
    expect(await throttle.prune()).toBeGreaterThanOrEqual(1);
    expect(await client.sql`select 1 from login_failures where key = 'ip:old'`).toHaveLength(0);
  });

  it("hands a successful attempt back: the pair starts over and the account's and address's counts drop by one", async () => {
    await throttle.begin("e@x", "10.0.2.1");
    const attempt = await throttle.begin("e@x", "10.0.2.1");
    await throttle.succeeded(attempt);
    const rows = await client.sql<{ key: string; failures: number }[]>`select key, failures from login_failures where key in ('pair:10.0.2.1 e@x', 'email:e@x', 'ip:10.0.2.1') order by key`;
    expect(rows).toEqual([
      { key: "email:e@x", failures: 1 },
      { key: "ip:10.0.2.1", failures: 1 },
    ]);
  });

  it("counts parallel attempts exactly: no more than the limit get through at once", async () => {
    const results = await Promise.all(Array.from({ length: 10 }, () => refused(throttle.begin("f@x", "10.0.3.1"))));
    expect(results.filter((result) => result === null)).toHaveLength(2);
  });

  it("counts callers whose address is unknown together", async () => {
    await throttle.begin("g@x", null);
    await throttle.begin("g@x", null);
    expect(await refused(throttle.begin("g@x", null))).not.toBeNull();
    expect(await client.sql`select 1 from login_failures where key = 'pair:unknown g@x'`).toHaveLength(1);
  });
});

describe("addressKey", () => {
  it("counts IPv6 by its /64, IPv4-mapped IPv6 as IPv4, and keeps IPv4 as it is", () => {
    expect(addressKey("2001:db8:1:2:aaaa::1")).toBe("2001:db8:1:2::/64");
    expect(addressKey("2001:DB8:1:2:ffff:ffff:ffff:fffe")).toBe("2001:db8:1:2::/64");
    expect(addressKey("2001:db8::1")).toBe("2001:db8:0:0::/64");
    expect(addressKey("::1")).toBe("0:0:0:0::/64");
    expect(addressKey("fe80::1%eth0")).toBe("fe80:0:0:0::/64");
    expect(addressKey("::ffff:192.0.2.7")).toBe("192.0.2.7");
    expect(addressKey("192.0.2.7")).toBe("192.0.2.7");
    expect(addressKey(null)).toBe("unknown");
  });
});
