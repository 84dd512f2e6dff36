import { createTRPCClient, httpBatchLink, TRPCClientError } from "@trpc/client";
import postgres from "postgres";
import superjson from "superjson";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestBerth, type TestBerth } from "../../tests/helpers/berth";
import { createKeyForTeam, createTeamWithKey } from "../../tests/helpers/teams";
import type { AppRouter } from "./router";

const OWNER_KEY = "invitations_owner_key_0123456789abcdef";
const PASSWORD = "a long enough password";

async function codeOf(call: Promise<unknown>): Promise<string> {
  try {
    await call;
  } catch (error) {
    expect(error).toBeInstanceOf(TRPCClientError);
    return ((error as TRPCClientError<never>).data as { code?: string } | undefined)?.code ?? "unknown";
  }
  return "ok";
}

const tokenOf = (invited: { path: string }) => invited.path.slice("/invite#".length);

describe("invitations: people join a team only by accepting", () => {
  let berth: TestBerth;
  let sql: postgres.Sql;
  let owner: ReturnType<TestBerth["client"]>;
  let teamId: string;
  let other: { teamId: string; client: ReturnType<TestBerth["client"]> };

  /** A signed-in browser session of this person (cookie, same origin). */
  async function signIn(email: string, password = PASSWORD) {
    const login = await fetch(`${berth.url}/api/trpc/auth.login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ json: { email, password } }),
    });
    expect(login.status).toBe(200);
    const cookie = login.headers.get("set-cookie")!.split(";")[0]!;
    return createTRPCClient<AppRouter>({
      links: [httpBatchLink({ url: `${berth.url}/api/trpc`, transformer: superjson, headers: { cookie, origin: berth.url } })],
    });
  }

  /** A person with an account in the other team only. */
  async function userOfOtherTeam(email: string) {
    const invited = await other.client.teams.invite.mutate({ email, role: "member" });
    return berth.client().invitations.signUp.mutate({ token: tokenOf(invited), password: PASSWORD });
  }

  const auditOf = (id: string) => sql`select action, actor_type, actor_id, target_id, metadata from audit_log where target_type = 'invitation' and target_id = ${id} order by id`;

  beforeAll(async () => {
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: OWNER_KEY } });
    sql = postgres(berth.databaseUrl, { max: 2, onnotice: () => {} });
    owner = berth.client(OWNER_KEY);
    teamId = (await owner.teams.get.query()).id;
    const team = await createTeamWithKey(berth.databaseUrl, "other", "owner");
    other = { teamId: team.teamId, client: berth.client(team.apiKey) };
  });
  afterAll(async () => {
    await sql?.end();
    await berth?.close();
  });

  it("answers the same for an unknown email, another team's user and a member, and adds nobody", async () => {
    await userOfOtherTeam("bob@example.com");
    const membersBefore = await owner.teams.members.query({});
    const answers: Awaited<ReturnType<typeof owner.teams.invite.mutate>>[] = [];
    for (const email of ["nobody@example.com", "Bob@Example.com", "admin@berth.local"]) answers.push(await owner.teams.invite.mutate({ email, role: "member" }));

    const shapeOf = (answer: (typeof answers)[number]) =>
      JSON.stringify(answer, (key, value: unknown) => (["id", "email", "token", "path", "createdAt", "expiresAt"].includes(key) ? typeof value : value));
    expect(new Set(answers.map(shapeOf)).size).toBe(1);
    expect(answers.map((answer) => answer.invitation)).toEqual([
      expect.objectContaining({ email: "nobody@example.com", role: "member", status: "pending" }),
      expect.objectContaining({ email: "bob@example.com", role: "member", status: "pending" }),
      expect.objectContaining({ email: "admin@berth.local", role: "member", status: "pending" }),
    ]);
    for (const { invitation, token, path } of answers) {
      expect(path).toBe(`/invite#${token}`);
      expect(invitation.expiresAt.getTime() - invitation.createdAt.getTime()).toBe(7 * 24 * 3600 * 1000);
    }
    expect(await owner.teams.members.query({})).toEqual(membersBefore);
    // The invitation link shows the same for all three: nothing about an account.
    const previews = await Promise.all(answers.map((answer) => berth.client().invitations.preview.query({ token: answer.token })));
    expect(new Set(previews.map((preview) => Object.keys(preview).join())).size).toBe(1);

    const listed = await owner.teams.invitations.query({});
    expect(listed.items.map((item) => item.email).sort()).toEqual(["admin@berth.local", "bob@example.com", "nobody@example.com"]);
    expect(JSON.stringify(listed)).not.toContain(answers[0]!.token);
    // Scoped by team: the other team sees none of them.
    expect((await other.client.teams.invitations.query({})).items.map((item) => item.email)).not.toContain("nobody@example.com");
    for (const { invitation } of answers) {
      expect(await auditOf(invitation.id)).toEqual([expect.objectContaining({ action: "member.invited", actor_type: "api_key", metadata: { email: invitation.email, role: "member" } })]);
    }
  });

  it("another team's user joins only by accepting, signed in; accepting again gives the same answer", async () => {
    const bob = await signIn("bob@example.com");
    expect((await bob.auth.me.query()).teams.map((team) => team.id)).toEqual([other.teamId]);
    const mine = await bob.invitations.mine.query();
    expect(mine).toEqual([expect.objectContaining({ team: expect.objectContaining({ id: teamId, slug: "admin" }), role: "member" })]);

    const accepted = await bob.invitations.accept.mutate({ invitationId: mine[0]!.id });
    expect(accepted).toEqual({ teamId, role: "member" });
    expect(await bob.invitations.accept.mutate({ invitationId: mine[0]!.id })).toEqual(accepted);
    expect((await bob.auth.me.query()).teams.map((team) => team.id).sort()).toEqual([teamId, other.teamId].sort());
    expect((await owner.teams.members.query({})).items.map((member) => member.email)).toContain("bob@example.com");
    expect(await bob.invitations.mine.query()).toEqual([]);
    expect((await owner.teams.invitations.query({})).items.map((item) => item.email)).not.toContain("bob@example.com");
    await bob.auth.switchTeam.mutate({ teamId });
    expect(await bob.teams.get.query()).toMatchObject({ id: teamId, role: "member" });

    const bobId = (await bob.auth.me.query()).userId;
    expect(await auditOf(mine[0]!.id)).toEqual([
      expect.objectContaining({ action: "member.invited" }),
      expect.objectContaining({ action: "invitation.accepted", actor_type: "user", actor_id: bobId }),
    ]);
  });

  it("a member invited again keeps their role on accepting", async () => {
    const invited = await owner.teams.invite.mutate({ email: "carol@example.com", role: "admin" });
    await berth.client().invitations.signUp.mutate({ token: tokenOf(invited), password: PASSWORD });
    const again = await owner.teams.invite.mutate({ email: "carol@example.com", role: "member" });
    const carol = await signIn("carol@example.com");
    expect(await carol.invitations.accept.mutate({ invitationId: again.invitation.id })).toEqual({ teamId, role: "admin" });
  });

  it("refuses an invitation to anyone but its email, and to API keys", async () => {
    const invited = await owner.teams.invite.mutate({ email: "dave@example.com", role: "admin" });
    const bob = await signIn("bob@example.com");
    expect(await codeOf(bob.invitations.accept.mutate({ invitationId: invited.invitation.id }))).toBe("NOT_FOUND");
    expect(await codeOf(bob.invitations.decline.mutate({ invitationId: invited.invitation.id }))).toBe("NOT_FOUND");
    expect((await bob.invitations.mine.query()).map((item) => item.id)).not.toContain(invited.invitation.id);
    expect(await codeOf(other.client.invitations.accept.mutate({ invitationId: invited.invitation.id }))).toBe("FORBIDDEN");
    expect(await codeOf(other.client.invitations.mine.query())).toBe("FORBIDDEN");
    expect(await codeOf(berth.client().invitations.mine.query())).toBe("UNAUTHORIZED");
    expect((await owner.teams.invitations.query({})).items.find((item) => item.id === invited.invitation.id)).toMatchObject({ status: "pending" });
  });

  it("the link's token never touches an existing account", async () => {
    await userOfOtherTeam("erin@example.com");
    const invited = await owner.teams.invite.mutate({ email: "erin@example.com", role: "owner" });
    const [before] = await sql`select password_hash, name from users where email = 'erin@example.com'`;
    expect(await codeOf(berth.client().invitations.signUp.mutate({ token: tokenOf(invited), name: "Mallory", password: "the attacker's password" }))).toBe("CONFLICT");
    expect((await sql`select password_hash, name from users where email = 'erin@example.com'`)[0]).toEqual(before);
    expect((await owner.teams.members.query({})).items.map((member) => member.email)).not.toContain("erin@example.com");
    // Erin can still accept it herself.
    const erin = await signIn("erin@example.com");
    expect(await erin.invitations.accept.mutate({ invitationId: invited.invitation.id })).toEqual({ teamId, role: "owner" });
  });

  it("a new person's link creates the account, signs in and joins; the link works once", async () => {
    const invited = await owner.teams.invite.mutate({ email: "frank@example.com", role: "member" });
    const preview = await berth.client().invitations.preview.query({ token: tokenOf(invited) });
    expect(preview).toMatchObject({ team: { name: "Admin" }, email: "frank@example.com", role: "member" });
    const response = await fetch(`${berth.url}/api/trpc/invitations.signUp`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ json: { token: tokenOf(invited), name: "Frank", password: PASSWORD } }),
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("set-cookie")).toMatch(/^berth_session=[^;]+; Path=\/; HttpOnly/);
    const cookie = response.headers.get("set-cookie")!.split(";")[0]!;
    const me = (await (await fetch(`${berth.url}/api/trpc/auth.me`, { headers: { cookie } })).json()) as { result: { data: { json: { teamId: string } } } };
    expect(me.result.data.json.teamId).toBe(teamId);
    expect(await codeOf(berth.client().invitations.signUp.mutate({ token: tokenOf(invited), password: PASSWORD }))).toBe("NOT_FOUND");
    expect(await codeOf(berth.client().invitations.preview.query({ token: tokenOf(invited) }))).toBe("NOT_FOUND");
  });

  it("expires after 7 days; inviting again renews it with a new link", async () => {
    const invited = await owner.teams.invite.mutate({ email: "late@example.com", role: "member" });
    await sql`update invitations set expires_at = now() - interval '1 second' where id = ${invited.invitation.id}`;
    expect(await codeOf(berth.client().invitations.preview.query({ token: tokenOf(invited) }))).toBe("CONFLICT");
    expect(await codeOf(berth.client().invitations.signUp.mutate({ token: tokenOf(invited), password: PASSWORD }))).toBe("CONFLICT");
    expect((await owner.teams.invitations.query({})).items.find((item) => item.id === invited.invitation.id)).toMatchObject({ status: "expired" });
    expect(await sql`select 1 from users where email = 'late@example.com'`).toHaveLength(0);

    const renewed = await owner.teams.invite.mutate({ email: "late@example.com", role: "member" });
    expect(renewed.invitation).toMatchObject({ id: invited.invitation.id, status: "pending" });
    expect(await codeOf(berth.client().invitations.preview.query({ token: tokenOf(invited) }))).toBe("NOT_FOUND");
    expect(await berth.client().invitations.signUp.mutate({ token: tokenOf(renewed), password: PASSWORD })).toMatchObject({ teamId });

    // Signed in, an expired invitation is not listed and cannot be accepted either.
    const bob = await signIn("bob@example.com");
    const forBob = await other.client.teams.invite.mutate({ email: "bob@example.com", role: "member" });
    await sql`update invitations set expires_at = now() - interval '1 second' where id = ${forBob.invitation.id}`;
    expect(await bob.invitations.mine.query()).toEqual([]);
    expect(await codeOf(bob.invitations.accept.mutate({ invitationId: forBob.invitation.id }))).toBe("CONFLICT");
  });

  it("admins revoke; a revoked invitation cannot be used; roles and teams are checked", async () => {
    const invited = await owner.teams.invite.mutate({ email: "gone@example.com", role: "member" });
    const member = berth.client(await createKeyForTeam(berth.databaseUrl, teamId, "member"));
    const admin = berth.client(await createKeyForTeam(berth.databaseUrl, teamId, "admin"));
    expect(await codeOf(member.teams.invite.mutate({ email: "x@example.com", role: "member" }))).toBe("FORBIDDEN");
    expect(await codeOf(member.teams.invitations.query({}))).toBe("FORBIDDEN");
    expect(await codeOf(member.teams.revokeInvitation.mutate({ invitationId: invited.invitation.id }))).toBe("FORBIDDEN");
    expect(await codeOf(admin.teams.invite.mutate({ email: "x@example.com", role: "owner" }))).toBe("FORBIDDEN");
    expect(await codeOf(other.client.teams.revokeInvitation.mutate({ invitationId: invited.invitation.id }))).toBe("NOT_FOUND");

    expect(await admin.teams.revokeInvitation.mutate({ invitationId: invited.invitation.id })).toMatchObject({ status: "revoked" });
    expect(await admin.teams.revokeInvitation.mutate({ invitationId: invited.invitation.id })).toMatchObject({ status: "revoked" });
    expect((await owner.teams.invitations.query({})).items.map((item) => item.id)).not.toContain(invited.invitation.id);
    expect(await codeOf(berth.client().invitations.signUp.mutate({ token: tokenOf(invited), password: PASSWORD }))).toBe("NOT_FOUND");
    expect(await sql`select 1 from users where email = 'gone@example.com'`).toHaveLength(0);
    expect(await auditOf(invited.invitation.id)).toEqual([
      expect.objectContaining({ action: "member.invited" }),
      expect.objectContaining({ action: "invitation.revoked", actor_type: "api_key" }),
    ]);

    // Accepted ones cannot be revoked; a signed-in person's revoked invitation cannot be accepted.
    const forBob = await owner.teams.invite.mutate({ email: "bob@example.com", role: "admin" });
    await owner.teams.revokeInvitation.mutate({ invitationId: forBob.invitation.id });
    const bob = await signIn("bob@example.com");
    expect(await codeOf(bob.invitations.accept.mutate({ invitationId: forBob.invitation.id }))).toBe("CONFLICT");
  });

  it("the invited person can decline", async () => {
    const invited = await owner.teams.invite.mutate({ email: "bob@example.com", role: "admin" });
    const bob = await signIn("bob@example.com");
    expect(await bob.invitations.decline.mutate({ invitationId: invited.invitation.id })).toEqual({ invitationId: invited.invitation.id });
    expect(await codeOf(bob.invitations.accept.mutate({ invitationId: invited.invitation.id }))).toBe("CONFLICT");
    expect(await codeOf(owner.teams.revokeInvitation.mutate({ invitationId: invited.invitation.id }))).toBe("CONFLICT");
    expect((await owner.teams.members.query({})).items.find((item) => item.email === "bob@example.com")).toMatchObject({ role: "member" });
  });
});
