import { createHash, randomBytes } from "node:crypto";
import { and, asc, desc, eq, gt, sql } from "drizzle-orm";
import type { Database, DatabaseOrTransaction } from "../../db/client";
import { invitations, memberships, teams, users } from "../../db/schema";
import { hashPassword } from "../auth/passwords";
import { recordAudit } from "./audit";
import { conflict, forbidden, notFound } from "./errors";
import { before, cursorAt, toPage, type Page } from "./pagination";
import { requireRole, type Principal, type Role } from "./principal";

/** How long an invitation can be accepted; inviting the same email again renews it. */
export const INVITATION_DAYS = 7;

/** `expired`: still pending, but past its `expiresAt`; it can no longer be accepted. */
export type InvitationStatus = "pending" | "expired" | "accepted" | "declined" | "revoked";

/** What the inviting team sees of an invitation. Never the token, never anything about the invited person's account. */
export type Invitation = { id: string; email: string; role: Role; status: InvitationStatus; createdAt: Date; expiresAt: Date };

/** What the invited person sees: which team invites them, as what. */
export type ReceivedInvitation = { id: string; team: { id: string; slug: string; name: string }; role: Role; createdAt: Date; expiresAt: Date };

function tokenHashOf(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/** The path of the page where the invited person opens an invitation (the token is in the fragment: never sent to a server, never in a log or a Referer). */
export function invitationPath(token: string): string {
  return `/invite#${token}`;
}

function statusOf(row: { status: Exclude<InvitationStatus, "expired">; expiresAt: Date }, now = new Date()): InvitationStatus {
  return row.status === "pending" && row.expiresAt.getTime() <= now.getTime() ? "expired" : row.status;
}

function viewOf(row: typeof invitations.$inferSelect): Invitation {
  return { id: row.id, email: row.email, role: row.role, status: statusOf(row), createdAt: row.createdAt, expiresAt: row.expiresAt };
}

/**
 * The caller's team's invitations (admins and owners). Inviting never reads `users`: the answer is
 * the same whether the email has an account, belongs to a member already, or is unknown, and nobody
 * joins until the invited person accepts.
 */
export class TeamInvitationService {
  constructor(
    private readonly db: Database,
    private readonly principal: Principal,
  ) {}

  /** Creates the pending invitation for this email, or renews it (new token, role and expiry). The token is returned once. */
  async invite(input: { email: string; role: Role }): Promise<{ invitation: Invitation; token: string; path: string }> {
    requireRole(this.principal, "admin", "inviting members");
    if (input.role === "owner") requireRole(this.principal, "owner", "inviting an owner");
    const email = input.email.trim().toLowerCase();
    const token = randomBytes(32).toString("base64url");
    const values = {
      tokenHash: tokenHashOf(token),
      role: input.role,
      invitedByUserId: this.principal.userId,
      createdAt: sql`now()`,
      expiresAt: sql`now() + make_interval(days => ${INVITATION_DAYS})`,
    };
    return this.db.transaction(async (tx) => {
      const [row] = await tx
        .insert(invitations)
        .values({ teamId: this.principal.teamId, email, ...values })
        .onConflictDoUpdate({ target: [invitations.teamId, invitations.email], targetWhere: sql`${invitations.status} = 'pending'`, set: values })
        .returning();
      await recordAudit(tx, {
        teamId: this.principal.teamId,
        actor: this.principal.actor,
        action: "member.invited",
        targetType: "invitation",
        targetId: row!.id,
        metadata: { email, role: input.role },
      });
      return { invitation: viewOf(row!), token, path: invitationPath(token) };
    });
  }

  /** Invitations not yet answered (expired ones too, so an admin sees them and can invite again), newest first. */
  async list(input: { cursor?: string; limit: number }): Promise<Page<Invitation>> {
    requireRole(this.principal, "admin", "listing invitations");
    const rows = await this.db
      .select({ row: invitations, at: cursorAt(invitations.createdAt) })
      .from(invitations)
      .where(and(eq(invitations.teamId, this.principal.teamId), eq(invitations.status, "pending"), before(invitations.createdAt, invitations.id, input.cursor)))
      .orderBy(desc(invitations.createdAt), desc(invitations.id))
      .limit(input.limit + 1);
    return toPage(rows, input.limit, ({ at, row }) => ({ at, id: row.id }), ({ row }) => viewOf(row));
  }

  async revoke(input: { invitationId: string }): Promise<Invitation> {
    requireRole(this.principal, "admin", "revoking invitations");
    return this.db.transaction(async (tx) => {
      const [current] = await tx
        .select()
        .from(invitations)
        .where(and(eq(invitations.id, input.invitationId), eq(invitations.teamId, this.principal.teamId)))
        .for("update");
      if (!current) throw notFound("invitation");
      if (current.status === "revoked") return viewOf(current);
      if (current.status !== "pending") throw conflict(`this invitation was already ${current.status}`);
      const [row] = await tx
        .update(invitations)
        .set({ status: "revoked", respondedAt: sql`now()` })
        .where(and(eq(invitations.id, input.invitationId), eq(invitations.teamId, this.principal.teamId)))
        .returning();
      await recordAudit(tx, {
        teamId: this.principal.teamId,
        actor: this.principal.actor,
        action: "invitation.revoked",
        targetType: "invitation",
        targetId: row!.id,
        metadata: { email: row!.email, role: row!.role },
      });
      return viewOf(row!);
    });
  }
}

type Tx = Parameters<Parameters<Database["transaction"]>[0]>[0];

/**
 * The invitations a person received, answered by them: signed in (the invitation's email must be
 * their account's), or, for a person with no account yet, through the invitation link's token.
 * Each query is scoped by the invited email; an invitation for another email is NOT_FOUND.
 */
export class ReceivedInvitationService {
  constructor(private readonly db: Database) {}

  /** Pending, unexpired invitations for a signed-in user (API keys belong to a team, not a person). */
  async listFor(principal: Principal): Promise<ReceivedInvitation[]> {
    const email = await this.emailOf(this.db, principal);
    const rows = await this.db
      .select({ row: invitations, team: { id: teams.id, slug: teams.slug, name: teams.name } })
      .from(invitations)
      .innerJoin(teams, eq(teams.id, invitations.teamId))
      .where(and(eq(invitations.email, email), eq(invitations.status, "pending"), gt(invitations.expiresAt, sql`now()`)))
      .orderBy(asc(invitations.createdAt))
      .limit(100);
    return rows.map(({ row, team }) => ({ id: row.id, team, role: row.role, createdAt: row.createdAt, expiresAt: row.expiresAt }));
  }

  /**
   * Joins the team. Accepting again is a no-op with the same answer. A person who is a member
   * already keeps their role (an invitation never changes a role).
   */
  async accept(principal: Principal, input: { invitationId: string }): Promise<{ teamId: string; role: Role }> {
    return this.db.transaction(async (tx) => {
      const email = await this.emailOf(tx, principal);
      const row = await this.lockForEmail(tx, input.invitationId, email);
      if (row.status === "accepted" && row.acceptedByUserId === principal.userId) return { teamId: row.teamId, role: await this.roleIn(tx, row.teamId, principal.userId!) };
      this.ensureOpen(row);
      return this.join(tx, row, principal.userId!);
    });
  }

  async decline(principal: Principal, input: { invitationId: string }): Promise<{ invitationId: string }> {
    await this.db.transaction(async (tx) => {
      const email = await this.emailOf(tx, principal);
      const row = await this.lockForEmail(tx, input.invitationId, email);
      if (row.status === "declined") return;
      this.ensureOpen(row);
      await tx.update(invitations).set({ status: "declined", respondedAt: sql`now()` }).where(eq(invitations.id, row.id));
      await recordAudit(tx, {
        teamId: row.teamId,
        actor: { type: "user", id: principal.userId },
        action: "invitation.declined",
        targetType: "invitation",
        targetId: row.id,
        metadata: { email: row.email },
      });
    });
    return { invitationId: input.invitationId };
  }

  /** What the invitation link shows: the team, the email, the role. Nothing about whether the email has an account. */
  async preview(token: string): Promise<{ team: { name: string }; email: string; role: Role; expiresAt: Date }> {
    const [found] = await this.db
      .select({ row: invitations, teamName: teams.name })
      .from(invitations)
      .innerJoin(teams, eq(teams.id, invitations.teamId))
      .where(eq(invitations.tokenHash, tokenHashOf(token)));
    if (!found || found.row.status !== "pending") throw notFound("invitation");
    this.ensureOpen(found.row);
    return { team: { name: found.teamName }, email: found.row.email, role: found.row.role, expiresAt: found.row.expiresAt };
  }

  /**
   * For a person with no account yet: the link's token creates the account of the invited email
   * with the chosen password, and joins the team. An email that has an account already must sign
   * in and accept instead: the token never touches an existing account.
   */
  async signUp(input: { token: string; name: string; password: string }): Promise<{ userId: string; teamId: string; email: string; role: Role }> {
    const passwordHash = await hashPassword(input.password);
    return this.db.transaction(async (tx) => {
      const [row] = await tx.select().from(invitations).where(eq(invitations.tokenHash, tokenHashOf(input.token))).for("update");
      if (!row || row.status !== "pending") throw notFound("invitation");
      this.ensureOpen(row);
      const [user] = await tx.insert(users).values({ email: row.email, name: input.name, passwordHash }).onConflictDoNothing().returning();
      if (!user) throw conflict("this email has a Berth account already: sign in with it and accept the invitation on your dashboard");
      const joined = await this.join(tx, row, user.id);
      return { userId: user.id, email: user.email, ...joined };
    });
  }

  private async join(tx: Tx, row: typeof invitations.$inferSelect, userId: string): Promise<{ teamId: string; role: Role }> {
    await tx.insert(memberships).values({ teamId: row.teamId, userId, role: row.role }).onConflictDoNothing();
    await tx
      .update(invitations)
      .set({ status: "accepted", acceptedByUserId: userId, respondedAt: sql`now()` })
      .where(eq(invitations.id, row.id));
    await recordAudit(tx, {
      teamId: row.teamId,
      actor: { type: "user", id: userId },
      action: "invitation.accepted",
      targetType: "invitation",
      targetId: row.id,
      metadata: { email: row.email, userId, role: row.role },
    });
    return { teamId: row.teamId, role: await this.roleIn(tx, row.teamId, userId) };
  }

  private async roleIn(tx: DatabaseOrTransaction, teamId: string, userId: string): Promise<Role> {
    const [membership] = await tx
      .select({ role: memberships.role })
      .from(memberships)
      .where(and(eq(memberships.teamId, teamId), eq(memberships.userId, userId)));
    // Accepted earlier, then removed from the team: the invitation is used up.
    if (!membership) throw conflict("this invitation was used already; ask the team for a new one");
    return membership.role;
  }

  private ensureOpen(row: typeof invitations.$inferSelect): void {
    const status = statusOf(row);
    if (status === "expired") throw conflict("this invitation has expired; ask the team for a new one");
    if (status !== "pending") throw conflict(`this invitation was ${status}`);
  }

  private async lockForEmail(tx: Tx, invitationId: string, email: string) {
    const [row] = await tx
      .select()
      .from(invitations)
      .where(and(eq(invitations.id, invitationId), eq(invitations.email, email)))
      .for("update");
    if (!row) throw notFound("invitation");
    return row;
  }

  private async emailOf(db: DatabaseOrTransaction, principal: Principal): Promise<string> {
    if (principal.via !== "session" || !principal.userId) throw forbidden("invitations are answered by a signed-in person, not an API key");
    const [user] = await db.select({ email: users.email }).from(users).where(eq(users.id, principal.userId));
    if (!user) throw notFound("user");
    return user.email;
  }
}
