import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestGateway, type TestGateway } from "../../tests/helpers/test-gateway";
import { createLogger } from "../logger";
import { createModelRelay, type ModelRelayGateway } from "./model-relay";

type ModelRelay = { close(): Promise<void> };

/** The relay as the egress gateway mounts it, on a Unix socket of its own, with one sandbox's token. */
async function startModelRelay(options: { socketPath: string; token: string; gateway: ModelRelayGateway }): Promise<ModelRelay> {
  const relay = createModelRelay({ gateway: options.gateway, logger: createLogger("silent") });
  const server = http.createServer((req, res) => relay(req, res, (presented) => presented === options.token));
  await new Promise<void>((resolve) => server.listen(options.socketPath, resolve));
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

const TOKEN = "sandbox-model-token-0123456789abcdef0123456789";
const GATEWAY_KEY = "sk-the-real-gateway-key-never-in-a-sandbox";

function request(socketPath: string, input: { method: string; path: string; headers?: Record<string, string>; body?: unknown }) {
  return new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
    const payload = input.body === undefined ? undefined : JSON.stringify(input.body);
    const req = http.request(
      { socketPath, method: input.method, path: input.path, headers: { ...(payload ? { "content-type": "application/json" } : {}), ...input.headers } },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => (body += chunk));
        res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body }));
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

const chat = { model: "m", messages: [{ role: "user", content: "hi" }], stream: true };

describe("the model relay of a sandbox", () => {
  let gateway: TestGateway;
  let relay: ModelRelay;
  let dir: string;
  let socket: string;

  beforeAll(async () => {
    gateway = await startTestGateway({ apiKey: GATEWAY_KEY, models: ["m"] });
    dir = mkdtempSync(path.join(os.tmpdir(), "berth-relay-"));
    socket = path.join(dir, "model.sock");
    relay = await startModelRelay({ socketPath: socket, token: TOKEN, gateway: { baseUrl: `${gateway.url}/v1`, apiKey: GATEWAY_KEY } });
  });
  afterAll(async () => {
    await relay?.close();
    await gateway?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("forwards a streamed chat completion with the gateway's key in place of the sandbox's token", async () => {
    gateway.script({ text: "Hello from the gateway", chunks: 3 });
    const before = gateway.requests.length;
    const answer = await request(socket, { method: "POST", path: "/v1/chat/completions", headers: { authorization: `Bearer ${TOKEN}` }, body: chat });
    expect(answer.status).toBe(200);
    expect(answer.headers["content-type"]).toMatch(/text\/event-stream/);
    const text = answer.body
      .split("\n")
      .filter((line) => line.startsWith("data: {"))
      .map((line) => (JSON.parse(line.slice(6)) as { choices: { delta: { content?: string } }[] }).choices[0]?.delta.content ?? "")
      .join("");
    expect(text).toBe("Hello from the gateway");
    const received = gateway.requests.slice(before);
    expect(received).toHaveLength(1);
    expect(received[0]!.headers.authorization).toBe(`Bearer ${GATEWAY_KEY}`);
    expect(JSON.stringify(received[0]!.headers)).not.toContain(TOKEN);
    expect(gateway.violations).toEqual([]);
  });

  it("accepts the token as x-api-key (Anthropic-style clients) and lists models", async () => {
    const answer = await request(socket, { method: "GET", path: "/v1/models", headers: { "x-api-key": TOKEN } });
    expect(answer.status).toBe(200);
    expect(JSON.parse(answer.body)).toMatchObject({ data: [{ id: "m" }] });
    expect(gateway.requests.at(-1)!.headers["x-api-key"]).toBeUndefined();
  });

  it("refuses a missing or wrong token without calling the gateway", async () => {
    const before = gateway.requests.length;
    for (const headers of [{}, { authorization: "Bearer not-the-token" }, { authorization: `Bearer ${TOKEN}x` }, { "x-api-key": GATEWAY_KEY }] as Record<string, string>[]) {
      const answer = await request(socket, { method: "POST", path: "/v1/chat/completions", headers, body: chat });
      expect(answer.status).toBe(401);
      expect(JSON.parse(answer.body)).toMatchObject({ error: { code: "invalid_api_key" } });
    }
    expect(gateway.requests.length).toBe(before);
  });

  it("serves only inference endpoints: the gateway's admin API stays out of reach", async () => {
    const before = gateway.requests.length;
    for (const [method, target] of [
      ["POST", "/key/generate"],
      ["GET", "/health/liveliness"],
      ["POST", "/v1/chat/completions/../../key/generate"],
      ["GET", "/v1/chat/completions"],
      ["DELETE", "/v1/models"],
    ] as const) {
      const answer = await request(socket, { method, path: target, headers: { authorization: `Bearer ${TOKEN}` }, body: method === "POST" ? {} : undefined });
      expect(answer.status, `${method} ${target}`).toBe(404);
    }
    expect(gateway.requests.length).toBe(before);
  });

  it("answers 502 with a readable error when the gateway cannot be reached", async () => {
    const deadSocket = path.join(dir, "dead.sock");
    const unreachable = await startModelRelay({ socketPath: deadSocket, token: TOKEN, gateway: { baseUrl: "http://127.0.0.1:9/v1", apiKey: undefined } });
    try {
      const answer = await request(deadSocket, { method: "POST", path: "/v1/chat/completions", headers: { authorization: `Bearer ${TOKEN}` }, body: chat });
      expect(answer.status).toBe(502);
      expect(JSON.parse(answer.body)).toMatchObject({ error: { code: "gateway_unreachable" } });
    } finally {
      await unreachable.close();
    }
  });
});
