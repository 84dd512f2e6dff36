import { connectPostgres } from "../../db/postgres-url";
import { generateApiKey, hashApiKey, visiblePrefix } from "../../server/auth/api-keys";

/**
 * A second tenant for isolation tests, written straight into the database (there is no public
 * "create team" procedure yet): a team and an API key of the given role for it.
 */
export async function createTeamWithKey(databaseUrl: string, slug: string, role: "owner" | "admin" | "member" = "owner") {
  const sql = connectPostgres(databaseUrl, { max: 1, onnotice: () => {} });
  try {
    const [team] = await sql<{ id: string }[]>`insert into teams (slug, name) values (${slug}, ${slug}) returning id`;
    const key = generateApiKey();
    const [row] = await sql<{ id: string }[]>`
      insert into api_keys (team_id, name, prefix, hash, role) values (${team!.id}, 'test', ${visiblePrefix(key)}, ${hashApiKey(key)}, ${role}) returning id`;
    return { teamId: team!.id, apiKey: key, keyId: row!.id };
  } finally {
    await sql.end();
  }
}

/** Another key for an existing team. */
export async function createKeyForTeam(databaseUrl: string, teamId: string, role: "owner" | "admin" | "member") {
  const sql = connectPostgres(databaseUrl, { max: 1, onnotice: () => {} });
  try {
    const key = generateApiKey();
    await sql`insert into api_keys (team_id, name, prefix, hash, role) values (${teamId}, ${"test-" + role}, ${visiblePrefix(key)}, ${hashApiKey(key)}, ${role})`;
    return key;
  } finally {
    await sql.end();
  }
}
