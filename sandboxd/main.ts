/**
 * sandboxd: the daemon inside every sandbox (a bubblewrap jail locally, a pod on Kubernetes).
 * Serves the platform over HTTP/1.1 with a per-sandbox bearer token: health, bind (warm pools),
 * exec with streamed output, file read/write/list. Node stdlib + zod only; bundled into one file
 * (build/sandboxd.js) so the jail needs nothing but the runtime binary. Runs under Node and Bun.
 *
 * Configuration (read once, then removed from the environment):
 *   BERTH_DAEMON_LISTEN   unix:/abs/path.sock | tcp:HOST:PORT
 *   BERTH_DAEMON_TOKEN    bearer token, at least 32 characters
 *   BERTH_WORKSPACE       workspace directory (default /workspace)
 *   BERTH_DAEMON_UNBOUND  1 = warm-pool mode: no session until POST /v1/bind
 *   BERTH_DAEMON_GATEWAY  optional unix:/abs/path.sock | tcp:HOST:PORT (HOST a name, an IPv4 or a
 *                         [bracketed] IPv6): the platform's egress gateway, an HTTP proxy (absolute-form,
 *                         CONNECT) that also serves the model route (origin-form /v1/...). The daemon
 *                         forwards a port on 127.0.0.1 to it; commands then get HTTP(S)_PROXY, ALL_PROXY
 *                         (and lowercase) = http://berth:<token>@127.0.0.1:<port>, NO_PROXY = loopback,
 *                         BERTH_MODEL_BASE_URL = http://127.0.0.1:<port>/v1 and BERTH_MODEL_API_KEY = <token>
 *   BERTH_DAEMON_GATEWAY_TOKEN  the sandbox's gateway token (required with the gateway): 32 to 1024
 *                         characters of A-Z a-z 0-9 . _ ~ -; a bind may replace it (gatewayToken)
 *   BERTH_DAEMON_CA_PEM   optional, with the gateway: the installation's egress CA (PEM, one or more
 *                         certificates). Written to a new folder $TMPDIR/berth-ca-XXXXXX (or /tmp): berth-ca.pem
 *                         (the CA alone: NODE_EXTRA_CA_CERTS) and ca-bundle.pem (the system roots + the CA:
 *                         SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, GIT_SSL_CAINFO, PIP_CERT);
 *                         a bind may replace it (caPem)
 *   BERTH_DAEMON_SWEEP    1 = the daemon is alone in its own PID namespace (a jail, a pod): when the
 *                         last running exec ends, every other process in the namespace but the
 *                         daemon's ancestors is killed. Never set it for a daemon running on a host.
 * Every other variable is the session's environment (cold start). Prints `READY <pid>` when listening.
 */
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import { ExecTracker } from "./exec";
import { GATEWAY_TOKEN, GATEWAY_TOKEN_RULE, gatewayEnv, parseCertificates, removeCaFiles, writeCaFiles, type CaFiles } from "./gateway-env";
import { startGatewayForwarder, type GatewayForwarder, type GatewayTarget } from "./gateway-forward";
import { createDaemonServer, type DaemonState } from "./server";
import { Workspace } from "./workspace";

const CONFIG_KEYS = [
  "BERTH_DAEMON_LISTEN",
  "BERTH_DAEMON_TOKEN",
  "BERTH_WORKSPACE",
  "BERTH_DAEMON_UNBOUND",
  "BERTH_DAEMON_GATEWAY",
  "BERTH_DAEMON_GATEWAY_TOKEN",
  "BERTH_DAEMON_CA_PEM",
  "BERTH_DAEMON_SWEEP",
  // Replaced by the gateway: refused, and never passed on to commands.
  "BERTH_DAEMON_MODEL_RELAY",
  "BERTH_DAEMON_MODEL_TOKEN",
] as const;

type Listen = GatewayTarget;

function fail(message: string): never {
  process.stderr.write(`sandboxd: ${message}\n`);
  process.exit(1);
}

