import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { EXEC_ID_VARIABLE, KILL_GRACE_MS, type ExecChunk } from "./exec";
import { MAX_BODY_BYTES } from "./server";
import { MAX_FILE_BYTES } from "./workspace";
import { isProcessAlive } from "../db/embedded";
import { waitFor } from "../tests/helpers/processes";

/**
 * The sandbox daemon's protocol, spoken as raw HTTP over its Unix socket to a real daemon process
 * (`node --import tsx sandboxd/main.ts`, no jail), so every byte on the wire is what is checked.
 */

const ROOT = path.resolve(import.meta.dirname, "..");
const MAIN = path.join(ROOT, "sandboxd/main.ts");

// ---- processes ----------------------------------------------------------------------------------

type Launched = {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
};

type Daemon = Launched & { pid: number; socket: string; workspace: string; dir: string; token: string };

const launchedChildren: Launched[] = [];
const tempDirs: string[] = [];
/** Processes that commands left behind on purpose (killed at the end whatever happens). */
const strayPids = new Set<number>();

function tempDir(prefix = "sandboxd-test-"): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
}

function newToken(): string {
  return randomBytes(24).toString("hex"); // 48 characters
}

/** Starts the daemon entry point with exactly `env` (plus PATH). */
function launch(env: Record<string, string>, args = ["--import", "tsx", MAIN]): Launched {
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env } as unknown as NodeJS.ProcessEnv,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.setEncoding("utf8").on("data", (text: string) => (stdout += text));
  child.stderr!.setEncoding("utf8").on("data", (text: string) => (stderr += text));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  const launched = { child, stdout: () => stdout, stderr: () => stderr, exited };
  launchedChildren.push(launched);
  return launched;
}

