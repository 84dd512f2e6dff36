import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { findClaudeCodeBinary, findCodexBinary, findOpencodeBinary } from "../../server/harness/binaries";
import { startTestBerth, type TestBerth } from "../helpers/berth";
import { FakeKubeApi } from "../helpers/fake-kube-api";
import { freePort } from "../helpers/processes";
import { lastTurn, recordingScript, sessionProbe } from "../helpers/sessions";
import { startTestGateway, type RecordedRequest, type TestGateway, type TestGatewayStep } from "../helpers/test-gateway";
import { startTestAnthropicGateway, type AnthropicRequest, type AnthropicStep, type TestAnthropicGateway } from "../helpers/test-gateway-anthropic";
import { startTestResponsesGateway, type ResponsesRequest, type ResponsesStep, type TestResponsesGateway } from "../helpers/test-gateway-responses";

const KEY = "kubernetes_harness_key_0123456789abcdef";
const GATEWAY_KEY = "sk-gateway-secret-for-kubernetes-5b4a39";
const NAMESPACE = "berth-harness-e2e";
const SECRET_KEY = "3c".repeat(32);
const IMAGE = "berth:e2e";
/**
 * A CLI's first turn in a fresh pod: opencode's first start takes a while on a loaded 2-core machine
 * (it asks the npm registry for its provider package, which the gateway refuses: the agent's egress
 * policy is `none`).
 */
const TURN_MS = 180_000;
const TURN_TEST_MS = 300_000;
/** The sandbox pods' user (the pod's securityContext): what the stand-in runs their daemons as. */
const POD_UID = 10001;

/**
 * The coding-agent harnesses on the kubernetes backend, against the stand-in API server: every
 * sandbox is a Sandbox whose "pod" is a real sandbox daemon, running as the pod's user, with the
 * harness binaries where the sandbox image carries them (/opt/berth/bin, bound by the stand-in), and
 * the real CLIs. A pod has no LiteLLM key and no model route of its own: its daemon forwards a
 * loopback port to the egress gateway in the Berth process (BERTH_DAEMON_GATEWAY, here
 * 127.0.0.1:<BERTH_EGRESS_PORT>), whose model relay puts the gateway key on the CLI's requests.
 * One scripted LiteLLM stand-in per wire format (chat completions, Anthropic messages, Responses),
 * behind one address.
 */
