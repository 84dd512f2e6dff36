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
  /** Milliseconds; the defaults suit production (tests shorten them). */
  timeouts?: Partial<GatewayTimeouts>;
};

type GatewayTimeouts = {
  /** To establish a connection to a target (TCP, and TLS for inspected hosts). */
  connectMs: number;
  /** A tunnel, keep-alive connection or upstream request quiet this long is closed. */
  idleMs: number;
  /** For a client to send a request's headers (slowloris). */
  headersMs: number;
  /** How often open tunnels are checked against the sandbox's current policy. */
  recheckMs: number;
};

/** An untouched tunnel (the gateway sees only its host and port) while it is open. */
type OpenTunnel = { host: string; port: number; close(reason: string): void };

const DEFAULT_MAX_CONNECTIONS_PER_SANDBOX = 256;
/** Connections the network listener (Kubernetes) holds at once, authenticated or not. */
const MAX_NETWORK_CONNECTIONS = 16_384;
const DEFAULT_TIMEOUTS: GatewayTimeouts = { connectMs: 15_000, idleMs: 10 * 60_000, headersMs: 60_000, recheckMs: 2_000 };
/** Sandboxes whose tunnels are re-checked at once (each is one policy read). */
const RECHECK_CONCURRENCY = 8;
const RESOLVE_TIMEOUT_MS = 10_000;
/** How long one connection's requests may use the policy read for its first (see contextOrRefuse). */
const CONTEXT_MAX_AGE_MS = 1_000;
/** Longest host and reason an event carries (a sandbox chooses them: up to the 16 KiB of a request head). */
const MAX_RECORDED_HOST = 300;
const MAX_RECORDED_REASON = 600;
/** Characters Node accepts in a header value or reason phrase (anything else throws when it is set). */
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
/** Request headers that describe the hop: never forwarded. */
const HOP_HEADERS = new Set(["connection", "keep-alive", "proxy-authorization", "proxy-connection", "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade"]);
const PROXY_REALM = 'Basic realm="berth-egress"';

/** What the gateway learned about a client connection: the sandbox of a local socket, the target of an inspected tunnel. */
type ConnectionInfo = { boundSandbox: string | null; inspected?: { host: string; port: number; sandbox: string } };

/** Requests in progress on a client connection, the timer for its next request head (none once it is a tunnel), and its queue. */
type HeadWatch = { active: number; timer?: NodeJS.Timeout; tunnel?: boolean; turn: Promise<void> };

/** A brokered secret that cannot go into its header (unreadable, or not a valid header value): the request is answered 502. */
class BrokeringError extends Error {}

/**
 * Upstream keep-alive connections are reused by one sandbox only (the request option `partition`
 * is part of the pool's key): a connection that carried one sandbox's brokered credential never
 * carries another's requests, so a request one sandbox smuggles onto it (a desync at a front end
 * that frames bodies differently) cannot capture another sandbox's credential, and connection-bound
 * state at the upstream (NTLM-style authentication) stays with the sandbox that set it up.
 */
type PartitionedOptions = { partition?: string };
class PartitionedHttpAgent extends http.Agent {
  override getName(options?: http.ClientRequestArgs & PartitionedOptions): string {
    return `${super.getName(options)}:${options?.partition ?? ""}`;
  }
}
class PartitionedHttpsAgent extends https.Agent {
  override getName(options?: https.RequestOptions & PartitionedOptions): string {
    return `${super.getName(options)}:${options?.partition ?? ""}`;
  }
}