async function startDaemon(
  options: { env?: Record<string, string>; unbound?: boolean; dir?: string; token?: string; /** Runtime arguments; default: the source through tsx. */ args?: string[] } = {},
): Promise<Daemon> {
  const dir = options.dir ?? tempDir();
  const workspace = path.join(dir, "workspace");
  fs.mkdirSync(workspace, { recursive: true });
  const socket = path.join(dir, "d.sock");
  const token = options.token ?? newToken();
  const launched = launch({
    ...options.env,
    BERTH_DAEMON_LISTEN: `unix:${socket}`,
    BERTH_DAEMON_TOKEN: token,
    BERTH_WORKSPACE: workspace,
    ...(options.unbound ? { BERTH_DAEMON_UNBOUND: "1" } : {}),
  }, options.args);
  const pid = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no READY within 15 s; output: ${launched.stdout()}${launched.stderr()}`)), 15_000);
    launched.child.stdout!.on("data", () => {
      const match = /^READY (\d+)$/m.exec(launched.stdout());
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    void launched.exited.then(({ code }) => {
      clearTimeout(timer);
      reject(new Error(`sandboxd exited with ${code} before READY: ${launched.stderr()}`));
    });
  });
  return { ...launched, pid, socket, workspace, dir, token };
}

async function stop(launched: Launched): Promise<void> {
  const { child } = launched;
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 3_000);
  await launched.exited;
  clearTimeout(timer);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

afterAll(async () => {
  await Promise.all(launchedChildren.map(stop));
  for (const pid of strayPids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

// ---- HTTP -----------------------------------------------------------------------------------------

type SendOptions = {
  body?: unknown;
  /** Sent as is instead of JSON.stringify(body). */
  raw?: string;
  /** null: no authorization header; default: the daemon's token. */
  token?: string | null;
  /** A raw authorization header value (wins over token). */
  authorization?: string;
  headers?: Record<string, string | number>;
  /** Send the headers only and never the body. */
  holdBody?: boolean;
};

type Reply = { status: number; headers: http.IncomingHttpHeaders; text: string; json: unknown };

function send(daemon: Pick<Daemon, "socket" | "token">, method: string, urlPath: string, options: SendOptions = {}) {
  return new Promise<{ req: http.ClientRequest; res: http.IncomingMessage }>((resolve, reject) => {
    const headers: Record<string, string | number> = { ...options.headers };
    const token = options.token === undefined ? daemon.token : options.token;
    if (options.authorization !== undefined) headers.authorization = options.authorization;
    else if (token !== null) headers.authorization = `Bearer ${token}`;
    const payload = options.raw ?? (options.body === undefined ? undefined : JSON.stringify(options.body));
    if (payload !== undefined) {
      headers["content-type"] ??= "application/json";
      headers["content-length"] ??= Buffer.byteLength(payload);
    }
    const req = http.request({ socketPath: daemon.socket, method, path: urlPath, headers, agent: false });
    req.once("error", reject);
    req.once("response", (res) => resolve({ req, res }));
    if (options.holdBody) req.flushHeaders();
    else req.end(payload);
  });
}

async function call(daemon: Pick<Daemon, "socket" | "token">, method: string, urlPath: string, options: SendOptions = {}): Promise<Reply> {
  const { req, res } = await send(daemon, method, urlPath, options);
  const chunks: Buffer[] = [];
  for await (const chunk of res as AsyncIterable<Buffer>) chunks.push(chunk);
  if (options.holdBody) req.destroy();
  const text = Buffer.concat(chunks).toString("utf8");
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.statusCode ?? 0, headers: res.headers, text, json };
}

function expectError(reply: Reply, status: number, code: string, message?: RegExp): void {
  expect({ status: reply.status, code: (reply.json as { error?: { code?: string } } | undefined)?.error?.code }).toEqual({ status, code });
  expect(reply.headers["content-type"]).toMatch(/^application\/json/);
  const text = (reply.json as { error: { message: unknown } }).error.message;
  expect(typeof text).toBe("string");
  if (message) expect(text).toMatch(message);
}

function parseNdjson(text: string): ExecChunk[] {
  expect(text.endsWith("\n")).toBe(true);
  return text
    .slice(0, -1)
    .split("\n")
    .map((line) => JSON.parse(line) as ExecChunk);
}

async function exec(daemon: Daemon, body: Record<string, unknown>): Promise<ExecChunk[]> {
  const reply = await call(daemon, "POST", "/v1/exec", { body });
  if (reply.status !== 200) throw new Error(`exec answered ${reply.status}: ${reply.text}`);
  expect(reply.headers["content-type"]).toBe("application/x-ndjson; charset=utf-8");
  const chunks = parseNdjson(reply.text);
  expect(chunks.filter((chunk) => chunk.type === "exit")).toHaveLength(1);
  expect(chunks.at(-1)!.type).toBe("exit");
  return chunks;
}

function output(chunks: ExecChunk[], type: "stdout" | "stderr"): string {
  return chunks.map((chunk) => (chunk.type === type ? chunk.data : "")).join("");
}

function exitOf(chunks: ExecChunk[]) {
  const last = chunks.at(-1)!;
  if (last.type !== "exit") throw new Error("no exit chunk");
  return last;
}

/** Reads an NDJSON exec response line by line as it arrives. */
async function* streamLines(res: http.IncomingMessage): AsyncGenerator<ExecChunk> {
  res.setEncoding("utf8");
  let pending = "";
  for await (const text of res as AsyncIterable<string>) {
    pending += text;
    let newline: number;
    while ((newline = pending.indexOf("\n")) !== -1) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      yield JSON.parse(line) as ExecChunk;
    }
  }
}

const pidsIn = (text: string) => text.trim().split(/\s+/).map(Number);

// ---- a bound daemon (cold start) ----------------------------------------------------------------

describe("sandboxd (cold start, bound)", () => {
  const SESSION_SECRET = "s3cr3t value with spaces and = sign";
  let daemon: Daemon;
  let outside: string;

  beforeAll(async () => {
    daemon = await startDaemon({ env: { SESSION_SECRET, SESSION_OTHER: "two" } });
    outside = tempDir("sandboxd-outside-");
    fs.writeFileSync(path.join(outside, "secret.txt"), "host secret\n");
  });

  // Anything the daemon logs is an unhandled error (a 500); no test may cause one unnoticed.
  afterEach(() => {
    expect(daemon.stderr()).toBe("");
  });

  describe("authentication and routing", () => {
    it("answers health with its pid and bound state", async () => {
      const reply = await call(daemon, "GET", "/v1/health");
      expect(reply.status).toBe(200);
      expect(reply.headers["content-type"]).toBe("application/json; charset=utf-8");
      expect(reply.headers["cache-control"]).toBe("no-store");
      expect(reply.json).toEqual({ ok: true, pid: daemon.pid, uptimeMs: expect.any(Number), bound: true, gateway: false });
      expect((reply.json as { uptimeMs: number }).uptimeMs).toBeGreaterThanOrEqual(0);
      expect(daemon.pid).toBe(daemon.child.pid);
      // A query string does not change the route.
      expect((await call(daemon, "GET", "/v1/health?verbose=1")).status).toBe(200);
    });

    it("answers 401 to a missing, wrong or malformed bearer token, before routing", async () => {
      const wrongSameLength = daemon.token.slice(0, -1) + (daemon.token.endsWith("a") ? "b" : "a");
      const cases: SendOptions[] = [
        { token: null },
        { token: wrongSameLength },
        { token: daemon.token.slice(0, -1) },
        { token: daemon.token + "x" },
        { token: "" },
        { authorization: daemon.token },
        { authorization: `Basic ${daemon.token}` },
        { authorization: `Bearer  ${daemon.token}` },
      ];
      for (const options of cases) {
        const reply = await call(daemon, "GET", "/v1/health", options);
        expectError(reply, 401, "unauthorized", /bearer token/);
        expect(reply.headers["www-authenticate"]).toBe("Bearer");
      }
      // Unknown routes and wrong methods do not leak what exists to an unauthenticated caller.
      expectError(await call(daemon, "GET", "/v1/nope", { token: null }), 401, "unauthorized");
      expectError(await call(daemon, "DELETE", "/v1/exec", { token: "x".repeat(48) }), 401, "unauthorized");
    });

    it("never runs a command for an unauthenticated exec", async () => {
      const reply = await call(daemon, "POST", "/v1/exec", { token: newToken(), body: { command: "touch unauthenticated.txt" } });
      expectError(reply, 401, "unauthorized");
      await sleep(150);
      expect(fs.existsSync(path.join(daemon.workspace, "unauthenticated.txt"))).toBe(false);
    });

    it("answers 404 to an unknown route and 405 with Allow to a wrong method", async () => {
      expectError(await call(daemon, "GET", "/v1/nope"), 404, "no_route", /\/v1\/nope/);
      expectError(await call(daemon, "GET", "/"), 404, "no_route");
      expectError(await call(daemon, "GET", "/v1/health/"), 404, "no_route");

      const cases: [string, string, string][] = [
        ["POST", "/v1/health", "GET"],
        ["GET", "/v1/exec", "POST"],
        ["GET", "/v1/bind", "POST"],
        ["POST", "/v1/files/write", "PUT"],
        ["DELETE", "/v1/files/read", "GET"],
        ["PUT", "/v1/files/list", "GET"],
      ];
      for (const [method, route, allowed] of cases) {
        const reply = await call(daemon, method, route);
        expectError(reply, 405, "method_not_allowed", new RegExp(`${method} is not allowed on ${route}`));
        expect(reply.headers.allow).toBe(allowed);
      }
    });
  });

  describe("request bodies", () => {
    it("refuses malformed, empty and non-object JSON with 400 and a clear message", async () => {
      expectError(await call(daemon, "POST", "/v1/exec", { raw: '{"command": "echo' }), 400, "bad_request", /^body: malformed JSON/);
      expectError(await call(daemon, "POST", "/v1/exec", { raw: "" }), 400, "bad_request", /empty body/);
      expectError(await call(daemon, "POST", "/v1/exec", { raw: "  \n" }), 400, "bad_request", /empty body/);
      expectError(await call(daemon, "POST", "/v1/exec", { raw: '["echo hi"]' }), 400, "bad_request", /^body: .*expected object/);
      expectError(await call(daemon, "PUT", "/v1/files/write", { raw: "null" }), 400, "bad_request", /^body: /);
      expectError(await call(daemon, "POST", "/v1/bind", { raw: "{not json" }), 400, "bad_request", /malformed JSON/);
    });

    it("refuses unknown fields and wrong types, naming the field", async () => {
      expectError(
        await call(daemon, "POST", "/v1/exec", { body: { command: "touch extra-field.txt", shell: "/bin/zsh" } }),
        400,
        "bad_request",
        /"shell"/,
      );
      expectError(await call(daemon, "POST", "/v1/exec", { body: { command: 42 } }), 400, "bad_request", /^command: /);
      expectError(await call(daemon, "POST", "/v1/exec", { body: { command: "" } }), 400, "bad_request", /^command: /);
      expectError(await call(daemon, "POST", "/v1/exec", { body: {} }), 400, "bad_request", /^command: /);
      expectError(await call(daemon, "POST", "/v1/exec", { body: { command: "true", timeoutMs: 0 } }), 400, "bad_request", /^timeoutMs: /);
      expectError(await call(daemon, "POST", "/v1/exec", { body: { command: "true", timeoutMs: 1.5 } }), 400, "bad_request", /^timeoutMs: /);
      expectError(await call(daemon, "POST", "/v1/exec", { body: { command: "true", cwd: 7 } }), 400, "bad_request", /^cwd: /);
      expectError(
        await call(daemon, "PUT", "/v1/files/write", { body: { path: "a.txt", content: "x", encoding: "hex" } }),
        400,
        "bad_request",
        /^encoding: /,
      );
      expectError(
        await call(daemon, "PUT", "/v1/files/write", { body: { path: "a.txt", content: "x", mode: 0o777 } }),
        400,
        "bad_request",
        /"mode"/,
      );
      expectError(await call(daemon, "PUT", "/v1/files/write", { body: { content: "x" } }), 400, "bad_request", /^path: /);
      // The body is validated before the bound check: a bad bind is 400, not 409.
      expectError(await call(daemon, "POST", "/v1/bind", { body: { sessionId: "s", env: {}, extra: 1 } }), 400, "bad_request", /"extra"/);
      expectError(await call(daemon, "GET", "/v1/files/read"), 400, "bad_request", /^path: required/);
      await sleep(100);
      expect(fs.existsSync(path.join(daemon.workspace, "extra-field.txt"))).toBe(false);
    });

    it("refuses a body above the limit with 413 without reading it", async () => {
      const reply = await call(daemon, "PUT", "/v1/files/write", {
        headers: { "content-type": "application/json", "content-length": MAX_BODY_BYTES + 1 },
        holdBody: true,
      });
      expectError(reply, 413, "body_too_large", new RegExp(`${MAX_BODY_BYTES}-byte limit`));
      expect(reply.headers.connection).toBe("close");
      // The daemon is fine afterwards.
      expect((await call(daemon, "GET", "/v1/health")).status).toBe(200);
    });
  });

  describe("exec", () => {
    it("streams stdout and stderr as NDJSON chunks in order and ends with the exit chunk", async () => {
      const chunks = await exec(daemon, { command: "echo one; sleep 0.1; echo two >&2; sleep 0.1; printf three; exit 3" });
      expect(chunks).toEqual([
        { type: "stdout", data: "one\n" },
        { type: "stderr", data: "two\n" },
        { type: "stdout", data: "three" },
        { type: "exit", exitCode: 3, signal: null, timedOut: false, durationMs: expect.any(Number), stdoutBytes: 9, stderrBytes: 4, stdoutTruncated: false, stderrTruncated: false },
      ]);
      expect(exitOf(chunks).durationMs).toBeGreaterThanOrEqual(200);

      const ok = await exec(daemon, { command: "true" });
      expect(ok).toEqual([{ type: "exit", exitCode: 0, signal: null, timedOut: false, durationMs: expect.any(Number), stdoutBytes: 0, stderrBytes: 0, stdoutTruncated: false, stderrTruncated: false }]);

      const missing = await exec(daemon, { command: "definitely-not-a-command-xyz" });
      expect(exitOf(missing).exitCode).toBe(127);
      expect(output(missing, "stderr")).toMatch(/definitely-not-a-command-xyz: .*not found/);

      const signalled = await exec(daemon, { command: "kill -KILL $$" });
      expect(exitOf(signalled)).toMatchObject({ exitCode: null, signal: "SIGKILL", timedOut: false });
    });

    it("flushes each chunk as it is produced, not at the end", async () => {
      const { res } = await send(daemon, "POST", "/v1/exec", { body: { command: "echo first; sleep 2; echo second" } });
      expect(res.statusCode).toBe(200);
      const arrivals: [string, number][] = [];
      for await (const chunk of streamLines(res)) arrivals.push([chunk.type === "exit" ? "exit" : chunk.data, performance.now()]);
      expect(arrivals.map(([what]) => what)).toEqual(["first\n", "second\n", "exit"]);
      // Measured here, so a late first arrival (a loaded machine) shortens the gap: a wide margin.
      expect(arrivals[1]![1] - arrivals[0]![1]).toBeGreaterThanOrEqual(1_000);
    });

    it("delivers large output intact, including multi-byte characters split across reads", async () => {
      const big = await exec(daemon, { command: "head -c 2000000 /dev/zero | tr '\\0' a" });
      const stdout = output(big, "stdout");
      expect(stdout.length).toBe(2_000_000);
      expect(/^a+$/.test(stdout)).toBe(true);
      expect(exitOf(big).exitCode).toBe(0);

      // 3-byte characters through pipe reads of arbitrary size: a naive decoder would emit U+FFFD.
      const euros = await exec(daemon, { command: "yes € | head -n 100000 | tr -d '\\n'; yes ü | head -n 30000 | tr -d '\\n' >&2" });
      expect(output(euros, "stdout")).toBe("€".repeat(100_000));
      expect(output(euros, "stderr")).toBe("ü".repeat(30_000));
      expect(euros.length).toBeGreaterThan(3); // it really arrived in several chunks
    });

    it("does not lose output when the client reads slowly", async () => {
      // The client stops reading: the daemon's socket fills and it stops reading the pipes; the command
      // meanwhile finishes with unread output in them. All of it must still arrive before the exit.
      const { res } = await send(daemon, "POST", "/v1/exec", { body: { command: "timeout 0.3 yes; echo final-line >&2" } });
      res.pause();
      await sleep(700);
      const chunks: ExecChunk[] = [];
      for await (const chunk of streamLines(res)) chunks.push(chunk);
      expect(output(chunks, "stderr")).toBe("final-line\n");
      const stdout = output(chunks, "stdout");
      expect(stdout.length).toBeGreaterThan(100_000);
      expect(/^(y\n)+$/.test(stdout)).toBe(true);
      expect(exitOf(chunks)).toMatchObject({ exitCode: 0, timedOut: false });
    });

    it("runs in the workspace or a cwd inside it, and refuses a cwd outside it", async () => {
      const real = fs.realpathSync(daemon.workspace);
      fs.mkdirSync(path.join(daemon.workspace, "sub/dir"), { recursive: true });
      fs.writeFileSync(path.join(daemon.workspace, "plain.txt"), "x");
      fs.symlinkSync(outside, path.join(daemon.workspace, "cwd-out"));

      expect(output(await exec(daemon, { command: "pwd" }), "stdout")).toBe(`${real}\n`);
      expect(output(await exec(daemon, { command: "pwd", cwd: "sub/dir" }), "stdout")).toBe(`${real}/sub/dir\n`);
      expect(output(await exec(daemon, { command: "pwd", cwd: "sub/../sub" }), "stdout")).toBe(`${real}/sub\n`);

      expectError(await call(daemon, "POST", "/v1/exec", { body: { command: "pwd", cwd: "../" } }), 400, "path_escape", /^cwd escapes/);
      expectError(await call(daemon, "POST", "/v1/exec", { body: { command: "pwd", cwd: "/tmp" } }), 400, "absolute_path", /^cwd must be relative/);
      expectError(await call(daemon, "POST", "/v1/exec", { body: { command: "pwd", cwd: "cwd-out" } }), 400, "symlink_escape");
      expectError(await call(daemon, "POST", "/v1/exec", { body: { command: "pwd", cwd: "no-such-dir" } }), 404, "not_found");
      expectError(await call(daemon, "POST", "/v1/exec", { body: { command: "pwd", cwd: "plain.txt" } }), 400, "not_a_directory");
    });

    it("gives commands the session environment and none of the daemon's configuration", async () => {
      const chunks = await exec(daemon, { command: "env" });
      const env = new Map(
        output(chunks, "stdout")
          .trim()
          .split("\n")
          .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)] as const),
      );
      expect(env.get("SESSION_SECRET")).toBe(SESSION_SECRET);
      expect(env.get("SESSION_OTHER")).toBe("two");
      expect(env.get("HOME")).toBe(daemon.workspace);
      expect(env.get("PATH")).toBe(process.env.PATH ?? "/usr/bin:/bin");
      // The exec's own id (its leftovers are found by it), nothing of the daemon's configuration.
      expect(env.get(EXEC_ID_VARIABLE)).toMatch(/^[0-9a-f]{24}$/);
      // Nothing but the session's variables and what the shell adds itself.
      const extra = [...env.keys()].filter((name) => !["SESSION_SECRET", "SESSION_OTHER", "HOME", "PATH", "PWD", "SHLVL", "_", "OLDPWD", EXEC_ID_VARIABLE].includes(name));
      expect(extra).toEqual([]);
      const everything = output(chunks, "stdout").replace(new RegExp(`^${EXEC_ID_VARIABLE}=.*$`, "m"), "");
      expect(everything).not.toMatch(/BERTH_/);
      expect(everything).not.toContain(daemon.token);
      expect(everything).not.toContain(daemon.socket);
    });

    it("kills the whole process group at timeoutMs, background children included", async () => {
      const chunks = await exec(daemon, { command: "sleep 30 & echo $$ $!; sleep 30", timeoutMs: 300 });
      const [shell, background] = pidsIn(output(chunks, "stdout"));
      strayPids.add(background!);
      const exit = exitOf(chunks);
      expect(exit).toMatchObject({ exitCode: null, signal: "SIGTERM", timedOut: true });
      expect(exit.durationMs).toBeGreaterThanOrEqual(300);
      // Ended by the SIGTERM, not the SIGKILL after the grace period (slack for a loaded machine).
      expect(exit.durationMs).toBeLessThan(300 + KILL_GRACE_MS);
      await waitFor("the timed-out command and its background child to be gone", () => !isProcessAlive(shell!) && !isProcessAlive(background!), 5_000);
    });

    it("SIGKILLs a timed-out group that ignores SIGTERM after the grace period", async () => {
      const started = performance.now();
      // The shell and its foreground child both ignore SIGTERM: only the SIGKILL ends the exec.
      const { res } = await send(daemon, "POST", "/v1/exec", { body: { command: "trap '' TERM; echo $$; sleep 30", timeoutMs: 200 } });
      const lines = streamLines(res);
      const [shell] = pidsIn(((await lines.next()).value as { data: string }).data);
      strayPids.add(shell!);
      const chunks: ExecChunk[] = [];
      for await (const chunk of lines) chunks.push(chunk);
      expect(exitOf(chunks)).toMatchObject({ signal: "SIGKILL", timedOut: true });
      expect(performance.now() - started).toBeGreaterThanOrEqual(KILL_GRACE_MS);
      expect(isProcessAlive(shell!)).toBe(false);
    });

    it("kills a timed-out command's background child that ignores SIGTERM when the shell is gone", async () => {
      const chunks = await exec(daemon, { command: "(trap '' TERM; exec sleep 30) & echo $!; wait", timeoutMs: 200 });
      const [stubborn] = pidsIn(output(chunks, "stdout"));
      strayPids.add(stubborn!);
      const exit = exitOf(chunks);
      expect(exit).toMatchObject({ signal: "SIGTERM", timedOut: true });
      // The shell died of the SIGTERM; what it left was killed before the exit chunk, not KILL_GRACE_MS later.
      expect(exit.durationMs).toBeLessThan(KILL_GRACE_MS);
      expect(isProcessAlive(stubborn!)).toBe(false);
    });

    it("kills the command's process group when the client goes away", async () => {
      const marker = path.join(daemon.workspace, "too-late.txt");
      const { req, res } = await send(daemon, "POST", "/v1/exec", {
        body: { command: "(sleep 3; touch too-late.txt) & echo $$ $!; wait" },
      });
      const lines = streamLines(res);
      const first = (await lines.next()).value as ExecChunk;
      expect(first.type).toBe("stdout");
      const [shell, background] = pidsIn((first as { data: string }).data);
      strayPids.add(background!);
      expect(isProcessAlive(shell!) && isProcessAlive(background!)).toBe(true);
      req.destroy();
      await waitFor("the abandoned command to be killed", () => !isProcessAlive(shell!) && !isProcessAlive(background!), 5_000);
      // Only the background subshell writes the marker: now that it is gone, its absence is final.
      expect(fs.existsSync(marker)).toBe(false);
      expect((await call(daemon, "GET", "/v1/health")).status).toBe(200);
    });

    it("does not leave a command running when its client left before the response started", async () => {
      // The whole request, then an immediate hang-up: the daemon sees the close while it is still
      // reading the body or checking the cwd, before the command (and its close handler) exists.
      for (let i = 0; i < 5; i++) {
        const body = JSON.stringify({ command: `echo $$ > early-${i}.pid; sleep 30`, cwd: "." });
        const socket = net.connect(daemon.socket);
        await new Promise((resolve) => socket.once("connect", resolve));
        socket.end(
          `POST /v1/exec HTTP/1.1\r\nhost: sandboxd\r\nauthorization: Bearer ${daemon.token}\r\n` +
            `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
        );
        socket.destroy();
      }
      await sleep(500);
      // Any command that did start (it writes its pid first) must be gone soon; pid files that appear
      // meanwhile are checked too. A command left running would live 30 s.
      const started = () =>
        fs
          .readdirSync(daemon.workspace)
          .filter((name) => /^early-\d\.pid$/.test(name))
          .map((name) => Number(fs.readFileSync(path.join(daemon.workspace, name), "utf8")))
          .filter((pid) => pid > 0);
      await waitFor("every early-abandoned command to be gone", () => {
        const pids = started();
        pids.forEach((pid) => strayPids.add(pid));
        return pids.every((pid) => !isProcessAlive(pid));
      }, 10_000);
      expect((await call(daemon, "GET", "/v1/health")).status).toBe(200);
    });

    it("ends the exec when the shell exits even if a background process keeps the pipes open, and kills that process", async () => {
      const started = performance.now();
      const chunks = await exec(daemon, { command: "sleep 30 & echo $!" });
      const [background] = pidsIn(output(chunks, "stdout"));
      strayPids.add(background!);
      expect(exitOf(chunks)).toMatchObject({ exitCode: 0, timedOut: false });
      expect(performance.now() - started).toBeLessThan(10_000); // waiting for the background process would take 30 s
      // Gone by the time the exit chunk arrived: nothing outlives its exec.
      expect(isProcessAlive(background!)).toBe(false);
    });

    it("kills what left the process group but carries the exec's id (setsid, double fork) when the exec ends", async () => {
      const chunks = await exec(daemon, {
        command: "setsid sleep 1000 >/dev/null 2>&1 < /dev/null & echo $!; (setsid sh -c 'sleep 1001 & echo $!' &) ; sleep 0.2",
      });
      const pids = pidsIn(output(chunks, "stdout"));
      expect(pids).toHaveLength(2);
      pids.forEach((pid) => strayPids.add(pid));
      expect(exitOf(chunks)).toMatchObject({ exitCode: 0 });
      for (const pid of pids) expect(isProcessAlive(pid)).toBe(false);
    });

    it("ending one of two overlapping execs kills only its own processes", async () => {
      const { res } = await send(daemon, "POST", "/v1/exec", { body: { command: "setsid sleep 1000 >/dev/null 2>&1 & a=$!; sleep 1000 & echo $a $!; sleep 1.5" } });
      const lines = streamLines(res);
      const longer = pidsIn(((await lines.next()).value as { data: string }).data);
      longer.forEach((pid) => strayPids.add(pid));
      const short = await exec(daemon, { command: "setsid sleep 1000 >/dev/null 2>&1 & a=$!; sleep 1000 & echo $a $!" });
      const shortPids = pidsIn(output(short, "stdout"));
      shortPids.forEach((pid) => strayPids.add(pid));
      for (const pid of shortPids) expect(isProcessAlive(pid)).toBe(false);
      for (const pid of longer) expect(isProcessAlive(pid)).toBe(true);
      const rest: ExecChunk[] = [];
      for await (const chunk of lines) rest.push(chunk);
      expect(exitOf(rest).exitCode).toBe(0);
      for (const pid of longer) expect(isProcessAlive(pid)).toBe(false);
    });

    it("caps each stream at maxOutputBytes on a UTF-8 boundary, drains the rest and says so in the exit chunk", async () => {
      // 5 euro signs are 15 bytes: a cap of 10 keeps 3 of them (9 bytes), never half a character.
      const chunks = await exec(daemon, { command: "printf '€€€€€'; printf 'ok' >&2", maxOutputBytes: 10 });
      expect(output(chunks, "stdout")).toBe("€€€");
      expect(output(chunks, "stderr")).toBe("ok");
      expect(exitOf(chunks)).toMatchObject({ exitCode: 0, stdoutBytes: 15, stderrBytes: 2, stdoutTruncated: true, stderrTruncated: false });

      // 300 MB: the daemon reads all of it (the command is not blocked) and sends one MiB.
      const started = performance.now();
      const reply = await call(daemon, "POST", "/v1/exec", { body: { command: "head -c 300000000 /dev/zero | tr '\\0' a; echo done >&2", maxOutputBytes: 1024 * 1024 } });
      const big = parseNdjson(reply.text);
      expect(output(big, "stdout")).toBe("a".repeat(1024 * 1024));
      expect(output(big, "stderr")).toBe("done\n");
      expect(exitOf(big)).toMatchObject({ exitCode: 0, stdoutBytes: 300_000_000, stdoutTruncated: true, stderrTruncated: false });
      expect(reply.text.length).toBeLessThan(1.1 * 1024 * 1024);
      console.log(`300 MB through a 1 MiB cap: ${Math.round(performance.now() - started)} ms, ${reply.text.length} bytes on the wire`);

      expectError(await call(daemon, "POST", "/v1/exec", { body: { command: "true", maxOutputBytes: -1 } }), 400, "bad_request", /maxOutputBytes/);
    });

    it("runs commands concurrently", async () => {
      const started = performance.now();
      const results = await Promise.all(["a", "b", "c", "d"].map((name) => exec(daemon, { command: `sleep 2; echo ${name}` })));
      expect(results.map((chunks) => output(chunks, "stdout"))).toEqual(["a\n", "b\n", "c\n", "d\n"]);
      expect(performance.now() - started).toBeLessThan(6_000); // one after the other would take 8 s
    });
  });

  describe("files", () => {
    const write = (body: Record<string, unknown>) => call(daemon, "PUT", "/v1/files/write", { body });
    const read = (relative: string) => call(daemon, "GET", `/v1/files/read?path=${encodeURIComponent(relative)}`);
    const list = (relative?: string) => call(daemon, "GET", relative === undefined ? "/v1/files/list" : `/v1/files/list?path=${encodeURIComponent(relative)}`);

    it("writes and reads back UTF-8 text, creating nested directories", async () => {
      const content = "héllo € 😀\nsecond line\n";
      const written = await write({ path: "notes/deep/er/hello.txt", content });
      expect(written.status).toBe(200);
      expect(written.json).toEqual({ size: Buffer.byteLength(content) });
      expect(fs.readFileSync(path.join(daemon.workspace, "notes/deep/er/hello.txt"), "utf8")).toBe(content);

      const reply = await read("notes/deep/er/hello.txt");
      expect(reply.status).toBe(200);
      expect(reply.json).toEqual({ content, encoding: "utf8", size: Buffer.byteLength(content) });
      expect((await read("./notes/deep/../deep/er/hello.txt")).json).toEqual(reply.json);

      // Overwriting replaces the whole file.
      expect((await write({ path: "notes/deep/er/hello.txt", content: "short", encoding: "utf8" })).json).toEqual({ size: 5 });
      expect((await read("notes/deep/er/hello.txt")).json).toEqual({ content: "short", encoding: "utf8", size: 5 });

      expect((await write({ path: "empty.txt", content: "" })).json).toEqual({ size: 0 });
      expect((await read("empty.txt")).json).toEqual({ content: "", encoding: "utf8", size: 0 });
    });

    it("writes base64 bytes exactly and reads non-UTF-8 files back as base64", async () => {
      const bytes = Buffer.concat([Buffer.from([0x00, 0xff, 0xfe, 0x80, 0xc3]), randomBytes(4096)]);
      const written = await write({ path: "bin/blob.bin", content: bytes.toString("base64"), encoding: "base64" });
      expect(written.json).toEqual({ size: bytes.length });
      expect(fs.readFileSync(path.join(daemon.workspace, "bin/blob.bin")).equals(bytes)).toBe(true);
      expect((await read("bin/blob.bin")).json).toEqual({ content: bytes.toString("base64"), encoding: "base64", size: bytes.length });

      // base64 of valid UTF-8 is stored decoded and read back as text.
      expect((await write({ path: "bin/text.txt", content: Buffer.from("plain ✓").toString("base64"), encoding: "base64" })).status).toBe(200);
      expect((await read("bin/text.txt")).json).toEqual({ content: "plain ✓", encoding: "utf8", size: Buffer.byteLength("plain ✓") });
      // Padding variants.
      for (const [encoded, decoded] of [["QQ==", "A"], ["QUI=", "AB"], ["QUJD", "ABC"], ["", ""]] as const) {
        expect((await write({ path: "bin/pad.txt", content: encoded, encoding: "base64" })).json).toEqual({ size: decoded.length });
        expect(fs.readFileSync(path.join(daemon.workspace, "bin/pad.txt"), "utf8")).toBe(decoded);
      }
      for (const invalid of ["QQ", "Q===", "QUJD!", "QU JD", "QQ==QUJD", "====", "QUJDRA="]) {
        expectError(await write({ path: "bin/bad.txt", content: invalid, encoding: "base64" }), 400, "bad_request", /not valid base64/);
      }
      expect(fs.existsSync(path.join(daemon.workspace, "bin/bad.txt"))).toBe(false);
    });

    it("lists a directory sorted, with types and sizes", async () => {
      fs.mkdirSync(path.join(daemon.workspace, "listing/b-dir"), { recursive: true });
      fs.writeFileSync(path.join(daemon.workspace, "listing/c.txt"), "12345");
      fs.writeFileSync(path.join(daemon.workspace, "listing/A.txt"), "");
      fs.symlinkSync("c.txt", path.join(daemon.workspace, "listing/a-link"));
      const reply = await list("listing");
      expect(reply.status).toBe(200);
      const entries = (reply.json as { entries: { name: string; type: string; size: number; modifiedAt: string }[] }).entries;
      expect(entries.map(({ name, type }) => [name, type])).toEqual([
        ["A.txt", "file"],
        ["a-link", "symlink"],
        ["b-dir", "directory"],
        ["c.txt", "file"],
      ]);
      expect(entries.find((entry) => entry.name === "c.txt")!.size).toBe(5);
      for (const entry of entries) expect(new Date(entry.modifiedAt).toISOString()).toBe(entry.modifiedAt);

      // No path (or ".") lists the workspace root.
      const root = await list();
      expect(root.status).toBe(200);
      expect((root.json as { entries: { name: string }[] }).entries.map((entry) => entry.name)).toContain("listing");
      expect((await list(".")).json).toEqual(root.json);
      expect((await list("listing/b-dir")).json).toEqual({ entries: [] });
      // A symlink inside the workspace is followed.
      expect((await read("listing/a-link")).json).toEqual({ content: "12345", encoding: "utf8", size: 5 });
    });

    it("maps missing files, directories and files-as-directories to their codes", async () => {
      fs.mkdirSync(path.join(daemon.workspace, "errs"), { recursive: true });
      fs.writeFileSync(path.join(daemon.workspace, "errs/file.txt"), "x");
      expectError(await read("errs/missing.txt"), 404, "not_found", /errs\/missing\.txt/);
      expectError(await list("errs/missing"), 404, "not_found");
      expectError(await read("errs"), 400, "is_directory");
      expectError(await read(""), 400, "is_directory");
      expectError(await list("errs/file.txt"), 400, "not_a_directory");
      expectError(await read("errs/file.txt/inner"), 400, "not_a_directory");
      expectError(await write({ path: "errs/file.txt/inner.txt", content: "x" }), 400, "not_a_directory");
      expectError(await write({ path: "errs", content: "x" }), 400, "is_directory");
      expectError(await write({ path: ".", content: "x" }), 400, "is_directory");
      expectError(await write({ path: "", content: "x" }), 400, "is_directory");
      expect(fs.readFileSync(path.join(daemon.workspace, "errs/file.txt"), "utf8")).toBe("x");
    });

    it("refuses absolute paths, .. escapes and symlinks leading outside the workspace", async () => {
      const ws = daemon.workspace;
      fs.symlinkSync(outside, path.join(ws, "out"));
      fs.symlinkSync(path.join(outside, "secret.txt"), path.join(ws, "secret-link"));
      fs.symlinkSync(path.join(outside, "created-through-link.txt"), path.join(ws, "dangling-out"));
      fs.symlinkSync("..", path.join(ws, "up"));
      fs.mkdirSync(path.join(ws, "nest"), { recursive: true });
      fs.symlinkSync("../../", path.join(ws, "nest/relative-up"));
      fs.symlinkSync("loop-b", path.join(ws, "loop-a"));
      fs.symlinkSync("loop-a", path.join(ws, "loop-b"));

      const refused: [string, number, string][] = [
        ["/etc/passwd", 400, "absolute_path"],
        [path.join(ws, "notes"), 400, "absolute_path"],
        ["..", 400, "path_escape"],
        ["../secret.txt", 400, "path_escape"],
        ["a/../../x", 400, "path_escape"],
        ["./nest/../../x", 400, "path_escape"],
        ["out", 400, "symlink_escape"],
        ["out/secret.txt", 400, "symlink_escape"],
        ["out/new/deeper.txt", 400, "symlink_escape"],
        ["secret-link", 400, "symlink_escape"],
        ["dangling-out", 400, "symlink_escape"],
        ["up/x", 400, "symlink_escape"],
        ["nest/relative-up/y", 400, "symlink_escape"],
        ["bad\0name", 400, "invalid_path"],
        ["loop-a", 400, "symlink_loop"],
      ];
      for (const [relative, status, code] of refused) {
        expectError(await read(relative), status, code);
        expectError(await write({ path: relative, content: "pwned" }), status, code);
        expectError(await list(relative), status, code);
        expectError(await call(daemon, "POST", "/v1/exec", { body: { command: "true", cwd: relative } }), status, code);
      }
      expect(fs.readdirSync(outside)).toEqual(["secret.txt"]);
      expect(fs.readFileSync(path.join(outside, "secret.txt"), "utf8")).toBe("host secret\n");
      expect(fs.existsSync(path.join(path.dirname(ws), "x"))).toBe(false);

      // `..` that stays inside is fine.
      expect((await write({ path: "nest/../inside.txt", content: "ok" })).status).toBe(200);
      expect(fs.readFileSync(path.join(ws, "inside.txt"), "utf8")).toBe("ok");
    });

    it("refuses files above the size limit with 413 and accepts one at the limit", async () => {
      expectError(await write({ path: "big/too-big.txt", content: "a".repeat(MAX_FILE_BYTES + 1) }), 413, "too_large", /above the/);
      expect(fs.existsSync(path.join(daemon.workspace, "big/too-big.txt"))).toBe(false);

      // Exactly at the limit, as base64 (what the platform sends for binary files).
      const limit = Buffer.alloc(MAX_FILE_BYTES, 0xff);
      const written = await write({ path: "big/limit.bin", content: limit.toString("base64"), encoding: "base64" });
      expect(written.status, written.text.slice(0, 200)).toBe(200);
      expect(written.json).toEqual({ size: MAX_FILE_BYTES });
      const back = await read("big/limit.bin");
      expect(back.status).toBe(200);
      expect(Buffer.from((back.json as { content: string }).content, "base64").equals(limit)).toBe(true);

      expectError(
        await write({ path: "big/too-big.bin", content: Buffer.alloc(MAX_FILE_BYTES + 1).toString("base64"), encoding: "base64" }),
        413,
        "too_large",
      );
      fs.truncateSync(path.join(daemon.workspace, "big/limit.bin"), MAX_FILE_BYTES + 1);
      expectError(await read("big/limit.bin"), 413, "too_large");
    });
  });
});

