import { randomBytes } from "node:crypto";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, inject, it } from "vitest";
import { migrateDatabase, MIGRATIONS_FOLDER } from "./migrate";
import { connectPostgres } from "./postgres-url";

/** The migrations folder as a build with only the first `count` migrations shipped it. */
function migrationsUpTo(count: number): string {
  const folder = mkdtempSync(path.join(os.tmpdir(), "berth-migrations-"));
  cpSync(MIGRATIONS_FOLDER, folder, { recursive: true });
  const journalFile = path.join(folder, "meta", "_journal.json");
  const journal = JSON.parse(readFileSync(journalFile, "utf8")) as { entries: unknown[] };
  journal.entries = journal.entries.slice(0, count);
  writeFileSync(journalFile, JSON.stringify(journal));
  return folder;
}

describe("migration 0012 (egress)", () => {
  const adminUrl = inject("postgresAdminUrl");
  const name = `berth_m_${randomBytes(6).toString("hex")}`;
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  const folders: string[] = [];

  afterAll(async () => {
    const admin = connectPostgres(adminUrl, { max: 1, onnotice: () => {} });
    await admin.unsafe(`drop database if exists ${name} with (force)`).finally(() => admin.end({ timeout: 5 }));
    for (const folder of folders) rmSync(folder, { recursive: true, force: true });
  });

  it("gives agents that had network 'egress' the open policy and the others none, keeping the shorthand", async () => {
    const admin = connectPostgres(adminUrl, { max: 1, onnotice: () => {} });
    await admin.unsafe(`create database ${name}`).finally(() => admin.end({ timeout: 5 }));
    const before = migrationsUpTo(12);
    folders.push(before);
    await migrateDatabase(url.toString(), before);

    const sql = connectPostgres(url.toString(), { max: 1, onnotice: () => {} });
    try {
      const [team] = await sql<{ id: string }[]>`insert into teams (slug, name) values ('t', 'T') returning id`;
      const agentIds: Record<string, string> = {};
      for (const network of ["none", "egress"]) {
        const [agent] = await sql<{ id: string }[]>`insert into agents (team_id, name) values (${team!.id}, ${network}) returning id`;
        agentIds[network] = agent!.id;
        await sql`insert into agent_versions (agent_id, version, team_id, model, network) values (${agent!.id}, 1, ${team!.id}, 'demo', ${network})`;
      }

      await migrateDatabase(url.toString());
      const rows = await sql<{ agent_id: string; network: string; egress: unknown }[]>`select agent_id, network::text, egress from agent_versions`;
      const byAgent = Object.fromEntries(rows.map((row) => [row.agent_id, row]));
      expect(byAgent[agentIds.none!]).toMatchObject({ network: "none", egress: { mode: "none", allow: [] } });
      expect(byAgent[agentIds.egress!]).toMatchObject({ network: "egress", egress: { mode: "open", allow: [] } });
      // The new event type is usable once the migration committed.
      const [type] = await sql<{ ok: boolean }[]>`select 'egress'::session_event_type is not null as ok`;
      expect(type!.ok).toBe(true);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });
});
