import { accessSync, constants, existsSync, statSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

// Not imported from ./berth, which loads the whole server.
const ROOT = path.resolve(import.meta.dirname, "../..");

/** Where bin/setup-system.mjs puts promtool, taken out of Debian's prometheus package. */
export const CACHED_PROMTOOL = path.join(ROOT, "node_modules", ".cache", "berth-system", "bin", "promtool");

function isExecutableFile(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

/**
 * The promtool the tests run: BERTH_PROMTOOL, else promtool on PATH, else the one setup put in the
 * cache. Missing, it throws: a test that needs it must fail, never pass without having checked.
 */
export function promtoolPath(): string {
  if (process.env.BERTH_PROMTOOL) return process.env.BERTH_PROMTOOL;
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    if (dir && isExecutableFile(path.join(dir, "promtool"))) return path.join(dir, "promtool");
  }
  if (isExecutableFile(CACHED_PROMTOOL)) return CACHED_PROMTOOL;
  throw new Error(
    `promtool is missing (not in BERTH_PROMTOOL, not on PATH, not at ${path.relative(ROOT, CACHED_PROMTOOL)}): run \`node bin/setup-system.mjs test\`, which takes it out of Debian's prometheus package`,
  );
}

/**
 * The chromium the browser tests drive: BERTH_TEST_CHROMIUM, else the distribution's (Debian's
 * `chromium`), else the build playwright installed (Ubuntu, whose `chromium` package is a snap stub:
 * bin/setup-system.mjs runs `playwright-core install chromium` there).
 */
export function chromiumPath(): string {
  if (process.env.BERTH_TEST_CHROMIUM) return process.env.BERTH_TEST_CHROMIUM;
  if (existsSync("/usr/bin/chromium")) return "/usr/bin/chromium";
  const installed = chromium.executablePath();
  if (installed && existsSync(installed)) return installed;
  throw new Error("no chromium for the browser tests: run `node bin/setup-system.mjs test`, or set BERTH_TEST_CHROMIUM");
}
