// `npm run backup -- --out FILE`: dumps all Berth data of DATABASE_URL (or of the embedded database
// of BERTH_DATA_DIR, with the server stopped) into one gzip'd JSON-lines file. See the README
// (Operations: Backup and restore) and docs/decisions/008-backup-format.md.
import { parseArgs } from "node:util";
import { writeBackup } from "../db/backup";
import { loadConfig } from "../server/config";
import { withOpsDatabase } from "./ops-database";

const usage = "usage: npm run backup -- --out FILE   (reads DATABASE_URL, or the embedded database of BERTH_DATA_DIR)";

try {
  const { values } = parseArgs({ options: { out: { type: "string" }, help: { type: "boolean", short: "h" } } });
  if (values.help) {
    console.log(usage);
    process.exit(0);
  }
  if (!values.out) throw new Error(`--out FILE is required (${usage})`);
  const config = loadConfig(process.env);
  const started = Date.now();
  const summary = await withOpsDatabase(config, { purpose: "back up", mustExist: true }, (url) => writeBackup(url, values.out!));
  const counts = Object.entries(summary.rows).map(([table, count]) => `${table} ${count}`).join(", ");
  console.log(`berth backup: wrote ${summary.file} (${(summary.bytes / 1024).toFixed(1)} KiB in ${Date.now() - started} ms): ${counts}`);
  console.log("berth backup: secrets are stored encrypted; restoring needs the same BERTH_SECRET_KEY (or <data dir>/secret-key). Sandbox workspaces (<data dir>/workspaces) are not included.");
} catch (error) {
  console.error(`berth backup: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
}
