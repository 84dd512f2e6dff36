import { createRequire } from "node:module";
import path from "node:path";
import { isExecutableFile, isMusl } from "./opencode-binary";

/**
 * Finds the Claude Code binary that the `@anthropic-ai/claude-code` package installed: it ships one
 * package per platform (@anthropic-ai/claude-code-linux-x64, …-musl for Alpine, …), and npm installs
 * the one matching this machine's OS and CPU. No install script is needed.
 */
export function findClaudeCodeBinary(override?: string): string | null {
  if (override) return isExecutableFile(override) ? override : null;
  const require = createRequire(import.meta.url);
  const musl = process.platform === "linux" && isMusl();
  for (const name of [`@anthropic-ai/claude-code-${process.platform}-${process.arch}${musl ? "-musl" : ""}`]) {
    let manifest: string;
    try {
      manifest = require.resolve(`${name}/package.json`);
    } catch {
      continue;
    }
    const binary = path.join(path.dirname(manifest), process.platform === "win32" ? "claude.exe" : "claude");
    if (isExecutableFile(binary)) return binary;
  }
  return null;
}
