import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { collectExec, createDaemonClient, DaemonProtocolError, utf8Prefix } from "./daemon-client";
import { DaemonRequestError, SandboxUnavailableError, type DaemonClient, type ExecChunk } from "./port";
import { isProcessAlive } from "../../db/embedded";
import { waitFor } from "../../tests/helpers/processes";

/**
 * The platform's client for the sandbox daemon, against a real daemon process
 * (`node --import tsx sandboxd/main.ts`, no jail) and, for replies a real daemon never sends,
 * against small fake servers.
 */

const ROOT = path.resolve(import.meta.dirname, "../..");
const MAIN = path.join(ROOT, "sandboxd/main.ts");

type Daemon = {
  child: ChildProcess;
  pid: number;
  socket: string;
  workspace: string;
  token: string;
  stderr: () => string;
  exited: Promise<unknown>;
};

const children: ChildProcess[] = [];
const tempDirs: string[] = [];
const servers: net.Server[] = [];
const strayPids = new Set<number>();

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "daemon-client-test-"));
  tempDirs.push(dir);
  return dir;
}

async function startDaemon(options: { listen?: string; env?: Record<string, string>; unbound?: boolean } = {}): Promise<Daemon> {
  const dir = tempDir();
  const workspace = path.join(dir, "workspace");
  fs.mkdirSync(workspace);
  const socket = path.join(dir, "d.sock");
  const token = randomBytes(24).toString("hex");
  const child = spawn(process.execPath, ["--import", "tsx", MAIN], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      ...options.env,
      BERTH_DAEMON_LISTEN: options.listen ?? `unix:${socket}`,
      BERTH_DAEMON_TOKEN: token,
      BERTH_WORKSPACE: workspace,
      ...(options.unbound ? { BERTH_DAEMON_UNBOUND: "1" } : {}),
    } as unknown as NodeJS.ProcessEnv,
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let stdout = "";
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (text: string) => (stderr += text));
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const pid = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no READY within 15 s: ${stderr}`)), 15_000);
    child.stdout!.setEncoding("utf8").on("data", (text: string) => {
      stdout += text;
      const match = /^READY (\d+)$/m.exec(stdout);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`sandboxd exited before READY: ${stderr}`));
    });
  });
  return { child, pid, socket, workspace, token, stderr: () => stderr, exited };
}

async function kill(daemon: Daemon, signal: NodeJS.Signals): Promise<void> {
  if (daemon.child.exitCode !== null || daemon.child.signalCode !== null) return;
  daemon.child.kill(signal);
  await daemon.exited;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A server on a fresh Unix socket that answers as `handler` says (for replies the daemon never sends). */
async function fakeDaemon(handler: http.RequestListener): Promise<string> {
  const socket = path.join(tempDir(), "fake.sock");
  const server = http.createServer(handler);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  return `unix:${socket}`;
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected a rejection");
}

async function drain(chunks: AsyncIterable<ExecChunk>): Promise<ExecChunk[]> {
  const all: ExecChunk[] = [];
  for await (const chunk of chunks) all.push(chunk);
  return all;
}

afterAll(async () => {
  for (const server of servers) {
    server.close();
    (server as http.Server).closeAllConnections?.();
  }
  await Promise.all(
    children.map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 3_000);
      await exited;
      clearTimeout(timer);
    }),
  );
  for (const pid of strayPids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

describe("createDaemonClient against a real sandboxd", () => {
  let daemon: Daemon;
  let client: DaemonClient;
  beforeAll(async () => {
    daemon = await startDaemon({ env: { SESSION_SECRET: "client-visible-secret" } });
    client = createDaemonClient({ address: `unix:${daemon.socket}`, token: daemon.token });
  });

  it("health returns the daemon's pid and bound state", async () => {
    expect(await client.health()).toEqual({ ok: true, pid: daemon.pid, uptimeMs: expect.any(Number), bound: true });
  });

  it("exec yields stdout and stderr chunks in order and ends with the exit chunk", async () => {
    const chunks = await drain(client.exec({ command: "echo out; sleep 0.1; echo err >&2; sleep 0.1; echo more; exit 4" }));
    expect(chunks).toEqual([
      { type: "stdout", data: "out\n" },
      { type: "stderr", data: "err\n" },
      { type: "stdout", data: "more\n" },
      { type: "exit", exitCode: 4, signal: null, timedOut: false, durationMs: expect.any(Number), stdoutBytes: 9, stderrBytes: 4, stdoutTruncated: false, stderrTruncated: false },
    ]);
  });

  it("collectExec aggregates the output and the exit status", async () => {
    const result = await collectExec(client.exec({ command: "printf 'a\\nb'; printf E1 >&2; sleep 0.05; printf c; printf E2 >&2; exit 2" }));
    expect(result).toEqual({
      exitCode: 2,
      signal: null,
      timedOut: false,
      durationMs: expect.any(Number),
      stdout: "a\nbc",
      stderr: "E1E2",
      stdoutBytes: 4,
      stderrBytes: 4,
      stdoutTruncated: false,
      stderrTruncated: false,
      truncated: false,
    });
    expect(await collectExec(client.exec({ command: "pwd", cwd: "." }))).toMatchObject({ exitCode: 0, stdout: `${fs.realpathSync(daemon.workspace)}\n` });
  });

  it("exec sees the session env and not the daemon's configuration", async () => {
    const result = await collectExec(client.exec({ command: "env" }));
    expect(result.stdout).toMatch(/^SESSION_SECRET=client-visible-secret$/m);
    expect(result.stdout.replace(/^BERTH_EXEC_ID=.*$/m, "")).not.toMatch(/BERTH_/);
    expect(result.stdout).not.toContain(daemon.token);
  });

  it("exec timeoutMs reports timedOut and kills the command", async () => {
    const result = await collectExec(client.exec({ command: "echo $$; sleep 30", timeoutMs: 250 }));
    expect(result).toMatchObject({ exitCode: null, signal: "SIGTERM", timedOut: true });
    const shell = Number(result.stdout.trim());
    await waitFor("the timed-out command to be gone", () => !isProcessAlive(shell), 5_000);
  });

  it("aborting the signal kills the running command and rejects with the abort reason", async () => {
    const marker = path.join(daemon.workspace, "after-abort.txt");
    const controller = new AbortController();
    const reason = new Error("the user cancelled");
    const seen: ExecChunk[] = [];
    let pids: number[] = [];
    const error = await rejection(
      (async () => {
        for await (const chunk of client.exec({ command: "(sleep 10; touch after-abort.txt) & echo $$ $!; wait; touch after-abort.txt" }, controller.signal)) {
          seen.push(chunk);
          if (chunk.type === "stdout") {
            pids = chunk.data.trim().split(" ").map(Number);
            pids.forEach((pid) => strayPids.add(pid));
            expect(pids.every(isProcessAlive)).toBe(true);
            controller.abort(reason);
          }
        }
      })(),
    );
    expect(error).toBe(reason);
    expect(seen.map((chunk) => chunk.type)).toEqual(["stdout"]);
    expect(pids).toHaveLength(2);
    // Well before the background command would touch the marker (10 s in), even on a loaded machine.
    await waitFor("the aborted command's processes to be gone", () => !pids.some(isProcessAlive), 5_000);
    // Only these two processes write the marker: now that they are gone, its absence is final.
    expect(fs.existsSync(marker)).toBe(false);
    expect(daemon.stderr()).toBe("");
  });

  it("an already aborted signal rejects without running anything", async () => {
    const controller = new AbortController();
    controller.abort(new Error("too late"));
    const error = await rejection(drain(client.exec({ command: "touch never-ran.txt" }, controller.signal)));
    expect((error as Error).message).toBe("too late");
    await sleep(150);
    expect(fs.existsSync(path.join(daemon.workspace, "never-ran.txt"))).toBe(false);
  });

  it("a consumer that stops iterating early kills the command", async () => {
    let shell = 0;
    for await (const chunk of client.exec({ command: "echo $$; sleep 30" })) {
      if (chunk.type === "stdout") {
        shell = Number(chunk.data.trim());
        strayPids.add(shell);
        expect(isProcessAlive(shell)).toBe(true);
        break;
      }
    }
    expect(shell).toBeGreaterThan(0);
    await waitFor("the abandoned command to be gone", () => !isProcessAlive(shell), 5_000);
  });

  it("reads, writes and lists files (utf8 and base64, nested directories)", async () => {
    expect(await client.writeFile("dir/sub/hello.txt", "héllo\n")).toEqual({ size: 7 });
    expect(await client.readFile("dir/sub/hello.txt")).toEqual({ content: "héllo\n", encoding: "utf8", size: 7 });
    expect(await client.writeFile("dir/sub/hello.txt", "x", "utf8")).toEqual({ size: 1 });
    expect(fs.readFileSync(path.join(daemon.workspace, "dir/sub/hello.txt"), "utf8")).toBe("x");

    const bytes = Buffer.from([0, 1, 2, 0xff, 0xfe, 0x80]);
    expect(await client.writeFile("dir/blob.bin", bytes.toString("base64"), "base64")).toEqual({ size: 6 });
    expect(fs.readFileSync(path.join(daemon.workspace, "dir/blob.bin")).equals(bytes)).toBe(true);
    expect(await client.readFile("dir/blob.bin")).toEqual({ content: bytes.toString("base64"), encoding: "base64", size: 6 });

    const entries = await client.listFiles("dir");
    expect(entries.map(({ name, type, size }) => ({ name, type, size }))).toEqual([
      { name: "blob.bin", type: "file", size: 6 },
      { name: "sub", type: "directory", size: expect.any(Number) },
    ]);
    expect((await client.listFiles(".")).map((entry) => entry.name)).toContain("dir");
    // Names that need escaping in the query string survive the trip.
    expect(await client.writeFile("dir/a b&c=d?#%.txt", "odd")).toEqual({ size: 3 });
    expect(await client.readFile("dir/a b&c=d?#%.txt")).toMatchObject({ content: "odd" });
  });

  it("maps the daemon's 4xx answers to DaemonRequestError with status and code", async () => {
    const cases: [() => Promise<unknown>, number, string][] = [
      [() => client.readFile("../etc/passwd"), 400, "path_escape"],
      [() => client.readFile("/etc/passwd"), 400, "absolute_path"],
      [() => client.readFile("missing.txt"), 404, "not_found"],
      [() => client.listFiles("missing-dir"), 404, "not_found"],
      [() => client.writeFile("../escape.txt", "x"), 400, "path_escape"],
      [() => client.writeFile("bad.bin", "%%%", "base64"), 400, "bad_request"],
      [() => client.writeFile("huge.txt", "a".repeat(10 * 1024 * 1024 + 1)), 413, "too_large"],
      [() => client.bind({ sessionId: "s", env: {} }), 409, "already_bound"],
      [() => drain(client.exec({ command: "true", cwd: "/" })), 400, "absolute_path"],
      [() => drain(client.exec({ command: "true", timeoutMs: -1 })), 400, "bad_request"],
      [() => createDaemonClient({ address: `unix:${daemon.socket}`, token: "w".repeat(48) }).health(), 401, "unauthorized"],
      [() => createDaemonClient({ address: `unix:${daemon.socket}`, token: "" }).health(), 401, "unauthorized"],
    ];
    for (const [attempt, status, code] of cases) {
      const error = await rejection(attempt());
      expect(error).toBeInstanceOf(DaemonRequestError);
      expect(error).not.toBeInstanceOf(SandboxUnavailableError);
      expect(error).toMatchObject({ status, code, message: expect.any(String) });
    }
    expect(fs.existsSync(path.join(path.dirname(daemon.workspace), "escape.txt"))).toBe(false);
  });

  it("talks to a daemon over TCP with an http:// address", async () => {
    const port = await new Promise<number>((resolve) => {
      const probe = net.createServer().listen(0, "127.0.0.1", () => {
        const { port } = probe.address() as net.AddressInfo;
        probe.close(() => resolve(port));
      });
    });
    const tcp = await startDaemon({ listen: `tcp:127.0.0.1:${port}` });
    const tcpClient = createDaemonClient({ address: `http://127.0.0.1:${port}`, token: tcp.token });
    expect(await tcpClient.health()).toMatchObject({ ok: true, pid: tcp.pid });
    expect(await collectExec(tcpClient.exec({ command: "echo over tcp" }))).toMatchObject({ exitCode: 0, stdout: "over tcp\n" });
    await kill(tcp, "SIGTERM");
  });
});

