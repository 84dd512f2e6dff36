import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import parsePrometheusTextFormat from "parse-prometheus-text-format";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectPostgres } from "../../db/postgres-url";
import { EgressCa, fileCaStore } from "../../server/egress/ca";
import type { EgressPolicy, EgressRule } from "../../server/egress/policy";
import { startTestBerth, type TestBerth } from "../helpers/berth";
import { abstractProbe, listenAbstract, probeAbstractOnHost } from "../helpers/abstract-socket";
import { gitHost, npmRegistry, startStandIn, type GitHost, type NpmRegistry, type StandIn } from "../helpers/egress-stand-ins";
import { waitFor } from "../helpers/processes";
import { startTestGateway, type TestGateway } from "../helpers/test-gateway";
import type { EgressRecord } from "../../server/egress/egress-log";

/**
 * The egress gateway's acceptance suite (issue 25), on real bubblewrap jails with their own network
 * namespaces, real curl, git and npm inside them, and the real gateway behind each jail's socket.
 * Outside hosts are stand-ins on 127.0.0.1 that the gateway reaches through the test-only name map
 * BERTH_EGRESS_RESOLVE; nothing here talks to any other address. Their certificates come from the
 * installation's egress CA (created before Berth starts, in the data dir Berth then uses), which the
 * sandboxes trust, and which the gateway is told to trust upstream (BERTH_EGRESS_EXTRA_CA_FILE) for
 * the hosts it inspects.
 */

const KEY = "egress_test_key_0123456789abcdefghijkl";
const LITELLM_KEY = "sk-egress-suite-upstream-key";
/** Every name the stand-in answers; all map to its one port (HTTP and HTTPS alike). */
const HOSTS = ["api.example.test", "other.example.test", "denied.example.test", "rules.example.test", "git.example.test", "registry.example.test"];
const NPM_PACKAGE = "berth-egress-hello";


