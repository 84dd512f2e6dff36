import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectDatabase, type DatabaseClient } from "../../db/client";
import { createTestDatabase, dropListeningConnections, type TestDatabase } from "../../tests/helpers/database";
import { waitFor } from "../../tests/helpers/processes";
import { createTeamWithKey } from "../../tests/helpers/teams";
import { createLogger } from "../logger";
import { ApiKeyService } from "./api-keys";
import { AuthService } from "./auth";
import { API_KEY_REVOKED_CHANNEL, EventBus } from "./event-bus";

const logger = createLogger("silent");

/**
 * The API-key lookup cache (BERTH_AUTH_CACHE_MS, decision 013). A key deleted "behind the cache's back"
 * (plain SQL, no revocation, no notification) shows whether a lookup reached the database.
 */
describe("API key lookup cache", () => {
  let database: TestDatabase;
  let client: DatabaseClient;
  let other: DatabaseClient;
  let slug = 0;
  beforeAll(async () => {
    database = await createTestDatabase();
    client = connectDatabase(database.url, { max: 4 });
    other = connectDatabase(database.url, { max: 4 });
  });
  afterAll(async () => {
    await client?.close();
    await other?.close();
    await database?.drop();
  });

  const team = () => createTeamWithKey(database.url, `cache-${++slug}`, "admin");
  const deleteBehindItsBack = (keyId: string) => client.sql`delete from api_keys where id = ${keyId}`;

  it("reuses a lookup within its lifetime (no query), and looks again after it", async () => {
    // The lifetime counts from before the first lookup's query, so it must also cover opening a
    // connection and the delete below on a slow machine.
    const auth = new AuthService(client.db, logger, { cacheMs: 3_000 });
    const { apiKey, keyId, teamId } = await team();
    expect(await auth.authenticateApiKey(apiKey)).toMatchObject({ teamId, role: "admin", actor: { type: "api_key", id: keyId } });
    await deleteBehindItsBack(keyId);
    // Served from the cache: the row is gone, yet the key still authenticates.
    expect(await auth.authenticateApiKey(apiKey)).toMatchObject({ teamId, actor: { id: keyId } });
    await new Promise((resolve) => setTimeout(resolve, 3_100));
    expect(await auth.authenticateApiKey(apiKey)).toBeNull();
  });

  it("looks every request up when the lifetime is 0", async () => {
    const auth = new AuthService(client.db, logger, { cacheMs: 0 });
    const { apiKey, keyId } = await team();
    expect(await auth.authenticateApiKey(apiKey)).not.toBeNull();
    await deleteBehindItsBack(keyId);
    expect(await auth.authenticateApiKey(apiKey)).toBeNull();
  });

  it("refuses a key revoked in this process at once, whatever the lifetime", async () => {
    const auth = new AuthService(client.db, logger, { cacheMs: 60_000 });
    const { apiKey, keyId } = await team();
    const admin = await auth.authenticateApiKey(apiKey);
    expect(admin).not.toBeNull();
    await new ApiKeyService(client.db, admin!, (id) => auth.forgetApiKey(id)).revoke({ keyId });
    expect(await auth.authenticateApiKey(apiKey)).toBeNull();
    // An unknown or revoked key is never cached: it is refused again, from the database.
    expect(await auth.authenticateApiKey(apiKey)).toBeNull();
  });

  it("drops a key revoked by another replica when its notification arrives", async () => {
    // Replica B: its own connections, event bus and cache with a lifetime far beyond the test.
    const bus = new EventBus(other.sql, logger);
    await bus.start();
    try {
      const authB = new AuthService(other.db, logger, { cacheMs: 60_000 });
      bus.onApiKeyRevoked((id) => authB.forgetApiKey(id));
      const { apiKey, keyId } = await team();
      const principal = await authB.authenticateApiKey(apiKey);
      expect(principal).not.toBeNull();
      // Replica A revokes through its own service; B hears it through Postgres NOTIFY.
      await new ApiKeyService(client.db, principal!).revoke({ keyId });
      await waitFor("replica B to refuse the revoked key", async () => ((await authB.authenticateApiKey(apiKey)) === null ? true : undefined), 5_000);
    } finally {
      await bus.stop();
    }
  });

  it("forgets every cached key when its listening connection comes back, as a revocation may have been missed", async () => {
    const bus = new EventBus(other.sql, logger);
    await bus.start();
    try {
      const authB = new AuthService(other.db, logger, { cacheMs: 60_000 });
      // As the composition root wires it (server/services/index.ts).
      bus.onNotificationsMissed((channel) => {
        if (channel === API_KEY_REVOKED_CHANNEL) authB.forgetAllApiKeys();
      });
      const { apiKey, keyId } = await team();
      expect(await authB.authenticateApiKey(apiKey)).not.toBeNull();
      // Revoked while B was not listening: no notification reaches it.
      await client.sql`update api_keys set revoked_at = now() where id = ${keyId}`;
      expect(await authB.authenticateApiKey(apiKey)).not.toBeNull();
      expect(await dropListeningConnections(client.sql)).toHaveLength(1);
      await waitFor("replica B to refuse the revoked key", async () => ((await authB.authenticateApiKey(apiKey)) === null ? true : undefined), 10_000);
    } finally {
      await bus.stop();
    }
  });

  it("keeps at most cacheSize keys, dropping the oldest", async () => {
    const auth = new AuthService(client.db, logger, { cacheMs: 60_000, cacheSize: 2 });
    const keys = [await team(), await team(), await team()];
    for (const { apiKey } of keys) expect(await auth.authenticateApiKey(apiKey)).not.toBeNull();
    for (const { keyId } of keys) await deleteBehindItsBack(keyId);
    expect(await auth.authenticateApiKey(keys[0]!.apiKey)).toBeNull();
    expect(await auth.authenticateApiKey(keys[1]!.apiKey)).not.toBeNull();
    expect(await auth.authenticateApiKey(keys[2]!.apiKey)).not.toBeNull();
  });
});
