#!/usr/bin/env node
// `npm start` builds only when what the build reads changed since the last build that succeeded: a
// hash of the sources (test files aside), package.json, package-lock.json and the build's own
// configuration, kept in build/.inputs. An unchanged tree starts at once; any change rebuilds.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const SOURCE_DIRS = ["app", "server", "jobs", "db", "k8s", "sandboxd", "bin", "public"];
const SOURCE_FILES = ["package.json", "package-lock.json", "vite.config.ts", "tsconfig.json"];
/** What a build leaves; a tree missing any of it is built whatever the stamp says. */
const OUTPUTS = ["build/main.js", "build/client.js", "build/sandboxd.js", "build/berth.js", "build/server/index.js", "build/client"];
const STAMP = "build/.inputs";
const TEST_FILE = /\.test\.[cm]?[jt]sx?$/;

/** Hex digest of every build input under `root`, in a fixed order (names and contents). */
export function buildInputsHash(root = ROOT) {
  const hash = createHash("sha256");
  const add = (relative) => {
    hash.update(`${relative}\0`);
    hash.update(readFileSync(path.join(root, relative)));
    hash.update("\0");
  };
  for (const file of SOURCE_FILES) if (existsSync(path.join(root, file))) add(file);
  const walk = (relative) => {
    const entries = readdirSync(path.join(root, relative), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const entry of entries) {
      const child = path.join(relative, entry.name);
      if (entry.isDirectory()) walk(child);
      else if (entry.isFile() && !TEST_FILE.test(entry.name)) add(child);
    }
  };
  for (const dir of SOURCE_DIRS) if (existsSync(path.join(root, dir))) walk(dir);
  return hash.digest("hex");
}

/** Whether `root` needs a build: an output is missing, or the inputs differ from the last successful build's. */
export function needsBuild(root = ROOT) {
  if (OUTPUTS.some((output) => !existsSync(path.join(root, output)))) return true;
  const stamp = path.join(root, STAMP);
  return !existsSync(stamp) || readFileSync(stamp, "utf8").trim() !== buildInputsHash(root);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  if (!needsBuild()) {
    console.log("berth: the build is up to date with the sources (build/.inputs); starting without building");
  } else {
    const inputs = buildInputsHash();
    const npm = process.platform === "win32" ? "npm.cmd" : "npm";
    const result = spawnSync(npm, ["run", "build"], { cwd: ROOT, stdio: "inherit" });
    if (result.status !== 0) process.exit(result.status ?? 1);
    // The inputs as they were when the build started: a file changed during the build rebuilds next time.
    writeFileSync(path.join(ROOT, STAMP), `${inputs}\n`);
  }
}
