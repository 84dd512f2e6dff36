import { randomBytes } from "node:crypto";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestBerth, type TestBerth } from "../../tests/helpers/berth";
import { SecretBox } from "./secret-box";
import { connectDatabase } from "../../db/client";

const KEY = "secrets_key_0123456789abcdefghijklmn";

describe("secrets are write-only and never leak", () => {
  let berth: TestBerth;
  const responses: string[] = [];
  const recordingFetch: typeof fetch = async (input, init) => {
    const response = await fetch(input, init);
    responses.push(await response.clone().text());
    return response;
  };

  beforeAll(async () => {
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: KEY } });
  });
  afterAll(async () => {
    await berth?.close();
  });

  it("keeps the value out of responses, the audit log, the logs, errors and the stored row", async () => {
    const value = `leak-canary-${randomBytes(12).toString("hex")}`;
    const { createBerthClient } = await import("../client");
    const api = createBerthClient({ url: berth.url, apiKey: KEY, fetch: recordingFetch });
    const agent = await api.agents.create.mutate({ name: "a", model: "demo" });
    await api.secrets.set.mutate({ name: "CANARY", value });
    await api.secrets.set.mutate({ name: "CANARY", value, agentId: agent.id });
    await api.secrets.set.mutate({ name: "CANARY", value: `${value}-rotated` });
    await api.secrets.list.query({});
    await api.audit.list.query({ limit: 100 });
    // An invalid call carrying the value must not echo it in its error.
    await expect(api.secrets.set.mutate({ name: "bad name", value })).rejects.toThrow();
    await expect(api.secrets.set.mutate({ name: "BIG", value: value.repeat(5_000) })).rejects.toThrow();

    expect(responses.length).toBeGreaterThanOrEqual(7);
    for (const body of responses) expect(body).not.toContain(value);
    expect(berth.logs().length).toBeGreaterThan(0);
    expect(berth.logs()).not.toContain(value);

    const sql = postgres(berth.databaseUrl, { max: 1, onnotice: () => {} });
    try {
      const audit = await sql`select * from audit_log`;
      expect(JSON.stringify(audit)).not.toContain(value);
      const rows = await sql<{ ciphertext: Buffer }[]>`select ciphertext from secrets`;
      expect(rows).toHaveLength(2);
      for (const row of rows) expect(row.ciphertext.toString("latin1")).not.toContain(value);
    } finally {
      await sql.end();
    }
  });

  it("gives a sandbox the agent's value over the team's, decrypted, and binds each ciphertext to its row", async () => {
    const api = berth.client(KEY);
    const agent = await api.agents.create.mutate({ name: "env", model: "demo" });
    await api.secrets.set.mutate({ name: "SHARED", value: "team" });
    await api.secrets.set.mutate({ name: "TEAM_ONLY", value: "t" });
    await api.secrets.set.mutate({ name: "SHARED", value: "agent", agentId: agent.id });
    const team = await api.teams.get.query();

    const database = connectDatabase(berth.databaseUrl, { max: 1 });
    try {
      const service = berth.services.forTeam({ teamId: team.id, role: "owner", actor: { type: "system", id: null }, userId: null, via: "api_key" }).secrets;
      const env = await service.environmentFor(agent.id);
      expect(env).toMatchObject({ SHARED: "agent", TEAM_ONLY: "t" });

      // Copy the agent's ciphertext onto the team-wide row: authenticated data makes it fail to open.
      await database.sql`update secrets set ciphertext = (select ciphertext from secrets where agent_id = ${agent.id} and name = 'SHARED') where agent_id is null and name = 'SHARED'`;
      await expect(service.environmentFor(agent.id)).rejects.toThrow(/authenticate/);
    } finally {
      await database.close();
    }
  });

  it("brokered: the sandbox gets a stable stub, the list shows the brokering, header-unsafe values are refused", async () => {
    const api = berth.client(KEY);
    const agent = await api.agents.create.mutate({ name: "brokered", model: "demo" });
    // The test above left a team-wide row that does not open on purpose.
    for (const item of (await api.secrets.list.query({ limit: 100 })).items) if (item.agentId === null) await api.secrets.delete.mutate({ secretId: item.id });
    const set = await api.secrets.set.mutate({ name: "GH_TOKEN", value: "ghp-real-1", agentId: agent.id, brokered: { hosts: ["API.GitHub.com.", "*.githubusercontent.com"] } });
    expect(set.brokered).toEqual({ hosts: ["api.github.com", "*.githubusercontent.com"], header: "Authorization", template: "Bearer {{value}}" });
    expect(JSON.stringify(set)).not.toContain("ghp-real-1");
    const team = await api.teams.get.query();
    const service = berth.services.forTeam({ teamId: team.id, role: "owner", actor: { type: "system", id: null }, userId: null, via: "api_key" }).secrets;
    const before = (await service.environmentFor(agent.id)).GH_TOKEN!;
    expect(before).toMatch(/^berth-stub-[0-9a-f]{40}$/);
    // Rotation keeps the stub: a running sandbox's copy stays valid, the gateway uses the new value.
    await api.secrets.set.mutate({ name: "GH_TOKEN", value: "ghp-real-2", agentId: agent.id, brokered: { hosts: ["api.github.com"], header: "X-Api-Key", template: "{{value}}" } });
    expect((await service.environmentFor(agent.id)).GH_TOKEN).toBe(before);
    // Setting it without `brokered` makes it a plain secret again.
    await api.secrets.set.mutate({ name: "GH_TOKEN", value: "plain", agentId: agent.id });
    expect((await service.environmentFor(agent.id)).GH_TOKEN).toBe("plain");

    for (const [value, brokered] of [
      ["line\r\nX-Injected: 1", { hosts: ["api.github.com"] }],
      ["caf\u00e9", { hosts: ["api.github.com"] }],
      ["ok", { hosts: [] }],
      ["ok", { hosts: ["https://api.github.com"] }],
      ["ok", { hosts: ["api.github.com"], header: "Host" }],
      ["ok", { hosts: ["api.github.com"], header: "Proxy-Authorization" }],
      ["ok", { hosts: ["api.github.com"], template: "Bearer" }],
      ["ok", { hosts: ["api.github.com"], template: "Bearer {{value}}\nX: y" }],
    ] as const) {
      await expect(api.secrets.set.mutate({ name: "BAD", value, brokered: brokered as never }), JSON.stringify(brokered)).rejects.toThrow();
    }
    expect((await api.secrets.list.query({ limit: 100 })).items.map((item) => item.name)).not.toContain("BAD");
  });

  it("cannot be opened with another key", () => {
    const sealed = new SecretBox(randomBytes(32)).seal("value", "aad");
    expect(() => new SecretBox(randomBytes(32)).open(sealed, "aad")).toThrow();
  });
});
