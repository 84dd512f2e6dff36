import { TRPCClientError } from "@trpc/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestBerth, type TestBerth } from "../../tests/helpers/berth";
import { connectPostgres } from "../../db/postgres-url";
import { createKeyForTeam } from "../../tests/helpers/teams";

const ADMIN_KEY = "test_admin_key_0123456789abcdefghij";
const ADMIN_PASSWORD = "correct horse battery";

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof TRPCClientError) return (error.data as { code: string }).code;
    throw error;
  }
  throw new Error("expected the call to fail");
}

describe("the tRPC API over HTTP: happy paths, authentication and roles", () => {
  let berth: TestBerth;
  let api: ReturnType<TestBerth["client"]>;

  beforeAll(async () => {
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: ADMIN_KEY, BERTH_ADMIN_PASSWORD: ADMIN_PASSWORD } });
    api = berth.client(ADMIN_KEY);
  });
  afterAll(async () => {
    await berth?.close();
  });

  it("teams: get, members, invite, join, change role, remove", async () => {
    const team = await api.teams.get.query();
    expect(team).toMatchObject({ slug: "admin", role: "owner", memberCount: 1 });

    const invited = await api.teams.invite.mutate({ email: "Dev@Example.com", role: "member" });
    expect(invited.invitation).toMatchObject({ email: "dev@example.com", role: "member", status: "pending" });
    expect((await api.teams.members.query({})).items).toHaveLength(1);
    const token = invited.path.slice("/invite#".length);
    const joined = await berth.client().invitations.signUp.mutate({ token, name: "Dev", password: "a long enough password" });
    expect(joined).toMatchObject({ teamId: team.id, role: "member" });
    const members = await api.teams.members.query({});
    expect(members.items.map((member) => member.email).sort()).toEqual(["admin@berth.local", "dev@example.com"]);
    expect(members.items.find((member) => member.email === "dev@example.com")).toMatchObject({ name: "Dev", userId: joined.userId });

    expect(await api.teams.setMemberRole.mutate({ userId: joined.userId, role: "admin" })).toMatchObject({ role: "admin" });
    await api.teams.removeMember.mutate({ userId: joined.userId });
    expect((await api.teams.members.query({})).items).toHaveLength(1);
  });

  it("keeps at least one owner", async () => {
    const { items } = await api.teams.members.query({});
    const owner = items.find((member) => member.role === "owner")!;
    expect(await codeOf(api.teams.setMemberRole.mutate({ userId: owner.userId, role: "admin" }))).toBe("FORBIDDEN");
    expect(await codeOf(api.teams.removeMember.mutate({ userId: owner.userId }))).toBe("FORBIDDEN");
  });

  it("apiKeys: create returns the key once, list shows only its prefix, revoke stops it", async () => {
    const created = await api.apiKeys.create.mutate({ name: "ci", role: "admin" });
    expect(created.key).toMatch(/^berth_/);
    expect(created.prefix).toBe(created.key.slice(0, created.prefix.length));
    const listed = await api.apiKeys.list.query({});
    const row = listed.items.find((key) => key.id === created.id)!;
    expect(row).toMatchObject({ name: "ci", role: "admin", revokedAt: null });
    expect(JSON.stringify(listed)).not.toContain(created.key);

    const ci = berth.client(created.key);
    expect((await ci.teams.get.query()).slug).toBe("admin");
    await expect.poll(async () => (await api.apiKeys.list.query({})).items.find((key) => key.id === created.id)?.lastUsedAt).toBeTruthy();

    const revoked = await api.apiKeys.revoke.mutate({ keyId: created.id });
    expect(revoked.revokedAt).toBeInstanceOf(Date);
    expect(await codeOf(ci.teams.get.query())).toBe("UNAUTHORIZED");
    expect((await api.apiKeys.list.query({})).items.some((key) => key.id === created.id)).toBe(false);
    expect((await api.apiKeys.list.query({ includeRevoked: true })).items.some((key) => key.id === created.id)).toBe(true);
  });

  it("refuses missing, malformed, unknown and revoked keys with UNAUTHORIZED", async () => {
    expect(await codeOf(berth.client().agents.list.query({}))).toBe("UNAUTHORIZED");
    expect(await codeOf(berth.client("berth_not-a-real-key").agents.list.query({}))).toBe("UNAUTHORIZED");
    const response = await fetch(`${berth.url}/api/trpc/agents.list?input=${encodeURIComponent(JSON.stringify({ json: {} }))}`, {
      headers: { authorization: "Basic abc" },
    });
    expect(response.status).toBe(401);
  });

  it("agents: create, get, list, update (new version each time), versions, delete", async () => {
    const agent = await api.agents.create.mutate({ name: "helper", model: "demo", systemPrompt: "Be brief.", network: "egress", idleTimeoutSeconds: 120, env: { MODE: "test" } });
    expect(agent).toMatchObject({ name: "helper", version: 1, model: "demo", isDemo: true, network: "egress", idleTimeoutSeconds: 120, harness: "builtin", busyPolicy: "queue", env: { MODE: "test" } });
    expect(await api.agents.get.query({ agentId: agent.id })).toEqual(agent);

    const updated = await api.agents.update.mutate({ agentId: agent.id, model: "gpt-4o-mini", maxSteps: 5 });
    expect(updated).toMatchObject({ version: 2, model: "gpt-4o-mini", maxSteps: 5, systemPrompt: "Be brief.", isDemo: false });
    const renamed = await api.agents.update.mutate({ agentId: agent.id, name: "helper-2" });
    expect(renamed).toMatchObject({ version: 3, name: "helper-2", model: "gpt-4o-mini" });
    expect(await api.agents.get.query({ agentId: agent.id, version: 1 })).toMatchObject({ version: 1, model: "demo" });
    const versions = await api.agents.versions.query({ agentId: agent.id });
    expect(versions.items.map((version) => version.version)).toEqual([3, 2, 1]);

    expect(await codeOf(api.agents.create.mutate({ name: "helper-2", model: "demo" }))).toBe("CONFLICT");
    const list = await api.agents.list.query({});
    expect(list.items.map((item) => item.id)).toContain(agent.id);

    expect(await api.agents.delete.mutate({ agentId: agent.id })).toEqual({ id: agent.id });
    expect(await codeOf(api.agents.get.query({ agentId: agent.id }))).toBe("NOT_FOUND");
    expect((await api.agents.list.query({})).items.map((item) => item.id)).not.toContain(agent.id);
    // The name is free again once the agent is deleted.
    await api.agents.create.mutate({ name: "helper-2", model: "demo" });
  });

  it("agents: diskMb (workspace disk quota) has a default, is versioned, and reads as the default on versions written before it existed", async () => {
    const agent = await api.agents.create.mutate({ name: "disk", model: "demo" });
    expect(agent.diskMb).toBe(2048);
    const bigger = await api.agents.update.mutate({ agentId: agent.id, diskMb: 10_240 });
    expect(bigger).toMatchObject({ version: 2, diskMb: 10_240 });
    const other = await api.agents.update.mutate({ agentId: agent.id, maxSteps: 3 });
    expect(other).toMatchObject({ version: 3, diskMb: 10_240 }); // carried over to the next version
    const versions = await api.agents.versions.query({ agentId: agent.id });
    expect(versions.items.map((version) => [version.version, version.diskMb])).toEqual([[3, 10_240], [2, 10_240], [1, 2048]]);
    expect((await api.agents.get.query({ agentId: agent.id, version: 1 })).diskMb).toBe(2048);
    const small = await api.agents.create.mutate({ name: "disk-small", model: "demo", diskMb: 64 });
    expect(small.diskMb).toBe(64);

    // A version row written without the column (as every row before migration 0010) reads as the default.
    const sql = connectPostgres(berth.database.url, { max: 1, onnotice: () => {} });
    try {
      await sql`insert into agent_versions (agent_id, version, team_id, model) select id, 4, team_id, 'demo' from agents where id = ${agent.id}`;
      await sql`update agents set current_version = 4 where id = ${agent.id}`;
    } finally {
      await sql.end();
    }
    expect((await api.agents.get.query({ agentId: agent.id })).diskMb).toBe(2048);
  });

  it("paginates lists with opaque cursors, newest first, without gaps or repeats", async () => {
    const created: string[] = [];
    for (let i = 0; i < 7; i++) created.push((await api.agents.create.mutate({ name: `paged-${i}`, model: "demo" })).id);
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await api.agents.list.query({ limit: 3, cursor });
      expect(page.items.length).toBeLessThanOrEqual(3);
      seen.push(...page.items.map((item) => item.id));
      cursor = page.nextCursor ?? undefined;
      pages++;
    } while (cursor);
    expect(pages).toBeGreaterThanOrEqual(3);
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen.filter((id) => created.includes(id))).toEqual([...created].reverse());
    expect(await codeOf(api.agents.list.query({ cursor: "garbage" }))).toBe("BAD_REQUEST");
  });

  it("secrets: set (and overwrite), list names only, delete", async () => {
    const agent = await api.agents.create.mutate({ name: "with-secrets", model: "demo" });
    const teamWide = await api.secrets.set.mutate({ name: "OPENAI_API_KEY", value: "team-value" });
    const perAgent = await api.secrets.set.mutate({ name: "OPENAI_API_KEY", value: "agent-value", agentId: agent.id });
    expect(teamWide).toEqual({ id: expect.any(String), name: "OPENAI_API_KEY", agentId: null, brokered: null, createdAt: expect.any(Date), updatedAt: expect.any(Date) });
    expect(perAgent.agentId).toBe(agent.id);
    const again = await api.secrets.set.mutate({ name: "OPENAI_API_KEY", value: "rotated" });
    expect(again.id).toBe(teamWide.id);

    expect((await api.secrets.list.query({})).items.map((s) => s.id).sort()).toEqual([teamWide.id, perAgent.id].sort());
    expect((await api.secrets.list.query({ agentId: agent.id })).items.map((s) => s.id)).toEqual([perAgent.id]);
    await api.secrets.delete.mutate({ secretId: teamWide.id });
    expect((await api.secrets.list.query({})).items.map((s) => s.id)).toEqual([perAgent.id]);
    // Deleting the agent destroys its own secrets.
    await api.agents.delete.mutate({ agentId: agent.id });
    expect((await api.secrets.list.query({})).items).toEqual([]);
  });

  it("audit: records every change with its actor, newest first, paginated", async () => {
    const page = await api.audit.list.query({ limit: 5 });
    expect(page.items).toHaveLength(5);
    expect(page.nextCursor).toBeTruthy();
    const all = [];
    let cursor: string | undefined;
    do {
      const next = await api.audit.list.query({ limit: 50, cursor });
      all.push(...next.items);
      cursor = next.nextCursor ?? undefined;
    } while (cursor);
    const actions = new Set(all.map((entry) => entry.action));
    for (const action of ["member.invited", "invitation.accepted", "member.role", "member.remove", "api_key.create", "api_key.revoke", "agent.create", "agent.update", "agent.delete", "secret.set", "secret.delete"]) {
      expect(actions).toContain(action);
    }
    const ids = all.map((entry) => entry.id);
    expect(ids).toEqual([...ids].sort((a, b) => b - a));
    const agentCreate = all.find((entry) => entry.action === "agent.create")!;
    expect(agentCreate).toMatchObject({ actorType: "api_key", targetType: "agent" });
    expect((await api.audit.list.query({ action: "secret.delete" })).items.every((entry) => entry.action === "secret.delete")).toBe(true);
  });

  it("roles: a member key reads but cannot change configuration or see keys", async () => {
    const team = await api.teams.get.query();
    const member = berth.client(await createKeyForTeam(berth.databaseUrl, team.id, "member"));
    expect((await member.agents.list.query({})).items.length).toBeGreaterThan(0);
    expect(await codeOf(member.agents.create.mutate({ name: "nope", model: "demo" }))).toBe("FORBIDDEN");
    expect(await codeOf(member.secrets.set.mutate({ name: "X", value: "y" }))).toBe("FORBIDDEN");
    expect(await codeOf(member.apiKeys.list.query({}))).toBe("FORBIDDEN");
    expect(await codeOf(member.audit.list.query({}))).toBe("FORBIDDEN");
    const admin = berth.client(await createKeyForTeam(berth.databaseUrl, team.id, "admin"));
    expect(await codeOf(admin.apiKeys.create.mutate({ name: "escalate", role: "owner" }))).toBe("FORBIDDEN");
  });
});