// ---- warm-pool mode ------------------------------------------------------------------------------

describe("sandboxd (unbound, warm pool)", () => {
  let daemon: Daemon;
  beforeAll(async () => {
    daemon = await startDaemon({ unbound: true, env: { PLATFORM_ONLY: "must-not-leak" } });
  });
  afterEach(() => {
    expect(daemon.stderr()).toBe("");
  });

  it("refuses exec and files until bound, binds once, and commands see only the bound env", async () => {
    expect((await call(daemon, "GET", "/v1/health")).json).toMatchObject({ ok: true, bound: false });

    expectError(await call(daemon, "POST", "/v1/exec", { body: { command: "touch unbound.txt" } }), 409, "not_bound", /POST \/v1\/bind/);
    expectError(await call(daemon, "GET", "/v1/files/read?path=a.txt"), 409, "not_bound");
    expectError(await call(daemon, "GET", "/v1/files/list"), 409, "not_bound");
    expectError(await call(daemon, "PUT", "/v1/files/write", { body: { path: "a.txt", content: "x" } }), 409, "not_bound");
    expect(fs.readdirSync(daemon.workspace)).toEqual([]);

    // Invalid binds change nothing.
    expectError(await call(daemon, "POST", "/v1/bind", { body: { sessionId: "s1", env: { "BAD=NAME": "x" } } }), 400, "bad_request", /^env\./);
    expectError(await call(daemon, "POST", "/v1/bind", { body: { sessionId: "s1", env: { OK: "nul\0" } } }), 400, "bad_request", /NUL/);
    expectError(await call(daemon, "POST", "/v1/bind", { body: { sessionId: "", env: {} } }), 400, "bad_request", /^sessionId: /);
    expectError(await call(daemon, "POST", "/v1/bind", { body: { sessionId: "s1" } }), 400, "bad_request", /^env: /);
    expect((await call(daemon, "GET", "/v1/health")).json).toMatchObject({ bound: false });

    const bound = await call(daemon, "POST", "/v1/bind", { body: { sessionId: "s1", env: { SESSION_VAR: "bound-value", HOME: "/custom-home" } } });
    expect(bound.status).toBe(204);
    expect(bound.text).toBe("");
    expect((await call(daemon, "GET", "/v1/health")).json).toMatchObject({ ok: true, bound: true });

    const again = await call(daemon, "POST", "/v1/bind", { body: { sessionId: "s2", env: { SESSION_VAR: "second" } } });
    expectError(again, 409, "already_bound");

    const chunks = await exec(daemon, { command: "env" });
    const env = output(chunks, "stdout");
    expect(env).toMatch(/^SESSION_VAR=bound-value$/m);
    expect(env).toMatch(/^HOME=\/custom-home$/m); // the session may override HOME ...
    expect(env).toMatch(/^PATH=\/usr\/local\/sbin:\/usr\/local\/bin:\/usr\/sbin:\/usr\/bin:\/sbin:\/bin$/m); // ... and gets a default PATH
    expect(env).not.toContain("second");
    expect(env).not.toContain("PLATFORM_ONLY");
    expect(env).not.toContain("must-not-leak");
    expect(env.replace(new RegExp(`^${EXEC_ID_VARIABLE}=.*$`, "m"), "")).not.toMatch(/BERTH_/);

    expect((await call(daemon, "PUT", "/v1/files/write", { body: { path: "a.txt", content: "x" } })).status).toBe(200);
  });
});

