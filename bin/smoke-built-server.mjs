#!/usr/bin/env node
// Starts the built server (build/main.js) under a given runtime on a fresh embedded database, checks
// /readyz, the home page and system.health, runs `run: echo …` with the offline demo model in a new
// session (its sandbox daemon runs on the same runtime), fetches a stand-in outside host through the
// egress gateway with curl in the sandbox, then SIGTERMs it and expects exit 0.
// Usage: node bin/smoke-built-server.mjs [runtime-binary]   (default: this node)
import { spawn } from "node:child_process";
import http from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

const runtime = process.argv[2] ?? process.execPath;
const API_KEY = "berth_smoke_admin_key_0123456789abcdef";
const port = await new Promise((resolve) => {
  const server = net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = server.address();
    server.close(() => resolve(port));
  });
});
// An "outside host" on 127.0.0.1, reached from the sandbox only through the egress gateway.
const outside = http.createServer((req, res) => res.end(`outside says hi to ${req.headers.host}\n`));
const outsidePort = await new Promise((resolve) => outside.listen(0, "127.0.0.1", () => resolve(outside.address().port)));
const dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-smoke-"));
const child = spawn(runtime, ["build/main.js"], {
  env: { PATH: process.env.PATH, HOME: process.env.HOME, PORT: String(port), HOST: "127.0.0.1", BERTH_DATA_DIR: dataDir, BERTH_ADMIN_API_KEY: API_KEY, BERTH_WARM_POOL_SIZE: "0", BERTH_EGRESS_RESOLVE: `smoke.example.test=127.0.0.1:${outsidePort}` },
  stdio: ["ignore", "pipe", "pipe"],
});
let output = "";
child.stdout.on("data", (chunk) => (output += chunk));
child.stderr.on("data", (chunk) => (output += chunk));
const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));

function fail(message) {
  console.error(`smoke (${runtime}): ${message}\n--- server output ---\n${output}`);
  child.kill("SIGKILL");
  rmSync(dataDir, { recursive: true, force: true });
  process.exit(1);
}

const base = `http://127.0.0.1:${port}`;
const deadline = Date.now() + 60_000;
for (;;) {
  const status = await fetch(`${base}/readyz`).then((r) => r.status, () => 0);
  if (status === 200) break;
  if (Date.now() > deadline) fail("/readyz did not answer 200 within 60 s");
  await new Promise((resolve) => setTimeout(resolve, 250));
}
const home = await fetch(`${base}/`);
if (home.status !== 200 || !(await home.text()).includes("<h1>Berth</h1>")) fail("the home page did not render");
const health = await (await fetch(`${base}/api/trpc/system.health`)).json();
if (health?.result?.data?.json?.database !== "ok") fail(`system.health said ${JSON.stringify(health)}`);

// tRPC's wire format (superjson), as the typed client sends it.
async function call(kind, procedure, input) {
  const headers = { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" };
  const response =
    kind === "query"
      ? await fetch(`${base}/api/trpc/${procedure}?input=${encodeURIComponent(JSON.stringify({ json: input }))}`, { headers })
      : await fetch(`${base}/api/trpc/${procedure}`, { method: "POST", headers, body: JSON.stringify({ json: input }) });
  const body = await response.json().catch(() => null);
  if (!response.ok) fail(`${procedure} answered ${response.status}: ${JSON.stringify(body)}`);
  return body.result.data.json;
}
async function until(what, probe, timeoutMs) {
  const giveUpAt = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > giveUpAt) fail(`${what} did not happen within ${timeoutMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}
const agent = await call("mutation", "agents.create", { name: "smoke", model: "demo", egress: { mode: "allowlist", allow: [{ host: "smoke.example.test" }] } });
const { id: sessionId } = await call("mutation", "sessions.create", { agentId: agent.id });
await until("the session's sandbox to be ready", async () => (await call("query", "sessions.get", { sessionId })).status === "ready", 60_000);
await call("mutation", "sessions.send", { sessionId, text: "run: echo smoke-$((40 + 2))" });
const answered = await until(
  "the turn to finish",
  async () => {
    const { items } = await call("query", "sessions.events", { sessionId, limit: 1000 });
    return items.some((event) => event.type === "usage") ? items : null;
  },
  60_000,
);
const result = answered.find((event) => event.type === "tool_result");
if (!String(result?.payload?.output).includes("smoke-42")) fail(`the command's result was ${JSON.stringify(result)}`);
const fetched = await call("mutation", "sessions.exec", { sessionId, command: "curl -sS http://smoke.example.test/" });
if (fetched.stdout !== "outside says hi to smoke.example.test\n") fail(`curl through the egress gateway gave ${JSON.stringify(fetched)}`);
outside.close();

const stoppedAt = Date.now();
child.kill("SIGTERM");
const exit = await exited;
rmSync(dataDir, { recursive: true, force: true });
if (exit.code !== 0) fail(`exit ${JSON.stringify(exit)} after SIGTERM`);
console.log(`smoke (${runtime}): ready, home page and health ok, a command ran in a session's sandbox, curl reached an allowed host through the egress gateway; SIGTERM exit 0 in ${Date.now() - stoppedAt} ms`);
