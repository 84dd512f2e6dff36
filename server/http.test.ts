import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestBerth, type TestBerth } from "../tests/helpers/berth";

describe("HTTP surface of one Berth process", () => {
  let berth: TestBerth;
  beforeAll(async () => {
    berth = await startTestBerth();
  });
  afterAll(async () => {
    await berth?.close();
  });

  it("answers /healthz while the process is up", async () => {
    const response = await fetch(`${berth.url}/healthz`);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ ok: true });
  });

  it("answers /readyz with the database, migrations and worker state", async () => {
    const response = await fetch(`${berth.url}/readyz`);
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ ready: true, database: "ok", pendingMigrations: 0, worker: "running", sandboxes: "available" });
  });

  it("serves system.health over tRPC at /api/trpc", async () => {
    const health = await berth.client().system.health.query();
    expect(health).toEqual({
      ok: true,
      version: expect.stringMatching(/^\d+\.\d+\.\d+/),
      database: "ok",
      gateway: "not configured",
      sandboxBackend: "local",
      sandboxes: { available: true },
      // As root: the berth-sandbox user, with quotas where loop devices work; otherwise this process's user, without.
      sandboxIsolation: {
        hostUser: process.getuid?.() === 0 ? "berth-sandbox" : "the Berth user (not root)",
        seccomp: process.arch === "x64" || process.arch === "arm64",
        diskQuota: expect.any(Boolean),
      },
    });
  });

  it("renders the home page with the system health", async () => {
    const response = await fetch(`${berth.url}/`);
    expect(response.status).toBe(200);
    const html = await response.text();
    expect(html).toContain("<h1>Berth</h1>");
    expect(html).toMatch(/Database<\/dt><dd>.*?ok<\/dd>/);
    expect(html).toContain("not configured");
  });

  it("answers an unknown procedure with a tRPC NOT_FOUND error", async () => {
    const response = await fetch(`${berth.url}/api/trpc/system.nope`);
    expect(response.status).toBe(404);
    const body = (await response.json()) as { error: { json: { data: { code: string } } } };
    expect(body.error.json.data.code).toBe("NOT_FOUND");
  });
});