/** `unix:/abs/path.sock` or `tcp:HOST:PORT` (HOST a name, an IPv4 address or a bracketed IPv6 address). */
function parseAddress(name: string, value: string): Listen {
  if (value.startsWith("unix:")) {
    const path = value.slice("unix:".length);
    if (!path.startsWith("/")) fail(`${name}: the socket path must be absolute, got ${value}`);
    return { kind: "unix", path };
  }
  const tcp = /^tcp:(.+):(\d{1,5})$/.exec(value);
  if (tcp) {
    const bracketed = /^\[(.*)\]$/.exec(tcp[1]!);
    const host = bracketed ? bracketed[1]! : tcp[1]!;
    if (bracketed ? !net.isIPv6(host) : !/^[A-Za-z0-9._-]+$/.test(host)) {
      fail(`${name}: HOST must be a host name, an IPv4 address or an IPv6 address in brackets, got ${value}`);
    }
    const port = Number(tcp[2]);
    if (port < 1 || port > 65_535) fail(`${name}: port out of range in ${value}`);
    return { kind: "tcp", host, port };
  }
  fail(`${name} must be unix:/abs/path.sock or tcp:HOST:PORT, got ${value}`);
}

function readGateway(env: NodeJS.ProcessEnv): { target: GatewayTarget; token: string; certificates: string[] | null } | null {
  for (const old of ["BERTH_DAEMON_MODEL_RELAY", "BERTH_DAEMON_MODEL_TOKEN"]) {
    if (env[old] !== undefined) fail(`${old} is no longer supported: use BERTH_DAEMON_GATEWAY and BERTH_DAEMON_GATEWAY_TOKEN`);
  }
  const value = env.BERTH_DAEMON_GATEWAY;
  if (value === undefined || value === "") {
    for (const dependent of ["BERTH_DAEMON_GATEWAY_TOKEN", "BERTH_DAEMON_CA_PEM"]) {
      if (env[dependent] !== undefined) fail(`${dependent} is set but BERTH_DAEMON_GATEWAY is not`);
    }
    return null;
  }
  const target = parseAddress("BERTH_DAEMON_GATEWAY", value);
  const token = env.BERTH_DAEMON_GATEWAY_TOKEN ?? "";
  if (!GATEWAY_TOKEN.test(token)) fail(`BERTH_DAEMON_GATEWAY_TOKEN is required with BERTH_DAEMON_GATEWAY and ${GATEWAY_TOKEN_RULE}`);
  let certificates: string[] | null = null;
  if (env.BERTH_DAEMON_CA_PEM) {
    try {
      certificates = parseCertificates(env.BERTH_DAEMON_CA_PEM);
    } catch (error) {
      fail(`BERTH_DAEMON_CA_PEM: ${(error as Error).message}`);
    }
  }
  return { target, token, certificates };
}

function readConfig() {
  const env = process.env;
  if (!env.BERTH_DAEMON_LISTEN) fail("BERTH_DAEMON_LISTEN is required (unix:/abs/path.sock or tcp:HOST:PORT)");
  const listen = parseAddress("BERTH_DAEMON_LISTEN", env.BERTH_DAEMON_LISTEN);
  const token = env.BERTH_DAEMON_TOKEN ?? "";
  if (token.length < 32) fail("BERTH_DAEMON_TOKEN is required and must be at least 32 characters");
  const workspacePath = env.BERTH_WORKSPACE || "/workspace";
  if (!workspacePath.startsWith("/")) fail(`BERTH_WORKSPACE must be an absolute path, got ${workspacePath}`);
  let workspaceReal: string;
  try {
    if (!fs.statSync(workspacePath).isDirectory()) fail(`BERTH_WORKSPACE ${workspacePath} is not a directory`);
    workspaceReal = fs.realpathSync(workspacePath);
  } catch (error) {
    fail(`BERTH_WORKSPACE ${workspacePath} is not usable: ${(error as Error).message}`);
  }
  const unbound = env.BERTH_DAEMON_UNBOUND === "1";
  const gateway = readGateway(env);
  const sweep = env.BERTH_DAEMON_SWEEP === "1" && sweepIsSafe();
  for (const key of CONFIG_KEYS) delete env[key];
  const sessionEnv: Record<string, string> = {};
  if (!unbound) for (const [key, value] of Object.entries(env)) if (value !== undefined) sessionEnv[key] = value;
  return { listen, token, workspacePath, workspaceReal, unbound, sessionEnv, gateway, sweep };
}