describe("createDaemonClient with an unbound daemon", () => {
  it("exec is refused until bind, bind gives the env, a second bind is refused", async () => {
    const daemon = await startDaemon({ unbound: true, env: { PLATFORM_SECRET: "platform-only" } });
    const client = createDaemonClient({ address: `unix:${daemon.socket}`, token: daemon.token });
    expect(await client.health()).toMatchObject({ bound: false });
    const refused = await rejection(collectExec(client.exec({ command: "true" })));
    expect(refused).toBeInstanceOf(DaemonRequestError);
    expect(refused).toMatchObject({ status: 409, code: "not_bound", message: expect.stringMatching(/not bound/) });

    await client.bind({ sessionId: "session-1", env: { BOUND_VAR: "from-bind" } });
    expect(await client.health()).toMatchObject({ bound: true });
    const result = await collectExec(client.exec({ command: "echo $BOUND_VAR; echo ${PLATFORM_SECRET:-unset}" }));
    expect(result).toMatchObject({ exitCode: 0, stdout: "from-bind\nunset\n" });
    await expect(client.bind({ sessionId: "session-2", env: {} })).rejects.toMatchObject({ status: 409, code: "already_bound" });
    await kill(daemon, "SIGTERM");
  });
});

describe("createDaemonClient when the daemon is unreachable or misbehaves", () => {
  it("a missing socket is SandboxUnavailableError, for every call", async () => {
    const address = `unix:${path.join(tempDir(), "nobody.sock")}`;
    const client = createDaemonClient({ address, token: "t".repeat(40) });
    const attempts = [
      () => client.health(),
      () => client.readFile("a.txt"),
      () => client.writeFile("a.txt", "x"),
      () => client.listFiles("."),
      () => client.bind({ sessionId: "s", env: {} }),
      () => drain(client.exec({ command: "true" })),
    ];
    for (const attempt of attempts) {
      const error = await rejection(attempt());
      expect(error).toBeInstanceOf(SandboxUnavailableError);
      expect((error as Error).message).toContain(address);
      expect((error as Error).message).toMatch(/ENOENT/);
    }
  });

  it("a killed daemon (refused connection on its stale socket) is SandboxUnavailableError, also mid-exec", async () => {
    const daemon = await startDaemon();
    const client = createDaemonClient({ address: `unix:${daemon.socket}`, token: daemon.token });
    const seen: ExecChunk[] = [];
    const error = await rejection(
      (async () => {
        for await (const chunk of client.exec({ command: "echo $$; sleep 3" })) {
          seen.push(chunk);
          if (chunk.type === "stdout") {
            strayPids.add(Number(chunk.data.trim()));
            await kill(daemon, "SIGKILL");
          }
        }
      })(),
    );
    expect(seen.map((chunk) => chunk.type)).toEqual(["stdout"]);
    expect(error).toBeInstanceOf(SandboxUnavailableError);

    expect(fs.lstatSync(daemon.socket).isSocket()).toBe(true);
    const refused = await rejection(client.health());
    expect(refused).toBeInstanceOf(SandboxUnavailableError);
    expect((refused as Error).message).toMatch(/ECONNREFUSED/);
    expect((refused as Error).cause).toMatchObject({ code: "ECONNREFUSED" });
    expect(await rejection(drain(client.exec({ command: "true" })))).toBeInstanceOf(SandboxUnavailableError);
  });

  it("a daemon that never answers is SandboxUnavailableError after timeoutMs", async () => {
    const socket = path.join(tempDir(), "silent.sock");
    const server = net.createServer(() => {}); // accepts, never answers
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    const client = createDaemonClient({ address: `unix:${socket}`, token: "t".repeat(40), timeoutMs: 200 });
    const started = performance.now();
    const error = await rejection(client.health());
    expect(error).toBeInstanceOf(SandboxUnavailableError);
    expect((error as Error).message).toMatch(/within 200 ms/);
    expect(performance.now() - started).toBeGreaterThanOrEqual(190);
    expect(performance.now() - started).toBeLessThan(1_500);
  });

  it("replies outside the protocol are DaemonProtocolError; a cut exec stream is SandboxUnavailableError", async () => {
    const address = await fakeDaemon((req, res) => {
      const url = req.url ?? "";
      if (url.startsWith("/v1/health")) {
        res.writeHead(200, { "content-type": "application/json" }).end('{"ok":"yes"}');
      } else if (url.startsWith("/v1/files/read")) {
        res.writeHead(200, { "content-type": "application/json" }).end("<html>proxy page</html>");
      } else if (url.startsWith("/v1/files/list")) {
        res.writeHead(502, { "content-type": "text/plain" }).end("bad gateway");
      } else if (url.startsWith("/v1/exec")) {
        let body = "";
        req.setEncoding("utf8").on("data", (text: string) => (body += text));
        req.on("end", () => {
          const { command } = JSON.parse(body) as { command: string };
          if (command === "json") {
            res.writeHead(200, { "content-type": "application/json" }).end("{}");
          } else if (command === "cut") {
            res.writeHead(200, { "content-type": "application/x-ndjson" });
            res.end('{"type":"stdout","data":"partial"}\n');
          } else if (command === "reset") {
            res.writeHead(200, { "content-type": "application/x-ndjson" });
            res.write('{"type":"stdout","data":"partial"}\n', () => setTimeout(() => res.socket?.destroy(), 50));
          } else if (command === "garbage") {
            res.writeHead(200, { "content-type": "application/x-ndjson" }).end('{"type":"stdout","data":"ok"}\nnot json\n');
          } else if (command === "unknown-type") {
            res.writeHead(200, { "content-type": "application/x-ndjson" }).end('{"type":"progress","data":"50%"}\n');
          } else {
            // No trailing newline after the exit line, split mid-line and mid-character.
            res.writeHead(200, { "content-type": "application/x-ndjson" });
            const text = '{"type":"stdout","data":"h€llo"}\n{"type":"exit","exitCode":0,"signal":null,"timedOut":false,"durationMs":5}';
            const bytes = Buffer.from(text);
            res.write(bytes.subarray(0, 27));
            setTimeout(() => res.end(bytes.subarray(27)), 20);
          }
        });
      } else {
        res.writeHead(404).end();
      }
    });
    const client = createDaemonClient({ address, token: "t".repeat(40) });

    expect(await rejection(client.health())).toBeInstanceOf(DaemonProtocolError);
    const notJson = await rejection(client.readFile("a"));
    expect(notJson).toBeInstanceOf(DaemonProtocolError);
    expect((notJson as Error).message).toMatch(/not JSON: <html>proxy page/);
    const noErrorBody = await rejection(client.listFiles("."));
    expect(noErrorBody).toBeInstanceOf(DaemonProtocolError);
    expect((noErrorBody as Error).message).toMatch(/HTTP 502 .*bad gateway/);

    expect(await rejection(drain(client.exec({ command: "json" })))).toBeInstanceOf(DaemonProtocolError);
    expect(await rejection(drain(client.exec({ command: "garbage" })))).toBeInstanceOf(DaemonProtocolError);
    expect(await rejection(drain(client.exec({ command: "unknown-type" })))).toBeInstanceOf(DaemonProtocolError);
    const cut = await rejection(drain(client.exec({ command: "cut" })));
    expect(cut).toBeInstanceOf(SandboxUnavailableError);
    expect((cut as Error).message).toMatch(/without an exit status/);
    expect(await rejection(drain(client.exec({ command: "reset" })))).toBeInstanceOf(SandboxUnavailableError);

    expect(await collectExec(client.exec({ command: "fine" }))).toEqual({
      exitCode: 0,
      signal: null,
      timedOut: false,
      durationMs: 5,
      stdout: "h€llo",
      stderr: "",
      stdoutBytes: 7,
      stderrBytes: 0,
      stdoutTruncated: false,
      stderrTruncated: false,
      truncated: false,
    });
  });

  it("refuses addresses it cannot use", () => {
    expect(() => createDaemonClient({ address: "unix:relative.sock", token: "t" })).toThrow(/must be absolute/);
    expect(() => createDaemonClient({ address: "https://sandbox:8080", token: "t" })).toThrow(/only http:\/\//);
    expect(() => createDaemonClient({ address: "sandbox:8080", token: "t" })).toThrow(/only http:\/\//);
    expect(() => createDaemonClient({ address: "not an address", token: "t" })).toThrow(/neither unix:/);
  });
});

describe("collectExec", () => {
  async function* chunks(list: ExecChunk[]): AsyncGenerator<ExecChunk> {
    for (const chunk of list) yield chunk;
  }

  it("concatenates each stream and stops at the exit chunk", async () => {
    let consumedAfterExit = false;
    async function* stream(): AsyncGenerator<ExecChunk> {
      yield* chunks([
        { type: "stderr", data: "e1" },
        { type: "stdout", data: "o1" },
        { type: "stdout", data: "o2" },
        { type: "stderr", data: "e2" },
        { type: "exit", exitCode: null, signal: "SIGTERM", timedOut: true, durationMs: 42 },
      ]);
      consumedAfterExit = true;
      yield { type: "stdout", data: "after the exit" };
    }
    expect(await collectExec(stream())).toEqual({
      exitCode: null,
      signal: "SIGTERM",
      timedOut: true,
      durationMs: 42,
      stdout: "o1o2",
      stderr: "e1e2",
      stdoutBytes: 4,
      stderrBytes: 4,
      stdoutTruncated: false,
      stderrTruncated: false,
      truncated: false,
    });
    expect(consumedAfterExit).toBe(false);
  });

  it("keeps the first maxOutputBytes of each stream on a UTF-8 boundary, drains the rest and says truncated", async () => {
    // "€" is 3 bytes, "😀" 4 (a surrogate pair): a 10-byte cap keeps "ab€€" (8 bytes), never half of either.
    const result = await collectExec(
      chunks([
        { type: "stdout", data: "ab€" },
        { type: "stdout", data: "€😀tail" },
        { type: "stdout", data: "x".repeat(100_000) },
        { type: "stderr", data: "small" },
        { type: "exit", exitCode: 0, signal: null, timedOut: false, durationMs: 1 },
      ]),
      { maxOutputBytes: 10 },
    );
    expect(result).toMatchObject({ stdout: "ab€€", stderr: "small", stdoutTruncated: true, stderrTruncated: false, truncated: true, stdoutBytes: 100_016 });
    expect(utf8Prefix("a😀b", 2)).toBe("a");
    expect(utf8Prefix("a😀b", 5)).toBe("a😀");
    // The daemon's own truncation (it was told the cap) is reported too.
    const capped = await collectExec(chunks([{ type: "stdout", data: "abc" }, { type: "exit", exitCode: 0, signal: null, timedOut: false, durationMs: 1, stdoutBytes: 300_000_000, stdoutTruncated: true }]));
    expect(capped).toMatchObject({ stdout: "abc", stdoutTruncated: true, truncated: true, stdoutBytes: 300_000_000 });
  });

  it("a stream without an exit chunk is SandboxUnavailableError", async () => {
    await expect(collectExec(chunks([{ type: "stdout", data: "x" }]))).rejects.toBeInstanceOf(SandboxUnavailableError);
    await expect(collectExec(chunks([]))).rejects.toBeInstanceOf(SandboxUnavailableError);
  });
});