describe("sandboxd (unbound, bind rotates the token)", () => {
  let daemon: Daemon;
  beforeAll(async () => {
    daemon = await startDaemon({ unbound: true });
  });
  afterEach(() => {
    expect(daemon.stderr()).toBe("");
  });

  it("a bind with a token makes it the only token from then on; a short one is refused and changes nothing", async () => {
    const poolToken = daemon.token;
    const own = newToken();
    expectError(await call(daemon, "POST", "/v1/bind", { body: { sessionId: "s1", env: {}, token: "too-short" } }), 400, "bad_request", /^token: /);
    expect((await call(daemon, "GET", "/v1/health")).json).toMatchObject({ bound: false });

    const bound = await call(daemon, "POST", "/v1/bind", { body: { sessionId: "s1", env: { ROTATED: "yes" }, token: own } });
    expect(bound.status).toBe(204);
    // The pool's token is refused now, on every route; the new one works.
    expectError(await call(daemon, "GET", "/v1/health", { token: poolToken }), 401, "unauthorized");
    expectError(await call(daemon, "POST", "/v1/exec", { token: poolToken, body: { command: "true" } }), 401, "unauthorized");
    expectError(await call(daemon, "POST", "/v1/bind", { token: poolToken, body: { sessionId: "s2", env: {}, token: newToken() } }), 401, "unauthorized");
    const rotated = { ...daemon, token: own };
    expect((await call(rotated, "GET", "/v1/health")).json).toMatchObject({ ok: true, bound: true });
    expect(output(await exec(rotated, { command: "echo $ROTATED" }), "stdout")).toBe("yes\n");
    // Bound once: a second bind, even with the right token, cannot rotate again.
    expectError(await call(rotated, "POST", "/v1/bind", { body: { sessionId: "s2", env: {}, token: newToken() } }), 409, "already_bound");
    expect((await call(rotated, "GET", "/v1/health")).status).toBe(200);
  });
});

