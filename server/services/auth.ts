import { createHash, randomBytes } from "node:crypto";
import { and, asc, eq, gt, isNull, lt, or, sql } from "drizzle-orm";
import type { Database } from "../../db/client";
import { apiKeys, loginSessions, memberships, teams, users } from "../../db/schema";
import { hashApiKey } from "../auth/api-keys";
import { hashPassword, verifyPassword } from "../auth/passwords";
import type { LoginThrottle } from "./login-throttle";
import type { Logger } from "../logger";
import { recordAudit } from "./audit";
import { DomainError, notFound } from "./errors";
import type { Principal, Role } from "./principal";

const LOGIN_SESSION_DAYS = 7;
const LAST_USED_RESOLUTION = sql`interval '1 minute'`;

function sessionIdOf(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/** Authenticates API keys and web logins into Principals. */
export class AuthService {
  /** Verified against when the email is unknown, so both failures take the same time. */
  private readonly dummyHash = hashPassword(randomBytes(16).toString("hex"));

  /**
   * Valid keys this process looked up recently, by key hash, in insertion order (the oldest is
   * dropped first). Only valid keys are kept: an unknown or revoked key is looked up every time.
   */
  private readonly keyCache = new Map<string, { keyId: string; teamId: string; role: Role; expiresAt: number }>();

  /**
   * @param options.cacheMs how long a valid key's lookup is reused (0: never). A revocation removes it
   *   at once in this process (`forgetApiKey`, also reached from other replicas through the event bus);
   *   the lifetime only bounds how long a revocation whose notification was missed goes unseen.
   */
  constructor(
    private readonly db: Database,
    private readonly logger: Logger,
    private readonly options: { cacheMs: number; cacheSize?: number; throttle?: LoginThrottle } = { cacheMs: 0 },
  ) {
    // Built once: the hottest query of the API (every request with a key not in the cache).
    this.lookupKeyQuery = db
      .select({ id: apiKeys.id, teamId: apiKeys.teamId, role: apiKeys.role })
      .from(apiKeys)
      .where(and(eq(apiKeys.hash, sql.placeholder("hash")), isNull(apiKeys.revokedAt)))
      .prepare("berth_auth_api_key");
  }

  private readonly lookupKeyQuery;

  async authenticateApiKey(key: string): Promise<Principal | null> {
    const hash = hashApiKey(key);
    const now = Date.now();
    let row = this.cachedKey(hash, now);
    if (!row) {
      const forgetsBefore = this.forgets;
      const [found] = await this.lookupKeyQuery.execute({ hash });
      if (!found) return null;
      row = { keyId: found.id, teamId: found.teamId, role: found.role, expiresAt: now + this.options.cacheMs };
      // A revocation during the lookup may not be in what it read: such a row is used once, not kept.
      if (this.options.cacheMs > 0 && this.forgets === forgetsBefore) this.remember(hash, row);
    }
    // At most one write a minute per key: "last used" does not need to cost a write per request.
    if (now - (this.lastUseRecorded.get(row.keyId) ?? 0) > 60_000) {
      this.lastUseRecorded.set(row.keyId, now);
      void this.recordUse(row.keyId);
    }
    return { teamId: row.teamId, role: row.role, actor: { type: "api_key", id: row.keyId }, userId: null, via: "api_key" };
  }

  /** Drops a key from this process's lookup cache (called on revocation, here and from other replicas). */
  forgetApiKey(keyId: string): void {
    this.forgets++;
    for (const [hash, entry] of this.keyCache) if (entry.keyId === keyId) this.keyCache.delete(hash);
  }

  /** Drops every cached key: a revocation's notification may have been missed (the listening connection dropped). */
  forgetAllApiKeys(): void {
    this.forgets++;
    this.keyCache.clear();
  }

  /** Counts forget calls, so a lookup that overlapped one is not cached. */
  private forgets = 0;

  private cachedKey(hash: string, now: number) {
    const entry = this.keyCache.get(hash);
    if (!entry) return undefined;
    if (entry.expiresAt > now) return entry;
    this.keyCache.delete(hash);
    return undefined;
  }

  private remember(hash: string, entry: { keyId: string; teamId: string; role: Role; expiresAt: number }) {
    this.keyCache.delete(hash);
    this.keyCache.set(hash, entry);
    const limit = this.options.cacheSize ?? 10_000;
    for (const oldest of this.keyCache.keys()) {
      if (this.keyCache.size <= limit) break;
      this.keyCache.delete(oldest);
    }
  }

  /** When this process last recorded each key's use (bounded by the number of keys). */
  private readonly lastUseRecorded = new Map<string, number>();

  private async recordUse(keyId: string): Promise<void> {
    await this.db
      .update(apiKeys)
      .set({ lastUsedAt: sql`now()` })
      .where(and(eq(apiKeys.id, keyId), or(isNull(apiKeys.lastUsedAt), lt(apiKeys.lastUsedAt, sql`now() - ${LAST_USED_RESOLUTION}`))))
      .catch((error: unknown) => this.logger.warn({ err: error }, "could not record API key use"));
  }

  async authenticateSession(token: string): Promise<Principal | null> {
    const id = sessionIdOf(token);
    const [row] = await this.db
      .select({ userId: loginSessions.userId, teamId: loginSessions.teamId, role: memberships.role })
      .from(loginSessions)
      .innerJoin(memberships, and(eq(memberships.userId, loginSessions.userId), eq(memberships.teamId, loginSessions.teamId)))
      .where(and(eq(loginSessions.id, id), gt(loginSessions.expiresAt, sql`now()`)));
    if (!row) return null;
    return { teamId: row.teamId, role: row.role, actor: { type: "user", id: row.userId }, userId: row.userId, via: "session", loginSessionId: id };
  }

  /**
   * Email and password to a login session in the requested team (or the user's first team).
   * `clientAddress` is the caller's IP address, for the brute-force limits (LoginThrottle).
   */
  async login(input: { email: string; password: string; teamId?: string }, clientAddress: string | null = null): Promise<{ token: string; expiresAt: Date; principal: Principal }> {
    const email = input.email.trim().toLowerCase();
    const attempt = await this.options.throttle?.begin(email, clientAddress).catch((error: unknown) => {
      if (error instanceof DomainError) this.logger.warn({ email, clientAddress }, "login refused: too many failed attempts");
      throw error;
    });
    const [user] = await this.db.select().from(users).where(eq(users.email, email));
    const valid = user?.passwordHash
      ? await verifyPassword(input.password, user.passwordHash)
      : (await verifyPassword(input.password, await this.dummyHash), false);
    if (!user || !valid) {
      this.logger.info({ email, clientAddress }, "failed login");
      throw new DomainError("unauthenticated", "email or password is incorrect");
    }
    if (attempt) await this.options.throttle!.succeeded(attempt);
    const teamMemberships = await this.db
      .select({ teamId: memberships.teamId, role: memberships.role })
      .from(memberships)
      .where(eq(memberships.userId, user.id))
      .orderBy(asc(memberships.createdAt));
    const membership = input.teamId ? teamMemberships.find((m) => m.teamId === input.teamId) : teamMemberships[0];
    if (!membership) {
      if (input.teamId) throw notFound("team");
      throw new DomainError("forbidden", "this user belongs to no team");
    }
    const token = randomBytes(32).toString("base64url");
    const expiresAt = new Date(Date.now() + LOGIN_SESSION_DAYS * 24 * 3600 * 1000);
    await this.db.transaction(async (tx) => {
      await tx.insert(loginSessions).values({ id: sessionIdOf(token), userId: user.id, teamId: membership.teamId, expiresAt });
      await recordAudit(tx, { teamId: membership.teamId, actor: { type: "user", id: user.id }, action: "user.login", targetType: "user", targetId: user.id });
    });
    return {
      token,
      expiresAt,
      principal: { teamId: membership.teamId, role: membership.role, actor: { type: "user", id: user.id }, userId: user.id, via: "session", loginSessionId: sessionIdOf(token) },
    };
  }

  async logout(principal: Principal): Promise<void> {
    if (!principal.loginSessionId) return;
    await this.db.transaction(async (tx) => {
      await tx.delete(loginSessions).where(eq(loginSessions.id, principal.loginSessionId!));
      await recordAudit(tx, { teamId: principal.teamId, actor: principal.actor, action: "user.logout", targetType: "user", targetId: principal.userId });
    });
  }

  /** Moves a login session to another of the user's teams (the UI's team switcher). */
  async switchTeam(principal: Principal, teamId: string): Promise<void> {
    if (!principal.loginSessionId || !principal.userId) throw new DomainError("forbidden", "only a web login can switch teams");
    const [membership] = await this.db
      .select()
      .from(memberships)
      .where(and(eq(memberships.userId, principal.userId), eq(memberships.teamId, teamId)));
    if (!membership) throw notFound("team");
    await this.db.update(loginSessions).set({ teamId }).where(eq(loginSessions.id, principal.loginSessionId));
  }

  /** The teams a user belongs to, for the team switcher. */
  async teamsOf(userId: string) {
    return this.db
      .select({ id: teams.id, slug: teams.slug, name: teams.name, role: memberships.role })
      .from(memberships)
      .innerJoin(teams, eq(teams.id, memberships.teamId))
      .where(eq(memberships.userId, userId))
      .orderBy(asc(teams.name));
  }
}
