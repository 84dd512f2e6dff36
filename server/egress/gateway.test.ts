import { randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../logger";
import { createModelRelay } from "../sandbox/model-relay";
import type { BrokeredCredential, SandboxEgressContext } from "../services/egress-directory";
import { AddressRules, type Lookup, type ResolveMap } from "./addresses";
import { EgressCa, fileCaStore } from "./ca";
import { EgressLog, type EgressRecord } from "./egress-log";
import { EgressGateway, type EgressGatewayOptions } from "./gateway";
import type { EgressPolicy } from "./policy";
import { createGatewayTokens } from "./tokens";

/**
 * The egress gateway in-process, as a sandbox sees it: a raw client on a sandbox's own Unix socket
 * (or the TCP listener of the Kubernetes backend), stand-in upstream servers on 127.0.0.1 reached
 * only through the test resolve map, a fake resolver that answers private addresses only (so a
 * refusal that failed could never reach anything but 127.0.0.1), the real CA, tokens, address
 * rules, model relay and event log.
 */

// ------------------------------------------------------------------ the outside world (127.0.0.1 only)

type Seen = {
  server: "plain" | "secure";
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: string;
  servername?: string;
  remotePort?: number;
};

const seen: Seen[] = [];
const connections = { plain: 0, secure: 0, echo: 0, raw: 0, blackhole: 0 };
/** `/slow` requests being answered now, and the most at once. */
const slow = { now: 0, most: 0 };

/** Echoes what it received as JSON; `/quiet` answers "ok", `/slow?ms=N` answers after N ms, `/chunked` answers in chunks. */
function standIn(server: Seen["server"]) {
  return (req: http.IncomingMessage, res: http.ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const servername = server === "secure" ? (req.socket as tls.TLSSocket).servername || undefined : undefined;
      const entry: Seen = {
        server,
        method: req.method ?? "",
        url: req.url ?? "",
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        body: Buffer.concat(chunks).toString("utf8"),
        ...(servername ? { servername } : {}),
        ...(req.socket.remotePort === undefined ? {} : { remotePort: req.socket.remotePort }),
      };
      seen.push(entry);
      const url = new URL(req.url ?? "/", "http://stand-in");
      res.setHeader("keep-alive", "timeout=5");
      res.setHeader("x-upstream", server);
      if (url.pathname === "/quiet") return void res.end("ok");
      if (url.pathname === "/slow") {
        slow.most = Math.max(slow.most, ++slow.now);
        return void setTimeout(() => {
          slow.now--;
          res.end("slow");
        }, Number(url.searchParams.get("ms") ?? 0));
      }
      if (url.pathname === "/chunked") {
        res.write("chu");
        return void setTimeout(() => res.end("nked"), 20);
      }
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ method: entry.method, url: entry.url, headers: entry.headers, body: entry.body }));
    });
  };
}

// ------------------------------------------------------------------ the sandbox's side

type Where = { path: string } | { port: number };

function dial(where: Where): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = "path" in where ? net.connect(where.path) : net.connect(where.port, "127.0.0.1");
    socket.once("connect", () => {
      socket.off("error", reject);
      resolve(socket);
    });
    socket.once("error", reject);
  });
}

type Answer = { status: number; reason: string; headers: Record<string, string>; body: string };

/** One complete response at the start of `buffer` (`bodiless`: a 2xx answer to CONNECT), or null when more bytes are needed. */
function parseOne(buffer: Buffer, closed: boolean, bodiless = false): { answer: Answer; consumed: number } | null {
  const text = buffer.toString("latin1");
  const end = text.indexOf("\r\n\r\n");
  if (end < 0) return null;
  const [statusLine = "", ...lines] = text.slice(0, end).split("\r\n");
  const match = /^HTTP\/1\.[01] (\d{3}) ?(.*)$/.exec(statusLine);
  if (!match) throw new Error(`not an HTTP response: ${JSON.stringify(statusLine.slice(0, 200))}`);
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(":");
    const name = line.slice(0, colon).trim().toLowerCase();
    headers[name] = headers[name] === undefined ? line.slice(colon + 1).trim() : `${headers[name]}, ${line.slice(colon + 1).trim()}`;
  }
  const status = Number(match[1]);
  const start = end + 4;
  const decode = (latin1: string) => Buffer.from(latin1, "latin1").toString("utf8");
  const answer = (body: string, consumed: number) => ({ answer: { status, reason: match[2] ?? "", headers, body: decode(body) }, consumed });
  if ((bodiless && status >= 200 && status < 300) || status === 204 || status === 304 || (status >= 100 && status < 200)) return answer("", start);
  if (headers["content-length"] !== undefined) {
    const length = Number(headers["content-length"]);
    return text.length - start >= length ? answer(text.slice(start, start + length), start + length) : null;
  }
  if (/chunked/i.test(headers["transfer-encoding"] ?? "")) {
    let at = start;
    let body = "";
    for (;;) {
      const lineEnd = text.indexOf("\r\n", at);
      if (lineEnd < 0) return null;
      const size = Number.parseInt(text.slice(at, lineEnd), 16);
      if (size === 0) {
        const trailerEnd = text.indexOf("\r\n\r\n", lineEnd);
        return trailerEnd < 0 ? null : answer(body, trailerEnd + 4);
      }
      if (text.length < lineEnd + 2 + size + 2) return null;
      body += text.slice(lineEnd + 2, lineEnd + 2 + size);
      at = lineEnd + 2 + size + 2;
    }
  }
  return closed ? answer(text.slice(start), text.length) : null;
}

/** Reads responses off a client connection (plain or TLS) one at a time. */
class Reader {
  private buffer = Buffer.alloc(0);
  private closed = false;
  private wake: (() => void) | null = null;
  /** Everything the client ever received on this connection (to look for leaked secrets). */
  received = "";

  constructor(readonly socket: net.Socket | tls.TLSSocket) {
    socket.on("data", (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.received += chunk.toString("latin1");
      this.wake?.();
    });
    socket.on("error", () => undefined);
    socket.on("close", () => {
      this.closed = true;
      this.wake?.();
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** The next `count` responses; fewer if the connection closes first. Fails after `timeoutMs`. */
  async answers(count: number, timeoutMs = 10_000, bodiless = false): Promise<Answer[]> {
    const out: Answer[] = [];
    const deadline = Date.now() + timeoutMs;
    while (out.length < count) {
      const parsed = this.buffer.length ? parseOne(this.buffer, this.closed, bodiless && out.length === 0) : null;
      if (parsed) {
        out.push(parsed.answer);
        this.buffer = this.buffer.subarray(parsed.consumed);
        continue;
      }
      if (this.closed) break;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no complete answer within ${timeoutMs} ms (got ${out.length} of ${count}; buffered ${JSON.stringify(this.buffer.toString("latin1").slice(0, 300))})`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = null;
    }
    return out;
  }

  async answer(timeoutMs?: number): Promise<Answer> {
    const [answer] = await this.answers(1, timeoutMs);
    if (!answer) throw new Error(`the connection closed without an answer (received ${JSON.stringify(this.received.slice(0, 300))})`);
    return answer;
  }

  /** Resolves when the other side closed the connection; false if it is still open after `timeoutMs`. */
  async closes(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    return this.closed;
  }

  /** Raw bytes (a tunnel's payload) until `length` have arrived. */
  async bytes(length: number, timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffer.length < length && !this.closed && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    const out = this.buffer.subarray(0, length).toString("latin1");
    this.buffer = this.buffer.subarray(length);
    return out;
  }

  /** Stops reading (the socket is about to be wrapped in TLS): paused, with nothing left over. */
  detach(): void {
    this.socket.removeAllListeners("data");
    this.socket.pause();
    if (this.buffer.length) this.socket.unshift(this.buffer);
    this.buffer = Buffer.alloc(0);
  }
}

/** Everything sent to the sandbox, to look for secret values in. */
let allReceived = "";

async function exchange(where: Where, data: string | Buffer, count = 1, timeoutMs = 10_000): Promise<Answer[]> {
  const socket = await dial(where);
  const reader = new Reader(socket);
  socket.write(data);
  try {
    return await reader.answers(count, timeoutMs);
  } finally {
    allReceived += reader.received;
    socket.destroy();
  }
}

async function one(where: Where, data: string | Buffer, timeoutMs?: number): Promise<Answer> {
  const [answer] = await exchange(where, data, 1, timeoutMs);
  if (!answer) throw new Error("the gateway closed the connection without an answer");
  return answer;
}

const basic = (token: string) => `Proxy-Authorization: Basic ${Buffer.from(`berth:${token}`).toString("base64")}\r\n`;

/** An HTTP/1.1 request: `lines` are the request line and header lines. */
const request = (lines: string[], body = "") => `${lines.join("\r\n")}\r\n${body ? `Content-Length: ${Buffer.byteLength(body)}\r\n` : ""}\r\n${body}`;

type Tunnel = { status: number; answer: Answer; socket: net.Socket; reader: Reader };

async function tunnel(where: Where, authority: string, token: string | null, options: { head?: string; headers?: string[] } = {}): Promise<Tunnel> {
  const socket = await dial(where);
  const reader = new Reader(socket);
  socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${token === null ? "" : basic(token)}${(options.headers ?? []).map((line) => `${line}\r\n`).join("")}\r\n${options.head ?? ""}`);
  const [answer] = await reader.answers(1, 10_000, true);
  allReceived += reader.received;
  if (!answer) throw new Error(`CONNECT ${authority}: closed without an answer`);
  return { status: answer.status, answer, socket, reader };
}

/** TLS inside an open tunnel, trusting only the installation's CA. */
async function secure(open: Tunnel, servername: string, options: tls.ConnectionOptions = {}): Promise<{ socket: tls.TLSSocket; reader: Reader }> {
  open.reader.detach();
  const socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const connection = tls.connect({ socket: open.socket, servername, ca: [installationCa.certificatePem], ...options }, () => resolve(connection));
    connection.once("error", reject);
  });
  return { socket, reader: new Reader(socket) };
}

/** Requests inside an inspected tunnel to `authority`; answers in order. */
async function inside(where: Where, authority: string, token: string, requests: string[], servername = authority.replace(/:\d+$/, "")): Promise<Answer[]> {
  const open = await tunnel(where, authority, token);
  expect(open.status).toBe(200);
  const { socket, reader } = await secure(open, servername);
  try {
    socket.write(requests.join(""));
    return await reader.answers(requests.length);
  } finally {
    allReceived += reader.received;
    socket.destroy();
  }
}

// ------------------------------------------------------------------ the gateway

let installationCa: EgressCa;
let upstreamCa: EgressCa;
const roots: string[] = [];
const servers: net.Server[] = [];
let plainPort: number;
let securePort: number;
let echoPort: number;
let rawPort: number;
let closedPort: number;
let blackholePort: number;
let resolveMap: ResolveMap;

const tokens = createGatewayTokens(randomBytes(32));
const TOKEN_A = tokens.issue("sbx-a");
const TOKEN_B = tokens.issue("sbx-b");

/** Names a fake resolver knows; every answer is an address the gateway must refuse. */
const lookup: Lookup = async (host) => {
  if (host === "localhost") return [{ address: "127.0.0.1", family: 4 }, { address: "::1", family: 6 }];
  if (host === "mixed.test") return [{ address: "10.1.2.3", family: 4 }, { address: "169.254.169.254", family: 4 }];
  if (host === "metadata.test") return [{ address: "169.254.169.254", family: 4 }];
  if (host === "mapped.test") return [{ address: "::ffff:127.0.0.1", family: 6 }];
  throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: "ENOTFOUND" });
};

