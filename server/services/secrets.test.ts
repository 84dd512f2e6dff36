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

  it("cannot be opened with another key", () => {
    const sealed = new SecretBox(randomBytes(32)).seal("value", "aad");
    expect(() => new SecretBox(randomBytes(32)).open(sealed, "aad")).toThrow();
  });
});
