import { defineConfig } from "vitest/config";

// Tests run against a real Postgres: the embedded one started by the global setup, or DATABASE_URL.
export default defineConfig({
  test: {
    include: ["**/*.test.ts"],
    exclude: ["node_modules/**", "build/**"],
    globalSetup: ["./tests/global-setup.ts"],
    setupFiles: ["./tests/setup-console.ts"],
    pool: "forks",
    // End-to-end tests start processes, jails and browsers on a 2-core machine: generous bounds.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // expect.poll gives up after 1 s by default: too short for state written asynchronously on a loaded machine.
    expect: { poll: { timeout: 15_000 } },
    fileParallelism: true,
    maxWorkers: 2,
    // .ci/run reads the JSON report to print a plain "N passed, N failed" line.
    reporters: process.env.CI ? ["default", "json"] : ["default"],
    outputFile: { json: "test-artifacts/vitest-report.json" },
  },
});
