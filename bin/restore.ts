// `npm run restore -- --in FILE`: restores a backup made by `npm run backup` into an EMPTY database
// (DATABASE_URL, or the embedded database of BERTH_DATA_DIR, with the server stopped). See the README
// (Operations: Backup and restore) and docs/decisions/008-backup-format.md.
import { existsSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import type postgres from "postgres";
import { BackupError, restoreBackup } from "../db/backup";
import { loadConfig, type Config } from "../server/config";
import { loadOrCreateSecretKey, SecretBox } from "../server/services/secret-box";
import { associatedData } from "../server/services/secrets";
import { withOpsDatabase } from "./ops-database";

const usage = "usage: npm run restore -- --in FILE [--ignore-secret-key]   (into DATABASE_URL, or the embedded database of BERTH_DATA_DIR)";

/** The key the restored Berth will use: BERTH_SECRET_KEY, else an existing <data dir>/secret-key (never a new one). */
function secretKeyOf(config: Config): Buffer | undefined {
  if (config.secretKey) return config.secretKey;
  if (!existsSync(path.join(config.dataDir, "secret-key"))) return undefined;
  return loadOrCreateSecretKey(undefined, config.dataDir);
}

/**
 * Checks, before the restore commits, that the key this installation will use opens the restored
 * secrets: with another key they would be unreadable and every sandbox start would fail.
 */
function checkSecretKey(config: Config, ignore: boolean, warnings: string[]) {
  return async (tx: postgres.TransactionSql) => {
    const rows = await tx<{ team_id: string; agent_id: string | null; name: string; ciphertext: Buffer }[]>`
      select team_id, agent_id, name, ciphertext from secrets order by created_at limit 200`;
    if (rows.length === 0) return;
    const key = secretKeyOf(config);
    if (!key) {
      warnings.push(
        `no secret key is configured here (BERTH_SECRET_KEY unset, no ${path.join(config.dataDir, "secret-key")}): start Berth with the BERTH_SECRET_KEY of the backed-up installation, or its secrets cannot be read`,
      );
      return;
    }
    const box = new SecretBox(key);
    let failed = 0;
    for (const row of rows) {
      try {
        box.open(row.ciphertext, associatedData(row.team_id, row.agent_id, row.name));
      } catch {
        failed++;
      }
    }
    if (failed === 0) return;
    const problem = `the secret key configured here does not decrypt ${failed} of ${rows.length} restored secrets (a different BERTH_SECRET_KEY than the backed-up installation's)`;
    if (!ignore) throw new BackupError(`${problem}. Set the original key, or pass --ignore-secret-key to restore anyway`);
    warnings.push(`${problem}; restored anyway (--ignore-secret-key)`);
  };
}

try {
  const { values } = parseArgs({
    options: { in: { type: "string" }, "ignore-secret-key": { type: "boolean" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help) {
    console.log(usage);
    process.exit(0);
  }
  if (!values.in) throw new Error(`--in FILE is required (${usage})`);
  const config = loadConfig(process.env);
  const started = Date.now();
  const warnings: string[] = [];
  const summary = await withOpsDatabase(config, { purpose: "restore into", mustExist: false }, (url) =>
    restoreBackup(url, values.in!, {
      beforeCommit: checkSecretKey(config, values["ignore-secret-key"] ?? false, warnings),
      log: (message) => console.log(`berth restore: ${message}`),
    }),
  );
  for (const warning of [...summary.warnings, ...warnings]) console.warn(`berth restore: warning: ${warning}`);
  const counts = Object.entries(summary.rows).map(([table, count]) => `${table} ${count}`).join(", ");
  console.log(`berth restore: restored ${values.in} in ${Date.now() - started} ms: ${counts}`);
  console.log(
    `berth restore: ${summary.suspendedSessions} live sessions set to suspended and ${summary.endedSandboxes} sandboxes ended (sandboxes do not move with a backup): each session resumes on a new sandbox generation at its next use.`,
  );
} catch (error) {
  const message = (error instanceof Error ? error.message : String(error)).replace(/\.$/, "");
  const nothing = error instanceof BackupError ? " Nothing was restored." : "";
  console.error(`berth restore: ${message}.${nothing}`);
  process.exit(1);
}
