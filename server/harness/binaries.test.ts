import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { findClaudeCodeBinary, findCodexBinary, findOpencodeBinary } from "./binaries";

describe("harness binaries", () => {
  it("finds each CLI in the platform package npm installed, and it runs", () => {
    for (const [find, expected] of [
      [findOpencodeBinary, /^1\.18\.33$/],
      [findCodexBinary, /^codex-cli 0\.169\.0$/],
      [findClaudeCodeBinary, /^2\.1\.331 \(Claude Code\)$/],
    ] as const) {
      const binary = find();
      expect(binary).toMatch(/\/node_modules\//);
      expect(execFileSync(binary!, ["--version"], { encoding: "utf8", env: { ...process.env, HOME: "/tmp" } }).trim()).toMatch(expected);
    }
  });

  it("takes an explicit path only when it is an executable file", () => {
    expect(findOpencodeBinary("/bin/sh")).toBe("/bin/sh");
    const dir = mkdtempSync(path.join(os.tmpdir(), "berth-binaries-"));
    const notExecutable = path.join(dir, "codex");
    writeFileSync(notExecutable, "#!/bin/sh\n", { mode: 0o644 });
    expect(findCodexBinary(notExecutable)).toBeNull();
    rmSync(dir, { recursive: true });
    expect(findClaudeCodeBinary("/nonexistent/claude")).toBeNull();
  });
});