describe("the egress gateway (local jails)", () => {
  let berth: TestBerth;
  let api: ReturnType<TestBerth["client"]>;
  let sql: postgres.Sql;
  let standIn: StandIn;
  let git: GitHost;
  let registry: NpmRegistry;
  let model: TestGateway;
  let dataDir: string;
  let berthPort: number;
  let databasePort: number | null;

  beforeAll(async () => {
    // The installation's CA, made before Berth starts so the gateway can be told to trust it upstream.
    dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-egress-data-"));
    const ca = await EgressCa.open(fileCaStore(dataDir));
    standIn = await startStandIn({ certificateFor: async (name) => (await ca.leafFor(name)).secureContext });
    git = gitHost("repo", { "README.md": "cloned through the egress gateway\n" });
    standIn.route("git.example.test", git.handler);
    registry = npmRegistry("https://registry.example.test/", [{ name: NPM_PACKAGE, version: "1.0.0", exports: { greeting: "installed through the egress gateway" } }]);
    standIn.route("registry.example.test", registry.handler);
    model = await startTestGateway({ apiKey: LITELLM_KEY, models: ["egress-test-model"] });
    berth = await startTestBerth({
      env: {
        BERTH_ADMIN_API_KEY: KEY,
        BERTH_DATA_DIR: dataDir,
        BERTH_EGRESS_RESOLVE: HOSTS.map((host) => `${host}=127.0.0.1:${standIn.port}`).join(","),
        BERTH_EGRESS_EXTRA_CA_FILE: path.join(dataDir, "egress-ca", "ca.pem"),
        LITELLM_BASE_URL: model.url,
        LITELLM_API_KEY: LITELLM_KEY,
      },
    });
    api = berth.client(KEY);
    sql = connectPostgres(berth.database.url, { max: 2, onnotice: () => {} });
    berthPort = Number(new URL(berth.url).port);
    const database = new URL(berth.database.url);
    // Probed only where it is a port on 127.0.0.1 (this suite talks to no other address).
    databasePort = ["127.0.0.1", "localhost"].includes(database.hostname) && database.port ? Number(database.port) : null;
  });

  afterAll(async () => {
    await sql?.end({ timeout: 5 });
    await berth?.close();
    await standIn?.close();
    await model?.close();
    git?.close();
    registry?.close();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  let agentCount = 0;
  async function readySession(config: { egress?: { mode: EgressPolicy["mode"]; allow: EgressRule[] }; network?: "none" | "egress" }, agentId?: string) {
    const id = agentId ?? (await api.agents.create.mutate({ name: `egress-${++agentCount}`, model: "demo", ...config })).id;
    const session = await api.sessions.create.mutate({ agentId: id });
    await waitFor(`session ${session.id} ready`, async () => {
      const current = await api.sessions.get.query({ sessionId: session.id });
      if (current.status === "failed") throw new Error(`session ${session.id} failed: ${berth.logs().slice(-3000)}`);
      return current.status === "ready" ? true : undefined;
    }, 60_000);
    // A probe that hangs fails in 30 s rather than at the exec's timeout.
    await run(session.id, "echo 'max-time = 30' > ~/.curlrc");
    return { agentId: id, sessionId: session.id };
  }

  async function run(sessionId: string, command: string, timeoutMs = 60_000) {
    return api.sessions.exec.mutate({ sessionId, command, timeoutMs });
  }

  /** `key=value` lines of a probe's output. */
  function fields(stdout: string): Record<string, string> {
    return Object.fromEntries(stdout.split("\n").flatMap((line) => (/^[\w-]+=/.test(line) ? [[line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)]] : [])));
  }

  async function egressEvents(sessionId: string): Promise<EgressRecord[]> {
    const rows = await sql<{ payload: EgressRecord }[]>`select payload from session_events where session_id = ${sessionId} and type = 'egress' order by seq`;
    return rows.map((row) => row.payload);
  }

  /** The gateway writes its events in ~1 s batches: waits for one that matches. */
  async function egressEvent(sessionId: string, match: (event: EgressRecord) => boolean, what: string): Promise<EgressRecord> {
    return waitFor(`egress event: ${what}`, async () => (await egressEvents(sessionId)).find(match), 15_000);
  }

  function requestsTo(host: string, since = 0) {
    return standIn.requests.slice(since).filter((request) => request.host === host);
  }

  it("allow-list: an allowed host answers through the proxy variables, another gets 403", async () => {
    const { sessionId } = await readySession({ egress: { mode: "allowlist", allow: [{ host: "api.example.test" }] } });
    const ok = await run(sessionId, "curl -sS http://api.example.test/hello");
    expect(ok).toMatchObject({ exitCode: 0, stdout: "hello from api.example.test\n" });
    const refused = await run(sessionId, "curl -sS -w '%{http_code}' http://other.example.test/x");
    expect(refused.stdout).toContain("403");
    expect(refused.stdout).toContain("other.example.test");
  });

  // ------------------------------------------------------------------------------------------
  // 1. Nothing on the host's loopback or network namespace, whatever the mode.

  describe.each(["none", "allowlist", "open"] as const)("mode %s: the host's loopback services and network namespace are out of reach", (mode) => {
    it("the platform's port, the database's port and a host abstract socket: neither directly nor through the proxy", async () => {
      const ports = [berthPort, ...(databasePort === null ? [] : [databasePort])];
      // allowlist: a rule that names exactly these targets, so the refusal seen is the address rules', not the policy's.
      const allow: EgressRule[] = mode === "allowlist" ? [{ host: "127.0.0.1", ports }] : [];
      const { sessionId } = await readySession({ egress: { mode, allow } });

      const abstractName = `berth-test-abstract-${randomBytes(6).toString("hex")}`;
      const abstract = await listenAbstract(abstractName);
      try {
        // The same probe reaches it from the host: what fails in the jail fails for the jail's sake.
        expect(await probeAbstractOnHost(abstractName)).toBe("abstract=connected");
        expect(readFileSync("/proc/net/unix", "utf8")).toContain(`@${abstractName}`);

        const probes = ports.flatMap((port, index) => {
          const name = index === 0 ? "berth" : "db";
          return [
            `curl --noproxy '*' -sS -m 5 -o /dev/null http://127.0.0.1:${port}/healthz 2>/dev/null; echo direct-${name}=$?`,
            `(exec 3<>/dev/tcp/127.0.0.1/${port}) 2>/dev/null; echo tcp-${name}=$?`,
            // NO_PROXY names 127.0.0.1 (the model relay is reached directly): --noproxy '' sends these through the proxy all the same.
            `curl -sS -m 10 --noproxy '' -x "$HTTP_PROXY" -o proxy-${name}.txt -w 'proxy-${name}=%{http_code}\\n' http://127.0.0.1:${port}/healthz`,
            `curl -sS -m 10 --noproxy '' -p -x "$HTTP_PROXY" -o /dev/null -w 'connect-${name}=%{http_connect}\\n' http://127.0.0.1:${port}/healthz 2>/dev/null`,
            `echo proxy-${name}-body=$(tr '\\n' ' ' < proxy-${name}.txt)`,
          ];
        });
        const result = await run(
          sessionId,
          [
            ...probes,
            abstractProbe(abstractName),
            `echo abstract-listed=$(grep -c '@${abstractName}' /proc/net/unix)`,
            "echo netns=$(readlink /proc/self/ns/net)",
            "echo v6-devices=$(awk '{print $6}' /proc/net/if_inet6 | sort -u | tr '\\n' ' ')",
            "echo routes=$(tail -n +2 /proc/net/route | wc -l)",
            "echo devices=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')",
          ].join("\n"),
        );
        const found = fields(result.stdout);
        for (const [index] of ports.entries()) {
          const name = index === 0 ? "berth" : "db";
          expect(found[`direct-${name}`], `${name}: ${result.stdout}`).toBe("7"); // couldn't connect
          expect(found[`tcp-${name}`], name).toBe("1");
          expect(found[`proxy-${name}`], name).toBe("403");
          expect(found[`connect-${name}`], name).toBe("403");
          expect(found[`proxy-${name}-body`], name).toMatch(mode === "none" ? /mode none/ : /127\.0\.0\.1.*is loopback/);
        }
        expect(found.abstract).toBe("refused");
        expect(found["abstract-listed"]).toBe("0");
        // A jail's /proc is its own: its namespace's id differs from the host's, where the platform runs (this very process).
        expect(found.netns).toMatch(/^net:\[\d+\]$/);
        expect(found.netns).not.toBe(readlinkSync("/proc/self/ns/net"));
        expect(found["v6-devices"]?.trim()).toMatch(/^(lo)?$/);
        expect(found.routes).toBe("0"); // no IPv4 route at all (loopback's live in the local table)
        expect(found.devices?.trim()).toBe("lo");
      } finally {
        abstract.close();
      }
    });
  });

  // ------------------------------------------------------------------------------------------
  // 2. An allow-list agent: curl, git and npm through the proxy variables; other hosts refused.

  it("allow-list: curl over http and https, git clone over https and npm install from an allowed registry work; another host gets the 403 and a denied event", async () => {
    const { sessionId } = await readySession({
      egress: { mode: "allowlist", allow: [{ host: "api.example.test" }, { host: "git.example.test" }, { host: "registry.example.test" }] },
    });
    const before = standIn.requests.length;

    const plain = await run(sessionId, "curl -sS http://api.example.test/plain");
    expect(plain).toMatchObject({ exitCode: 0, stdout: "hello from api.example.test\n" });
    const secure = await run(sessionId, "curl -sS https://api.example.test/secure");
    expect(secure).toMatchObject({ exitCode: 0, stdout: "hello from api.example.test\n" });
    expect(requestsTo("api.example.test", before).map((request) => [request.scheme, request.url, request.servername])).toEqual([
      ["http", "/plain", undefined],
      ["https", "/secure", "api.example.test"],
    ]);
    // The gateway's credentials end at the gateway.
    for (const request of requestsTo("api.example.test", before)) expect(request.headers).not.toHaveProperty("proxy-authorization");

    const cloned = await run(sessionId, "git clone -q https://git.example.test/repo.git repo && cat repo/README.md && git -C repo log --oneline | wc -l");
    expect(cloned, JSON.stringify(cloned)).toMatchObject({ exitCode: 0, stdout: "cloned through the egress gateway\n1\n" });
    expect(requestsTo("git.example.test", before).some((request) => request.method === "POST" && request.url.endsWith("/git-upload-pack"))).toBe(true);

    const installed = await run(
      sessionId,
      [
        "mkdir app && cd app && echo '{\"name\":\"app\",\"version\":\"1.0.0\",\"private\":true}' > package.json",
        `npm install --no-audit --no-fund --no-update-notifier --registry=https://registry.example.test/ ${NPM_PACKAGE} 2>&1`,
        `node -e 'console.log(require("${NPM_PACKAGE}").greeting)'`,
      ].join(" && "),
      120_000,
    );
    expect(installed, JSON.stringify(installed)).toMatchObject({ exitCode: 0 });
    expect(installed.stdout).toContain("installed through the egress gateway\n");
    expect(requestsTo("registry.example.test", before).map((request) => request.url)).toEqual(expect.arrayContaining([`/${NPM_PACKAGE}`, `/${NPM_PACKAGE}/-/${NPM_PACKAGE}-1.0.0.tgz`]));

    const refused = await run(sessionId, "curl -sS -w '\\ncode=%{http_code}\\n' http://denied.example.test/elsewhere");
    expect(fields(refused.stdout).code).toBe("403");
    expect(refused.stdout).toContain("denied.example.test");
    expect(refused.stdout).toMatch(/refused: the agent's egress policy does not allow it/);
    const refusedTls = await run(sessionId, "curl -sS -w 'connect=%{http_connect}\\n' https://denied.example.test/elsewhere; echo rc=$?");
    expect(fields(refusedTls.stdout)).toMatchObject({ connect: "403", rc: "56" });
    expect(requestsTo("denied.example.test", before)).toEqual([]);

    const denied = await egressEvent(sessionId, (event) => event.decision === "denied" && event.host === "denied.example.test" && event.method === "GET", "denied GET");
    expect(denied).toMatchObject({ port: 80, path: "/elsewhere", status: 403, reason: expect.stringContaining("no allow rule for host denied.example.test") });
    await egressEvent(sessionId, (event) => event.decision === "denied" && event.host === "denied.example.test" && event.method === "CONNECT", "denied CONNECT");
    // And the same by SQL, as the issue asks: the denial is in the session's log.
    const [row] = await sql<{ count: number }[]>`select count(*)::int as count from session_events where session_id = ${sessionId} and type = 'egress' and payload->>'decision' = 'denied' and payload->>'host' = 'denied.example.test'`;
    expect(row!.count).toBeGreaterThanOrEqual(1);
    const allowed = await egressEvent(sessionId, (event) => event.decision === "allowed" && event.host === "api.example.test" && event.method === "GET", "allowed GET");
    expect(allowed).toMatchObject({ port: 80, status: 200, rule: "api.example.test" });
    await egressEvent(sessionId, (event) => event.decision === "allowed" && event.host === "registry.example.test" && event.method === "CONNECT", "allowed CONNECT to the registry");
  });

  // ------------------------------------------------------------------------------------------
  // 3. Rules with methods and paths: the gateway looks inside the TLS and decides each request.

  it("method and path rules: GET /v1/x passes, POST /v1/x, GET /admin and a dot-segment detour get 403, over https and http", async () => {
    const { sessionId } = await readySession({ egress: { mode: "allowlist", allow: [{ host: "rules.example.test", methods: ["GET"], paths: ["/v1/*"] }] } });
    const before = standIn.requests.length;
    const result = await run(
      sessionId,
      [
        "curl -sS -o get.txt -w 'get=%{http_code}\\n' https://rules.example.test/v1/x",
        "echo get-body=$(cat get.txt)",
        "curl -sS -o post.txt -w 'post=%{http_code}\\n' -X POST -d x=1 https://rules.example.test/v1/x",
        "echo post-body=$(cat post.txt)",
        "curl -sS -o admin.txt -w 'admin=%{http_code}\\n' https://rules.example.test/admin",
        "echo admin-body=$(cat admin.txt)",
        "curl -sS -o /dev/null -w 'detour=%{http_code}\\n' --path-as-is https://rules.example.test/v1/../admin",
        "curl -sS -o /dev/null -w 'plain-get=%{http_code}\\n' http://rules.example.test/v1/y",
        "curl -sS -o /dev/null -w 'plain-post=%{http_code}\\n' -X POST http://rules.example.test/v1/y",
        // The certificate the sandbox sees is the gateway's (issued by the Berth CA for the host), verified against the trust the sandbox got.
        "curl -sS -o /dev/null -w 'verify=%{ssl_verify_result}\\n' https://rules.example.test/v1/z",
      ].join("\n"),
    );
    const found = fields(result.stdout);
    expect(found, result.stderr).toMatchObject({ get: "200", "get-body": "hello from rules.example.test", post: "403", admin: "403", detour: "403", "plain-get": "200", "plain-post": "403", verify: "0" });
    expect(found["post-body"]).toMatch(/rules\.example\.test.*refused: the agent's egress policy does not allow it \(no allow rule for POST \/v1\/x on rules\.example\.test\)/);
    expect(found["admin-body"]).toMatch(/no allow rule for GET \/admin/);
    // Only what the rule allows reached the host.
    expect(requestsTo("rules.example.test", before).map((request) => `${request.scheme} ${request.method} ${request.url}`)).toEqual([
      "https GET /v1/x",
      "http GET /v1/y",
      "https GET /v1/z",
    ]);
    await egressEvent(sessionId, (event) => event.decision === "denied" && event.method === "POST" && event.port === 443, "denied inspected POST");
    // Alike requests within a second become one event with a count (and no path when theirs differ).
    await waitFor("both allowed inspected GETs recorded", async () => {
      const allowed = (await egressEvents(sessionId)).filter((event) => event.decision === "allowed" && event.method === "GET" && event.port === 443);
      return allowed.reduce((sum, event) => sum + (event.count ?? 1), 0) === 2 ? true : undefined;
    }, 15_000);
  });

  // ------------------------------------------------------------------------------------------
  // 4. Brokered secrets: the sandbox holds a stub, the gateway puts the value in for its hosts only.

  it("brokered secrets: the sandbox sees a stub, the bound host gets the value (default and custom header), other hosts and plain http get the stub, rotation applies at once, the value is nowhere else", async () => {
    const value = `real-value-${randomBytes(8).toString("hex")}`;
    const rotated = `rotated-value-${randomBytes(8).toString("hex")}`;
    const apiKeyValue = `custom-key-${randomBytes(8).toString("hex")}`;
    const secrets = [value, rotated, apiKeyValue];
    await api.secrets.set.mutate({ name: "API_TOKEN", value, brokered: { hosts: ["api.example.test"] } });
    const agent = await api.agents.create.mutate({
      name: "brokered",
      model: "demo",
      egress: { mode: "allowlist", allow: [{ host: "api.example.test" }, { host: "other.example.test" }] },
    });
    await api.secrets.set.mutate({ name: "X_KEY", value: apiKeyValue, agentId: agent.id, brokered: { hosts: ["api.example.test"], header: "X-Api-Key", template: "{{value}}" } });
    const { sessionId } = await readySession({}, agent.id);
    const before = standIn.requests.length;

    const env = await run(sessionId, 'echo "API_TOKEN=$API_TOKEN"; echo "X_KEY=$X_KEY"; env');
    const stub = fields(env.stdout).API_TOKEN!;
    const keyStub = fields(env.stdout).X_KEY!;
    expect(stub).toMatch(/^berth-stub-[0-9a-f]{40}$/);
    expect(keyStub).toMatch(/^berth-stub-[0-9a-f]{40}$/);
    expect(keyStub).not.toBe(stub);
    for (const secret of secrets) expect(env.stdout).not.toContain(secret);

    // To the bound host over https: the gateway terminates TLS and puts the values in.
    const brokered = await run(sessionId, 'curl -sS -H "Authorization: Bearer $API_TOKEN" -H "X-Api-Key: $X_KEY" https://api.example.test/brokered');
    expect(brokered).toMatchObject({ exitCode: 0, stdout: "hello from api.example.test\n" });
    const [atApi] = requestsTo("api.example.test", before);
    expect(atApi).toMatchObject({ scheme: "https", url: "/brokered" });
    expect(atApi!.headers.authorization).toBe(`Bearer ${value}`);
    expect(atApi!.headers["x-api-key"]).toBe(apiKeyValue);
    // With no such header at all, it is added.
    const withoutHeader = await run(sessionId, "curl -sS https://api.example.test/no-header");
    expect(withoutHeader.exitCode).toBe(0);
    expect(requestsTo("api.example.test", before).find((request) => request.url === "/no-header")!.headers.authorization).toBe(`Bearer ${value}`);

    // To another allowed host (a tunnel the gateway does not open): the stub, as the sandbox sent it.
    const other = await run(sessionId, 'curl -sS -H "Authorization: Bearer $API_TOKEN" https://other.example.test/tunnelled');
    expect(other).toMatchObject({ exitCode: 0, stdout: "hello from other.example.test\n" });
    expect(requestsTo("other.example.test", before).map((request) => request.headers.authorization)).toEqual([`Bearer ${stub}`]);

    // Plain http to the bound host: never the value in clear; the stub goes as it is and is reported.
    const plain = await run(sessionId, 'curl -sS -H "Authorization: Bearer $API_TOKEN" http://api.example.test/plain');
    expect(plain.exitCode).toBe(0);
    expect(requestsTo("api.example.test", before).find((request) => request.url === "/plain")!.headers.authorization).toBe(`Bearer ${stub}`);
    const seen = await egressEvent(sessionId, (event) => event.port === 80 && event.host === "api.example.test" && (event.stubsSeen ?? []).length > 0, "stubsSeen on plain http");
    expect(seen).toMatchObject({ decision: "allowed", path: "/plain", stubsSeen: ["API_TOKEN"] });
    expect(seen.brokered).toBeUndefined();
    const put = await egressEvent(sessionId, (event) => event.port === 443 && event.host === "api.example.test" && (event.brokered ?? []).length > 0, "brokered on https");
    expect(put.brokered?.sort()).toEqual(["API_TOKEN", "X_KEY"]);

    // Rotation: the next request of the same sandbox carries the new value; the stub stays the same.
    await api.secrets.set.mutate({ name: "API_TOKEN", value: rotated, brokered: { hosts: ["api.example.test"] } });
    const afterRotation = standIn.requests.length;
    const again = await run(sessionId, 'echo "API_TOKEN=$API_TOKEN"; curl -sS -H "Authorization: Bearer $API_TOKEN" https://api.example.test/rotated');
    expect(fields(again.stdout).API_TOKEN).toBe(stub);
    expect(requestsTo("api.example.test", afterRotation).map((request) => request.headers.authorization)).toEqual([`Bearer ${rotated}`]);

    // The values appear in no event, no API answer and no log line.
    await new Promise((resolve) => setTimeout(resolve, 2_500)); // the last batch of egress events (1 s windows) is written
    const [stored] = await sql<{ text: string }[]>`select coalesce(string_agg(payload::text, ' '), '') as text from session_events`;
    const answers = JSON.stringify([
      await api.secrets.list.query({}),
      await api.sessions.events.query({ sessionId, limit: 1000 }),
      await api.sessions.get.query({ sessionId }),
      await api.agents.get.query({ agentId: agent.id }),
      await api.audit.list.query({}),
    ]);
    for (const secret of secrets) {
      expect(stored!.text).not.toContain(secret);
      expect(answers).not.toContain(secret);
      expect(berth.logs()).not.toContain(secret);
    }
    expect(stored!.text).toContain('"brokered"');
  });

  // ------------------------------------------------------------------------------------------
  // 5. A policy edit applies to the running sandbox at its next request.

  it("policy edits apply at once to a running sandbox: hosts added and removed, mode switched, nothing restarted", async () => {
    const { agentId, sessionId } = await readySession({ egress: { mode: "allowlist", allow: [{ host: "api.example.test" }] } });
    const jail = (await api.sessions.get.query({ sessionId })).sandbox;
    const codes = async () =>
      fields(
        (
          await run(
            sessionId,
            ["api", "other", "denied"].map((name) => `curl -sS -o /dev/null -w '${name}=%{http_code}\\n' http://${name}.example.test/; curl -sS -o /dev/null -w '${name}-tls=%{http_connect}%{http_code}\\n' https://${name}.example.test/ 2>/dev/null`).join("\n"),
          )
        ).stdout,
      );
    // %{http_connect}%{http_code}: "200200" through an open tunnel, "403000" when the CONNECT is refused.
    expect(await codes()).toEqual({ api: "200", "api-tls": "200200", other: "403", "other-tls": "403000", denied: "403", "denied-tls": "403000" });

    await api.agents.update.mutate({ agentId, egress: { mode: "allowlist", allow: [{ host: "api.example.test" }, { host: "other.example.test" }] } });
    expect(await codes()).toEqual({ api: "200", "api-tls": "200200", other: "200", "other-tls": "200200", denied: "403", "denied-tls": "403000" });

    await api.agents.update.mutate({ agentId, egress: { mode: "allowlist", allow: [{ host: "other.example.test" }] } });
    expect(await codes()).toEqual({ api: "403", "api-tls": "403000", other: "200", "other-tls": "200200", denied: "403", "denied-tls": "403000" });

    await api.agents.update.mutate({ agentId, network: "none" });
    expect(await codes()).toEqual({ api: "403", "api-tls": "403000", other: "403", "other-tls": "403000", denied: "403", "denied-tls": "403000" });

    await api.agents.update.mutate({ agentId, network: "egress" });
    expect(await codes()).toEqual({ api: "200", "api-tls": "200200", other: "200", "other-tls": "200200", denied: "200", "denied-tls": "200200" });

    // The same jail all along.
    const now = (await api.sessions.get.query({ sessionId })).sandbox;
    expect(now?.name).toBe(jail?.name);
    expect(now?.hostPid).toBe(jail?.hostPid);
  });

  // ------------------------------------------------------------------------------------------
  // 6. A program that ignores the proxy variables reaches nothing.

  it("a program that ignores the proxy variables reaches nothing: no name resolution, no route, not even the stand-in on the host's loopback", async () => {
    const { sessionId } = await readySession({ egress: { mode: "open", allow: [] } });
    const connections = standIn.connections;
    const before = standIn.requests.length;
    const result = await run(
      sessionId,
      [
        "curl --noproxy '*' -sS -m 10 http://api.example.test/ 2>/dev/null; echo name=$?",
        "env -u HTTP_PROXY -u http_proxy -u HTTPS_PROXY -u https_proxy -u ALL_PROXY -u all_proxy curl -sS -m 10 https://api.example.test/ 2>/dev/null; echo unset=$?",
        "getent hosts api.example.test; echo getent=$?",
        `curl --noproxy '*' -sS -m 5 http://127.0.0.1:${standIn.port}/ 2>/dev/null; echo direct=$?`,
        `(exec 3<>/dev/tcp/127.0.0.1/${standIn.port}) 2>/dev/null; echo tcp=$?`,
        `perl -MIO::Socket::INET -e 'print "perl=", (IO::Socket::INET->new(PeerAddr => "127.0.0.1", PeerPort => ${standIn.port}, Timeout => 5) ? "connected" : $!{ECONNREFUSED} ? "refused" : "error $!"), "\\n"'`,
      ].join("\n"),
    );
    const found = fields(result.stdout);
    expect(found.name, result.stdout).toBe("6"); // could not resolve host
    expect(found.unset).toBe("6");
    expect(found.getent).toBe("2");
    expect(found.direct).toBe("7"); // could not connect
    expect(found.tcp).toBe("1");
    expect(found.perl).toBe("refused");
    // Not one connection reached the stand-in (even one that sent nothing).
    expect(standIn.connections).toBe(connections);
    expect(standIn.requests.length).toBe(before);
    // Through the proxy the same name answers (open mode): the failures above are the jail's, not the stand-in's.
    const proxied = await run(sessionId, "curl -sS http://api.example.test/proxied");
    expect(proxied).toMatchObject({ exitCode: 0, stdout: "hello from api.example.test\n" });
    expect(standIn.requests.slice(before).map((request) => request.url)).toEqual(["/proxied"]);
  });

  // ------------------------------------------------------------------------------------------
  // 7. The gateway knows each sandbox by its token and its socket.

  it("a wrong or missing proxy token gets 407, and a sandbox cannot use another sandbox's token on its own socket", async () => {
    const allow = { mode: "allowlist" as const, allow: [{ host: "api.example.test" }] };
    const first = await readySession({ egress: allow });
    const second = await readySession({}, first.agentId);
    const otherToken = (await run(second.sessionId, 'printf %s "$BERTH_MODEL_API_KEY"')).stdout;
    const ownToken = (await run(first.sessionId, 'printf %s "$BERTH_MODEL_API_KEY"')).stdout;
    expect(otherToken).toMatch(/~/);
    expect(otherToken).not.toBe(ownToken);
    expect(first.sessionId).not.toBe(second.sessionId);
    const before = standIn.requests.length;

    const probe = (name: string, proxy: string) =>
      [
        `curl -sS -o /dev/null -w '${name}=%{http_code}\\n' -x "${proxy}" http://api.example.test/${name}`,
        `curl -sS -o /dev/null -w '${name}-connect=%{http_connect}\\n' -p -x "${proxy}" https://api.example.test/${name} 2>/dev/null`,
      ].join("\n");
    const result = await run(
      first.sessionId,
      [
        'FWD="${HTTP_PROXY##*@}"',
        probe("wrong", "http://berth:wrong@$FWD"),
        probe("missing", "http://$FWD"),
        probe("forged", "http://berth:${BERTH_MODEL_API_KEY%~*}~AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@$FWD"),
        probe("borrowed", `http://berth:${otherToken}@$FWD`),
        `curl -sS -o /dev/null -w 'borrowed-model=%{http_code}\\n' "$BERTH_MODEL_BASE_URL/models" -H "Authorization: Bearer ${otherToken}"`,
        probe("own", "$HTTP_PROXY"),
      ].join("\n"),
    );
    expect(fields(result.stdout)).toEqual({
      wrong: "407",
      "wrong-connect": "407",
      missing: "407",
      "missing-connect": "407",
      forged: "407",
      "forged-connect": "407",
      borrowed: "407",
      "borrowed-connect": "407",
      "borrowed-model": "401",
      own: "200",
      "own-connect": "200",
    });
    // Nothing but the sandbox's own requests went out.
    expect(requestsTo("api.example.test", before).map((request) => request.url)).toEqual(["/own", "/own"]);
    // The other sandbox's token still works where it belongs.
    const theirs = await run(second.sessionId, "curl -sS -o /dev/null -w '%{http_code}' http://api.example.test/theirs");
    expect(theirs.stdout).toBe("200");
  });

  // ------------------------------------------------------------------------------------------
  // 8. The network shorthand, and the model relay that works even with no egress at all.

  it("network 'egress' is mode open; network 'none' (and the default) refuses everything with 403 but still reaches the model relay", async () => {
    const open = await api.agents.create.mutate({ name: "shorthand-egress", model: "demo", network: "egress" });
    expect(open).toMatchObject({ network: "egress", egress: { mode: "open", allow: [] } });
    const closed = await api.agents.create.mutate({ name: "shorthand-none", model: "demo", network: "none" });
    expect(closed).toMatchObject({ network: "none", egress: { mode: "none", allow: [] } });
    const byDefault = await api.agents.create.mutate({ name: "shorthand-default", model: "demo" });
    expect(byDefault).toMatchObject({ network: "none", egress: { mode: "none" } });

    const openSession = await readySession({}, open.id);
    const openResult = await run(openSession.sessionId, "curl -sS -o /dev/null -w 'http=%{http_code}\\n' http://denied.example.test/\ncurl -sS -o /dev/null -w 'https=%{http_code}\\n' https://denied.example.test/");
    expect(fields(openResult.stdout)).toEqual({ http: "200", https: "200" });

    const modelCalls = model.requests.length;
    const closedSession = await readySession({}, closed.id);
    const closedResult = await run(
      closedSession.sessionId,
      [
        "curl -sS -w '\\nhttp=%{http_code}\\n' http://api.example.test/",
        "curl -sS -o /dev/null -w 'connect=%{http_connect}\\n' https://api.example.test/ 2>/dev/null",
        'curl -sS -o models.json -w \'model=%{http_code}\\n\' "$BERTH_MODEL_BASE_URL/models" -H "Authorization: Bearer $BERTH_MODEL_API_KEY"',
        "echo models=$(cat models.json)",
        'curl -sS -o /dev/null -w \'model-no-key=%{http_code}\\n\' "$BERTH_MODEL_BASE_URL/models"',
      ].join("\n"),
    );
    const found = fields(closedResult.stdout);
    expect(found).toMatchObject({ http: "403", connect: "403", model: "200", "model-no-key": "401" });
    expect(closedResult.stdout).toMatch(/mode none/);
    expect(JSON.parse(found.models!)).toMatchObject({ data: [{ id: "egress-test-model" }] });
    // The relay called the gateway with the platform's key, never the sandbox's token.
    const relayed = model.requests.slice(modelCalls);
    expect(relayed.map((request) => `${request.method} ${request.path}`)).toEqual(["GET /v1/models"]);
    expect(relayed[0]!.headers.authorization).toBe(`Bearer ${LITELLM_KEY}`);

    const defaultSession = await readySession({}, byDefault.id);
    const defaultResult = await run(defaultSession.sessionId, "curl -sS -o /dev/null -w '%{http_code}' http://api.example.test/");
    expect(defaultResult.stdout).toBe("403");
  });

  // ------------------------------------------------------------------------------------------
  // 9. Metrics.

  it("/metrics counts egress by decision and kind", async () => {
    // Traffic of every kind from a sandbox of its own, so this test stands alone.
    const { sessionId } = await readySession({ egress: { mode: "allowlist", allow: [{ host: "api.example.test" }] } });
    const traffic = await run(
      sessionId,
      [
        "curl -sS -o /dev/null -w 'http=%{http_code}\\n' http://api.example.test/",
        "curl -sS -o /dev/null -w 'https=%{http_code}\\n' https://api.example.test/",
        "curl -sS -o /dev/null -w 'http-denied=%{http_code}\\n' http://denied.example.test/",
        "curl -sS -o /dev/null -w 'connect-denied=%{http_connect}\\n' https://denied.example.test/ 2>/dev/null",
        'curl -sS -o /dev/null -w \'model=%{http_code}\\n\' "$BERTH_MODEL_BASE_URL/models" -H "Authorization: Bearer $BERTH_MODEL_API_KEY"',
      ].join("\n"),
    );
    expect(fields(traffic.stdout)).toEqual({ http: "200", https: "200", "http-denied": "403", "connect-denied": "403", model: "200" });

    const response = await fetch(`${berth.url}/metrics`);
    expect(response.status).toBe(200);
    const families = new Map(parsePrometheusTextFormat(await response.text()).map((family) => [family.name, family]));
    const family = families.get("berth_egress_requests_total");
    expect(family?.type).toBe("COUNTER");
    const value = (labels: Record<string, string>) =>
      (family?.metrics ?? []).filter((metric) => Object.entries(labels).every(([key, v]) => metric.labels?.[key] === v)).reduce((sum, metric) => sum + Number(metric.value), 0);
    for (const decision of ["allowed", "denied"]) for (const kind of ["http", "connect"]) expect(value({ decision, kind }), `${decision} ${kind}`).toBeGreaterThan(0);
    expect(value({ decision: "allowed", kind: "model" })).toBeGreaterThan(0);
    expect(Number(families.get("berth_egress_bytes_total")?.metrics.find((metric) => metric.labels?.direction === "in")?.value)).toBeGreaterThan(0);
  });
});