export class EgressGateway {
  private readonly proxy: http.Server;
  /** Requests inside tunnels the gateway inspects (TLS terminated with the installation's CA). */
  private readonly inspector: http.Server;
  private readonly info = new WeakMap<net.Socket, ConnectionInfo>();
  private readonly openBySandbox = new Map<string, number>();
  /** The policy read for a client connection (plain HTTP keep-alive, an inspected tunnel), and when. */
  private readonly contexts = new WeakMap<net.Socket, { sandbox: string; context: SandboxEgressContext; at: number }>();
  /** Open untouched tunnels by sandbox: an edit of the policy closes those it no longer allows. */
  private readonly tunnels = new Map<string, Set<OpenTunnel>>();
  private recheckTimer: NodeJS.Timeout | null = null;
  /** Client connections counted in openBySandbox (each once, until it closes). */
  private readonly held = new WeakSet<net.Socket>();
  private readonly listeners = new Set<net.Server>();
  /** Open client connections by listener: closing a listener (or the gateway) closes them too. */
  private readonly clients = new Map<net.Server, Set<net.Socket>>();
  private readonly heads = new WeakMap<net.Socket, HeadWatch>();
  private readonly timeouts: GatewayTimeouts;
  private readonly upstreamHttp: http.Agent;
  private readonly upstreamHttps: https.Agent;

  constructor(private readonly options: EgressGatewayOptions) {
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
    const { idleMs } = this.timeouts;
    this.upstreamHttp = new PartitionedHttpAgent({ keepAlive: true, maxFreeSockets: 64, timeout: idleMs });
    this.upstreamHttps = new PartitionedHttpsAgent({
      keepAlive: true,
      maxFreeSockets: 64,
      timeout: idleMs,
      ...(options.extraUpstreamCa ? { ca: [...tls.rootCertificates, options.extraUpstreamCa] } : {}),
    });
    // These servers never listen themselves (connections are handed to them), so Node's connection
    // tracking (headersTimeout, closeAllConnections) never starts: heads are timed by watchHeads and
    // connections closed by close() from `clients`.
    this.proxy = http.createServer({ requestTimeout: 0 }, (req, res) => {
      this.inTurn(req.socket, res, () => this.onRequest(req, res).catch((error: unknown) => this.failed(error, res)));
    });
    this.proxy.on("connect", (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
      this.headArrived(socket, null);
      void this.onConnect(req, socket, head).catch((error: unknown) => {
        this.options.logger.error({ err: error }, "egress gateway: a CONNECT failed unexpectedly");
        answerRaw(socket, 500, "Berth egress gateway: internal error");
      });
    });
    this.proxy.on("upgrade", (req: http.IncomingMessage, socket: net.Socket) => {
      answerRaw(socket, 501, `Berth egress gateway: protocol upgrades (${truncate(req.headers.upgrade ?? "?", 100)}) over plain HTTP are not supported; use https:// (a CONNECT tunnel)`);
    });
    this.proxy.on("clientError", (error: NodeJS.ErrnoException, socket: net.Socket) => {
      if (error.code === "ECONNRESET" || !socket.writable) return void socket.destroy();
      if (error.code === "HPE_HEADER_OVERFLOW") return answerRaw(socket, 431, "Berth egress gateway: the request's headers are too large");
      answerRaw(socket, 400, "Berth egress gateway: malformed request");
    });
    this.proxy.keepAliveTimeout = 30_000;
    this.proxy.timeout = idleMs;
    this.inspector = http.createServer({ requestTimeout: 0 }, (req, res) => {
      this.inTurn(req.socket, res, () => this.onInspectedRequest(req, res).catch((error: unknown) => this.failed(error, res)));
    });
    this.inspector.on("upgrade", (_req: http.IncomingMessage, socket: net.Socket) => {
      answerRaw(socket, 501, "Berth egress gateway: protocol upgrades are not supported on hosts the gateway inspects");
    });
    this.inspector.on("clientError", (_error, socket: net.Socket) => socket.destroy());
    this.inspector.keepAliveTimeout = 30_000;
    this.inspector.timeout = idleMs;
  }

  /**
   * Runs a request once the requests before it on its connection are answered. Node hands over
   * pipelined requests as fast as they are parsed; forwarded at once, one connection could open any
   * number of upstream connections (and have their answers buffered here), whatever the limit of
   * connections per sandbox.
   */
  private inTurn(socket: net.Socket, res: http.ServerResponse, run: () => Promise<void>): void {
    this.headArrived(socket, res);
    const state = this.heads.get(socket);
    if (!state) return void run();
    const previous = state.turn;
    const answered = new Promise<void>((resolve) => res.once("close", () => resolve()));
    state.turn = previous.then(() => answered);
    void previous.then(run);
  }