const contexts = new Map<string, SandboxEgressContext | Error>();
const directory = {
  async forSandbox(name: string) {
    const context = contexts.get(name);
    if (context instanceof Error) throw context;
    return context ?? null;
  },
};

type Harness = {
  gateway: EgressGateway;
  log: EgressLog;
  events: Array<{ sessionId: string; payload: EgressRecord }>;
  logged: () => string;
  a: Where;
  b: Where;
  tcp: Where;
  close(): Promise<void>;
};

async function startGateway(overrides: Partial<EgressGatewayOptions> = {}): Promise<Harness> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "berth-gw-"));
  roots.push(dir);
  const events: Harness["events"] = [];
  let logged = "";
  const logger = createLogger("debug", new Writable({ write: (chunk, _encoding, done) => ((logged += String(chunk)), done()) }));
  const log = new EgressLog(
    async (sessionId, batch) => {
      for (const event of batch) events.push({ sessionId, payload: event.payload });
    },
    { windowMs: 60_000, logger, metrics: null },
  );
  const gateway = new EgressGateway({
    directory,
    tokens,
    addressRules: new AddressRules({ allowPrivate: [], ownAddresses: [] }),
    resolveMap,
    lookup,
    ca: async () => installationCa,
    modelRelay: createModelRelay({ gateway: null, logger }),
    log,
    metrics: null,
    logger,
    extraUpstreamCa: upstreamCa.certificatePem,
    ...overrides,
  });
  const a = path.join(dir, "a.sock");
  const b = path.join(dir, "b.sock");
  await gateway.listenForSandbox(a, "sbx-a");
  await gateway.listenForSandbox(b, "sbx-b");
  const tcp = await gateway.listenTcp(0, "127.0.0.1");
  return { gateway, log, events, logged: () => logged, a: { path: a }, b: { path: b }, tcp: { port: tcp.port }, close: () => gateway.close() };
}

const listen = (server: net.Server) =>
  new Promise<number>((resolve) => {
    servers.push(server);
    server.listen(0, "127.0.0.1", () => resolve((server.address() as net.AddressInfo).port));
  });

let gw: Harness;

beforeAll(async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "berth-gw-ca-"));
  roots.push(dir);
  installationCa = await EgressCa.open(fileCaStore(path.join(dir, "installation")));
  upstreamCa = await EgressCa.open(fileCaStore(path.join(dir, "upstream")));

  const plain = http.createServer(standIn("plain"));
  plain.on("connection", () => connections.plain++);
  plainPort = await listen(plain);
  const secureServer = https.createServer(
    {
      SNICallback: (servername, callback) => {
        // badcert.test gets someone else's certificate: the gateway's own TLS check must fail.
        upstreamCa.leafFor(servername === "badcert.test" ? "someone-else.test" : servername).then(
          (leaf) => callback(null, leaf.secureContext),
          (error: Error) => callback(error),
        );
      },
    },
    standIn("secure"),
  );
  secureServer.on("secureConnection", () => connections.secure++);
  securePort = await listen(secureServer);
  const echo = net.createServer((socket) => {
    connections.echo++;
    socket.on("error", () => undefined);
    socket.pipe(socket);
  });
  echoPort = await listen(echo);
  // A server whose reason phrase holds a control character (Node's client accepts it; its server must not repeat it).
  const raw = net.createServer((socket) => {
    connections.raw++;
    socket.on("error", () => undefined);
    socket.once("data", () => socket.end("HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"));
  });
  rawPort = await listen(raw);
  // Accepts and never says a word (a TLS handshake to it never completes).
  const blackhole = net.createServer((socket) => {
    connections.blackhole++;
    socket.on("error", () => undefined);
  });
  blackholePort = await listen(blackhole);
  const closed = net.createServer();
  closedPort = await new Promise<number>((resolve) => closed.listen(0, "127.0.0.1", () => resolve((closed.address() as net.AddressInfo).port)));
  await new Promise((resolve) => closed.close(resolve));

  // Port kept: http://allowed.test:<plainPort>/, CONNECT api.brokered.test:<securePort>.
  const names = ["allowed.test", "denied.test", "api.brokered.test", "api.other.test", "rules.test", "tunnel.test", "badcert.test", "weird.test", "gone.test", "blackhole.test"];
  resolveMap = new Map(names.map((name) => [name, { address: "127.0.0.1", port: null }]));
  gw = await startGateway();
});

afterAll(async () => {
  await gw?.close();
  for (const server of servers) {
    if (server instanceof http.Server) server.closeAllConnections();
    server.close();
  }
  for (const dir of roots) rmSync(dir, { recursive: true, force: true });
});

// ------------------------------------------------------------------ policies and secrets

const stub = () => `berth-stub-${randomBytes(20).toString("hex")}`;
const OPEN: EgressPolicy = { mode: "open", allow: [] };
const NONE: EgressPolicy = { mode: "none", allow: [] };
const allowlist = (): EgressPolicy => ({
  mode: "allowlist",
  allow: [
    { host: "allowed.test", ports: [plainPort] },
    { host: "api.brokered.test", ports: [securePort, plainPort] },
    { host: "api.other.test", ports: [securePort, plainPort] },
    { host: "rules.test", ports: [securePort], methods: ["GET"], paths: ["/v1/*"] },
    { host: "tunnel.test", ports: [echoPort] },
    { host: "badcert.test", ports: [securePort] },
    { host: "weird.test", ports: [rawPort] },
    { host: "gone.test", ports: [closedPort] },
    { host: "blackhole.test", ports: [blackholePort] },
  ],
});

function credential(name: string, hosts: string[], value: () => string, options: { header?: string; template?: string } = {}): BrokeredCredential {
  return { name, stub: stub(), hosts, header: options.header ?? "Authorization", template: options.template ?? "Bearer {{value}}", value };
}

/** Gives a sandbox a (new) session with this policy and these brokered secrets; returns the session id. */
function serve(sandbox: "sbx-a" | "sbx-b", policy: EgressPolicy, brokered: BrokeredCredential[] = []): string {
  const sessionId = randomUUID();
  contexts.set(sandbox, { sandboxName: sandbox, sessionId, teamId: "team", agentId: "agent", policy, brokered });
  return sessionId;
}

