#!/usr/bin/env node
// Starts the built server (build/main.js) under a given runtime on a fresh embedded database, checks
// /readyz, the home page and system.health, then SIGTERMs it and expects exit 0.
// Usage: node bin/smoke-built-server.mjs [runtime-binary]   (default: this node)
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

const runtime = process.argv[2] ?? process.execPath;
const port = await new Promise((resolve) => {
  const server = net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = server.address();
    server.close(() => resolve(port));
  });
});
const dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-smoke-"));
const child = spawn(runtime, ["build/main.js"], {
  env: { PATH: process.env.PATH, HOME: process.env.HOME, PORT: String(port), HOST: "127.0.0.1", BERTH_DATA_DIR: dataDir },
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

const stoppedAt = Date.now();
child.kill("SIGTERM");
const exit = await exited;
rmSync(dataDir, { recursive: true, force: true });
if (exit.code !== 0) fail(`exit ${JSON.stringify(exit)} after SIGTERM`);
console.log(`smoke (${runtime}): ready, home page and health ok; SIGTERM exit 0 in ${Date.now() - stoppedAt} ms`);