/**
 * A second check before killing every process in sight: in a jail or a pod the daemon is one of the
 * first processes of its PID namespace (bwrap: 2, a pod: 1). A daemon told to sweep with a higher
 * PID is most likely on a host by mistake: it does not sweep, and says so.
 */
const SWEEP_MAX_PID = 16;
function sweepIsSafe(): boolean {
  if (process.pid <= SWEEP_MAX_PID) return true;
  process.stderr.write(`sandboxd: BERTH_DAEMON_SWEEP=1 ignored: pid ${process.pid} is not among the first of a PID namespace of its own\n`);
  return false;
}

function findShell(): string {
  for (const candidate of ["/bin/bash", "/bin/sh"]) {
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // try the next one
    }
  }
  fail("neither /bin/bash nor /bin/sh is executable");
}

async function main(): Promise<void> {
  const config = readConfig();
  let forwarder: GatewayForwarder | null = null;
  let ca: CaFiles | null = null;
  if (config.gateway) {
    try {
      forwarder = await startGatewayForwarder(config.gateway.target);
    } catch (error) {
      fail(`cannot listen for the gateway forwarder on 127.0.0.1: ${(error as Error).message}`);
    }
    if (config.gateway.certificates) {
      try {
        ca = writeCaFiles(config.gateway.certificates);
      } catch (error) {
        fail(`cannot write the CA bundle under ${os.tmpdir()}: ${(error as Error).message}`);
      }
    }
  }
  const gateway = forwarder && config.gateway ? { port: forwarder.port, token: config.gateway.token, ca } : null;
  const execs = new ExecTracker(config.sweep);
  const state: DaemonState = {
    token: config.token,
    workspace: new Workspace(config.workspaceReal),
    workspacePath: config.workspacePath,
    shell: findShell(),
    startedAt: Date.now(),
    bound: !config.unbound,
    sessionId: null,
    env: config.sessionEnv,
    gateway,
    platformEnv: gatewayEnv(gateway),
    execs,
  };
  const server = createDaemonServer(state);
  process.stdout.on("error", () => {}); // nobody reading READY any more is not our problem

  server.once("error", (error) => fail(`cannot listen on ${describe(config.listen)}: ${error.message}`));
  server.once("listening", () => process.stdout.write(`READY ${process.pid}\n`));
  if (config.listen.kind === "unix") {
    removeStaleSocket(config.listen.path);
    server.listen(config.listen.path);
  } else {
    server.listen(config.listen.port, config.listen.host);
  }

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    server.close();
    server.closeAllConnections?.();
    forwarder?.close();
    void execs.groups.killAll(500).finally(() => {
      if (config.listen.kind === "unix") fs.rmSync(config.listen.path, { force: true });
      // The CA files of now (a bind may have replaced those of the start).
      removeCaFiles(state.gateway?.ca ?? null);
      process.exit(0);
    });
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

function removeStaleSocket(path: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(path);
  } catch {
    return;
  }
  if (!stat.isSocket()) fail(`${path} exists and is not a socket; refusing to replace it`);
  fs.unlinkSync(path);
}

function describe(listen: Listen): string {
  return listen.kind === "unix" ? `unix:${listen.path}` : `tcp:${listen.host}:${listen.port}`;
}

void main();
