import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestBerth, type TestBerth } from "../helpers/berth";
import { waitFor } from "../helpers/processes";

const KEY = "egress_test_key_0123456789abcdefghijkl";

describe("the egress gateway (local jails)", () => {
  let berth: TestBerth;
  let api: ReturnType<TestBerth["client"]>;
  let outside: http.Server;
  const seen: Array<{ method: string; url: string; headers: http.IncomingHttpHeaders }> = [];

  beforeAll(async () => {
    outside = http.createServer((req, res) => {
      seen.push({ method: req.method!, url: req.url!, headers: req.headers });
      res.end(`hello from ${req.headers.host}\n`);
    });
    await new Promise<void>((resolve) => outside.listen(0, "127.0.0.1", resolve));
    const port = (outside.address() as AddressInfo).port;
    berth = await startTestBerth({
      env: { BERTH_ADMIN_API_KEY: KEY, BERTH_EGRESS_RESOLVE: `api.example.test=127.0.0.1:${port},other.example.test=127.0.0.1:${port}` },
    });
    api = berth.client(KEY);
  });
  afterAll(async () => {
    await berth?.close();
    outside?.close();
  });

  async function readySession(name: string, egress: { mode: "none" | "allowlist" | "open"; allow: Array<{ host: string }> }) {
    const agent = await api.agents.create.mutate({ name, model: "demo", egress });
    const session = await api.sessions.create.mutate({ agentId: agent.id });
    await waitFor(`session ${session.id} ready`, async () => ((await api.sessions.get.query({ sessionId: session.id })).status === "ready" ? true : undefined), 30_000);
    return { agentId: agent.id, sessionId: session.id };
  }

  it("allow-list: an allowed host answers through the proxy variables, another gets 403", async () => {
    const { sessionId } = await readySession("allow", { mode: "allowlist", allow: [{ host: "api.example.test" }] });
    const ok = await api.sessions.exec.mutate({ sessionId, command: "curl -sS http://api.example.test/hello" });
    expect(ok).toMatchObject({ exitCode: 0, stdout: "hello from api.example.test\n" });
    const refused = await api.sessions.exec.mutate({ sessionId, command: "curl -sS -w '%{http_code}' http://other.example.test/x" });
    expect(refused.stdout).toContain("403");
    expect(refused.stdout).toContain("other.example.test");
    const env = await api.sessions.exec.mutate({ sessionId, command: "env | sort" });
    console.log(env.stdout);
  });
});