async function eventsOf(harness: Harness, sessionId: string): Promise<EgressRecord[]> {
  await harness.log.flush();
  return harness.events.filter((event) => event.sessionId === sessionId).map((event) => event.payload);
}

/** The events of a session once `predicate` holds for them (records are written when a response or tunnel ends). */
async function eventsWhen(harness: Harness, sessionId: string, predicate: (events: EgressRecord[]) => boolean): Promise<EgressRecord[]> {
  let events: EgressRecord[] = [];
  await expect.poll(async () => predicate((events = await eventsOf(harness, sessionId))), { timeout: 5_000 }).toBe(true);
  return events;
}

const upstreamSaw = (predicate: (entry: Seen) => boolean) => seen.filter(predicate);

// ================================================================== tests

describe("who is asking", () => {
  it("answers 407 with a Proxy-Authenticate challenge to a request or CONNECT without credentials", async () => {
    serve("sbx-a", OPEN);
    const plain = await one(gw.a, request([`GET http://allowed.test:${plainPort}/ HTTP/1.1`, `Host: allowed.test:${plainPort}`]));
    expect(plain.status).toBe(407);
    expect(plain.headers["proxy-authenticate"]).toBe('Basic realm="berth-egress"');
    const connect = await tunnel(gw.a, `tunnel.test:${echoPort}`, null);
    expect(connect.status).toBe(407);
    expect(connect.answer.headers["proxy-authenticate"]).toBe('Basic realm="berth-egress"');
    connect.socket.destroy();
  });

  it("answers 407 to a wrong token, a token of another sandbox on a sandbox's own socket, and a malformed one", async () => {
    serve("sbx-a", OPEN);
    serve("sbx-b", OPEN);
    const forged = `sbx-a~${"A".repeat(43)}`;
    const target = `GET http://allowed.test:${plainPort}/quiet HTTP/1.1`;
    for (const token of [forged, TOKEN_B, "sbx-a", "~", `${TOKEN_A}x`]) {
      expect((await one(gw.a, request([target, `Host: allowed.test`, basic(token).trim()]))).status).toBe(407);
      const connect = await tunnel(gw.a, `tunnel.test:${echoPort}`, token);
      expect(connect.status).toBe(407);
      connect.socket.destroy();
    }
    // A password that is not valid percent-encoding must not break the handler.
    const malformed = `Proxy-Authorization: Basic ${Buffer.from("berth:%zz").toString("base64")}`;
    expect((await one(gw.a, request([target, "Host: allowed.test", malformed]), 3_000)).status).toBe(407);
    const socket = await dial(gw.a);
    const reader = new Reader(socket);
    socket.write(`CONNECT tunnel.test:${echoPort} HTTP/1.1\r\n${malformed}\r\n\r\n`);
    expect((await reader.answers(1, 3_000, true))[0]?.status).toBe(407);
    socket.destroy();
    // The right token: on its own socket, and on the shared TCP listener (the token alone names the sandbox).
    expect((await one(gw.a, request([target, "Host: allowed.test", basic(TOKEN_A).trim()]))).status).toBe(200);
    expect((await one(gw.tcp, request([target, "Host: allowed.test", basic(TOKEN_B).trim()]))).status).toBe(200);
    expect((await one(gw.a, request([target, "Host: allowed.test", `Proxy-Authorization: Bearer ${TOKEN_A}`]))).status).toBe(200);
  });
});