// ---- the egress gateway ---------------------------------------------------------------------------

// A test-only CA and a server certificate it issued for tls.example.test (EC P-256, valid 2000–2100;
// made with `openssl ca`). Only the server certificate's key is here: the CA's was thrown away.
const TEST_CA_PEM = `-----BEGIN CERTIFICATE-----
MIIBcTCCARegAwIBAgIBATAKBggqhkjOPQQDAjAfMR0wGwYDVQQDDBRCZXJ0aCB0
ZXN0IGVncmVzcyBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFow
HzEdMBsGA1UEAwwUQmVydGggdGVzdCBlZ3Jlc3MgQ0EwWTATBgcqhkjOPQIBBggq
hkjOPQMBBwNCAAQSUfIi4G3E2DJv/pXqGG8it54s8CQe1MMGTU+GB3Ubo1V5k8i0
T0n0B4iWUr9y3Bf5itzQLlX7Txr2wLf21qz2o0IwQDAPBgNVHRMBAf8EBTADAQH/
MA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUjhHf+VPLWu1fg0tk3oTkXsePXLEw
CgYIKoZIzj0EAwIDSAAwRQIhAPJhPZZ+7elirxNvVNCChWXpBtvY18ck5ItmQibD
7iSqAiBoSrdquyuqwFGr7Th5S7RhG2yQR9KCSQm3973Tq02ZrQ==
-----END CERTIFICATE-----
`;
const TLS_HOST_CERT = `-----BEGIN CERTIFICATE-----
MIIBqjCCAVCgAwIBAgIBAjAKBggqhkjOPQQDAjAfMR0wGwYDVQQDDBRCZXJ0aCB0
ZXN0IGVncmVzcyBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFow
GzEZMBcGA1UEAwwQdGxzLmV4YW1wbGUudGVzdDBZMBMGByqGSM49AgEGCCqGSM49
AwEHA0IABHQQxN+0RnGowfQWdoYHhe33RxH72a3g2HqhpRuK8Gjtocrmob9WmhVn
kd9+A3TS+9uxfuv3cthXTnlXhYNgn5ijfzB9MAkGA1UdEwQCMAAwGwYDVR0RBBQw
EoIQdGxzLmV4YW1wbGUudGVzdDATBgNVHSUEDDAKBggrBgEFBQcDATAfBgNVHSME
GDAWgBSOEd/5U8ta7V+DS2TehORex49csTAdBgNVHQ4EFgQUPOV9CcFwzj5uCewF
sdsb8KiXb/QwCgYIKoZIzj0EAwIDSAAwRQIgWlTOSixMj+zA+Q3f99gsbGSKyNao
t9vIxqLOSVbetCACIQDBpNJ6Qo//XLxqq+h/chIbjQvDb9onaHMx2ix+ewlKxg==
-----END CERTIFICATE-----
`;
const TLS_HOST_KEY = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgg6c8fFYwhrsaIDA1
/0Nbmug2FghwKj3Js9zOTHAxx6ahRANCAAR0EMTftEZxqMH0FnaGB4Xt90cR+9mt
4Nh6oaUbivBo7aHK5qG/VpoVZ5HffgN00vvbsX7r93LYV055V4WDYJ+Y
-----END PRIVATE KEY-----
`;
const SYSTEM_BUNDLE = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"]
  .map((file) => {
    try {
      return fs.readFileSync(file, "utf8");
    } catch {
      return null;
    }
  })
  .find((text) => text !== null);

/** A gateway token as the platform makes them: URL-safe, at least 32 characters. */
const newGatewayToken = () => randomBytes(30).toString("base64url");
const basicFor = (token: string) => `Basic ${Buffer.from(`berth:${token}`).toString("base64")}`;

type GatewaySeen = {
  kind: "request" | "connect" | "tls-request";
  method: string;
  url: string;
  proxyAuthorization: string | undefined;
  authorization: string | undefined;
  body: string;
};

type FakeGateway = { address: string; seen: GatewaySeen[]; close(): Promise<void> };

/**
 * The platform's egress gateway as the daemon sees it: an HTTP server answering origin-form and
 * absolute-form requests with what it saw, and CONNECTs with 200 and then either TLS for
 * tls.example.test (a certificate of TEST_CA_PEM) or an echo of every byte. Only on a Unix socket or 127.0.0.1.
 */
async function startFakeGateway(on: { socket: string } | "tcp"): Promise<FakeGateway> {
  const seen: GatewaySeen[] = [];
  const sockets = new Set<net.Socket>();
  const answer = (kind: GatewaySeen["kind"]) => (req: http.IncomingMessage, res: http.ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const entry: GatewaySeen = {
        kind,
        method: req.method ?? "",
        url: req.url ?? "",
        proxyAuthorization: req.headers["proxy-authorization"],
        authorization: req.headers.authorization,
        body: Buffer.concat(chunks).toString("utf8"),
      };
      seen.push(entry);
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ gateway: kind, url: entry.url }));
    });
  };
  const tlsServer = https.createServer({ key: TLS_HOST_KEY, cert: TLS_HOST_CERT }, answer("tls-request"));
  const server = http.createServer(answer("request"));
  server.on("connection", (socket: net.Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  server.on("connect", (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    seen.push({ kind: "connect", method: req.method ?? "", url: req.url ?? "", proxyAuthorization: req.headers["proxy-authorization"], authorization: req.headers.authorization, body: "" });
    socket.on("error", () => socket.destroy());
    socket.write("HTTP/1.1 200 Connection Established\r\n\r\n");
    if (head.length > 0) socket.unshift(head);
    if (req.url === "tls.example.test:443") tlsServer.emit("connection", socket);
    else socket.pipe(socket);
  });
  await new Promise<void>((resolve) => (on === "tcp" ? server.listen(0, "127.0.0.1", resolve) : server.listen(on.socket, resolve)));
  const address = on === "tcp" ? `tcp:127.0.0.1:${(server.address() as net.AddressInfo).port}` : `unix:${on.socket}`;
  return {
    address,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** The environment a command of `daemon` sees. */
async function commandEnv(daemon: Daemon): Promise<Map<string, string>> {
  const chunks = await exec(daemon, { command: "env -0" });
  return new Map(
    output(chunks, "stdout")
      .split("\0")
      .filter((line) => line !== "")
      .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)] as const),
  );
}

async function run(daemon: Daemon, command: string): Promise<{ stdout: string; stderr: string; exitCode: number | null }> {
  const chunks = await exec(daemon, { command, timeoutMs: 30_000 });
  return { stdout: output(chunks, "stdout"), stderr: output(chunks, "stderr"), exitCode: exitOf(chunks).exitCode };
}

/** Opens a raw connection to the daemon's forwarder (the port in BERTH_MODEL_BASE_URL). */
function forwarderPort(env: Map<string, string>): number {
  return Number(/^http:\/\/127\.0\.0\.1:(\d+)\/v1$/.exec(env.get("BERTH_MODEL_BASE_URL") ?? "")![1]);
}

function readUntil(socket: net.Socket, predicate: (text: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    const onData = (chunk: Buffer) => {
      text += chunk.toString("latin1");
      if (predicate(text)) {
        socket.off("data", onData).off("error", reject);
        resolve(text);
      }
    };
    socket.on("data", onData).once("error", reject);
  });
}

describe("sandboxd with an egress gateway (Unix socket, cold start, CA)", () => {
  let gateway: FakeGateway;
  let daemon: Daemon;
  let gatewayToken: string;
  let env: Map<string, string>;
  let tmp: string;

  beforeAll(async () => {
    const dir = tempDir();
    tmp = path.join(dir, "tmp");
    fs.mkdirSync(tmp);
    gateway = await startFakeGateway({ socket: path.join(dir, "gateway.sock") });
    gatewayToken = newGatewayToken();
    daemon = await startDaemon({
      dir,
      env: { TMPDIR: tmp, BERTH_DAEMON_GATEWAY: gateway.address, BERTH_DAEMON_GATEWAY_TOKEN: gatewayToken, BERTH_DAEMON_CA_PEM: TEST_CA_PEM },
    });
    env = await commandEnv(daemon);
  });

  afterAll(async () => {
    await stop(daemon);
    await gateway.close();
  });

  afterEach(() => {
    gateway.seen.length = 0;
    expect(daemon.stderr()).toBe("");
  });

  it("says in its health that a gateway forwarder runs", async () => {
    expect((await call(daemon, "GET", "/v1/health")).json).toMatchObject({ ok: true, bound: true, gateway: true });
  });

  it("gives commands the proxy, model and CA variables, and none of its configuration", () => {
    const port = forwarderPort(env);
    const proxy = `http://berth:${gatewayToken}@127.0.0.1:${port}`;
    for (const name of ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"]) expect(env.get(name), name).toBe(proxy);
    expect(env.get("NO_PROXY")).toBe("localhost,127.0.0.1,::1");
    expect(env.get("no_proxy")).toBe("localhost,127.0.0.1,::1");
    expect(env.get("BERTH_MODEL_API_KEY")).toBe(gatewayToken);
    const bundle = env.get("SSL_CERT_FILE")!;
    expect(bundle).toMatch(new RegExp(`^${tmp}/berth-ca-[^/]+/ca-bundle\\.pem$`));
    for (const name of ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT"]) expect(env.get(name), name).toBe(bundle);
    expect(env.get("NODE_EXTRA_CA_CERTS")).toBe(path.join(path.dirname(bundle), "berth-ca.pem"));
    expect(env.has("npm_config_cafile")).toBe(false);
    const all = [...env].map(([name, value]) => `${name}=${value}`).join("\n");
    expect(all).not.toMatch(/BERTH_DAEMON_/);
    expect(all).not.toContain(gateway.address.slice("unix:".length));
    expect(all).not.toContain("BEGIN CERTIFICATE");
  });

  it("writes the CA alone and the system roots + the CA, readable by anyone", () => {
    const bundle = env.get("SSL_CERT_FILE")!;
    const caFile = env.get("NODE_EXTRA_CA_CERTS")!;
    expect(fs.statSync(path.dirname(bundle)).mode & 0o777).toBe(0o755);
    for (const file of [bundle, caFile]) {
      const stat = fs.lstatSync(file);
      expect(stat.isFile()).toBe(true);
      expect(stat.mode & 0o777).toBe(0o644);
    }
    expect(fs.readFileSync(caFile, "utf8")).toBe(TEST_CA_PEM);
    const text = fs.readFileSync(bundle, "utf8");
    expect(text.endsWith(TEST_CA_PEM)).toBe(true);
    if (SYSTEM_BUNDLE) expect(text.startsWith(SYSTEM_BUNDLE)).toBe(true);
    else expect(text).toBe(TEST_CA_PEM);
  });

  it("curl sends a plain HTTP request to the gateway as an absolute-form proxy request with Basic auth", async () => {
    const result = await run(daemon, "curl -sS http://api.example.test/x?y=1");
    expect(result.stderr).toBe("");
    expect(JSON.parse(result.stdout)).toEqual({ gateway: "request", url: "http://api.example.test/x?y=1" });
    expect(gateway.seen).toEqual([
      { kind: "request", method: "GET", url: "http://api.example.test/x?y=1", proxyAuthorization: basicFor(gatewayToken), authorization: undefined, body: "" },
    ]);
  });

  it("curl calls the model base URL directly (origin-form, bearer token), not through the proxy", async () => {
    const result = await run(
      daemon,
      `curl -sS "$BERTH_MODEL_BASE_URL/chat/completions" -H "Authorization: Bearer $BERTH_MODEL_API_KEY" -H "content-type: application/json" -d '{"model":"m"}'`,
    );
    expect(result.stderr).toBe("");
    expect(JSON.parse(result.stdout)).toEqual({ gateway: "request", url: "/v1/chat/completions" });
    expect(gateway.seen).toEqual([
      { kind: "request", method: "POST", url: "/v1/chat/completions", proxyAuthorization: undefined, authorization: `Bearer ${gatewayToken}`, body: '{"model":"m"}' },
    ]);
  });

  it("curl reaches an HTTPS host through CONNECT and trusts the gateway's certificate through the CA bundle", async () => {
    const result = await run(daemon, "curl -sS https://tls.example.test/secure");
    expect(result.stderr).toBe("");
    expect(JSON.parse(result.stdout)).toEqual({ gateway: "tls-request", url: "/secure" });
    expect(gateway.seen.map(({ kind, method, url, proxyAuthorization }) => ({ kind, method, url, proxyAuthorization }))).toEqual([
      { kind: "connect", method: "CONNECT", url: "tls.example.test:443", proxyAuthorization: basicFor(gatewayToken) },
      { kind: "tls-request", method: "GET", url: "/secure", proxyAuthorization: undefined },
    ]);
    // Without the bundle, the same certificate is refused (the CA is what makes it trusted).
    const untrusted = await run(daemon, "env -u CURL_CA_BUNDLE -u SSL_CERT_FILE curl -sS https://tls.example.test/secure");
    expect(untrusted.exitCode).not.toBe(0);
    expect(untrusted.stderr).toMatch(/certificate/i);
  });

  it("passes a CONNECT tunnel's bytes both ways, and answers a client that half-closed after its request", async () => {
    const port = forwarderPort(env);
    const tunnel = net.connect(port, "127.0.0.1");
    tunnel.write(`CONNECT echo.example.test:7 HTTP/1.1\r\nHost: echo.example.test:7\r\nProxy-Authorization: ${basicFor(gatewayToken)}\r\n\r\n`);
    expect(await readUntil(tunnel, (text) => text.endsWith("\r\n\r\n"))).toMatch(/^HTTP\/1\.1 200 Connection Established\r\n/);
    const echoed = readUntil(tunnel, (text) => text === "ping pong");
    tunnel.write("ping ");
    tunnel.write("pong");
    expect(await echoed).toBe("ping pong");
    tunnel.destroy();

    const halfClosed = net.connect(port, "127.0.0.1");
    const reply = readUntil(halfClosed, (text) => text.includes("}"));
    halfClosed.end("GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    expect(await reply).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*\{"gateway":"request","url":"\/v1\/models"\}/);
    await new Promise((resolve) => halfClosed.once("close", resolve));
  });

  it("removes its CA files on SIGTERM", async () => {
    const folder = path.dirname(env.get("SSL_CERT_FILE")!);
    expect(fs.existsSync(folder)).toBe(true);
    daemon.child.kill("SIGTERM");
    expect(await daemon.exited).toEqual({ code: 0, signal: null });
    expect(fs.existsSync(folder)).toBe(false);
  });
});

