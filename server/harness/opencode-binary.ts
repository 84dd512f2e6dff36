import { readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

/**
 * Finds the opencode binary that the `opencode-ai` package installed: it ships one package per
 * platform (opencode-linux-x64, …-baseline for CPUs without AVX2, …-musl for Alpine), and npm
 * installs those matching this machine's OS and CPU. No install script is needed.
 */
export function findOpencodeBinary(override?: string): string | null {
  if (override) return isExecutableFile(override) ? override : null;
  const require = createRequire(import.meta.url);
  for (const name of candidatePackages()) {
    let manifest: string;
    try {
      manifest = require.resolve(`${name}/package.json`);
    } catch {
      continue;
    }
    const binary = path.join(path.dirname(manifest), "bin", "opencode");
    if (isExecutableFile(binary)) return binary;
  }
  return null;
}

function candidatePackages(): string[] {
  const platform = process.platform === "win32" ? "windows" : process.platform;
  const base = `opencode-${platform}-${process.arch}`;
  const musl = platform === "linux" && isMusl();
  const variants = process.arch === "x64" && !hasAvx2() ? ["-baseline", ""] : ["", "-baseline"];
  return variants.map((variant) => `${base}${variant}${musl ? "-musl" : ""}`);
}

export function isExecutableFile(file: string): boolean {
  try {
    const stat = statSync(file);
    return stat.isFile() && (stat.mode & 0o111) !== 0;
  } catch {
    return false;
  }
}

export function isMusl(): boolean {
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
