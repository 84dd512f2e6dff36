import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, startTestBerth, type TestBerth } from "../helpers/berth";

const run = promisify(execFile);
const KEY = "client_program_key_0123456789abcdefgh";

describe("the typed client, used the way another service would", () => {
  let berth: TestBerth;
  beforeAll(async () => {
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: KEY } });
  });
  afterAll(async () => {
    await berth?.close();
  });

  it("creates an agent and lists it from a separate program that imports only berth/client", async () => {
    const { stdout } = await run(process.execPath, ["--import", "tsx", "tests/client-program/create-and-list-agent.ts", berth.url, KEY, "from-client"], { cwd: ROOT });
    const result = JSON.parse(stdout) as { id: string; version: number; isDemo: boolean; listed: boolean; names: string[] };
    expect(result).toMatchObject({ version: 1, isDemo: true, listed: true, names: ["from-client"] });
    expect((await berth.client(KEY).agents.get.query({ agentId: result.id })).name).toBe("from-client");
  });

  it("fails with the server's error when the key is wrong", async () => {
    const failure = await run(process.execPath, ["--import", "tsx", "tests/client-program/create-and-list-agent.ts", berth.url, "berth_wrong", "x"], { cwd: ROOT }).catch((error: { code: number; stderr: string }) => error);
    expect(failure).toMatchObject({ code: 1 });
    expect((failure as { stderr: string }).stderr).toContain("invalid or revoked API key");
  });
});