describe("sandboxd with an egress gateway (TCP, warm pool, bind replaces the token and the CA)", () => {
  let gateway: FakeGateway;
  let daemon: Daemon;
  let tmp: string;
  const poolGatewayToken = newGatewayToken();

  beforeAll(async () => {
    gateway = await startFakeGateway("tcp");
    const dir = tempDir();
    tmp = path.join(dir, "tmp");
    fs.mkdirSync(tmp);
    daemon = await startDaemon({
      dir,
      unbound: true,
      env: { TMPDIR: tmp, BERTH_DAEMON_GATEWAY: gateway.address, BERTH_DAEMON_GATEWAY_TOKEN: poolGatewayToken, BERTH_DAEMON_CA_PEM: TEST_CA_PEM },
    });
  });

  afterAll(async () => {
    await stop(daemon);
    await gateway.close();
  });

  it("refuses a bad gatewayToken or caPem, then binds with the session's token and CA", async () => {
    expect((await call(daemon, "GET", "/v1/health")).json).toMatchObject({ bound: false, gateway: true });
    const caFolders = () => fs.readdirSync(tmp).filter((name) => name.startsWith("berth-ca-")); // tsx keeps its cache beside them
    const startFolders = caFolders();
    expect(startFolders).toHaveLength(1);
    const badBinds: [Record<string, unknown>, RegExp][] = [
      [{ gatewayToken: "short" }, /^gatewayToken: must be 32 to 1024 characters/],
      [{ gatewayToken: `${"a".repeat(40)}/+=` }, /^gatewayToken: /],
      [{ gatewayToken: `${"a".repeat(40)}@x` }, /^gatewayToken: /],
      [{ caPem: "not a certificate" }, /^caPem: no -----BEGIN CERTIFICATE----- block/],
      [{ caPem: TEST_CA_PEM + TLS_HOST_KEY }, /^caPem: only CERTIFICATE blocks are allowed, found PRIVATE KEY/],
      [{ caPem: TEST_CA_PEM.replace("-----END CERTIFICATE-----", "") }, /^caPem: malformed PEM/],
    ];
    for (const [extra, message] of badBinds) {
      expectError(await call(daemon, "POST", "/v1/bind", { body: { sessionId: "s1", env: {}, ...extra } }), 400, "bad_request", message);
    }
    expect(caFolders()).toEqual(startFolders);

    const sessionGatewayToken = newGatewayToken();
    // Any certificate will do as "the installation's CA" here.
    const bound = await call(daemon, "POST", "/v1/bind", {
      body: { sessionId: "s1", env: { HTTPS_PROXY: "http://session-proxy.invalid", SESSION_VAR: "x" }, gatewayToken: sessionGatewayToken, caPem: TLS_HOST_CERT },
    });
    expect(bound.status).toBe(204);

    const env = await commandEnv(daemon);
    expect(env.get("SESSION_VAR")).toBe("x");
    // The platform's variables win over the session's.
    expect(env.get("HTTPS_PROXY")).toBe(`http://berth:${sessionGatewayToken}@127.0.0.1:${forwarderPort(env)}`);
    expect(env.get("BERTH_MODEL_API_KEY")).toBe(sessionGatewayToken);
    expect([...env.values()].join("\n")).not.toContain(poolGatewayToken);
    // A new CA folder replaced the one of the start.
    const folders = caFolders();
    expect(folders).toHaveLength(1);
    expect(folders).not.toEqual(startFolders);
    expect(path.dirname(env.get("SSL_CERT_FILE")!)).toBe(path.join(tmp, folders[0]!));
    expect(fs.readFileSync(env.get("NODE_EXTRA_CA_CERTS")!, "utf8")).toBe(TLS_HOST_CERT);
    expect(fs.readFileSync(env.get("SSL_CERT_FILE")!, "utf8").endsWith(TLS_HOST_CERT)).toBe(true);

    const result = await run(daemon, "curl -sS http://api.example.test/after-bind");
    expect(result.stderr).toBe("");
    expect(gateway.seen).toEqual([
      { kind: "request", method: "GET", url: "http://api.example.test/after-bind", proxyAuthorization: basicFor(sessionGatewayToken), authorization: undefined, body: "" },
    ]);
    expect(daemon.stderr()).toBe("");
  });
});

