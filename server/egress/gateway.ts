import fs from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import tls from "node:tls";
import type { Logger } from "../logger";
import type { BerthMetrics } from "../metrics";
import type { ModelRelay } from "../sandbox/model-relay";
import type { BrokeredCredential, SandboxEgressContext } from "../services/egress-directory";
import { STUB_PATTERN } from "../services/secrets";
import { AddressRules, EgressRefusedError, resolveTarget, type Lookup, type ResolveMap } from "./addresses";
import type { EgressCa } from "./ca";
import type { EgressLog, EgressRecord } from "./egress-log";
import { decideEgress, hostMatches, needsInspection, type EgressPolicy } from "./policy";
import type { GatewayTokens } from "./tokens";

/**
 * The egress gateway: a sandbox's only way out, on both backends. An HTTP proxy (absolute-form
 * requests for plain HTTP, CONNECT for everything else) that
 *  - knows the sandbox by its gateway token (and, locally, by the socket it came in on),
 *  - reads the agent's current egress policy for every connection and request,
 *  - resolves names itself and connects only to the address it checked (no second lookup, so DNS
 *    rebinding cannot get around the address rules),
 *  - tunnels TLS untouched, except to hosts it must look into (a brokered secret's hosts, rules with
 *    methods or paths): there it terminates TLS with the installation's CA, checks each request and
 *    puts brokered credentials into their header,
 *  - serves the model relay to requests that are not proxy requests,
 *  - and records every connection or request as an `egress` event.
 * Decision 023 says why it is built on Node's own http/tls rather than a proxy library.
 */
export type EgressGatewayOptions = {
  directory: { forSandbox(sandboxName: string): Promise<SandboxEgressContext | null> };
  tokens: GatewayTokens;
  addressRules: AddressRules;
  /** Test-only name map (BERTH_EGRESS_RESOLVE): the only way to reach a loopback target. */
  resolveMap: ResolveMap;
  lookup?: Lookup;
  /** The installation's CA, opened on first use (inspection only). */
  ca: () => Promise<EgressCa>;
  modelRelay: ModelRelay;
  log: EgressLog;
  metrics: BerthMetrics | null;
  logger: Logger;
  /** CA certificates (PEM) trusted besides the system's roots when the gateway itself connects with TLS (inspected hosts). */
  extraUpstreamCa?: string;
  /** Open connections one sandbox may hold through the gateway. */
  maxConnectionsPerSandbox?: number;
};

const DEFAULT_MAX_CONNECTIONS_PER_SANDBOX = 256;
const CONNECT_TIMEOUT_MS = 15_000;
const RESOLVE_TIMEOUT_MS = 10_000;
/** A tunnel or keep-alive connection quiet this long is closed. */
const IDLE_TIMEOUT_MS = 10 * 60_000;
/** Request headers that describe the hop: never forwarded. */
const HOP_HEADERS = new Set(["connection", "keep-alive", "proxy-authorization", "proxy-connection", "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade"]);
const PROXY_REALM = 'Basic realm="berth-egress"';

/** What the gateway learned about a client connection: the sandbox of a local socket, the target of an inspected tunnel. */
type ConnectionInfo = { boundSandbox: string | null; inspected?: { host: string; port: number; sandbox: string } };

export class EgressGateway {
  private readonly proxy: http.Server;
  /** Requests inside tunnels the gateway inspects (TLS terminated with the installation's CA). */
  private readonly inspector: http.Server;
  private readonly info = new WeakMap<net.Socket, ConnectionInfo>();
  private readonly openBySandbox = new Map<string, number>();
  private readonly listeners = new Set<net.Server>();
  private readonly upstreamHttp = new http.Agent({ keepAlive: true, maxFreeSockets: 64, timeout: IDLE_TIMEOUT_MS });
  private readonly upstreamHttps: https.Agent;

