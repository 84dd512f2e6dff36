import { mkdtempSync, readFileSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectDatabase, type DatabaseClient } from "../../db/client";
import { apiKeys, auditLog, memberships, users } from "../../db/schema";
import { createTestDatabase, type TestDatabase } from "../../tests/helpers/database";
import { hashApiKey } from "../auth/api-keys";
import { verifyPassword } from "../auth/passwords";
import { createLogger } from "../logger";
import { ensureBootstrapAdmin } from "./bootstrap";

const logger = createLogger("silent");

describe("bootstrap admin", () => {
  let database: TestDatabase;
  let client: DatabaseClient;
  beforeAll(async () => {
    database = await createTestDatabase();
    client = connectDatabase(database.url, { max: 2 });
  });
  afterAll(async () => {
    await client.close();
    await database.drop();
  });

  it("generates a key and password once, writes them 0600, and keeps them on later starts", async () => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-bootstrap-"));
    const config = { dataDir, adminEmail: "admin@berth.local", adminApiKey: undefined, adminPassword: undefined };
    const first = await ensureBootstrapAdmin(client.db, config, logger);
    expect(first.generatedApiKey).toMatch(/^berth_[A-Za-z0-9_-]{43}$/);
    expect(first.generatedPassword).toBeTruthy();
    for (const file of [first.apiKeyFile, first.passwordFile]) expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readFileSync(first.apiKeyFile, "utf8").trim()).toBe(first.generatedApiKey);

    const [key] = await client.db.select().from(apiKeys).where(eq(apiKeys.hash, hashApiKey(first.generatedApiKey!)));
    expect(key).toMatchObject({ teamId: first.teamId, role: "owner", revokedAt: null });
    const [user] = await client.db.select().from(users).where(eq(users.email, "admin@berth.local"));
    expect(await verifyPassword(first.generatedPassword!, user!.passwordHash!)).toBe(true);
    const [membership] = await client.db.select().from(memberships).where(eq(memberships.userId, user!.id));
    expect(membership?.role).toBe("owner");

    const second = await ensureBootstrapAdmin(client.db, config, logger);
    expect(second.teamId).toBe(first.teamId);
    expect(second.generatedApiKey).toBeUndefined();
    expect(second.generatedPassword).toBeUndefined();
    expect(await client.db.select().from(apiKeys).where(eq(apiKeys.teamId, first.teamId))).toHaveLength(1);
  });

  it("makes BERTH_ADMIN_API_KEY and BERTH_ADMIN_PASSWORD the current credentials when set", async () => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-bootstrap-"));
    const adminApiKey = "configured_admin_key_0123456789abcdef";
    const result = await ensureBootstrapAdmin(
      client.db,
      { dataDir, adminEmail: "admin@berth.local", adminApiKey, adminPassword: "a configured password" },
      logger,
    );
    expect(result.generatedApiKey).toBeUndefined();
    const keys = await client.db.select().from(apiKeys).where(eq(apiKeys.teamId, result.teamId));
    expect(keys.map((key) => key.hash)).toEqual([hashApiKey(adminApiKey)]);
    const [user] = await client.db.select().from(users).where(eq(users.email, "admin@berth.local"));
    expect(await verifyPassword("a configured password", user!.passwordHash!)).toBe(true);

    const audit = await client.db.select().from(auditLog).where(eq(auditLog.teamId, result.teamId));
    expect(audit.map((entry) => entry.action)).toEqual(expect.arrayContaining(["team.create", "api_key.create", "user.password_reset"]));
    expect(JSON.stringify(audit)).not.toContain(adminApiKey);
  });
});
