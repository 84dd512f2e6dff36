import { readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

/**
 * Finds the coding-agent binaries their npm packages installed. Each ships its native binary in one
 * optional package per platform, and npm installs the ones matching this machine's OS and CPU, so
 * no install script is needed. An explicit path (BERTH_*_BINARY) wins when it is an executable file.
 */

/**
 * opencode (the binary packages of `opencode-ai`): `opencode-<os>-<cpu>[-baseline][-musl]/bin/opencode`
 * (baseline: CPUs without AVX2). Berth depends on the linux-x64 ones directly (see decision 012).
 */
export function findOpencodeBinary(override?: string): string | null {
  if (override) return executableOrNull(override);
  const platform = process.platform === "win32" ? "windows" : process.platform;
  const musl = isMusl() ? "-musl" : "";
  const variants = process.arch === "x64" && !hasAvx2() ? ["-baseline", ""] : ["", "-baseline"];
  return firstExecutable(variants.map((variant) => [`opencode-${platform}-${process.arch}${variant}${musl}`, "bin/opencode"]));
}

/** @openai/codex: `@openai/codex-<os>-<cpu>/vendor/<target triple>/bin/codex` (statically linked musl builds). */
export function findCodexBinary(override?: string): string | null {
  if (override) return executableOrNull(override);
  const triple = process.platform === "linux" ? { x64: "x86_64-unknown-linux-musl", arm64: "aarch64-unknown-linux-musl" }[process.arch as string] : undefined;
  return triple ? firstExecutable([[`@openai/codex-${process.platform}-${process.arch}`, `vendor/${triple}/bin/codex`]]) : null;
}

/** @anthropic-ai/claude-code: `@anthropic-ai/claude-code-<os>-<cpu>[-musl]/claude`. */
export function findClaudeCodeBinary(override?: string): string | null {
  if (override) return executableOrNull(override);
  const musl = isMusl() ? "-musl" : "";
  return firstExecutable([[`@anthropic-ai/claude-code-${process.platform}-${process.arch}${musl}`, process.platform === "win32" ? "claude.exe" : "claude"]]);
}

/** The first `[package, file inside it]` that is installed and executable. */
function firstExecutable(candidates: [packageName: string, file: string][]): string | null {
  const require = createRequire(import.meta.url);
  for (const [packageName, file] of candidates) {
    let manifest: string;
    try {
      manifest = require.resolve(`${packageName}/package.json`);
    } catch {
      continue;
    }
    const binary = executableOrNull(path.join(path.dirname(manifest), file));
    if (binary) return binary;
  }
  return null;
}

function executableOrNull(file: string): string | null {
  try {
    const stat = statSync(file);
    return stat.isFile() && (stat.mode & 0o111) !== 0 ? file : null;
  } catch {
    return null;
  }
}

function isMusl(): boolean {
  if (process.platform !== "linux") return false;
  // Node reports the glibc version it runs on; none means musl (Alpine).
  const report = process.report?.getReport?.() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return report ? !report.header?.glibcVersionRuntime : false;
}

function hasAvx2(): boolean {
  try {
    return /\bavx2\b/.test(readFileSync("/proc/cpuinfo", "utf8"));
  } catch {
    return true;
  }
}