describe("the coding-agent harnesses on the kubernetes backend (stand-in API server, model relay through the egress gateway)", () => {
  let fake: FakeKubeApi;
  let berth: TestBerth;
  let api: ReturnType<TestBerth["client"]>;
  let sql: postgres.Sql;
  let probe: ReturnType<typeof sessionProbe>;
  let kubeDir: string;
  let chat: TestGateway;
  let anthropic: TestAnthropicGateway;
  let responses: TestResponsesGateway;
  let litellm: http.Server;
  const previousKubeconfig = process.env.KUBECONFIG;
  const binaries = { opencode: findOpencodeBinary(), codex: findCodexBinary(), claude: findClaudeCodeBinary() };
  /** The stand-in runs daemons as the pod's user only as root (setpriv); otherwise as the test's user. */
  const asRoot = process.getuid?.() === 0;

  beforeAll(async () => {
    chat = await startTestGateway({ apiKey: GATEWAY_KEY });
    anthropic = await startTestAnthropicGateway({ apiKey: GATEWAY_KEY });
    responses = await startTestResponsesGateway({ apiKey: GATEWAY_KEY });
    litellm = await startRouter((pathname) => (pathname.startsWith("/v1/messages") ? anthropic.url : pathname === "/v1/responses" ? responses.url : chat.url));

    const files = Object.fromEntries(Object.entries(binaries).flatMap(([tool, file]) => (file ? [[`/opt/berth/bin/${tool}`, file]] : [])));
    fake = await new FakeKubeApi({ imageFiles: { [IMAGE]: files }, runAsPodUser: asRoot }).start();
    kubeDir = mkdtempSync(path.join(os.tmpdir(), "berth-kubeconfig-"));
    writeFileSync(path.join(kubeDir, "config"), fake.kubeconfig(NAMESPACE), { mode: 0o600 });
    process.env.KUBECONFIG = path.join(kubeDir, "config");
    const egressPort = await freePort();
    berth = await startTestBerth({
      env: {
        BERTH_ADMIN_API_KEY: KEY,
        BERTH_SECRET_KEY: SECRET_KEY,
        BERTH_SANDBOX_BACKEND: "kubernetes",
        BERTH_SANDBOX_IMAGE: IMAGE,
        BERTH_K8S_NAMESPACE: NAMESPACE,
        BERTH_SANDBOX_DAEMON_PORT: String(await freePort()),
        BERTH_EGRESS_PORT: String(egressPort),
        BERTH_K8S_EGRESS_ADDRESS: `127.0.0.1:${egressPort}`,
        LITELLM_BASE_URL: `http://127.0.0.1:${(litellm.address() as AddressInfo).port}`,
        LITELLM_API_KEY: GATEWAY_KEY,
      },
    });
    api = berth.client(KEY);
    sql = postgres(berth.databaseUrl, { max: 2, onnotice: () => {} });
    probe = sessionProbe(api, sql);
  });

  afterAll(async () => {
    await sql?.end();
    await berth?.close();
    await fake?.stop();
    litellm?.close();
    await Promise.all([chat?.close(), anthropic?.close(), responses?.close()]);
    if (previousKubeconfig === undefined) delete process.env.KUBECONFIG;
    else process.env.KUBECONFIG = previousKubeconfig;
    if (kubeDir) rmSync(kubeDir, { recursive: true, force: true });
  });

  /**
   * A ready session of an agent on `harness`, in a pod of the kubernetes backend that has no key and
   * no route to the LiteLLM Gateway but through the egress gateway.
   */
  async function podSession(name: string, harness: "opencode" | "claude-code" | "codex") {
    const id = await probe.readySession({ name, model: "test-model", harness });
    const session = await api.sessions.get.query({ sessionId: id });
    expect(session.sandbox).toMatchObject({ backend: "kubernetes", status: "ready", hostPid: null });
    const pod = fake.pod(session.sandbox!.name)!;
    expect(pod.env.BERTH_DAEMON_GATEWAY).toBe(`tcp:${berth.config.egress.podAddress}`);
    expect(JSON.stringify(pod.env)).not.toContain(GATEWAY_KEY);
    return { id, sandbox: session.sandbox!.name };
  }

  /** The sandbox's view: its user, the relay's address and key, and that it holds no gateway key. */
  async function expectRelayOnly(sessionId: string, sandbox: string) {
    const seen = (await probe.exec(sessionId, 'id -u; echo "$BERTH_MODEL_BASE_URL"; echo "$BERTH_MODEL_API_KEY"; env; cat /proc/self/environ | tr "\\0" "\\n"')).stdout;
    const [uid, baseUrl, apiKey] = seen.split("\n");
    if (asRoot) expect(uid).toBe(String(POD_UID));
    // The daemon's loopback forwarder to the gateway, and the sandbox's own gateway token (for its name, its row's).
    expect(baseUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1$/);
    expect(apiKey!.startsWith(`${sandbox}~`)).toBe(true);
    expect(seen).not.toContain(GATEWAY_KEY);
  }

  it.skipIf(!binaries.opencode)("opencode runs a turn with a bash tool call through the relay", { timeout: TURN_TEST_MS }, async () => {
    const { id, sandbox } = await podSession("k8s-opencode", "opencode");
    await expectRelayOnly(id, sandbox);
    const seen = recordingScript<TestGatewayStep, RecordedRequest>(
      chat,
      [
        { toolCalls: [{ name: "bash", arguments: { command: "echo ran-in-the-pod > proof.txt && echo marker-$((6*7))", description: "leave a proof" } }], usage: { prompt: 100, completion: 10 } },
        { text: "Done in the pod.", usage: { prompt: 120, completion: 5 } },
      ],
    );
    await api.sessions.send.mutate({ sessionId: id, text: "Leave a proof in the workspace" });
    const turn = lastTurn(await probe.settled(id, 1, TURN_MS));
    expect(turn.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    expect(turn[1]!.payload).toMatchObject({ name: "bash", input: { command: "echo ran-in-the-pod > proof.txt && echo marker-$((6*7))" } });
    expect(turn[2]!.payload).toMatchObject({ callId: turn[1]!.payload.id, output: "marker-42\n", exitCode: 0, isError: false });
    expect(turn[3]!.payload).toEqual({ text: "Done in the pod." });
    expect(turn[4]!.payload).toEqual({ promptTokens: 220, completionTokens: 15 });
    // The command ran in the pod, on its workspace volume.
    expect((await probe.exec(id, "cat proof.txt")).stdout).toBe("ran-in-the-pod\n");

    // Both model calls went through the relay, which put the gateway's key on them.
    expect(seen).toHaveLength(2);
    for (const request of seen) {
      expect(request.headers.authorization).toBe(`Bearer ${GATEWAY_KEY}`);
      expect((request.body as { model: string }).model).toBe("test-model");
    }
    expect(chat.violations).toEqual([]);
  });

  it.skipIf(!binaries.claude)("claude-code runs a turn with a Bash tool call through the relay", { timeout: TURN_TEST_MS }, async () => {
    const { id, sandbox } = await podSession("k8s-claude", "claude-code");
    await expectRelayOnly(id, sandbox);
    const seen = recordingScript<AnthropicStep, AnthropicRequest>(anthropic, [
      { toolUses: [{ name: "Bash", input: { command: "echo claude-in-the-pod > proof.txt && echo marker-claude", description: "leave a proof" } }], usage: { input: 100, output: 10 } },
      { text: "Done in the pod.", usage: { input: 120, output: 5 } },
    ]);
    await api.sessions.send.mutate({ sessionId: id, text: "Leave a proof in the workspace" });
    const turn = lastTurn(await probe.settled(id, 1, TURN_MS));
    expect(turn.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    expect(turn[1]!.payload).toMatchObject({ name: "Bash" });
    expect(turn[2]!.payload).toMatchObject({ callId: turn[1]!.payload.id, output: "marker-claude", exitCode: 0, isError: false });
    expect(turn[3]!.payload).toEqual({ text: "Done in the pod." });
    expect((await probe.exec(id, "cat proof.txt")).stdout).toBe("claude-in-the-pod\n");
    expect(seen.length).toBeGreaterThanOrEqual(2);
    for (const request of seen) {
      expect(request.headers.authorization).toBe(`Bearer ${GATEWAY_KEY}`);
      expect(request.headers["x-api-key"]).toBeUndefined();
    }
    expect(anthropic.violations).toEqual([]);
  });

  it.skipIf(!binaries.codex)("codex runs a turn with a command through the relay", { timeout: TURN_TEST_MS }, async () => {
    const { id, sandbox } = await podSession("k8s-codex", "codex");
    await expectRelayOnly(id, sandbox);
    const seen = recordingScript<ResponsesStep, ResponsesRequest>(responses, [
      { functionCalls: [{ name: "exec_command", arguments: { cmd: "echo codex-in-the-pod > proof.txt && echo marker-codex" } }], usage: { input: 100, output: 10 } },
      { text: "Done in the pod.", usage: { input: 120, output: 5 } },
    ]);
    await api.sessions.send.mutate({ sessionId: id, text: "Leave a proof in the workspace" });
    const turn = lastTurn(await probe.settled(id, 1, TURN_MS));
    expect(turn.map((event) => event.type)).toEqual(["user_message", "tool_call", "tool_result", "assistant_message", "usage"]);
    expect(turn[1]!.payload).toMatchObject({ name: "command_execution" });
    expect(turn[2]!.payload).toMatchObject({ callId: turn[1]!.payload.id, output: "marker-codex\n", exitCode: 0, isError: false });
    expect(turn[3]!.payload).toEqual({ text: "Done in the pod." });
    expect((await probe.exec(id, "cat proof.txt")).stdout).toBe("codex-in-the-pod\n");
    expect(seen).toHaveLength(2);
    for (const request of seen) expect(request.headers.authorization).toBe(`Bearer ${GATEWAY_KEY}`);
    expect(responses.violations).toEqual([]);
  });

  it("the pods' objects carry no gateway key, and the stand-in accepted everything the platform sent", () => {
    for (const plural of ["sandboxes", "sandboxtemplates", "secrets"]) {
      for (const object of fake.list(plural, NAMESPACE)) {
        expect(JSON.stringify(object)).not.toContain(GATEWAY_KEY);
        expect(JSON.stringify(object)).not.toContain(Buffer.from(GATEWAY_KEY).toString("base64"));
      }
    }
    expect(fake.rejected).toEqual([]);
    expect(berth.logs()).not.toContain(GATEWAY_KEY);
  });
});

/** One address for the three LiteLLM stand-ins (as LiteLLM serves every wire format): by path. */
async function startRouter(target: (pathname: string) => string): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://router");
    const upstream = http.request(new URL(url.pathname + url.search, target(url.pathname)), { method: req.method, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.on("error", () => res.destroy());
    res.on("close", () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}