describe("the agent's policy", () => {
  it("mode none: 403 naming the host, for a request and for a CONNECT, each recorded as denied", async () => {
    const session = serve("sbx-a", NONE);
    const plain = await one(gw.a, request([`GET http://allowed.test:${plainPort}/x HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
    expect(plain.status).toBe(403);
    expect(plain.headers["x-berth-egress"]).toBe("denied");
    expect(plain.body).toContain(`allowed.test:${plainPort}`);
    expect(plain.body).toContain("mode none");
    const connect = await tunnel(gw.a, `tunnel.test:${echoPort}`, TOKEN_A);
    expect(connect.status).toBe(403);
    expect(connect.answer.headers["x-berth-egress"]).toBe("denied");
    expect(connect.answer.body).toContain(`tunnel.test:${echoPort}`);
    connect.socket.destroy();
    const events = await eventsOf(gw, session);
    expect(events).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ host: "allowed.test", port: plainPort, method: "GET", path: "/x", decision: "denied", status: 403, bytesOut: 0, bytesIn: 0 }),
        expect.objectContaining({ host: "tunnel.test", port: echoPort, method: "CONNECT", decision: "denied", status: 403 }),
      ]),
    );
  });

  it("allowlist: a host without a rule and an allowed host on another port are refused with 403 naming them", async () => {
    serve("sbx-a", allowlist());
    const before = connections.plain;
    const miss = await one(gw.a, request([`GET http://denied.test:${plainPort}/ HTTP/1.1`, "Host: denied.test", basic(TOKEN_A).trim()]));
    expect(miss.status).toBe(403);
    expect(miss.body).toContain(`denied.test:${plainPort}`);
    expect(miss.body).toContain("no allow rule for host denied.test");
    const connectMiss = await tunnel(gw.a, "denied.test:443", TOKEN_A);
    expect(connectMiss.status).toBe(403);
    expect(connectMiss.answer.body).toContain("denied.test:443");
    const wrongPort = await tunnel(gw.a, `tunnel.test:${plainPort}`, TOKEN_A);
    expect(wrongPort.status).toBe(403);
    expect(wrongPort.answer.body).toContain(`no allow rule for host tunnel.test port ${plainPort}`);
    const wrongPlainPort = await one(gw.a, request([`GET http://allowed.test:${echoPort}/ HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
    expect(wrongPlainPort.status).toBe(403);
    for (const open of [connectMiss, wrongPort]) open.socket.destroy();
    expect(connections.plain).toBe(before);
  });

  it("inside an inspected tunnel each request is checked: method and path rules, dot segments, pipelined requests; alike denials are one event", async () => {
    const session = serve("sbx-a", allowlist());
    const host = `rules.test:${securePort}`;
    const before = upstreamSaw(() => true).length;
    const answers = await inside(gw.a, host, TOKEN_A, [
      request(["GET /v1/models HTTP/1.1", `Host: ${host}`]),
      request(["POST /v1/models HTTP/1.1", `Host: ${host}`], "{}"),
      request(["GET /admin HTTP/1.1", `Host: ${host}`]),
      request(["GET /v1/../admin HTTP/1.1", `Host: ${host}`]),
      request(["GET /v1/%2e%2e/admin HTTP/1.1", `Host: ${host}`]),
      request(["GET /v1/..%2Fadmin HTTP/1.1", `Host: ${host}`, "Connection: close"]),
    ]);
    expect(answers.map((answer) => answer.status)).toEqual([200, 403, 403, 403, 403, 403]);
    for (const denied of answers.slice(1)) expect(denied.body).toContain("rules.test");
    expect(answers[1]?.body).toContain("no allow rule for POST /v1/models on rules.test");
    const reached = seen.slice(before);
    expect(reached.map((entry) => `${entry.method} ${entry.url}`)).toEqual(["GET /v1/models"]);
    const events = await eventsWhen(gw, session, (list) => list.some((event) => event.decision === "allowed"));
    expect(events.find((event) => event.decision === "allowed")).toMatchObject({ host: "rules.test", method: "GET", path: "/v1/models", status: 200, rule: "rules.test:" + securePort + " GET /v1/*" });
    // Four GET denials to four paths: one event with a count (the path-bearing reasons must not split them).
    const getDenials = events.filter((event) => event.decision === "denied" && event.method === "GET");
    expect(getDenials).toHaveLength(1);
    expect(getDenials[0]?.count).toBe(4);
    expect(getDenials[0]?.path).toBeUndefined();
  });

  it("no session behind the sandbox: 403; the policy cannot be read: 503 (and the error is logged)", async () => {
    contexts.delete("sbx-a");
    const none = await one(gw.a, request([`GET http://allowed.test:${plainPort}/ HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
    expect(none.status).toBe(403);
    expect(none.body).toContain("serves no session");
    contexts.set("sbx-a", new Error("database unavailable (test)"));
    const broken = await one(gw.a, request([`GET http://allowed.test:${plainPort}/ HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
    expect(broken.status).toBe(503);
    const brokenConnect = await tunnel(gw.a, `tunnel.test:${echoPort}`, TOKEN_A);
    expect(brokenConnect.status).toBe(503);
    brokenConnect.socket.destroy();
    expect(gw.logged()).toContain("could not read the sandbox's policy");
    serve("sbx-a", OPEN);
  });
});

describe("address rules (open mode: only the addresses stand in the way)", () => {
  it("refuses loopback, unspecified, mapped and private targets, by literal or by name, before connecting anywhere", async () => {
    const session = serve("sbx-a", OPEN);
    const before = { ...connections };
    const connects = [
      `127.0.0.1:${echoPort}`,
      `localhost:${echoPort}`,
      `LOCALHOST.:${echoPort}`,
      `[::1]:${echoPort}`,
      `[::ffff:127.0.0.1]:${echoPort}`,
      `[::ffff:7f00:1]:${echoPort}`,
      `[0:0:0:0:0:0:0:1]:${echoPort}`,
      `2130706433:${echoPort}`,
      `0x7f.1:${echoPort}`,
      `127.1:${echoPort}`,
      `0.0.0.0:${echoPort}`,
      `mixed.test:443`,
      `metadata.test:80`,
      `mapped.test:${echoPort}`,
      `nowhere.test:443`,
    ];
    for (const authority of connects) {
      const open = await tunnel(gw.a, authority, TOKEN_A);
      expect(open.status, authority).toBe(403);
      expect(open.answer.body, authority).toMatch(/refused/);
      open.socket.destroy();
    }
    const urls = [
      `http://127.0.0.1:${plainPort}/`,
      `http://[::1]:${plainPort}/`,
      `http://2130706433:${plainPort}/`,
      `http://0x7f.1:${plainPort}/`,
      `http://127.1:${plainPort}/`,
      `http://localhost:${plainPort}/`,
      `http://[::ffff:127.0.0.1]:${plainPort}/`,
      `http://metadata.test/latest/meta-data/`,
    ];
    for (const url of urls) {
      const answer = await one(gw.a, request([`GET ${url} HTTP/1.1`, `Host: allowed.test:${plainPort}`, basic(TOKEN_A).trim()]));
      expect(answer.status, url).toBe(403);
      expect(answer.headers["x-berth-egress"], url).toBe("denied");
    }
    expect(connections).toEqual(before);
    const events = await eventsOf(gw, session);
    expect(events.filter((event) => event.decision === "denied").reduce((sum, event) => sum + (event.count ?? 1), 0)).toBe(connects.length + urls.length);
    expect(events.find((event) => event.host === "127.0.0.1" && event.method === "CONNECT")?.reason).toContain("loopback");
  });

  it("refuses IPv6 zone ids and other malformed authorities with 400", async () => {
    serve("sbx-a", OPEN);
    for (const authority of ["[fe80::1%25eth0]:443", "[fe80::1%eth0]:443", "[::1:443", "::1:443", "user@allowed.test:443", "allowed.test", "allowed.test:", "allowed.test:0", "allowed.test:65536", "allowed.test:99999", "allowed.test:80:80", "allowed.test:+80"]) {
      const open = await tunnel(gw.a, authority, TOKEN_A);
      expect(open.status, authority).toBe(400);
      expect(open.answer.body, authority).toContain("CONNECT needs host:port");
      open.socket.destroy();
    }
  });

  it("upper case and a trailing dot name the same host (and its brokered secret)", async () => {
    const secret = credential("API_TOKEN", ["api.brokered.test"], () => "value-for-the-dotted-host");
    const session = serve("sbx-a", allowlist(), [secret]);
    const [answer] = await inside(gw.a, `API.Brokered.TEST.:${securePort}`, TOKEN_A, [request(["GET /echo HTTP/1.1", "Host: api.brokered.test", "Connection: close"])], "api.brokered.test");
    expect(answer?.status).toBe(200);
    expect(JSON.parse(answer!.body).headers.authorization).toBe("Bearer value-for-the-dotted-host");
    const events = await eventsWhen(gw, session, (list) => list.length > 0);
    expect(events[0]).toMatchObject({ host: "api.brokered.test", brokered: ["API_TOKEN"] });
  });

  it("inside an inspected tunnel every request is still held to the address rules", async () => {
    const session = serve("sbx-a", OPEN, [credential("META", ["metadata.test", "localhost"], () => "never-to-metadata")]);
    const before = { ...connections };
    for (const host of ["metadata.test", "localhost"]) {
      const answers = await inside(gw.a, `${host}:443`, TOKEN_A, [request(["GET /latest/meta-data/ HTTP/1.1", `Host: ${host}`, "Connection: close"])]);
      expect(answers[0]?.status, host).toBe(403);
      expect(answers[0]?.body, host).toMatch(/link-local|loopback/);
    }
    expect(connections).toEqual(before);
    const events = await eventsWhen(gw, session, (list) => list.length === 2);
    expect(events.every((event) => event.decision === "denied" && event.brokered === undefined)).toBe(true);
  });

  it("a very long host name is refused, and the event does not carry all of it", async () => {
    const session = serve("sbx-a", OPEN);
    // ~6 KB: twice in the CONNECT head (request line and Host) stays under Node's 16 KiB for a head.
    const host = `${"a".repeat(60)}.`.repeat(100) + "test";
    const open = await tunnel(gw.a, `${host}:443`, TOKEN_A);
    expect(open.status).toBe(403);
    open.socket.destroy();
    const plain = await one(gw.a, request([`GET http://${host}/ HTTP/1.1`, "Host: x", basic(TOKEN_A).trim()]));
    expect(plain.status).toBe(403);
    const events = await eventsOf(gw, session);
    expect(events).toHaveLength(2);
    for (const event of events) {
      expect(event.host.length).toBeLessThanOrEqual(301);
      expect((event.reason ?? "").length).toBeLessThanOrEqual(601);
    }
  });
});

describe("plain HTTP", () => {
  it("forwards to the checked address: hop headers and proxy credentials stripped, end-to-end headers, path, query and body kept", async () => {
    const session = serve("sbx-a", allowlist());
    const before = seen.length;
    const answer = await one(
      gw.a,
      request(
        [
          `POST http://allowed.test:${plainPort}/echo?q=1&r=2 HTTP/1.1`,
          `Host: allowed.test:${plainPort}`,
          basic(TOKEN_A).trim(),
          "Proxy-Connection: keep-alive",
          "Connection: close, X-Hop",
          "X-Hop: by the connection header",
          "Keep-Alive: timeout=5",
          "TE: trailers",
          "Trailer: X-Trailing",
          "X-End-To-End: kept",
          "Authorization: Basic c2FuZGJveDpvd24=",
        ],
        "hello",
      ),
    );
    expect(answer.status).toBe(200);
    expect(answer.headers["x-upstream"]).toBe("plain");
    expect(answer.headers["keep-alive"]).toBeUndefined();
    const [upstream] = seen.slice(before);
    expect(upstream).toMatchObject({ method: "POST", url: "/echo?q=1&r=2", body: "hello" });
    expect(upstream?.headers.host).toBe(`allowed.test:${plainPort}`);
    expect(upstream?.headers["x-end-to-end"]).toBe("kept");
    expect(upstream?.headers.authorization).toBe("Basic c2FuZGJveDpvd24=");
    for (const hop of ["proxy-authorization", "proxy-connection", "x-hop", "keep-alive", "te", "trailer"]) expect(upstream?.headers[hop], hop).toBeUndefined();
    const events = await eventsWhen(gw, session, (list) => list.length > 0);
    expect(events).toEqual([
      expect.objectContaining({ host: "allowed.test", port: plainPort, method: "POST", path: "/echo", status: 200, decision: "allowed", rule: `allowed.test:${plainPort}`, bytesOut: 5, bytesIn: Buffer.byteLength(answer.body) }),
    ]);
  });

  it("streams a chunked upstream answer and keeps the client connection alive for the next request", async () => {
    serve("sbx-a", allowlist());
    const answers = await exchange(
      gw.a,
      request([`GET http://allowed.test:${plainPort}/chunked HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]) +
        request([`GET http://allowed.test:${plainPort}/quiet HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim(), "Connection: close"]),
      2,
    );
    expect(answers.map((answer) => [answer.status, answer.body])).toEqual([
      [200, "chunked"],
      [200, "ok"],
    ]);
  });

  it("the Host the upstream sees is the URL's authority, whatever Host the sandbox sent (no fronting a denied or brokered host)", async () => {
    const secret = credential("API_TOKEN", ["api.brokered.test"], () => "never-over-plain-http");
    const session = serve("sbx-a", allowlist(), [secret]);
    const before = seen.length;
    const fronted = await one(gw.a, request([`GET http://allowed.test:${plainPort}/echo HTTP/1.1`, "Host: denied.test", basic(TOKEN_A).trim()]));
    expect(fronted.status).toBe(200);
    const brokeredHost = await one(gw.a, request([`GET http://allowed.test:${plainPort}/echo HTTP/1.1`, "Host: api.brokered.test", `Authorization: Bearer ${secret.stub}`, basic(TOKEN_A).trim()]));
    expect(brokeredHost.status).toBe(200);
    const [first, second] = seen.slice(before);
    expect(first?.headers.host).toBe(`allowed.test:${plainPort}`);
    expect(second?.headers.host).toBe(`allowed.test:${plainPort}`);
    expect(second?.headers.authorization).toBe(`Bearer ${secret.stub}`);
    const events = await eventsWhen(gw, session, (list) => list.reduce((sum, event) => sum + (event.count ?? 1), 0) === 2);
    expect(events.every((event) => event.host === "allowed.test" && event.brokered === undefined)).toBe(true);
    expect(events.flatMap((event) => event.stubsSeen ?? [])).toEqual(["API_TOKEN"]);
  });

  it("an absolute-form http:// request to a brokered host gets no credential (never over plain HTTP); its stub is reported", async () => {
    const secret = credential("API_TOKEN", ["api.brokered.test"], () => "never-over-plain-http");
    const session = serve("sbx-a", allowlist(), [secret]);
    const before = seen.length;
    const withStub = await one(gw.a, request([`GET http://api.brokered.test:${plainPort}/echo HTTP/1.1`, "Host: api.brokered.test", `Authorization: Bearer ${secret.stub}`, basic(TOKEN_A).trim()]));
    const without = await one(gw.a, request([`GET http://api.brokered.test:${plainPort}/echo HTTP/1.1`, "Host: api.brokered.test", basic(TOKEN_A).trim()]));
    expect([withStub.status, without.status]).toEqual([200, 200]);
    const [first, second] = seen.slice(before);
    expect(first?.headers.authorization).toBe(`Bearer ${secret.stub}`);
    expect(second?.headers.authorization).toBeUndefined();
    const events = await eventsWhen(gw, session, (list) => list.reduce((sum, event) => sum + (event.count ?? 1), 0) === 2);
    expect(events.some((event) => event.brokered)).toBe(false);
    expect(events.flatMap((event) => event.stubsSeen ?? [])).toEqual(["API_TOKEN"]);
  });

  it("userinfo in the URL is neither the host nor forwarded", async () => {
    serve("sbx-a", allowlist());
    const before = seen.length;
    const withUser = await one(gw.a, request([`GET http://user:pw@allowed.test:${plainPort}/echo HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
    expect(withUser.status).toBe(200);
    expect(seen[before]?.headers.authorization).toBeUndefined();
    expect(seen[before]?.url).toBe("/echo");
    const disguised = await one(gw.a, request([`GET http://allowed.test:${plainPort}@denied.test:${plainPort}/echo HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
    expect(disguised.status).toBe(403);
    expect(disguised.body).toContain("denied.test");
    expect(seen.length).toBe(before + 1);
  });

  it("two requests in one packet on a keep-alive connection are authorised one by one", async () => {
    serve("sbx-a", allowlist());
    const before = seen.length;
    const allowed = request([`GET http://allowed.test:${plainPort}/one HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]);
    const deniedHost = await exchange(gw.a, allowed + request([`GET http://denied.test:${plainPort}/two HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim(), "Connection: close"]), 2);
    expect(deniedHost.map((answer) => answer.status)).toEqual([200, 403]);
    const noCredentials = await exchange(gw.a, allowed + request([`GET http://allowed.test:${plainPort}/three HTTP/1.1`, "Host: allowed.test", "Connection: close"]), 2);
    expect(noCredentials.map((answer) => answer.status)).toEqual([200, 407]);
    expect(seen.slice(before).map((entry) => entry.url)).toEqual(["/one", "/one"]);
  });

  it("Content-Length with Transfer-Encoding, two Content-Lengths and obs-fold are refused with 400; nothing is smuggled", async () => {
    serve("sbx-a", OPEN);
    const before = seen.length;
    const smuggled = request([`GET http://denied.test:${plainPort}/smuggled HTTP/1.1`, "Host: denied.test", basic(TOKEN_A).trim()]);
    const attempts = [
      `POST http://allowed.test:${plainPort}/ HTTP/1.1\r\nHost: allowed.test\r\n${basic(TOKEN_A)}Content-Length: ${4 + smuggled.length}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
      `POST http://allowed.test:${plainPort}/ HTTP/1.1\r\nHost: allowed.test\r\n${basic(TOKEN_A)}Content-Length: 0\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`,
      `POST http://allowed.test:${plainPort}/ HTTP/1.1\r\nHost: allowed.test\r\n${basic(TOKEN_A)}Transfer-Encoding: chunked\r\n x\r\n\r\n0\r\n\r\n${smuggled}`,
      `POST http://allowed.test:${plainPort}/ HTTP/1.1\r\nHost: allowed.test\r\n${basic(TOKEN_A)}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${smuggled}`,
    ];
    for (const attempt of attempts) {
      const answers = await exchange(gw.a, attempt, 2);
      expect(answers[0]?.status, attempt.split("\r\n").slice(3).join("|")).toBe(400);
      expect(answers).toHaveLength(1);
    }
    expect(seen.slice(before)).toEqual([]);
  });

  it("a chunked request body is forwarded as a body (re-framed), not as a second request", async () => {
    serve("sbx-a", allowlist());
    const before = seen.length;
    const inner = `GET http://denied.test:${plainPort}/inner HTTP/1.1\r\nHost: denied.test\r\n\r\n`;
    const chunk = `${inner.length.toString(16)}\r\n${inner}\r\n0\r\n\r\n`;
    const answer = await one(gw.a, `POST http://allowed.test:${plainPort}/echo HTTP/1.1\r\nHost: allowed.test\r\n${basic(TOKEN_A)}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunk}`);
    expect(answer.status).toBe(200);
    expect(seen.slice(before).map((entry) => [entry.url, entry.body])).toEqual([["/echo", inner]]);
  });
});

describe("CONNECT tunnels", () => {
  it("carries bytes both ways (the bytes sent along with the CONNECT too) and records the counts when the tunnel closes", async () => {
    const session = serve("sbx-a", allowlist());
    const open = await tunnel(gw.a, `tunnel.test:${echoPort}`, TOKEN_A, { head: "early" });
    expect(open.status).toBe(200);
    expect(await open.reader.bytes(5)).toBe("early");
    open.socket.write("ping!");
    expect(await open.reader.bytes(5)).toBe("ping!");
    open.socket.end();
    const events = await eventsWhen(gw, session, (list) => list.length > 0);
    expect(events).toEqual([expect.objectContaining({ host: "tunnel.test", port: echoPort, method: "CONNECT", status: 200, decision: "allowed", rule: `tunnel.test:${echoPort}`, bytesOut: 10, bytesIn: 10 })]);
  });

  it("an open tunnel that an edit of the policy no longer allows is closed, and the closing recorded as a denial", async () => {
    const quick = await startGateway({ timeouts: { recheckMs: 100 } });
    try {
      const session = serve("sbx-a", allowlist());
      const open = await tunnel(quick.a, `tunnel.test:${echoPort}`, TOKEN_A);
      expect(open.status).toBe(200);
      open.socket.write("ping!");
      expect(await open.reader.bytes(5)).toBe("ping!");
      const closed = new Promise<void>((resolve) => open.socket.once("close", () => resolve()));
      // The same session, its agent's policy edited: tunnel.test is gone from the allow-list.
      contexts.set("sbx-a", { sandboxName: "sbx-a", sessionId: session, teamId: "team", agentId: "agent", policy: { mode: "allowlist", allow: [{ host: "allowed.test", ports: [plainPort] }] }, brokered: [] });
      await closed;
      const events = await eventsWhen(quick, session, (list) => list.some((event) => event.decision === "denied"));
      expect(events).toContainEqual(expect.objectContaining({ host: "tunnel.test", decision: "denied", reason: expect.stringMatching(/open tunnel closed: the agent's egress policy changed/) }));
    } finally {
      await quick.close();
    }
  });

  it("an open tunnel to a host that gets a brokered credential is closed (its next connection is inspected)", async () => {
    const quick = await startGateway({ timeouts: { recheckMs: 100 } });
    try {
      const session = serve("sbx-a", allowlist());
      const open = await tunnel(quick.a, `tunnel.test:${echoPort}`, TOKEN_A);
      expect(open.status).toBe(200);
      const closed = new Promise<void>((resolve) => open.socket.once("close", () => resolve()));
      contexts.set("sbx-a", { sandboxName: "sbx-a", sessionId: session, teamId: "team", agentId: "agent", policy: allowlist(), brokered: [credential("TOKEN", ["tunnel.test"], () => "v")] });
      await closed;
      expect(await eventsWhen(quick, session, (list) => list.some((event) => event.decision === "denied"))).toContainEqual(
        expect.objectContaining({ host: "tunnel.test", decision: "denied", reason: expect.stringMatching(/now inspects this host/) }),
      );
    } finally {
      await quick.close();
    }
  });

  it("a target that refuses the connection: 502, recorded", async () => {
    const session = serve("sbx-a", allowlist());
    const open = await tunnel(gw.a, `gone.test:${closedPort}`, TOKEN_A);
    expect(open.status).toBe(502);
    expect(open.answer.body).toContain(`gone.test:${closedPort} could not be reached`);
    open.socket.destroy();
    expect(await eventsWhen(gw, session, (list) => list.length > 0)).toEqual([expect.objectContaining({ host: "gone.test", status: 502, decision: "allowed" })]);
  });
});

describe("inspected TLS and brokered credentials", () => {
  it("puts the credential into its header (template), where the stub is or the header is absent; leaves the sandbox's own header alone", async () => {
    const token = credential("API_TOKEN", ["api.brokered.test"], () => "sk-value-1");
    const custom = credential("CUSTOM", ["*.brokered.test"], () => "custom-value", { header: "X-Api-Key", template: "key={{value}};v=1" });
    const session = serve("sbx-a", allowlist(), [token, custom]);
    const host = `api.brokered.test:${securePort}`;
    const before = seen.length;
    const answers = await inside(gw.a, host, TOKEN_A, [
      request(["GET /echo HTTP/1.1", `Host: ${host}`, `Authorization: Bearer ${token.stub}`, `X-Api-Key: prefix ${custom.stub} suffix`]),
      request(["GET /echo HTTP/1.1", `Host: ${host}`]),
      request(["GET /echo HTTP/1.1", `Host: ${host}`, "Authorization: Basic b3duOmNyZWRz", "X-Api-Key: the-sandbox-own", "Connection: close"]),
    ]);
    expect(answers.map((answer) => answer.status)).toEqual([200, 200, 200]);
    const [withStubs, absent, own] = seen.slice(before);
    expect(withStubs).toMatchObject({ server: "secure", servername: "api.brokered.test" });
    expect(withStubs?.headers.authorization).toBe("Bearer sk-value-1");
    expect(withStubs?.headers["x-api-key"]).toBe("key=custom-value;v=1");
    expect(absent?.headers.authorization).toBe("Bearer sk-value-1");
    expect(absent?.headers["x-api-key"]).toBe("key=custom-value;v=1");
    expect(own?.headers.authorization).toBe("Basic b3duOmNyZWRz");
    expect(own?.headers["x-api-key"]).toBe("the-sandbox-own");
    const events = await eventsWhen(gw, session, (list) => list.reduce((sum, event) => sum + (event.count ?? 1), 0) === 3);
    expect(events).toEqual([expect.objectContaining({ host: "api.brokered.test", port: securePort, method: "GET", path: "/echo", status: 200, count: 3, brokered: ["API_TOKEN", "CUSTOM"] })]);
    expect(events[0]?.stubsSeen).toBeUndefined();
  });

  it("puts a value with $ patterns in as it is", async () => {
    const value = "pa$&ss$$wo$'rd$`x$1";
    serve("sbx-a", allowlist(), [credential("API_TOKEN", ["api.brokered.test"], () => value)]);
    const [answer] = await inside(gw.a, `api.brokered.test:${securePort}`, TOKEN_A, [request(["GET /echo HTTP/1.1", "Host: api.brokered.test", "Connection: close"])]);
    expect(JSON.parse(answer!.body).headers.authorization).toBe(`Bearer ${value}`);
  });

  it("a stub of a secret bound to another host is left as it is and reported; so is an unknown stub", async () => {
    const token = credential("API_TOKEN", ["api.brokered.test"], () => "sk-value");
    const other = credential("OTHER_KEY", ["api.other.test"], () => "other-value", { header: "X-Api-Key", template: "{{value}}" });
    const unknown = stub();
    const session = serve("sbx-a", allowlist(), [token, other]);
    const before = seen.length;
    const [answer] = await inside(gw.a, `api.brokered.test:${securePort}`, TOKEN_A, [
      request([`GET /echo?key=${other.stub} HTTP/1.1`, "Host: api.brokered.test", `X-Other: ${other.stub}`, `X-Unknown: ${unknown}`, "Connection: close"]),
    ]);
    expect(answer?.status).toBe(200);
    const [upstream] = seen.slice(before);
    expect(upstream?.url).toBe(`/echo?key=${other.stub}`);
    expect(upstream?.headers["x-other"]).toBe(other.stub);
    expect(upstream?.headers["x-unknown"]).toBe(unknown);
    expect(upstream?.headers["x-api-key"]).toBeUndefined();
    expect(upstream?.headers.authorization).toBe("Bearer sk-value");
    const [event] = await eventsWhen(gw, session, (list) => list.length > 0);
    expect(event?.brokered).toEqual(["API_TOKEN"]);
    expect(event?.stubsSeen?.sort()).toEqual(["(unknown stub)", "OTHER_KEY"]);
    expect(event?.path).toBe("/echo");
  });

  it("reads the value for every request: a rotated secret is used on the next request of the same connection", async () => {
    let value = "before-rotation";
    serve("sbx-a", allowlist(), [credential("API_TOKEN", ["api.brokered.test"], () => value)]);
    const open = await tunnel(gw.a, `api.brokered.test:${securePort}`, TOKEN_A);
    const { socket, reader } = await secure(open, "api.brokered.test");
    socket.write(request(["GET /echo HTTP/1.1", "Host: api.brokered.test"]));
    expect(JSON.parse((await reader.answer()).body).headers.authorization).toBe("Bearer before-rotation");
    value = "after-rotation";
    socket.write(request(["GET /echo HTTP/1.1", "Host: api.brokered.test", "Connection: close"]));
    expect(JSON.parse((await reader.answer()).body).headers.authorization).toBe("Bearer after-rotation");
    socket.destroy();
  });

  it("inside a tunnel the upstream sees the tunnel's host: in Host, in SNI, whatever the sandbox's Host or SNI said", async () => {
    const token = credential("API_TOKEN", ["api.brokered.test"], () => "sk-bound-to-brokered");
    serve("sbx-a", allowlist(), [token]);
    const before = seen.length;
    const answers = await inside(gw.a, `api.brokered.test:${securePort}`, TOKEN_A, [request(["GET /echo HTTP/1.1", `Host: api.other.test:${securePort}`, "Connection: close"])]);
    expect(answers[0]?.status).toBe(200);
    const open = await tunnel(gw.a, `api.brokered.test:${securePort}`, TOKEN_A);
    // The sandbox may say another name in its TLS hello (it then has to accept our certificate for the tunnel's host).
    const { socket, reader } = await secure(open, "api.other.test", { checkServerIdentity: () => undefined });
    socket.write(request(["GET /echo HTTP/1.1", "Host: api.other.test", "Connection: close"]));
    expect((await reader.answer()).status).toBe(200);
    socket.destroy();
    for (const upstream of seen.slice(before)) {
      expect(upstream.servername).toBe("api.brokered.test");
      expect(upstream.headers.host).toBe(`api.brokered.test:${securePort}`);
    }
    expect(seen.length).toBe(before + 2);
  });

  it("an absolute-form request inside a tunnel is refused (it could name another host than the tunnel's)", async () => {
    serve("sbx-a", allowlist(), [credential("API_TOKEN", ["api.brokered.test"], () => "sk-not-for-other")]);
    const before = seen.length;
    const answers = await inside(gw.a, `api.brokered.test:${securePort}`, TOKEN_A, [
      request([`GET https://api.other.test:${securePort}/echo HTTP/1.1`, "Host: api.other.test", "Connection: close"]),
    ]);
    expect(answers[0]?.status).toBe(400);
    expect(seen.length).toBe(before);
  });

  it("TRACE to a brokered host goes without the credential (it would echo it back)", async () => {
    const token = credential("API_TOKEN", ["api.brokered.test"], () => "sk-not-traced");
    serve("sbx-a", allowlist(), [token]);
    const before = seen.length;
    const answers = await inside(gw.a, `api.brokered.test:${securePort}`, TOKEN_A, [request(["TRACE /echo HTTP/1.1", "Host: api.brokered.test", `Authorization: Bearer ${token.stub}`, "Connection: close"])]);
    expect(answers[0]?.status).toBe(200);
    expect(answers[0]?.body).not.toContain("sk-not-traced");
    expect(seen[before]?.headers.authorization).toBe(`Bearer ${token.stub}`);
  });

  it("requests to different sandboxes do not share upstream connections", async () => {
    serve("sbx-a", allowlist(), [credential("API_TOKEN", ["api.brokered.test"], () => "value-of-a")]);
    serve("sbx-b", allowlist(), [credential("API_TOKEN", ["api.brokered.test"], () => "value-of-b")]);
    const before = seen.length;
    for (const [where, token] of [
      [gw.a, TOKEN_A],
      [gw.b, TOKEN_B],
      [gw.a, TOKEN_A],
    ] as const) {
      const [answer] = await inside(where, `api.brokered.test:${securePort}`, token, [request(["GET /echo HTTP/1.1", "Host: api.brokered.test", "Connection: close"])]);
      expect(answer?.status).toBe(200);
    }
    const [a1, b1, a2] = seen.slice(before);
    expect([a1?.headers.authorization, b1?.headers.authorization, a2?.headers.authorization]).toEqual(["Bearer value-of-a", "Bearer value-of-b", "Bearer value-of-a"]);
    expect(b1?.remotePort).not.toBe(a1?.remotePort);
    // The keep-alive connection still serves the same sandbox.
    expect(a2?.remotePort).toBe(a1?.remotePort);
  });

  it("never puts a secret value into an answer, an event or a log line: upstream TLS failure, a value that cannot be a header, a quiet success", async () => {
    const good = "sk-live-GOOD-never-shown-0123456789";
    const bad = "sk-bad-\u0001-value";
    const wide = "sk-wide-\u20ac-value";
    const received: string[] = [];
    const session = serve("sbx-a", allowlist(), [
      credential("API_TOKEN", ["api.brokered.test", "badcert.test"], () => good),
      credential("BAD", ["api.other.test"], () => bad, { header: "X-Bad" }),
    ]);
    const tls1 = await inside(gw.a, `badcert.test:${securePort}`, TOKEN_A, [request(["GET /echo HTTP/1.1", "Host: badcert.test", "Connection: close"])]);
    expect(tls1[0]?.status).toBe(502);
    expect(tls1[0]?.body).toContain("badcert.test");
    const quiet = await inside(gw.a, `api.brokered.test:${securePort}`, TOKEN_A, [request(["GET /quiet HTTP/1.1", "Host: api.brokered.test", "Connection: close"])]);
    expect(quiet[0]?.body).toBe("ok");
    const badValue = await inside(gw.a, `api.other.test:${securePort}`, TOKEN_A, [request(["GET /quiet HTTP/1.1", "Host: api.other.test", "Connection: close"])]);
    expect(badValue[0]?.status).toBe(502);
    expect(badValue[0]?.body).toContain("BAD");
    serve("sbx-a", allowlist(), [credential("WIDE", ["api.other.test"], () => wide)]);
    const wideValue = await inside(gw.a, `api.other.test:${securePort}`, TOKEN_A, [request(["GET /quiet HTTP/1.1", "Host: api.other.test", "Connection: close"])]);
    expect(wideValue[0]?.status).toBe(502);
    // The gateway still serves.
    expect((await one(gw.a, request([`GET http://allowed.test:${plainPort}/quiet HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]))).status).toBe(200);
    received.push(allReceived);
    const events = JSON.stringify(await eventsOf(gw, session)) + JSON.stringify(gw.events);
    for (const value of [good, bad, wide, "sk-bad-", "sk-wide-", "GOOD-never-shown"]) {
      for (const text of [...received, events, gw.logged()]) expect(text).not.toContain(value);
    }
  });
});

describe("malformed requests", () => {
  it("answers with a clear 4xx and keeps serving", async () => {
    serve("sbx-a", OPEN);
    const huge = await one(gw.a, request([`GET http://allowed.test:${plainPort}/ HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim(), `X-Big: ${"a".repeat(20_000)}`]));
    expect(huge.status).toBe(431);
    const https = await one(gw.a, request([`GET https://allowed.test:${plainPort}/ HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
    expect(https.status).toBe(400);
    expect(https.body).toContain("CONNECT");
    const ftp = await one(gw.a, request(["GET ftp://allowed.test/ HTTP/1.1", "Host: allowed.test", basic(TOKEN_A).trim()]));
    expect(ftp.status).toBe(400);
    const star = await one(gw.a, request(["OPTIONS * HTTP/1.1", "Host: allowed.test", basic(TOKEN_A).trim()]));
    expect(star.status).toBeGreaterThanOrEqual(400);
    expect(star.status).toBeLessThan(500);
    const garbage = await one(gw.a, "HELLO THERE\r\n\r\n");
    expect(garbage.status).toBe(400);
    const port0 = await one(gw.a, request([`GET http://allowed.test:0/ HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
    expect(port0.status).toBe(403);
    const badPort = await one(gw.a, request([`GET http://allowed.test:70000/ HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
    expect(badPort.status).toBe(400);
    for (const url of [`http://[fe80::1%25eth0]:${plainPort}/`, "http://[::1/", "http://user@/", "http:///x"]) {
      const answer = await one(gw.a, request([`GET ${url} HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
      expect(answer.status, url).toBeGreaterThanOrEqual(400);
      expect(answer.status, url).toBeLessThan(500);
    }
    // Origin-form requests go to the model relay; a path the URL parser cannot take must not hang.
    const slashes = await one(gw.a, request(["GET // HTTP/1.1", "Host: x"]), 3_000);
    expect(slashes.status).toBeGreaterThanOrEqual(400);
    expect(slashes.status).toBeLessThan(500);
    expect((await one(gw.a, request([`GET http://allowed.test:${plainPort}/quiet HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]))).status).toBe(200);
  });

  it("an upstream answer with a reason phrase the gateway cannot repeat is passed on with the standard one", async () => {
    serve("sbx-a", allowlist());
    const answer = await one(gw.a, request([`GET http://weird.test:${rawPort}/ HTTP/1.1`, "Host: weird.test", basic(TOKEN_A).trim()]), 3_000);
    expect(answer.status).toBe(200);
    expect(answer.reason).toBe("OK");
    expect(answer.body).toBe("hi");
    expect((await one(gw.a, request([`GET http://allowed.test:${plainPort}/quiet HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]))).status).toBe(200);
  });
});

describe("events", () => {
  it("aggregates alike requests in a window: one event with a count and summed bytes; denials are counted, not dropped", async () => {
    const session = serve("sbx-a", allowlist());
    await gw.log.flush();
    for (let i = 0; i < 5; i++) await one(gw.a, request([`GET http://allowed.test:${plainPort}/quiet HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
    for (const path of ["/a", "/b", "/c"]) await one(gw.a, request([`GET http://denied.test:${plainPort}${path} HTTP/1.1`, "Host: denied.test", basic(TOKEN_A).trim()]));
    const events = await eventsWhen(gw, session, (list) => list.reduce((sum, event) => sum + (event.count ?? 1), 0) === 8);
    expect(events).toHaveLength(2);
    expect(events.find((event) => event.decision === "allowed")).toMatchObject({ host: "allowed.test", path: "/quiet", count: 5, bytesIn: 10, bytesOut: 0, status: 200 });
    const denied = events.find((event) => event.decision === "denied");
    expect(denied).toMatchObject({ host: "denied.test", count: 3, status: 403 });
    expect(denied?.path).toBeUndefined();
  });
});

describe("the model relay (origin-form requests)", () => {
  it("401 for a wrong or foreign token, 503 (no model gateway configured) for the sandbox's own, 404 off the inference paths", async () => {
    const chat = (token: string) => request(["POST /v1/chat/completions HTTP/1.1", "Host: 127.0.0.1", `Authorization: Bearer ${token}`, "Content-Type: application/json"], "{}");
    expect((await one(gw.a, chat("wrong"))).status).toBe(401);
    expect((await one(gw.a, chat(TOKEN_B))).status).toBe(401);
    const own = await one(gw.a, chat(TOKEN_A));
    expect(own.status).toBe(503);
    expect(JSON.parse(own.body).error.code).toBe("no_gateway");
    expect((await one(gw.tcp, chat(TOKEN_B))).status).toBe(503);
    expect((await one(gw.a, request(["GET /admin HTTP/1.1", "Host: 127.0.0.1", `Authorization: Bearer ${TOKEN_A}`]))).status).toBe(404);
  });
});

describe("limits and timeouts", () => {
  let limited: Harness;
  beforeAll(async () => {
    limited = await startGateway({ maxConnectionsPerSandbox: 2, timeouts: { connectMs: 300, idleMs: 1_500, headersMs: 700 } });
  });
  afterAll(async () => {
    await limited?.close();
  });

  it("over TCP: at most N open tunnels per sandbox (429 beyond), a closed one frees its place", async () => {
    serve("sbx-a", allowlist());
    const first = await tunnel(limited.tcp, `tunnel.test:${echoPort}`, TOKEN_A);
    const second = await tunnel(limited.tcp, `tunnel.test:${echoPort}`, TOKEN_A);
    expect([first.status, second.status]).toEqual([200, 200]);
    const third = await tunnel(limited.tcp, `tunnel.test:${echoPort}`, TOKEN_A);
    expect(third.status).toBe(429);
    expect(third.answer.body).toContain("at most 2");
    third.socket.destroy();
    first.socket.destroy();
    await expect
      .poll(async () => {
        const again = await tunnel(limited.tcp, `tunnel.test:${echoPort}`, TOKEN_A);
        again.socket.destroy();
        return again.status;
      })
      .toBe(200);
    second.socket.destroy();
  });

  it("over TCP: keep-alive plain HTTP connections count too", async () => {
    serve("sbx-a", allowlist());
    const held: net.Socket[] = [];
    for (let i = 0; i < 2; i++) {
      const socket = await dial(limited.tcp);
      const reader = new Reader(socket);
      socket.write(request([`GET http://allowed.test:${plainPort}/quiet HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
      expect((await reader.answer()).status).toBe(200);
      held.push(socket);
    }
    const third = await one(limited.tcp, request([`GET http://allowed.test:${plainPort}/quiet HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
    expect(third.status).toBe(429);
    for (const socket of held) socket.destroy();
    await expect.poll(async () => (await one(limited.tcp, request([`GET http://allowed.test:${plainPort}/quiet HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim(), "Connection: close"]))).status).toBe(200);
  });

  it("on a sandbox's own socket: connections beyond N are not accepted", async () => {
    serve("sbx-a", allowlist());
    const held = [await dial(limited.a), await dial(limited.a)];
    const extra = await dial(limited.a);
    const reader = new Reader(extra);
    expect(await reader.closes(2_000)).toBe(true);
    for (const socket of held) socket.destroy();
    await expect.poll(async () => (await one(limited.a, request([`GET http://allowed.test:${plainPort}/quiet HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]))).status).toBe(200);
  });

  it("an inspected host whose TLS handshake never completes: 502 after the connect timeout", async () => {
    serve("sbx-a", allowlist(), [credential("API_TOKEN", ["blackhole.test"], () => "v")]);
    const started = Date.now();
    const [answer] = await inside(limited.a, `blackhole.test:${blackholePort}`, TOKEN_A, [request(["GET / HTTP/1.1", "Host: blackhole.test", "Connection: close"])]);
    expect(answer?.status).toBe(502);
    expect(answer?.body).toContain("no connection to blackhole.test");
    expect(Date.now() - started).toBeLessThan(3_000);
  });

  it("an upstream slower to answer than the connect timeout is still waited for", async () => {
    serve("sbx-a", allowlist());
    const answer = await one(limited.a, request([`GET http://allowed.test:${plainPort}/slow?ms=800 HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
    expect(answer.status).toBe(200);
    expect(answer.body).toBe("slow");
  });

  it("closes a connection whose headers never end, a tunnel to an inspected host that never starts TLS, and an idle tunnel", async () => {
    serve("sbx-a", allowlist(), [credential("API_TOKEN", ["api.brokered.test"], () => "v")]);
    const slow = await dial(limited.a);
    const slowReader = new Reader(slow);
    slow.write(`GET http://allowed.test:${plainPort}/ HTTP/1.1\r\nHost: allowed.test\r\n`);
    const drip = setInterval(() => slow.write("X-Drip: 1\r\n"), 200);
    const inspected = await tunnel(limited.a, `api.brokered.test:${securePort}`, TOKEN_A);
    expect(inspected.status).toBe(200);
    const idle = await tunnel(limited.tcp, `tunnel.test:${echoPort}`, TOKEN_A);
    expect(idle.status).toBe(200);
    try {
      expect(await slowReader.closes(4_000)).toBe(true);
      expect(await inspected.reader.closes(4_000)).toBe(true);
      expect(await idle.reader.closes(4_000)).toBe(true);
    } finally {
      clearInterval(drip);
      for (const socket of [slow, inspected.socket, idle.socket]) socket.destroy();
    }
    expect(slowReader.received).toMatch(/^HTTP\/1\.1 408 /);
  });

  it("pipelined requests on one connection are forwarded one at a time, in order (the connection limit bounds upstream connections too)", async () => {
    serve("sbx-a", allowlist());
    slow.most = 0;
    const socket = await dial(limited.tcp);
    const reader = new Reader(socket);
    const paths = Array.from({ length: 12 }, (_, i) => `/slow?ms=${i % 2 ? 20 : 60}&n=${i}`);
    socket.write(paths.map((path) => request([`GET http://allowed.test:${plainPort}${path} HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()])).join(""));
    const answers = await reader.answers(paths.length);
    expect(answers.map((answer) => answer.status)).toEqual(paths.map(() => 200));
    expect(slow.most).toBe(1);
    socket.destroy();
    // Inside an inspected tunnel too.
    serve("sbx-a", allowlist(), [credential("API_TOKEN", ["api.brokered.test"], () => "v")]);
    slow.most = 0;
    const inspected = await inside(
      limited.a,
      `api.brokered.test:${securePort}`,
      TOKEN_A,
      paths.map((path, i) => request([`GET ${path} HTTP/1.1`, "Host: api.brokered.test", ...(i === paths.length - 1 ? ["Connection: close"] : [])])),
    );
    expect(inspected.map((answer) => answer.status)).toEqual(paths.map(() => 200));
    expect(slow.most).toBe(1);
  });

  it("a CONNECT after a plain request on the same connection is authorised on its own, and its tunnel is not cut by the head timer", async () => {
    serve("sbx-a", allowlist());
    const socket = await dial(limited.tcp);
    const reader = new Reader(socket);
    socket.write(request([`GET http://allowed.test:${plainPort}/quiet HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]));
    expect((await reader.answer()).status).toBe(200);
    socket.write(`CONNECT tunnel.test:${echoPort} HTTP/1.1\r\nHost: tunnel.test:${echoPort}\r\n${basic(TOKEN_A)}\r\n`);
    const [connected] = await reader.answers(1, 5_000, true);
    expect(connected?.status).toBe(200);
    // Longer than the head timeout (0.7 s), shorter than the idle one (1.5 s) between messages.
    for (let i = 0; i < 3; i++) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      socket.write(`ping${i}`);
      expect(await reader.bytes(5)).toBe(`ping${i}`);
    }
    expect(reader.isClosed).toBe(false);
    socket.destroy();
    // Pipelined behind a request, Node hands the CONNECT over at once (its answer comes first, the
    // earlier request's after it): still checked on its own, and the tunnel outlives the head timer.
    const pipelined = await exchange(
      limited.tcp,
      request([`GET http://allowed.test:${plainPort}/slow?ms=100 HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]) + `CONNECT denied.test:443 HTTP/1.1\r\nHost: denied.test:443\r\n${basic(TOKEN_A)}\r\n`,
      1,
    );
    expect(pipelined[0]?.status).toBe(403);
    expect(pipelined[0]?.body).toContain("denied.test:443");
    const both = await dial(limited.tcp);
    const bothReader = new Reader(both);
    both.write(request([`GET http://allowed.test:${plainPort}/slow?ms=100 HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]) + `CONNECT tunnel.test:${echoPort} HTTP/1.1\r\nHost: tunnel.test:${echoPort}\r\n${basic(TOKEN_A)}\r\n`);
    expect((await bothReader.answers(1, 5_000, true))[0]?.status).toBe(200);
    expect((await bothReader.answer()).body).toBe("slow");
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    both.write("after");
    expect(await bothReader.bytes(5)).toBe("after");
    both.destroy();
  });

  it("a kept-alive connection that answered requests (pipelined too) is not cut by the head timer while it works", async () => {
    serve("sbx-a", allowlist());
    const socket = await dial(limited.tcp);
    const reader = new Reader(socket);
    const slowly = request([`GET http://allowed.test:${plainPort}/slow?ms=900 HTTP/1.1`, "Host: allowed.test", basic(TOKEN_A).trim()]);
    socket.write(slowly + slowly);
    expect((await reader.answers(2)).map((answer) => answer.body)).toEqual(["slow", "slow"]);
    socket.destroy();
  });
});

describe("closing", () => {
  it("closing a sandbox's listener ends its connections and tunnels; closing the gateway ends everything (without waiting for clients)", async () => {
    const own = await startGateway();
    serve("sbx-a", allowlist());
    serve("sbx-b", allowlist());
    const dir = mkdtempSync(path.join(os.tmpdir(), "berth-gw-close-"));
    roots.push(dir);
    const handle = await own.gateway.listenForSandbox(path.join(dir, "c.sock"), "sbx-a");
    const where = { path: path.join(dir, "c.sock") };
    const idle = new Reader(await dial(where));
    const open = await tunnel(where, `tunnel.test:${echoPort}`, TOKEN_A);
    expect(open.status).toBe(200);
    await handle.close();
    expect(await idle.closes(2_000)).toBe(true);
    expect(await open.reader.closes(2_000)).toBe(true);

    const kept = new Reader(await dial(own.b));
    const otherTunnel = await tunnel(own.tcp, `tunnel.test:${echoPort}`, TOKEN_B);
    expect(otherTunnel.status).toBe(200);
    const closed = await Promise.race([own.close().then(() => "closed"), new Promise((resolve) => setTimeout(() => resolve("still waiting"), 3_000))]);
    expect(closed).toBe("closed");
    expect(await kept.closes(1_000)).toBe(true);
    expect(await otherTunnel.reader.closes(1_000)).toBe(true);
  });
});
