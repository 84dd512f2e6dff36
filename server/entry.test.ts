import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../tests/helpers/database";
import { freePort, waitFor } from "../tests/helpers/processes";
import { ROOT } from "../tests/helpers/berth";

/**
 * The process entry as `npm start` runs it (no NODE_ENV), on a first start: what its JSON log holds,
 * what its error answers hold, and how it takes request bodies it must not hold.
 */
describe("a first start of the process entry, without NODE_ENV", () => {
  let database: TestDatabase;
  let dataDir: string;
  let child: ChildProcess;
  let stdout = "";
  let stderr = "";
  let base: string;
  let port: number;

  beforeAll(async () => {
    database = await createTestDatabase();
    dataDir = mkdtempSync(path.join(os.tmpdir(), "berth-entry-"));
    port = await freePort();
    child = spawn(process.execPath, ["--import", "tsx", "server/entry.ts"], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? "/root", DATABASE_URL: database.url, BERTH_DATA_DIR: dataDir, PORT: String(port), HOST: "127.0.0.1", BERTH_WARM_POOL_SIZE: "0", LOG_LEVEL: "info" } as unknown as NodeJS.ProcessEnv,
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout!.on("data", (chunk) => (stdout += chunk));
    child.stderr!.on("data", (chunk) => (stderr += chunk));
    base = `http://127.0.0.1:${port}`;
    await waitFor("the server to be ready", () => (stdout.includes("Berth is ready") ? true : undefined), 90_000);
  });
  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
    }
    await database?.drop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  const apiKey = () => readFileSync(path.join(dataDir, "admin-api-key"), "utf8").trim();

  it("shows the generated password and API key on stderr and in their files, never in a JSON log line", () => {
    const password = readFileSync(path.join(dataDir, "admin-password"), "utf8").trim();
    const key = apiKey();
    expect(password.length).toBeGreaterThan(16);
    expect(stderr).toContain(`Admin password for admin@berth.local: ${password}`);
    expect(stderr).toContain(`Admin API key: ${key}`);
    const lines = stdout.split("\n").filter(Boolean);
    expect(lines.length).toBeGreaterThan(3);
    for (const line of lines) {
      expect(() => JSON.parse(line)).not.toThrow();
      expect(line).not.toContain(password);
      expect(line).not.toContain(key);
    }
    // The log still says where the files are.
    expect(stdout).toContain(`saved to ${path.join(dataDir, "admin-password")}`);
    expect(stdout).toContain(`saved to ${path.join(dataDir, "admin-api-key")}`);
    // Where to go and how to sign in, on every start (the password itself only in its file).
    expect(stderr).toMatch(/Berth is ready: http:\/\/localhost:\d+\n/);
    expect(stderr).toContain(`Sign in as admin@berth.local; the password is in ${path.join(dataDir, "admin-password")}.`);
  });

  it("puts no stack trace in any error answer: tRPC input, parse and routing errors, a 404 page, a malformed URL", async () => {
    const authorization = `Bearer ${apiKey()}`;
    const answers = await Promise.all([
      fetch(`${base}/api/trpc/agents.create`, { method: "POST", headers: { authorization, "content-type": "application/json" }, body: JSON.stringify({ json: { name: 5 } }) }),
      fetch(`${base}/api/trpc/agents.create`, { method: "POST", headers: { authorization, "content-type": "application/json" }, body: "{not json" }),
      fetch(`${base}/api/trpc/system.nope`),
      fetch(`${base}/api/trpc/agents.list`),
      fetch(`${base}/no/such/page`),
      fetch(`${base}/%E0%A4%A`),
      fetch(`${base}/assets/%E0%A4%A`),
    ]);
    const statuses = answers.map((answer) => answer.status);
    expect(statuses.slice(0, 5)).toEqual([400, 400, 404, 401, 404]);
    for (const answer of answers) {
      const body = await answer.text();
      expect(body, `${answer.url} (${answer.status})`).not.toMatch(/"stack"|\n\s+at |\\n\s+at /);
    }
  });

  /** Streams up to `total` bytes of `{"json":…` as a POST and reports what the server answered, how fast and how much it took. */
  function streamBody(
    urlPath: string,
    total: number,
    options: { headers?: Record<string, string>; contentLength?: boolean } = {},
  ): Promise<{ status: number; body: string; sent: number; ms: number }> {
    return new Promise((resolve, reject) => {
      const started = Date.now();
      let sent = 0;
      let answered = false;
      const request = http.request(`${base}${urlPath}`, {
        method: "POST",
        headers: { "content-type": "application/json", ...(options.contentLength ? { "content-length": String(total) } : {}), ...options.headers },
      });
      request.on("response", (response) => {
        answered = true;
        let body = "";
        response.on("data", (chunk) => (body += chunk));
        response.on("end", () => resolve({ status: response.statusCode!, body, sent, ms: Date.now() - started }));
        response.on("error", reject);
      });
      request.on("error", (error) => {
        if (!answered) reject(error);
      });
      const chunk = Buffer.alloc(64 * 1024, "a");
      const pump = () => {
        while (!answered && !request.destroyed && sent < total) {
          const piece = sent + chunk.length <= total ? chunk : chunk.subarray(0, total - sent);
          sent += piece.length;
          if (!request.write(piece)) return void request.once("drain", pump);
        }
        if (!answered && sent >= total) request.end();
      };
      pump();
    });
  }

  const rssOfServer = () => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"))![1]) * 1024;
  const MB = 1024 * 1024;

  it("answers a 200 MB unauthenticated body 413 at once, without reading it", async () => {
    const before = rssOfServer();
    const streamed = await streamBody("/api/trpc/auth.login", 200 * MB);
    const declared = await streamBody("/api/trpc/auth.login", 200 * MB, { contentLength: true });
    // A Remix route: refused on its Content-Length; streamed, the route (no action) never reads it.
    const remix = await streamBody("/login", 200 * MB, { contentLength: true });
    const remixStreamed = await streamBody("/login", 200 * MB);
    const after = rssOfServer();
    console.info(`unauthenticated 200 MB: chunked ${streamed.ms} ms, ${(streamed.sent / MB).toFixed(1)} MB sent; Content-Length ${declared.ms} ms, ${(declared.sent / MB).toFixed(1)} MB sent; Remix path ${remix.ms} ms / streamed ${remixStreamed.ms} ms, ${(remixStreamed.sent / MB).toFixed(1)} MB sent; server RSS ${(before / MB).toFixed(1)} -> ${(after / MB).toFixed(1)} MB`);
    for (const result of [streamed, declared]) {
      expect(result.status).toBe(413);
      expect(JSON.parse(result.body)).toMatchObject({ error: { json: { message: "request body too large: at most 65536 bytes without a valid API key or login", data: { code: "PAYLOAD_TOO_LARGE", httpStatus: 413 } } } });
      expect(result.ms).toBeLessThan(1_000);
      expect(result.sent).toBeLessThan(20 * MB);
    }
    expect(remix.status).toBe(413);
    expect(JSON.parse(remix.body)).toEqual({ error: "request body too large: at most 65536 bytes without a valid API key or login" });
    expect(remix.ms).toBeLessThan(1_000);
    expect(remix.sent).toBeLessThan(20 * MB);
    expect(remixStreamed.status).toBe(405);
    expect(remixStreamed.sent).toBeLessThan(20 * MB);
    expect(after - before).toBeLessThan(8 * MB);
  });

  it("takes an authenticated body up to BERTH_MAX_BODY_BYTES and refuses a larger one with 413, streamed or declared", async () => {
    const headers = { authorization: `Bearer ${apiKey()}` };
    // 1 MiB of agent instructions: over the anonymous limit, well within the authenticated one.
    const instructions = "x".repeat(MB);
    const created = await fetch(`${base}/api/trpc/agents.create`, {
      method: "POST",
      headers: { ...headers, "content-type": "application/json" },
      body: JSON.stringify({ json: { name: "big-instructions", model: "demo", instructions } }),
    });
    expect([200, 400]).toContain(created.status);
    expect(await created.text()).not.toContain("PAYLOAD_TOO_LARGE");

    const before = rssOfServer();
    const streamed = await streamBody("/api/trpc/agents.create", 200 * MB, { headers });
    const declared = await streamBody("/api/trpc/agents.create", 200 * MB, { headers, contentLength: true });
    const after = rssOfServer();
    console.info(`authenticated 200 MB: chunked ${streamed.ms} ms, ${(streamed.sent / MB).toFixed(1)} MB sent; Content-Length ${declared.ms} ms, ${(declared.sent / MB).toFixed(1)} MB sent; server RSS ${(before / MB).toFixed(1)} -> ${(after / MB).toFixed(1)} MB`);
    for (const result of [streamed, declared]) {
      expect(result.status).toBe(413);
      expect(JSON.parse(result.body).error.json.message).toBe(`request body too large: at most ${16 * MB} bytes (BERTH_MAX_BODY_BYTES)`);
      expect(result.sent).toBeLessThan(40 * MB);
    }
    expect(declared.ms).toBeLessThan(1_000);
    expect(declared.sent).toBeLessThan(20 * MB);
    expect(after - before).toBeLessThan(40 * MB);

    // An invalid key is no credential: the anonymous limit.
    const forged = await streamBody("/api/trpc/agents.create", 10 * MB, { headers: { authorization: "Bearer berth_not_a_key_0123456789abcdef" } });
    expect(forged.status).toBe(413);
    expect(JSON.parse(forged.body).error.json.message).toContain("at most 65536 bytes without a valid API key or login");
  });
});
