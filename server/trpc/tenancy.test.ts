import { TRPCClientError } from "@trpc/client";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestBerth, type TestBerth } from "../../tests/helpers/berth";
import { createTeamWithKey } from "../../tests/helpers/teams";

const OWNER_KEY = "tenancy_owner_key_0123456789abcdefgh";

/** Every tenant table, as it is stored, minus the one column a request may touch (last use of a key). */
async function snapshot(sql: postgres.Sql) {
  return {
    teams: await sql`select * from teams order by id`,
    users: await sql`select * from users order by id`,
    memberships: await sql`select * from memberships order by team_id, user_id`,
    apiKeys: await sql`select id, team_id, name, prefix, hash, role, revoked_at from api_keys order by id`,
    agents: await sql`select * from agents order by id`,
    agentVersions: await sql`select * from agent_versions order by agent_id, version`,
    secrets: await sql`select * from secrets order by id`,
    auditLog: await sql`select * from audit_log order by id`,
    loginSessions: await sql`select * from login_sessions order by id`,
    invitations: await sql`select * from invitations order by id`,
  };
}

async function expectNotFound(call: Promise<unknown>) {
  try {
    await call;
  } catch (error) {
    expect(error).toBeInstanceOf(TRPCClientError);
    expect((error as TRPCClientError<never>).data).toMatchObject({ code: "NOT_FOUND" });
    return;
  }
  throw new Error("expected NOT_FOUND, but the call succeeded");
}

describe("team isolation: another team's ids are NOT_FOUND and change nothing", () => {
  let berth: TestBerth;
  let sql: postgres.Sql;
  let victim: { invitationId: string; agentId: string; secretId: string; agentSecretId: string; keyId: string; userId: string; teamId: string };
  let attacker: ReturnType<TestBerth["client"]>;

  beforeAll(async () => {
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: OWNER_KEY } });
    sql = postgres(berth.databaseUrl, { max: 2, onnotice: () => {} });
    const owner = berth.client(OWNER_KEY);
    const team = await owner.teams.get.query();
    const agent = await owner.agents.create.mutate({ name: "victim-agent", model: "demo" });
    const secret = await owner.secrets.set.mutate({ name: "VICTIM_TOKEN", value: "victim-secret-value" });
    const agentSecret = await owner.secrets.set.mutate({ name: "VICTIM_AGENT_TOKEN", value: "victim-agent-secret", agentId: agent.id });
    const key = await owner.apiKeys.create.mutate({ name: "victim-key", role: "member" });
    const invited = await owner.teams.invite.mutate({ email: "victim@example.com", role: "member" });
    const member = await berth.client().invitations.signUp.mutate({ token: invited.path.slice("/invite#".length), password: "victim password 1" });
    const pending = await owner.teams.invite.mutate({ email: "pending@example.com", role: "admin" });
    victim = { invitationId: pending.invitation.id, agentId: agent.id, secretId: secret.id, agentSecretId: agentSecret.id, keyId: key.id, userId: member.userId, teamId: team.id };

    // The attacker is the owner of another team: every role check passes, only the team differs.
    const other = await createTeamWithKey(berth.databaseUrl, "attacker", "owner");
    attacker = berth.client(other.apiKey);
    await attacker.agents.create.mutate({ name: "attacker-agent", model: "demo" });
  });
  afterAll(async () => {
    await sql?.end();
    await berth?.close();
  });

  it("refuses every procedure that names a resource of another team", async () => {
    const before = await snapshot(sql);
    const { agentId, secretId, agentSecretId, keyId, userId, invitationId } = victim;

    await expectNotFound(attacker.agents.get.query({ agentId }));
    await expectNotFound(attacker.agents.get.query({ agentId, version: 1 }));
    await expectNotFound(attacker.agents.versions.query({ agentId }));
    await expectNotFound(attacker.agents.update.mutate({ agentId, model: "stolen" }));
    await expectNotFound(attacker.agents.update.mutate({ agentId, name: "renamed" }));
    await expectNotFound(attacker.agents.delete.mutate({ agentId }));
    await expectNotFound(attacker.secrets.set.mutate({ name: "INJECTED", value: "x", agentId }));
    await expectNotFound(attacker.secrets.list.query({ agentId }));
    await expectNotFound(attacker.secrets.delete.mutate({ secretId }));
    await expectNotFound(attacker.secrets.delete.mutate({ secretId: agentSecretId }));
    await expectNotFound(attacker.apiKeys.revoke.mutate({ keyId }));
    await expectNotFound(attacker.teams.removeMember.mutate({ userId }));
    await expectNotFound(attacker.teams.setMemberRole.mutate({ userId, role: "owner" }));
    await expectNotFound(attacker.teams.revokeInvitation.mutate({ invitationId }));

    expect(await snapshot(sql)).toEqual(before);
  });

  it("never lists another team's rows", async () => {
    const agents = await attacker.agents.list.query({ limit: 100 });
    expect(agents.items.map((agent) => agent.name)).toEqual(["attacker-agent"]);
    expect((await attacker.secrets.list.query({ limit: 100 })).items).toEqual([]);
    expect((await attacker.apiKeys.list.query({ limit: 100, includeRevoked: true })).items.map((key) => key.id)).not.toContain(victim.keyId);
    expect((await attacker.teams.members.query({ limit: 100 })).items).toEqual([]);
    expect((await attacker.teams.invitations.query({ limit: 100 })).items).toEqual([]);
    const audit = await attacker.audit.list.query({ limit: 100, targetId: victim.agentId });
    expect(audit.items).toEqual([]);
    expect((await attacker.teams.get.query()).id).not.toBe(victim.teamId);
  });

  it("does not let a web login into a team its user does not belong to", async () => {
    const login = await fetch(`${berth.url}/api/trpc/auth.login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ json: { email: "victim@example.com", password: "victim password 1", teamId: (await attacker.teams.get.query()).id } }),
    });
    expect(login.status).toBe(404);
  });
});