  /**
   * A client connection must complete a request head within headersMs of opening and of its last
   * answer (slowloris: a head sent a byte at a time would otherwise hold the connection for good).
   */
  private watchHeads(socket: net.Socket): void {
    const state: HeadWatch = { active: 0, turn: Promise.resolve() };
    this.heads.set(socket, state);
    this.armHead(socket, state);
    socket.once("close", () => clearTimeout(state.timer));
  }

  private armHead(socket: net.Socket, state: HeadWatch): void {
    clearTimeout(state.timer);
    if (state.tunnel) return;
    state.timer = setTimeout(() => {
      if (state.active === 0) answerRaw(socket, 408, `Berth egress gateway: no complete request within ${this.timeouts.headersMs / 1000} s`);
    }, this.timeouts.headersMs);
    state.timer.unref();
  }

  /** A request head arrived (`res`: its answer, after which the next head is timed; null: the connection is a tunnel now). */
  private headArrived(socket: net.Socket, res: http.ServerResponse | null): void {
    const state = this.heads.get(socket);
    if (!state) return;
    clearTimeout(state.timer);
    state.timer = undefined;
    if (!res) {
      state.tunnel = true;
      return void this.heads.delete(socket);
    }
    state.active++;
    res.once("close", () => {
      state.active--;
      if (state.active === 0 && !socket.destroyed) this.armHead(socket, state);
    });
  }

  /** A request handler threw (a bug): logged, answered 500, never left hanging. */
  private failed(error: unknown, res: http.ServerResponse): void {
    this.options.logger.error({ err: error }, "egress gateway: a request failed unexpectedly");
    this.options.metrics?.egressErrors.inc({ kind: "internal" });
    answer(res, 500, "Berth egress gateway: internal error");
  }

