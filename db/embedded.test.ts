import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { createLogger } from "../server/logger";
import { startEmbeddedPostgres } from "./embedded";
import { connectPostgres } from "./postgres-url";

const asRoot = process.getuid?.() === 0;

describe("the embedded Postgres", () => {
  // A clone in root's home (mode 0700): the postgres user can reach neither the data dir nor, there,
  // the binaries. The server must start anyway, and the folder must stay as closed as it was.
  it.runIf(asRoot)("starts, and starts again, with its data dir under a folder the postgres user cannot traverse, leaving that folder 0700", async () => {
    const home = mkdtempSync(path.join(os.tmpdir(), "berth-closed-home-"));
    chmodSync(home, 0o700);
    const dataDir = path.join(home, "berth", ".berth");
    mkdirSync(dataDir, { recursive: true });
    try {
      for (const round of [1, 2]) {
        const embedded = await startEmbeddedPostgres({ dataDir, logger: createLogger("silent") });
        try {
          for (const url of [embedded.url, embedded.socketUrl!]) {
            const sql = connectPostgres(withDatabase(url, "postgres"), { max: 1, onnotice: () => {} });
            const [row] = await sql<{ user: string; data: string }[]>`select current_user as user, current_setting('data_directory') as data`;
            await sql.end({ timeout: 5 });
            expect(row!.user).toBe("berth");
            // The server sees the data dir through its view, never by the closed path.
            expect(row!.data.startsWith(home)).toBe(false);
          }
          expect(readFileSync(`/proc/${embedded.pid}/status`, "utf8")).toMatch(/^Uid:\s+(?!0\s)\d+/m);
        } finally {
          await embedded.stop();
        }
        expect(statSync(home).mode & 0o777, `after start ${round}`).toBe(0o700);
        // The binds live only in the server's own mount namespace.
        expect(readFileSync("/proc/self/mounts", "utf8")).not.toContain("berth-postgres");
      }
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  }, 120_000);
});

function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}
