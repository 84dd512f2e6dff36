import { and, count, desc, eq } from "drizzle-orm";
import type { Database } from "../../db/client";
import { loginSessions, memberships, teams, users } from "../../db/schema";
import { recordAudit } from "./audit";
import { forbidden, notFound } from "./errors";
import { before, cursorAt, toPage, type Page } from "./pagination";
import { requireRole, type Principal, type Role } from "./principal";

export type Member = { userId: string; email: string; name: string; role: Role; joinedAt: Date };

/** The caller's own team and its members. People join by invitation (invitations.ts), never by being added. */
export class TeamService {
  constructor(
    private readonly db: Database,
    private readonly principal: Principal,
  ) {}

  async get() {
    const [team] = await this.db.select().from(teams).where(eq(teams.id, this.principal.teamId));
    if (!team) throw notFound("team");
    const [members] = await this.db.select({ value: count() }).from(memberships).where(eq(memberships.teamId, team.id));
    return { id: team.id, slug: team.slug, name: team.name, createdAt: team.createdAt, role: this.principal.role, memberCount: members?.value ?? 0 };
  }

  async listMembers(input: { cursor?: string; limit: number }): Promise<Page<Member>> {
    const rows = await this.db
      .select({ userId: users.id, email: users.email, name: users.name, role: memberships.role, joinedAt: memberships.createdAt, at: cursorAt(memberships.createdAt) })
      .from(memberships)
      .innerJoin(users, eq(users.id, memberships.userId))
      .where(and(eq(memberships.teamId, this.principal.teamId), before(memberships.createdAt, memberships.userId, input.cursor)))
      .orderBy(desc(memberships.createdAt), desc(memberships.userId))
      .limit(input.limit + 1);
    return toPage(rows, input.limit, (row) => ({ at: row.at, id: row.userId }), ({ at: _at, ...member }) => member);
  }

  async removeMember(input: { userId: string }): Promise<void> {
    requireRole(this.principal, "admin", "removing members");
    await this.db.transaction(async (tx) => {
      const membership = await this.lockMembership(tx, input.userId);
      if (membership.role === "owner") {
        requireRole(this.principal, "owner", "removing an owner");
        await this.ensureAnotherOwner(tx, input.userId);
      }
      await tx.delete(memberships).where(and(eq(memberships.teamId, this.principal.teamId), eq(memberships.userId, input.userId)));
      await tx.delete(loginSessions).where(and(eq(loginSessions.teamId, this.principal.teamId), eq(loginSessions.userId, input.userId)));
      await recordAudit(tx, { teamId: this.principal.teamId, actor: this.principal.actor, action: "member.remove", targetType: "user", targetId: input.userId });
    });
  }

  async setMemberRole(input: { userId: string; role: Role }): Promise<Member> {
    requireRole(this.principal, "admin", "changing roles");
    return this.db.transaction(async (tx) => {
      const membership = await this.lockMembership(tx, input.userId);
      if (membership.role === "owner" || input.role === "owner") requireRole(this.principal, "owner", "granting or changing the owner role");
      if (membership.role === "owner" && input.role !== "owner") await this.ensureAnotherOwner(tx, input.userId);
      const [updated] = await tx
        .update(memberships)
        .set({ role: input.role })
        .where(and(eq(memberships.teamId, this.principal.teamId), eq(memberships.userId, input.userId)))
        .returning();
      await recordAudit(tx, { teamId: this.principal.teamId, actor: this.principal.actor, action: "member.role", targetType: "user", targetId: input.userId, metadata: { from: membership.role, to: input.role } });
      const [user] = await tx.select().from(users).where(eq(users.id, input.userId));
      return { userId: input.userId, email: user!.email, name: user!.name, role: updated!.role, joinedAt: updated!.createdAt };
    });
  }

  private async lockMembership(tx: Parameters<Parameters<Database["transaction"]>[0]>[0], userId: string) {
    // Lock every owner row first, so two concurrent demotions cannot both see "another owner".
    await tx.select().from(memberships).where(and(eq(memberships.teamId, this.principal.teamId), eq(memberships.role, "owner"))).for("update");
    const [membership] = await tx
      .select()
      .from(memberships)
      .where(and(eq(memberships.teamId, this.principal.teamId), eq(memberships.userId, userId)))
      .for("update");
    if (!membership) throw notFound("member");
    return membership;
  }

  private async ensureAnotherOwner(tx: Parameters<Parameters<Database["transaction"]>[0]>[0], userId: string) {
    const owners = await tx
      .select({ userId: memberships.userId })
      .from(memberships)
      .where(and(eq(memberships.teamId, this.principal.teamId), eq(memberships.role, "owner")));
    if (!owners.some((owner) => owner.userId !== userId)) throw forbidden("a team must keep at least one owner");
  }
}