  /**
   * Counts a client connection against its sandbox's limit (once; released when it closes). Over
   * the network this is the only bound; on a sandbox's own socket the listener bounds them as well.
   */
  private hold(socket: net.Socket, name: string): { open: number; limit: number } | null {
    const limit = this.options.maxConnectionsPerSandbox ?? DEFAULT_MAX_CONNECTIONS_PER_SANDBOX;
    if (this.held.has(socket)) return null;
    const open = this.openBySandbox.get(name) ?? 0;
    if (open >= limit) return { open, limit };
    this.openBySandbox.set(name, open + 1);
    this.held.add(socket);
    socket.once("close", () => {
      const left = (this.openBySandbox.get(name) ?? 1) - 1;
      if (left <= 0) this.openBySandbox.delete(name);
      else this.openBySandbox.set(name, left);
    });
    return null;
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
    const clients = new Set<net.Socket>();
    const server = net.createServer({ noDelay: true }, (socket) => {
      this.info.set(socket, { boundSandbox });
      clients.add(socket);
      socket.once("close", () => clients.delete(socket));
      socket.on("error", () => socket.destroy());
      this.watchHeads(socket);
      this.proxy.emit("connection", socket);
    });
    this.clients.set(server, clients);
    // A sandbox's own socket: its open connections are bounded here (over the network, per CONNECT).
    // Over the network (Kubernetes) connections come before anyone is known: all of them together are
    // bounded too, so unauthenticated ones cannot exhaust the process's descriptors.
    server.maxConnections = boundSandbox !== null ? (this.options.maxConnectionsPerSandbox ?? DEFAULT_MAX_CONNECTIONS_PER_SANDBOX) : MAX_NETWORK_CONNECTIONS;
    this.listeners.add(server);
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(where, () => {
        server.off("error", reject);
        resolve();
      });
    });
    return { server, close: () => this.closeListener(server) };
  }

  /** Stops accepting and ends the connections (tunnels included) that came in through this listener. */
  private closeListener(server: net.Server): Promise<void> {
    this.listeners.delete(server);
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const socket of this.clients.get(server) ?? []) socket.destroy();
    this.clients.delete(server);
    return closed;
  }

  async close(): Promise<void> {
    if (this.recheckTimer) clearInterval(this.recheckTimer);
    this.recheckTimer = null;
    await Promise.all([...this.listeners].map((server) => this.closeListener(server)));
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
      if (!URL.canParse(url, "http://relay")) return answer(res, 400, `Berth egress gateway: "${truncate(url)}" is not a request path`);
      this.options.metrics?.egressRequests.inc({ decision: "allowed", kind: "model" });
      this.options.modelRelay(req, res, (token) => this.sandboxOf(req.socket, token) !== null);
      return;
    }
    const name = this.sandboxOf(req.socket, proxyToken(req));
    if (!name) return askForCredentials(res);
    const over = this.hold(req.socket, name);
    if (over) return answer(res, 429, `Berth egress gateway: this sandbox already has ${over.open} connections open (at most ${over.limit})`, { connection: "close" });
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
    const context = await this.contextOrRefuse(name, res, req.socket);
    if (!context) return;
    await this.forward(context, { scheme: "http", host, port, path: target.pathname + target.search }, req, res);
  }

  /**
   * The sandbox's policy for a request: read once per client connection, and again on a connection
   * kept alive past CONTEXT_MAX_AGE_MS, so a burst of requests on one connection costs one read
   * while an edit still reaches an open connection within that time (new connections at once).
   */
  private async contextOrRefuse(name: string, res: http.ServerResponse, socket: net.Socket): Promise<SandboxEgressContext | null> {
    const cached = this.contexts.get(socket);
    if (cached && cached.sandbox === name && performance.now() - cached.at < CONTEXT_MAX_AGE_MS) return cached.context;
    try {
      const context = await this.contextOf(name);
      if (context) this.contexts.set(socket, { sandbox: name, context, at: performance.now() });
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
    // Origin-form only: an absolute-form target (`GET https://other/`) names a host of its own, which
    // an upstream server would honour over Host, with the tunnel host's credentials in the request.
    if (!req.url?.startsWith("/")) {
      req.resume();
      return answer(res, 400, `Berth egress gateway: inside a tunnel to ${inspected.host}, requests name a path ("GET /x"), not "${truncate(req.url ?? "")}"`);
    }
    const context = await this.contextOrRefuse(inspected.sandbox, res, req.socket);
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

    let outgoing: ReturnType<EgressGateway["outgoingHeaders"]>;
    try {
      outgoing = this.outgoingHeaders(context, req, target);
    } catch (error) {
      if (!(error instanceof BrokeringError)) throw error;
      req.resume();
      this.options.metrics?.egressErrors.inc({ kind: "brokering" });
      this.record(context, { ...base, status: 502, decision: "allowed", rule: decision.rule, reason: error.message, bytesOut: 0, bytesIn: 0, durationMs: elapsed(started) });
      return answer(res, 502, `Berth egress gateway: ${error.message}`);
    }
    const { headers, brokered, stubsSeen } = outgoing;
    const { connectMs, idleMs } = this.timeouts;
    const options: https.RequestOptions & PartitionedOptions = {
      host: address.address,
      port: address.port,
      method,
      path: target.path,
      headers,
      setHost: false,
      agent: target.scheme === "https" ? this.upstreamHttps : this.upstreamHttp,
      partition: context.sandboxName,
      // Idle time once connected (an answer may take long to start: model APIs); connecting is bounded below.
      timeout: idleMs,
      ...(target.scheme === "https" && !net.isIP(target.host) ? { servername: target.host } : {}),
    };
    let bytesOut = 0;
    let bytesIn = 0;
    let recorded = false;
    req.on("data", (chunk: Buffer) => (bytesOut += chunk.length));
    const finish = (status: number | undefined) => {
      if (recorded) return;
      recorded = true;
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
    };
    const upstream = (target.scheme === "https" ? https : http).request(options, (answerStream) => {
      const responseHeaders: http.OutgoingHttpHeaders = {};
      for (const [name, value] of Object.entries(answerStream.headers)) if (!HOP_HEADERS.has(name) && value !== undefined) responseHeaders[name] = value;
      // Node's client accepts reason phrases (control characters) its server refuses to write.
      const reason = answerStream.statusMessage && HEADER_VALUE.test(answerStream.statusMessage) ? answerStream.statusMessage : undefined;
      try {
        res.writeHead(answerStream.statusCode ?? 502, reason, responseHeaders);
      } catch (error) {
        this.options.logger.warn({ err: error, host: target.host, port: target.port }, "egress gateway: an upstream answer could not be passed on");
        upstream.destroy();
        res.destroy();
        return finish(502);
      }
      answerStream.on("data", (chunk: Buffer) => (bytesIn += chunk.length));
      answerStream.pipe(res);
      answerStream.on("end", () => finish(answerStream.statusCode));
      answerStream.on("error", () => res.destroy());
    });
    upstream.on("socket", (socket: net.Socket) => {
      if (!socket.connecting) return; // a kept-alive connection
      const timer = setTimeout(() => upstream.destroy(new Error(`no connection to ${target.host}:${target.port} within ${connectMs / 1000} s`)), connectMs);
      socket.once(target.scheme === "https" ? "secureConnect" : "connect", () => clearTimeout(timer));
      socket.once("close", () => clearTimeout(timer));
    });
    upstream.on("timeout", () => upstream.destroy(new Error(`no answer from ${target.host}:${target.port} within ${idleMs / 1000} s`)));
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
      if (res.writableFinished) return;
      // The sandbox hung up first: the upstream call ends too, and is recorded with what it moved.
      upstream.destroy();
      finish(undefined);
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
    // TRACE makes the server echo the request, credential included, back to the sandbox.
    const bound =
      target.scheme === "https" && req.method !== "TRACE" ? brokeredFor(context, target.host) : [];
    for (const credential of bound) {
      const name = credential.header.toLowerCase();
      const present = headers[name];
      if (present === undefined || String(present).includes(credential.stub)) {
        let value: string;
        try {
          value = credential.value();
        } catch {
          throw new BrokeringError(`the brokered secret ${credential.name} could not be read`);
        }
        // A function, not a string: "$&", "$$" or "$'" in a value are not replacement patterns.
        const headerValue = credential.template.replaceAll("{{value}}", () => value);
        // Never in the message: the value itself.
        if (!HEADER_VALUE.test(headerValue)) throw new BrokeringError(`the brokered secret ${credential.name} cannot be sent: its value holds characters an HTTP header cannot carry`);
        headers[name] = headerValue;
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
    const { connectMs, idleMs } = this.timeouts;
    client.on("error", () => client.destroy());
    // A tunnel quiet this long closes (Node's server stops watching a socket once it is a tunnel),
    // including one to an inspected host whose TLS never starts.
    client.setTimeout(idleMs);
    client.on("timeout", () => client.destroy());
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
    const over = this.hold(client, name);
    if (over) return answerRaw(client, 429, `Berth egress gateway: this sandbox already has ${over.open} connections open (at most ${over.limit})`);

    const inspect = mustInspect(context, host, port);
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
    upstream.setTimeout(connectMs);
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
      const tunnel: OpenTunnel = {
        host,
        port,
        close: (reason) => {
          this.record(context, { ...base, status: 403, decision: "denied", rule: decision.rule, reason, bytesOut: 0, bytesIn: 0, durationMs: elapsed(started) });
          upstream.destroy();
          client.destroy();
        },
      };
      this.trackTunnel(name, tunnel);
      upstream.once("close", () => this.untrackTunnel(name, tunnel));
      upstream.setTimeout(idleMs);
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length) upstream.write(head);
      client.on("data", (chunk: Buffer) => (bytesOut += chunk.length));
      upstream.on("data", (chunk: Buffer) => (bytesIn += chunk.length));
      client.pipe(upstream);
      upstream.pipe(client);
    });
    upstream.on("timeout", () => upstream.destroy(new Error(established ? "idle" : `no connection to ${host}:${port} within ${connectMs / 1000} s`)));
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

  private trackTunnel(sandbox: string, tunnel: OpenTunnel): void {
    let open = this.tunnels.get(sandbox);
    if (!open) this.tunnels.set(sandbox, (open = new Set()));
    open.add(tunnel);
    this.recheckTimer ??= setInterval(() => void this.recheckTunnels(), this.timeouts.recheckMs).unref();
  }

  private untrackTunnel(sandbox: string, tunnel: OpenTunnel): void {
    const open = this.tunnels.get(sandbox);
    open?.delete(tunnel);
    if (open?.size === 0) this.tunnels.delete(sandbox);
    if (this.tunnels.size === 0 && this.recheckTimer) {
      clearInterval(this.recheckTimer);
      this.recheckTimer = null;
    }
  }

  private rechecking = false;

  /**
   * Holds open tunnels to the sandbox's current policy: one that an edit no longer allows (or that
   * must now be inspected: a brokered credential or a method/path rule for its host) is closed,
   * and the closing is recorded as a denial. Requests the gateway sees are checked one by one anyway.
   */
  private async recheckTunnels(): Promise<void> {
    if (this.rechecking) return;
    this.rechecking = true;
    try {
      const sandboxes = [...this.tunnels.keys()];
      for (let at = 0; at < sandboxes.length; at += RECHECK_CONCURRENCY) {
        await Promise.all(
          sandboxes.slice(at, at + RECHECK_CONCURRENCY).map(async (sandbox) => {
            let context: SandboxEgressContext | null;
            try {
              context = await this.contextOf(sandbox);
            } catch {
              return; // the database is away: keep what is open, look again next time
            }
            for (const tunnel of [...(this.tunnels.get(sandbox) ?? [])]) {
              if (!context) {
                tunnel.close("closed: the sandbox no longer serves a session");
                continue;
              }
              const decision = decideEgress(context.policy as EgressPolicy, { host: tunnel.host, port: tunnel.port });
              const inspect = mustInspect(context, tunnel.host, tunnel.port);
              if (!decision.allowed) tunnel.close(`open tunnel closed: the agent's egress policy changed (${decision.reason ?? "no longer allowed"})`);
              else if (inspect) tunnel.close("open tunnel closed: the agent's egress policy now inspects this host (a brokered credential or a method/path rule)");
            }
          }),
        );
      }
    } finally {
      this.rechecking = false;
    }
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
    secure.once("close", () => client.destroy());
    this.info.set(secure, { boundSandbox: this.info.get(client)?.boundSandbox ?? null, inspected: target });
    this.watchHeads(secure);
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
    const bounded = { ...record, host: truncate(record.host, MAX_RECORDED_HOST) };
    if (record.reason !== undefined) bounded.reason = truncate(record.reason, MAX_RECORDED_REASON);
    this.options.log.record(context.sessionId, bounded);
  }
}

/** The brokered credentials bound to a host. */
function brokeredFor(context: SandboxEgressContext, host: string): BrokeredCredential[] {
  return context.brokered.filter((credential) => credential.hosts.some((pattern) => hostMatches(pattern, host)));
}

/** Whether the gateway must see a tunnel's requests: a brokered credential or a method/path rule for its host. */
function mustInspect(context: SandboxEgressContext, host: string, port: number): boolean {
  return brokeredFor(context, host).length > 0 || needsInspection(context.policy as EgressPolicy, host, port);
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
  if (colon === -1) return null;
  try {
    return decodeURIComponent(decoded.slice(colon + 1));
  } catch {
    return null; // not valid percent-encoding: not one of our tokens
  }
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
