import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import { and, eq } from "drizzle-orm";
import type { Database } from "../../db/client";
import { apiKeys, memberships, teams, users } from "../../db/schema";
import { generateApiKey, hashApiKey, visiblePrefix } from "../auth/api-keys";
import { hashPassword, verifyPassword } from "../auth/passwords";
import type { Config } from "../config";
import type { Logger } from "../logger";
import { recordAudit, SYSTEM_ACTOR } from "./audit";

export const ADMIN_TEAM_SLUG = "admin";
const BOOTSTRAP_KEY_NAME = "bootstrap";

export type BootstrapResult = {
  teamId: string;
  /** Set only when this start generated a credential, so the caller can show it once. */
  generatedApiKey?: string;
  generatedPassword?: string;
  apiKeyFile: string;
  passwordFile: string;
};

/**
 * First start: the admin team, its owner user and its bootstrap API key. Later starts change nothing,
 * except that BERTH_ADMIN_API_KEY / BERTH_ADMIN_PASSWORD, when set, are made the current values.
 * Generated credentials are written to the data dir (mode 0600) and returned to be printed once.
 */
export async function ensureBootstrapAdmin(
  db: Database,
  config: Pick<Config, "adminApiKey" | "adminEmail" | "adminPassword" | "dataDir">,
  logger: Logger,
): Promise<BootstrapResult> {
  const apiKeyFile = path.join(config.dataDir, "admin-api-key");
  const passwordFile = path.join(config.dataDir, "admin-password");
  await fs.mkdir(config.dataDir, { recursive: true, mode: 0o700 });

  // Hash outside the transaction: scrypt is deliberately slow.
  const generatedPassword = config.adminPassword ? undefined : randomBytes(18).toString("base64url");
  const password = config.adminPassword ?? generatedPassword!;
  const passwordHash = await hashPassword(password);

  const result = await db.transaction(async (tx) => {
    // Serialise concurrent first starts of several replicas.
    await tx.execute(`select pg_advisory_xact_lock(${0x4242_4f54})`);
    let [team] = await tx.select().from(teams).where(eq(teams.slug, ADMIN_TEAM_SLUG));
    const firstStart = !team;
    if (!team) {
      [team] = await tx.insert(teams).values({ slug: ADMIN_TEAM_SLUG, name: "Admin" }).returning();
      await recordAudit(tx, { teamId: team!.id, actor: SYSTEM_ACTOR, action: "team.create", targetType: "team", targetId: team!.id });
    }
    const teamId = team!.id;

    let [user] = await tx.select().from(users).where(eq(users.email, config.adminEmail));
    let wrotePassword = false;
    if (!user) {
      [user] = await tx.insert(users).values({ email: config.adminEmail, name: "Admin", passwordHash }).returning();
      wrotePassword = true;
      await recordAudit(tx, { teamId, actor: SYSTEM_ACTOR, action: "user.create", targetType: "user", targetId: user!.id });
    } else if (config.adminPassword && !(user.passwordHash && (await verifyPassword(config.adminPassword, user.passwordHash)))) {
      await tx.update(users).set({ passwordHash }).where(eq(users.id, user.id));
      await recordAudit(tx, { teamId, actor: SYSTEM_ACTOR, action: "user.password_reset", targetType: "user", targetId: user.id });
    }
    await tx
      .insert(memberships)
      .values({ teamId, userId: user!.id, role: "owner" })
      .onConflictDoNothing();

    const [existingKey] = await tx
      .select()
      .from(apiKeys)
      .where(and(eq(apiKeys.teamId, teamId), eq(apiKeys.name, BOOTSTRAP_KEY_NAME)));
    let generatedApiKey: string | undefined;
    if (config.adminApiKey) {
      const hash = hashApiKey(config.adminApiKey);
      if (!existingKey || existingKey.hash !== hash || existingKey.revokedAt) {
        if (existingKey) await tx.delete(apiKeys).where(eq(apiKeys.id, existingKey.id));
        const [key] = await tx
          .insert(apiKeys)
          .values({ teamId, name: BOOTSTRAP_KEY_NAME, prefix: visiblePrefix(config.adminApiKey), hash, role: "owner" })
          .returning();
        await recordAudit(tx, { teamId, actor: SYSTEM_ACTOR, action: "api_key.create", targetType: "api_key", targetId: key!.id, metadata: { name: BOOTSTRAP_KEY_NAME, source: "BERTH_ADMIN_API_KEY" } });
      }
    } else if (!existingKey) {
      generatedApiKey = generateApiKey();
      const [key] = await tx
        .insert(apiKeys)
        .values({ teamId, name: BOOTSTRAP_KEY_NAME, prefix: visiblePrefix(generatedApiKey), hash: hashApiKey(generatedApiKey), role: "owner" })
        .returning();
      await recordAudit(tx, { teamId, actor: SYSTEM_ACTOR, action: "api_key.create", targetType: "api_key", targetId: key!.id, metadata: { name: BOOTSTRAP_KEY_NAME, source: "generated" } });
    }
    // Written before commit: if writing fails nothing is created, and a retry starts over.
    if (generatedApiKey) await fs.writeFile(apiKeyFile, `${generatedApiKey}\n`, { mode: 0o600 });
    if (wrotePassword && generatedPassword) await fs.writeFile(passwordFile, `${generatedPassword}\n`, { mode: 0o600 });
    return { teamId, firstStart, generatedApiKey, generatedPassword: wrotePassword ? generatedPassword : undefined };
  });

  if (result.firstStart) logger.info({ teamId: result.teamId, email: config.adminEmail }, "created the admin team and user");
  return { teamId: result.teamId, generatedApiKey: result.generatedApiKey, generatedPassword: result.generatedPassword, apiKeyFile, passwordFile };
}