describe("web login", () => {
  let berth: TestBerth;
  beforeAll(async () => {
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: ADMIN_KEY, BERTH_ADMIN_PASSWORD: ADMIN_PASSWORD } });
  });
  afterAll(async () => {
    await berth?.close();
  });

  async function post(path: string, body: unknown, headers: Record<string, string> = {}) {
    return fetch(`${berth.url}/api/trpc/${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify({ json: body }),
    });
  }

  it("logs in with email and password into an HTTP-only cookie, and logs out", async () => {
    expect((await post("auth.login", { email: "admin@berth.local", password: "wrong password!" })).status).toBe(401);
    expect((await post("auth.login", { email: "nobody@berth.local", password: ADMIN_PASSWORD })).status).toBe(401);

    const login = await post("auth.login", { email: "ADMIN@berth.local", password: ADMIN_PASSWORD });
    expect(login.status).toBe(200);
    const setCookie = login.headers.get("set-cookie")!;
    expect(setCookie).toMatch(/^berth_session=[^;]+; Path=\/; HttpOnly; SameSite=Lax; Expires=.*; Secure$/);
    const cookie = setCookie.split(";")[0]!;

    const me = await fetch(`${berth.url}/api/trpc/auth.me`, { headers: { cookie } });
    expect(me.status).toBe(200);
    const body = (await me.json()) as { result: { data: { json: { role: string; via: string; teams: unknown[] } } } };
    expect(body.result.data.json).toMatchObject({ role: "owner", via: "session", teams: [expect.objectContaining({ slug: "admin" })] });

    // A cookie-authenticated mutation from another site is refused; from our own origin it works.
    const crossSite = await post("agents.create", { name: "csrf", model: "demo" }, { cookie, origin: "https://evil.example", "sec-fetch-site": "cross-site" });
    expect(crossSite.status).toBe(403);
    const sameSite = await post("agents.create", { name: "from-ui", model: "demo" }, { cookie, origin: berth.url, "sec-fetch-site": "same-origin" });
    expect(sameSite.status).toBe(200);

    const logout = await post("auth.logout", {}, { cookie, origin: berth.url });
    expect(logout.status).toBe(200);
    expect(logout.headers.get("set-cookie")).toMatch(/^berth_session=; /);
    expect((await fetch(`${berth.url}/api/trpc/auth.me`, { headers: { cookie } })).status).toBe(401);

    const audit = await berth.client(ADMIN_KEY).audit.list.query({ limit: 100 });
    expect(audit.items.map((entry) => entry.action)).toEqual(expect.arrayContaining(["user.login", "user.logout"]));
  });

  it("refuses cookie-authenticated mutations from Origin null, foreign origins and forged X-Forwarded-Host with 403", async () => {
    const login = await post("auth.login", { email: "admin@berth.local", password: ADMIN_PASSWORD });
    const cookie = login.headers.get("set-cookie")!.split(";")[0]!;
    const create = (headers: Record<string, string>) => post("agents.create", { name: `origin-${Math.random()}`, model: "demo" }, { cookie, ...headers });

    const opaque = await create({ origin: "null" });
    expect(opaque.status).toBe(403);
    expect(((await opaque.json()) as { error: { json: { message: string } } }).error.json.message).toBe("request from an opaque or invalid origin refused");
    expect((await create({ origin: "https://evil.example" })).status).toBe(403);
    // The test client is no trusted proxy (none is configured): its X-Forwarded-Host is not believed.
    expect((await create({ origin: "https://evil.example", "x-forwarded-host": "evil.example" })).status).toBe(403);
    expect((await create({ "sec-fetch-site": "same-origin" })).status).toBe(200);
    expect((await create({ origin: berth.url })).status).toBe(200);
  });

  it("counts failed logins by the connection's address, whatever X-Forwarded-For says (no proxy header is trusted by default)", async () => {
    for (let i = 0; i < 10; i++) {
      expect((await post("auth.login", { email: "ghost@berth.local", password: `guess ${i}` }, { "x-forwarded-for": `198.51.100.${i}` })).status).toBe(401);
    }
    const refused = await post("auth.login", { email: "ghost@berth.local", password: "guess 10" }, { "x-forwarded-for": "198.51.100.77" });
    expect(refused.status).toBe(429);
  });
});

describe("login brute-force limits behind a proxy", () => {
  let berth: TestBerth;
  beforeAll(async () => {
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: ADMIN_KEY, BERTH_ADMIN_PASSWORD: ADMIN_PASSWORD, BERTH_CLIENT_ADDRESS_HEADER: "X-Forwarded-For" } });
  });
  afterAll(async () => {
    await berth?.close();
  });

  const login = (password: string, forwardedFor: string) =>
    fetch(`${berth.url}/api/trpc/auth.login`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-forwarded-for": forwardedFor },
      body: JSON.stringify({ json: { email: "admin@berth.local", password } }),
    });

  it("refuses an address after 10 failed logins to one account, even with the right password, and not another address", async () => {
    for (let i = 0; i < 10; i++) expect((await login(`wrong password ${i}`, "203.0.113.5")).status).toBe(401);
    const refused = await login(ADMIN_PASSWORD, "203.0.113.5");
    expect(refused.status).toBe(429);
    const body = (await refused.json()) as { error: { json: { message: string; data: { code: string } } } };
    expect(body.error.json).toMatchObject({ message: "too many failed logins; try again in 15 minutes", data: { code: "TOO_MANY_REQUESTS" } });
    // Only the last proxy's entry is trusted: what the client wrote to the left does not change its address.
    expect((await login(ADMIN_PASSWORD, "192.0.2.1, 203.0.113.5")).status).toBe(429);

    expect((await login(ADMIN_PASSWORD, "203.0.113.6")).status).toBe(200);
    const logs = berth.logs();
    expect(logs).toContain("login refused: too many failed attempts");
    expect(logs).not.toContain(ADMIN_PASSWORD);
    expect(logs).not.toContain("wrong password");
  });
});

describe("login brute-force limits with trusted proxies", () => {
  // The test client connects from 127.0.0.1: a trusted proxy for one server, a stranger to the other.
  let behindLoopbackProxy: TestBerth;
  let behindOtherProxy: TestBerth;
  beforeAll(async () => {
    const env = { BERTH_ADMIN_API_KEY: ADMIN_KEY, BERTH_ADMIN_PASSWORD: ADMIN_PASSWORD, BERTH_CLIENT_ADDRESS_HEADER: "x-forwarded-for" };
    [behindLoopbackProxy, behindOtherProxy] = await Promise.all([
      startTestBerth({ env: { ...env, BERTH_TRUSTED_PROXIES: "loopback, 10.0.0.0/8" } }),
      startTestBerth({ env: { ...env, BERTH_TRUSTED_PROXIES: "10.0.0.0/8" } }),
    ]);
  });
  afterAll(async () => {
    await Promise.all([behindLoopbackProxy?.close(), behindOtherProxy?.close()]);
  });

  const login = (berth: TestBerth, password: string, forwardedFor: string) =>
    fetch(`${berth.url}/api/trpc/auth.login`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-forwarded-for": forwardedFor },
      body: JSON.stringify({ json: { email: "admin@berth.local", password } }),
    });

  it("takes the client from the header past the trusted hops when the connection comes from a trusted proxy", async () => {
    for (let i = 0; i < 10; i++) expect((await login(behindLoopbackProxy, `wrong password ${i}`, `203.0.113.5, 10.1.1.${i}`)).status).toBe(401);
    expect((await login(behindLoopbackProxy, ADMIN_PASSWORD, "203.0.113.5")).status).toBe(429);
    expect((await login(behindLoopbackProxy, ADMIN_PASSWORD, "203.0.113.6, 10.1.1.1")).status).toBe(200);
  });

  it("believes X-Forwarded-Host and X-Forwarded-Proto in the same-origin check only from a trusted proxy", async () => {
    const cookieOf = async (berth: TestBerth) => {
      const response = await login(berth, ADMIN_PASSWORD, "192.0.2.50");
      expect(response.status).toBe(200);
      return response.headers.get("set-cookie")!.split(";")[0]!;
    };
    const create = async (berth: TestBerth, cookie: string, headers: Record<string, string>) =>
      (
        await fetch(`${berth.url}/api/trpc/agents.create`, {
          method: "POST",
          headers: { "content-type": "application/json", cookie, ...headers },
          body: JSON.stringify({ json: { name: `proxied-${Math.random()}`, model: "demo" } }),
        })
      ).status;
    const proxied = { origin: "https://berth.example.com", "x-forwarded-host": "berth.example.com", "x-forwarded-proto": "https" };

    const trustedCookie = await cookieOf(behindLoopbackProxy);
    expect(await create(behindLoopbackProxy, trustedCookie, proxied)).toBe(200);
    expect(await create(behindLoopbackProxy, trustedCookie, { ...proxied, "x-forwarded-proto": "http" })).toBe(403);
    expect(await create(behindLoopbackProxy, trustedCookie, { ...proxied, origin: behindLoopbackProxy.url })).toBe(403);

    const untrustedCookie = await cookieOf(behindOtherProxy);
    expect(await create(behindOtherProxy, untrustedCookie, proxied)).toBe(403);
    expect(await create(behindOtherProxy, untrustedCookie, { origin: behindOtherProxy.url })).toBe(200);
  });

  it("ignores the header on a connection from anywhere else: a caller cannot pick its own address", async () => {
    for (let i = 0; i < 10; i++) expect((await login(behindOtherProxy, `wrong password ${i}`, `198.51.100.${i}`)).status).toBe(401);
    expect((await login(behindOtherProxy, ADMIN_PASSWORD, "198.51.100.200")).status).toBe(429);
  });
});
