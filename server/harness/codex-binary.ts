import { statSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

/**
 * Finds the codex binary that `@openai/codex` installed: the native (statically linked, musl) build
 * ships in one optional package per platform, `@openai/codex-<os>-<cpu>`, under
 * `vendor/<target triple>/bin/codex`; npm installs the one matching this machine. No install script
 * is needed.
 */
export function findCodexBinary(override?: string): string | null {
  if (override) return isExecutableFile(override) ? override : null;
  const target = targetTriple();
  if (!target) return null;
  const require = createRequire(import.meta.url);
  let manifest: string;
  try {
    manifest = require.resolve(`@openai/codex-${process.platform}-${process.arch}/package.json`);
  } catch {
    return null;
  }
  const binary = path.join(path.dirname(manifest), "vendor", target, "bin", "codex");
  return isExecutableFile(binary) ? binary : null;
}

function targetTriple(): string | null {
  if (process.platform !== "linux") return null;
  if (process.arch === "x64") return "x86_64-unknown-linux-musl";
  if (process.arch === "arm64") return "aarch64-unknown-linux-musl";
  return null;
}

function isExecutableFile(file: string): boolean {
  try {
    const stat = statSync(file);
    return stat.isFile() && (stat.mode & 0o111) !== 0;
  } catch {
    return false;
  }
}