describe("sandboxd with an egress gateway (TCP, warm pool, bind without gateway fields)", () => {
  it("keeps the pool's gateway token when the bind carries none, and has no CA variables without a CA", async () => {
    const gateway = await startFakeGateway("tcp");
    const poolGatewayToken = newGatewayToken();
    const daemon = await startDaemon({ unbound: true, env: { BERTH_DAEMON_GATEWAY: gateway.address, BERTH_DAEMON_GATEWAY_TOKEN: poolGatewayToken } });
    expect((await call(daemon, "POST", "/v1/bind", { body: { sessionId: "s1", env: {} } })).status).toBe(204);
    const env = await commandEnv(daemon);
    expect(env.get("BERTH_MODEL_API_KEY")).toBe(poolGatewayToken);
    for (const name of ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT", "NODE_EXTRA_CA_CERTS"]) expect(env.has(name), name).toBe(false);
    const result = await run(daemon, `curl -sS "$BERTH_MODEL_BASE_URL/models" -H "Authorization: Bearer $BERTH_MODEL_API_KEY"`);
    expect(JSON.parse(result.stdout)).toEqual({ gateway: "request", url: "/v1/models" });
    expect(gateway.seen).toMatchObject([{ url: "/v1/models", authorization: `Bearer ${poolGatewayToken}`, proxyAuthorization: undefined }]);
    await stop(daemon);
    await gateway.close();
  });
});

// ---- process lifecycle and configuration ---------------------------------------------------------

describe("sandboxd process", () => {
  it("exits 1 with a one-line message on bad configuration", async () => {
    const dir = tempDir();
    const workspace = path.join(dir, "ws");
    fs.mkdirSync(workspace);
    fs.writeFileSync(path.join(dir, "not-a-socket"), "keep me");
    fs.writeFileSync(path.join(dir, "a-file"), "");
    const good = { BERTH_DAEMON_LISTEN: `unix:${dir}/ok.sock`, BERTH_DAEMON_TOKEN: newToken(), BERTH_WORKSPACE: workspace };
    const gateway = { BERTH_DAEMON_GATEWAY: `unix:${dir}/gateway.sock`, BERTH_DAEMON_GATEWAY_TOKEN: newGatewayToken() };
    const cases: [Record<string, string>, RegExp][] = [
      [{ BERTH_DAEMON_TOKEN: "x".repeat(31) }, /BERTH_DAEMON_TOKEN .*at least 32 characters/],
      [{ BERTH_DAEMON_LISTEN: "unix:relative/d.sock" }, /socket path must be absolute/],
      [{ BERTH_DAEMON_LISTEN: "" }, /BERTH_DAEMON_LISTEN is required/],
      [{ BERTH_DAEMON_LISTEN: "http://127.0.0.1:8080" }, /BERTH_DAEMON_LISTEN must be unix:\/abs\/path\.sock or tcp:HOST:PORT/],
      [{ BERTH_DAEMON_LISTEN: "tcp:127.0.0.1:70000" }, /port out of range/],
      [{ BERTH_WORKSPACE: path.join(dir, "missing") }, /BERTH_WORKSPACE .*missing is not usable/],
      [{ BERTH_WORKSPACE: path.join(dir, "a-file") }, /BERTH_WORKSPACE .*a-file is not a directory/],
      [{ BERTH_DAEMON_LISTEN: `unix:${dir}/not-a-socket` }, /not-a-socket exists and is not a socket; refusing to replace it/],
      [{ BERTH_DAEMON_LISTEN: `unix:${dir}/no-such-dir/d.sock` }, /cannot listen on unix:.*no-such-dir/],
      [{ ...gateway, BERTH_DAEMON_GATEWAY: "http://127.0.0.1:9" }, /BERTH_DAEMON_GATEWAY must be unix:\/abs\/path\.sock or tcp:HOST:PORT, got http:/],
      [{ ...gateway, BERTH_DAEMON_GATEWAY: "unix:gateway.sock" }, /BERTH_DAEMON_GATEWAY: the socket path must be absolute/],
      [{ ...gateway, BERTH_DAEMON_GATEWAY: "tcp:::1:8080" }, /BERTH_DAEMON_GATEWAY: HOST must be a host name, an IPv4 address or an IPv6 address in brackets/],
      [{ ...gateway, BERTH_DAEMON_GATEWAY: "tcp:[gateway]:8080" }, /BERTH_DAEMON_GATEWAY: HOST must be/],
      [{ ...gateway, BERTH_DAEMON_GATEWAY: "tcp:gateway.berth.svc:0" }, /BERTH_DAEMON_GATEWAY: port out of range/],
      [{ BERTH_DAEMON_GATEWAY: "tcp:[::1]:8080" }, /BERTH_DAEMON_GATEWAY_TOKEN is required with BERTH_DAEMON_GATEWAY and must be 32 to 1024 characters of/],
      [{ ...gateway, BERTH_DAEMON_GATEWAY_TOKEN: "a".repeat(31) }, /BERTH_DAEMON_GATEWAY_TOKEN is required/],
      [{ ...gateway, BERTH_DAEMON_GATEWAY_TOKEN: `${"a".repeat(40)}:x` }, /BERTH_DAEMON_GATEWAY_TOKEN is required/],
      [{ BERTH_DAEMON_GATEWAY_TOKEN: gateway.BERTH_DAEMON_GATEWAY_TOKEN }, /BERTH_DAEMON_GATEWAY_TOKEN is set but BERTH_DAEMON_GATEWAY is not/],
      [{ BERTH_DAEMON_CA_PEM: TEST_CA_PEM }, /BERTH_DAEMON_CA_PEM is set but BERTH_DAEMON_GATEWAY is not/],
      [{ ...gateway, BERTH_DAEMON_CA_PEM: "garbage" }, /BERTH_DAEMON_CA_PEM: no -----BEGIN CERTIFICATE----- block/],
      [{ ...gateway, BERTH_DAEMON_CA_PEM: TEST_CA_PEM + TLS_HOST_KEY }, /BERTH_DAEMON_CA_PEM: only CERTIFICATE blocks are allowed, found PRIVATE KEY/],
      [{ BERTH_DAEMON_MODEL_RELAY: `unix:${dir}/model.sock` }, /BERTH_DAEMON_MODEL_RELAY is no longer supported: use BERTH_DAEMON_GATEWAY and BERTH_DAEMON_GATEWAY_TOKEN/],
    ];
    // The built daemon: tsx itself would fail on a TMPDIR that is a file.
    cases.push([{ ...gateway, BERTH_DAEMON_CA_PEM: TEST_CA_PEM, TMPDIR: path.join(dir, "a-file") }, /cannot write the CA bundle under .*a-file: ENOTDIR/]);
    const results = await Promise.all(
      cases.map(async ([overrides], index) => {
        const launched = launch({ ...good, ...overrides }, index === cases.length - 1 ? [path.join(ROOT, "build/sandboxd.js")] : undefined);
        return { ...(await launched.exited), stdout: launched.stdout(), stderr: launched.stderr() };
      }),
    );
    results.forEach((result, index) => {
      const expected = cases[index]![1];
      expect({ code: result.code, stdout: result.stdout }, `case ${index}: ${result.stderr}`).toEqual({ code: 1, stdout: "" });
      expect(result.stderr).toMatch(/^sandboxd: [^\n]+\n$/);
      expect(result.stderr).toMatch(expected);
    });
    expect(fs.readFileSync(path.join(dir, "not-a-socket"), "utf8")).toBe("keep me");
    expect(fs.existsSync(path.join(dir, "ok.sock"))).toBe(false);
  });

  it("replaces a stale socket left by a killed daemon", async () => {
    const dir = tempDir();
    const first = await startDaemon({ dir });
    first.child.kill("SIGKILL");
    await first.exited;
    expect(fs.lstatSync(first.socket).isSocket()).toBe(true);
    await expect(call(first, "GET", "/v1/health")).rejects.toMatchObject({ code: "ECONNREFUSED" });

    const second = await startDaemon({ dir });
    expect(second.socket).toBe(first.socket);
    expect((await call(second, "GET", "/v1/health")).json).toMatchObject({ ok: true, pid: second.pid });
    // The old token does not work on the new daemon.
    expectError(await call(second, "GET", "/v1/health", { token: first.token }), 401, "unauthorized");
    await stop(second);
  });

  it("the built daemon does not load undici (Node 22+ would compile its WebAssembly parser in every sandbox)", async () => {
    // Reports at exit which of the runtime's internal modules were loaded; meaningful on Node 22 and
    // 24 (CI runs the suite there too), where an ES module import of node:http loads undici.
    const report = `process.on("exit", () => process.stderr.write("undici loaded: " + process.moduleLoadList.some((name) => name.includes("undici")) + "\\n"));`;
    const daemon = await startDaemon({ args: ["--import", `data:text/javascript,${encodeURIComponent(report)}`, path.join(ROOT, "build/sandboxd.js")] });
    expect((await call(daemon, "GET", "/v1/health")).status).toBe(200);
    await stop(daemon);
    expect(daemon.stderr()).toBe("undici loaded: false\n");
  });

  it("on SIGTERM kills the commands it started, removes its socket and exits 0", async () => {
    const daemon = await startDaemon();
    const { res } = await send(daemon, "POST", "/v1/exec", { body: { command: "sleep 30 & echo $$ $!; sleep 30" } });
    const running = streamLines(res);
    const [shell, background] = pidsIn(((await running.next()).value as { data: string }).data);
    strayPids.add(background!);
    expect(isProcessAlive(background!) && isProcessAlive(shell!)).toBe(true);

    daemon.child.kill("SIGTERM");
    expect(await daemon.exited).toEqual({ code: 0, signal: null });
    expect(daemon.stderr()).toBe("");
    expect(fs.existsSync(daemon.socket)).toBe(false);
    await waitFor("the daemon's commands to be gone", () => !isProcessAlive(background!) && !isProcessAlive(shell!), 5_000);
  });
});