  constructor(private readonly options: EgressGatewayOptions) {
    this.upstreamHttps = new https.Agent({
      keepAlive: true,
      maxFreeSockets: 64,
      timeout: IDLE_TIMEOUT_MS,
      ...(options.extraUpstreamCa ? { ca: [...tls.rootCertificates, options.extraUpstreamCa] } : {}),
    });
    this.proxy = http.createServer({ requestTimeout: 0 }, (req, res) => void this.onRequest(req, res));
    this.proxy.on("connect", (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => void this.onConnect(req, socket, head));
    this.proxy.on("upgrade", (req: http.IncomingMessage, socket: net.Socket) => {
      answerRaw(socket, 501, `Berth egress gateway: protocol upgrades (${req.headers.upgrade ?? "?"}) over plain HTTP are not supported; use https:// (a CONNECT tunnel)`);
    });
    this.proxy.on("clientError", (_error, socket: net.Socket) => answerRaw(socket, 400, "Berth egress gateway: malformed request"));
    this.proxy.keepAliveTimeout = 30_000;
    this.proxy.timeout = IDLE_TIMEOUT_MS;
    this.inspector = http.createServer({ requestTimeout: 0 }, (req, res) => void this.onInspectedRequest(req, res));
    this.inspector.on("upgrade", (_req: http.IncomingMessage, socket: net.Socket) => {
      answerRaw(socket, 501, "Berth egress gateway: protocol upgrades are not supported on hosts the gateway inspects");
    });
    this.inspector.on("clientError", (_error, socket: net.Socket) => socket.destroy());
    this.inspector.keepAliveTimeout = 30_000;
  }

  /** Serves one local sandbox on a Unix socket of its own: connections on it can only be that sandbox's. */
  async listenForSandbox(socketPath: string, sandboxName: string): Promise<{ close(): Promise<void> }> {
    await fs.rm(socketPath, { force: true });
    return this.listen({ path: socketPath }, sandboxName);
  }

  /** Serves sandboxes that reach the gateway over the network (Kubernetes pods): the token alone says who they are. */
  listenTcp(port: number, host: string): Promise<{ close(): Promise<void>; port: number }> {
    return this.listen({ port, host }, null).then((handle) => ({ ...handle, port: (handle.server.address() as net.AddressInfo).port }));
  }

  private async listen(where: net.ListenOptions, boundSandbox: string | null) {
    const server = net.createServer({ noDelay: true }, (socket) => {
      this.info.set(socket, { boundSandbox });
      socket.on("error", () => socket.destroy());
      this.proxy.emit("connection", socket);
    });
    // A sandbox's own socket: its open connections are bounded here (over the network, per CONNECT).
    if (boundSandbox !== null) server.maxConnections = this.options.maxConnectionsPerSandbox ?? DEFAULT_MAX_CONNECTIONS_PER_SANDBOX;
    this.listeners.add(server);
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(where, () => {
        server.off("error", reject);
        resolve();
      });
    });
    return {
      server,
      close: () =>
        new Promise<void>((resolve) => {
          this.listeners.delete(server);
          server.close(() => resolve());
        }),
    };
  }

  async close(): Promise<void> {
    await Promise.all([...this.listeners].map((server) => new Promise((resolve) => server.close(resolve))));
    this.proxy.closeAllConnections();
    this.inspector.closeAllConnections();
    this.upstreamHttp.destroy();
    this.upstreamHttps.destroy();
    await this.options.log.flush();
  }

  // ------------------------------------------------------------------ who is asking

  /** The sandbox a token names, if the token is right and (on a sandbox's own socket) it is that sandbox's. */
  private sandboxOf(socket: net.Socket, token: string | null): string | null {
    if (!token) return null;
    const name = this.options.tokens.verify(token);
    const bound = this.info.get(socket)?.boundSandbox ?? null;
    if (!name || (bound !== null && bound !== name)) return null;
    return name;
  }

  private async contextOf(name: string): Promise<SandboxEgressContext | null> {
    return this.options.directory.forSandbox(name);
  }

  // ------------------------------------------------------------------ plain HTTP and the model relay

  private async onRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = req.url ?? "/";
    if (url.startsWith("/")) {
      // Not a proxy request: the model relay, reached directly at the loopback address.
      this.options.metrics?.egressRequests.inc({ decision: "allowed", kind: "model" });
      this.options.modelRelay(req, res, (token) => this.sandboxOf(req.socket, token) !== null);
      return;
    }
    const name = this.sandboxOf(req.socket, proxyToken(req));
    if (!name) return askForCredentials(res);
    let target: URL;
    try {
      target = new URL(url);
    } catch {
      return answer(res, 400, `Berth egress gateway: "${truncate(url)}" is not a URL`);
    }
    if (target.protocol !== "http:") {
      return answer(res, 400, `Berth egress gateway: ${target.protocol}// requests go through a CONNECT tunnel (set HTTPS_PROXY), not as plain proxy requests`);
    }
    const host = hostOf(target.hostname);
    const port = Number(target.port || 80);
    const context = await this.contextOrRefuse(name, res);
    if (!context) return;
    await this.forward(context, { scheme: "http", host, port, path: target.pathname + target.search }, req, res);
  }

  private async contextOrRefuse(name: string, res: http.ServerResponse): Promise<SandboxEgressContext | null> {
    try {
      const context = await this.contextOf(name);
      if (!context) answer(res, 403, `Berth egress gateway: sandbox ${name} serves no session (yet): nothing leaves it`);
      return context;
    } catch (error) {
      this.options.logger.warn({ err: error, sandbox: name }, "egress gateway: could not read the sandbox's policy");
      this.options.metrics?.egressErrors.inc({ kind: "policy" });
      answer(res, 503, "Berth egress gateway: the egress policy could not be read (database unavailable); try again");
      return null;
    }
  }

  private async onInspectedRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const inspected = this.info.get(req.socket)?.inspected;
    if (!inspected) return answer(res, 500, "Berth egress gateway: lost track of this tunnel");
    const context = await this.contextOrRefuse(inspected.sandbox, res);
    if (!context) return;
    await this.forward(context, { scheme: "https", host: inspected.host, port: inspected.port, path: req.url ?? "/" }, req, res);
  }

  /** One HTTP request the gateway sees (plain, or inside an inspected tunnel): checked, credentials put in, forwarded, recorded. */
  private async forward(
    context: SandboxEgressContext,
    target: { scheme: "http" | "https"; host: string; port: number; path: string },
    req: http.IncomingMessage,
    res: http.ServerResponse,
  ): Promise<void> {
    const started = performance.now();
    const method = req.method ?? "GET";
    const path = target.path.split("?")[0] ?? "/";
    const base = { host: target.host, port: target.port, method, path: truncate(path, 512) };
    const decision = decideEgress(context.policy as EgressPolicy, { host: target.host, port: target.port, method, path });
    if (!decision.allowed) {
      req.resume();
      this.record(context, { ...base, status: 403, decision: "denied", reason: decision.reason, bytesOut: 0, bytesIn: 0, durationMs: elapsed(started) });
      return denied(res, target.host, target.port, decision.reason);
    }
    let address: { address: string; port: number };
    try {
      address = await this.resolve(target.host, target.port);
    } catch (error) {
      if (!(error instanceof EgressRefusedError)) throw error;
      req.resume();
      this.record(context, { ...base, status: 403, decision: "denied", rule: decision.rule, reason: error.reason, bytesOut: 0, bytesIn: 0, durationMs: elapsed(started) });
      return denied(res, target.host, target.port, error.reason);
    }

    const { headers, brokered, stubsSeen } = this.outgoingHeaders(context, req, target);
    const options: https.RequestOptions = {
      host: address.address,
      port: address.port,
      method,
      path: target.path,
      headers,
      setHost: false,
      agent: target.scheme === "https" ? this.upstreamHttps : this.upstreamHttp,
      timeout: CONNECT_TIMEOUT_MS,
      ...(target.scheme === "https" && !net.isIP(target.host) ? { servername: target.host } : {}),
    };
    let bytesOut = 0;
    let bytesIn = 0;
    req.on("data", (chunk: Buffer) => (bytesOut += chunk.length));
    const finish = (status: number | undefined) =>
      this.record(context, {
        ...base,
        ...(status === undefined ? {} : { status }),
        decision: "allowed",
        rule: decision.rule,
        bytesOut,
        bytesIn,
        durationMs: elapsed(started),
        ...(brokered.length ? { brokered } : {}),
        ...(stubsSeen.length ? { stubsSeen } : {}),
      });
    const upstream = (target.scheme === "https" ? https : http).request(options, (answerStream) => {
      const responseHeaders: http.OutgoingHttpHeaders = {};
      for (const [name, value] of Object.entries(answerStream.headers)) if (!HOP_HEADERS.has(name) && value !== undefined) responseHeaders[name] = value;
      res.writeHead(answerStream.statusCode ?? 502, answerStream.statusMessage, responseHeaders);
      answerStream.on("data", (chunk: Buffer) => (bytesIn += chunk.length));
      answerStream.pipe(res);
      answerStream.on("end", () => finish(answerStream.statusCode));
      answerStream.on("error", () => res.destroy());
    });
    upstream.on("timeout", () => upstream.destroy(new Error(`no answer from ${target.host}:${target.port} within ${CONNECT_TIMEOUT_MS / 1000} s`)));
    upstream.on("error", (error) => {
      this.options.metrics?.egressErrors.inc({ kind: "upstream" });
      if (!res.headersSent) {
        answer(res, 502, `Berth egress gateway: ${target.host}:${target.port} could not be reached: ${error.message}`);
        finish(502);
      } else {
        res.destroy();
        finish(undefined);
      }
    });
    res.on("close", () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
  }

  /**
   * The request's headers as they leave: hop headers dropped; a brokered credential bound to this
   * host (over TLS only: a credential never crosses the network in clear) put into its header where
   * the sandbox sent its stub or no such header; any other stub left as it is and reported.
   */
  private outgoingHeaders(context: SandboxEgressContext, req: http.IncomingMessage, target: { scheme: string; host: string; port: number; path: string }) {
    const connectionTokens = new Set(
      String(req.headers.connection ?? "")
        .split(",")
        .map((token) => token.trim().toLowerCase())
        .filter(Boolean),
    );
    const headers: http.OutgoingHttpHeaders = {};
    for (const [name, value] of Object.entries(req.headers)) if (!HOP_HEADERS.has(name) && !connectionTokens.has(name) && value !== undefined) headers[name] = value;
    // The host the policy allowed is the one the request names (RFC 9112 §3.2.2: a proxy replaces a
    // received Host with the target's authority), so an allowed address cannot front for another name.
    const hostText = net.isIPv6(target.host) ? `[${target.host}]` : target.host;
    headers.host = target.port === (target.scheme === "https" ? 443 : 80) ? hostText : `${hostText}:${target.port}`;
    const brokered: string[] = [];
    const bound = target.scheme === "https" ? context.brokered.filter((credential) => credential.hosts.some((pattern) => hostMatches(pattern, target.host))) : [];
    for (const credential of bound) {
      const name = credential.header.toLowerCase();
      const present = headers[name];
      if (present === undefined || String(present).includes(credential.stub)) {
        headers[name] = credential.template.replaceAll("{{value}}", credential.value());
        brokered.push(credential.name);
      }
    }
    // Stubs still in the request (in a header or the URL) went to a host they are not bound to.
    const stubsSeen = new Set<string>();
    const byStub = new Map<string, BrokeredCredential>(context.brokered.map((credential) => [credential.stub, credential]));
    const scan = (text: string) => {
      for (const stub of text.match(STUB_PATTERN) ?? []) stubsSeen.add(byStub.get(stub)?.name ?? "(unknown stub)");
    };
    scan(target.path);
    for (const [name, value] of Object.entries(headers)) if (!bound.some((credential) => credential.header.toLowerCase() === name && brokered.includes(credential.name))) scan(String(value));
    return { headers, brokered, stubsSeen: [...stubsSeen] };
  }

  // ------------------------------------------------------------------ CONNECT

  private async onConnect(req: http.IncomingMessage, client: net.Socket, head: Buffer): Promise<void> {
    const started = performance.now();
    client.on("error", () => client.destroy());
    const name = this.sandboxOf(client, proxyToken(req));
    if (!name) {
      client.end(`HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: ${PROXY_REALM}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
      return;
    }
    const authority = parseAuthority(req.url ?? "");
    if (!authority) return answerRaw(client, 400, `Berth egress gateway: CONNECT needs host:port, got "${truncate(req.url ?? "")}"`);
    const { host, port } = authority;
    let context: SandboxEgressContext | null;
    try {
      context = await this.contextOf(name);
    } catch (error) {
      this.options.logger.warn({ err: error, sandbox: name }, "egress gateway: could not read the sandbox's policy");
      this.options.metrics?.egressErrors.inc({ kind: "policy" });
      return answerRaw(client, 503, "Berth egress gateway: the egress policy could not be read (database unavailable); try again");
    }
    if (!context) return answerRaw(client, 403, `Berth egress gateway: sandbox ${name} serves no session (yet): nothing leaves it`);
    const base = { host, port, method: "CONNECT" };
    const decision = decideEgress(context.policy as EgressPolicy, { host, port });
    if (!decision.allowed) {
      this.record(context, { ...base, status: 403, decision: "denied", reason: decision.reason, bytesOut: 0, bytesIn: 0, durationMs: elapsed(started) });
      return answerRaw(client, 403, deniedText(host, port, decision.reason));
    }
    const open = this.openBySandbox.get(name) ?? 0;
    const limit = this.options.maxConnectionsPerSandbox ?? DEFAULT_MAX_CONNECTIONS_PER_SANDBOX;
    if (open >= limit) return answerRaw(client, 429, `Berth egress gateway: this sandbox already has ${open} connections open (at most ${limit})`);
    this.openBySandbox.set(name, open + 1);
    client.once("close", () => {
      const left = (this.openBySandbox.get(name) ?? 1) - 1;
      if (left <= 0) this.openBySandbox.delete(name);
      else this.openBySandbox.set(name, left);
    });

    const inspect = context.brokered.some((credential) => credential.hosts.some((pattern) => hostMatches(pattern, host))) || needsInspection(context.policy as EgressPolicy, host, port);
    if (inspect) return this.inspect(client, head, { host, port, sandbox: name });

    let address: { address: string; port: number };
    try {
      address = await this.resolve(host, port);
    } catch (error) {
      if (!(error instanceof EgressRefusedError)) throw error;
      this.record(context, { ...base, status: 403, decision: "denied", rule: decision.rule, reason: error.reason, bytesOut: 0, bytesIn: 0, durationMs: elapsed(started) });
      return answerRaw(client, 403, deniedText(host, port, error.reason));
    }
    const upstream = net.connect({ host: address.address, port: address.port, noDelay: true });
    upstream.setTimeout(CONNECT_TIMEOUT_MS);
    let bytesOut = head.length;
    let bytesIn = 0;
    let established = false;
    let recorded = false;
    const finish = (status: number) => {
      if (recorded) return;
      recorded = true;
      this.record(context, { ...base, status, decision: "allowed", rule: decision.rule, bytesOut, bytesIn, durationMs: elapsed(started) });
    };
    upstream.once("connect", () => {
      established = true;
      upstream.setTimeout(IDLE_TIMEOUT_MS);
      client.setTimeout(IDLE_TIMEOUT_MS);
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length) upstream.write(head);
      client.on("data", (chunk: Buffer) => (bytesOut += chunk.length));
      upstream.on("data", (chunk: Buffer) => (bytesIn += chunk.length));
      client.pipe(upstream);
      upstream.pipe(client);
    });
    upstream.on("timeout", () => upstream.destroy(new Error(established ? "idle" : `no connection to ${host}:${port} within ${CONNECT_TIMEOUT_MS / 1000} s`)));
    client.on("timeout", () => client.destroy());
    upstream.on("error", (error) => {
      if (!established) {
        this.options.metrics?.egressErrors.inc({ kind: "upstream" });
        answerRaw(client, 502, `Berth egress gateway: ${host}:${port} could not be reached: ${error.message}`);
        finish(502);
      }
      client.destroy();
    });
    upstream.on("close", () => {
      client.destroy();
      if (established) finish(200);
    });
    client.on("close", () => upstream.destroy());
  }

  /** Terminates the tunnel's TLS with a certificate for the host from the installation's CA; its requests go to `inspector`. */
  private async inspect(client: net.Socket, head: Buffer, target: { host: string; port: number; sandbox: string }): Promise<void> {
    let secureContext: tls.SecureContext;
    try {
      secureContext = (await (await this.options.ca()).leafFor(target.host)).secureContext;
    } catch (error) {
      this.options.logger.error({ err: error, host: target.host }, "egress gateway: no certificate for an inspected host");
      this.options.metrics?.egressErrors.inc({ kind: "certificate" });
      return answerRaw(client, 502, `Berth egress gateway: could not make a certificate for ${target.host}`);
    }
    client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
    if (head.length) client.unshift(head);
    const secure = new tls.TLSSocket(client, { isServer: true, secureContext, ALPNProtocols: ["http/1.1"] });
    secure.on("error", () => secure.destroy());
    this.info.set(secure, { boundSandbox: this.info.get(client)?.boundSandbox ?? null, inspected: target });
    this.inspector.emit("connection", secure);
  }

  /** The checked address to connect to; a name that does not resolve in time is refused like one that does not resolve. */
  private resolve(host: string, port: number) {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new EgressRefusedError(`${host} did not resolve within ${RESOLVE_TIMEOUT_MS / 1000} s`, "resolve")), RESOLVE_TIMEOUT_MS);
    });
    return Promise.race([resolveTarget(host, port, { rules: this.options.addressRules, resolveMap: this.options.resolveMap, lookup: this.options.lookup }), timeout]).finally(() => clearTimeout(timer));
  }

  private record(context: SandboxEgressContext, record: EgressRecord): void {
    this.options.log.record(context.sessionId, record);
  }
}

/** The token of a proxy request: `Proxy-Authorization: Basic base64(user:token)` (any user) or `Bearer token`. */
function proxyToken(req: http.IncomingMessage): string | null {
  const header = req.headers["proxy-authorization"];
  if (!header) return null;
  const [scheme, value = ""] = header.trim().split(/\s+/, 2);
  if (scheme?.toLowerCase() === "bearer") return value;
  if (scheme?.toLowerCase() !== "basic") return null;
  const decoded = Buffer.from(value, "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  return colon === -1 ? null : decodeURIComponent(decoded.slice(colon + 1));
}

function parseAuthority(authority: string): { host: string; port: number } | null {
  const match = /^(\[[0-9a-fA-F:.]+\]|[^:/?#\s[\]@]+):(\d{1,5})$/.exec(authority);
  if (!match) return null;
  const port = Number(match[2]);
  if (port < 1 || port > 65_535) return null;
  return { host: hostOf(match[1]!), port };
}

/** Lower case, no brackets around IPv6, no trailing dot. */
function hostOf(host: string): string {
  return host.replace(/^\[(.*)\]$/, "$1").replace(/\.$/, "").toLowerCase();
}

function deniedText(host: string, port: number, reason: string | undefined): string {
  return `Berth egress gateway: ${host}:${port} refused: the agent's egress policy does not allow it${reason ? ` (${reason})` : ""}`;
}

function denied(res: http.ServerResponse, host: string, port: number, reason: string | undefined): void {
  answer(res, 403, deniedText(host, port, reason), { "x-berth-egress": "denied" });
}

function askForCredentials(res: http.ServerResponse): void {
  answer(res, 407, "Berth egress gateway: proxy credentials missing or wrong (the sandbox's HTTP_PROXY carries them)", { "proxy-authenticate": PROXY_REALM });
}

function answer(res: http.ServerResponse, status: number, text: string, headers: http.OutgoingHttpHeaders = {}): void {
  if (res.headersSent) return void res.destroy();
  const body = `${text}\n`;
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(body), ...headers });
  res.end(body);
}

/** An answer on a raw socket (CONNECT, upgrades): the connection closes after it. */
function answerRaw(socket: net.Socket, status: number, text: string): void {
  if (socket.destroyed) return;
  const body = `${text}\n`;
  const reason = http.STATUS_CODES[status] ?? "Error";
  const egressHeader = status === 403 ? "X-Berth-Egress: denied\r\n" : "";
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nContent-Type: text/plain; charset=utf-8\r\n${egressHeader}Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}

function elapsed(started: number): number {
  return Math.round((performance.now() - started) * 1000) / 1000;
}

function truncate(text: string, max = 200): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}
