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
 *   BERTH_DAEMON_MODEL_RELAY  optional unix:/abs/path.sock: the platform's model relay; commands then
 *                         get BERTH_MODEL_BASE_URL (a loopback URL ending in /v1) and BERTH_MODEL_API_KEY
 *   BERTH_DAEMON_MODEL_TOKEN  the token commands present to the model relay (with the relay)
 *   BERTH_DAEMON_SWEEP    1 = the daemon is alone in its own PID namespace (a jail, a pod): when the
 *                         last running exec ends, every other process in the namespace but the
 *                         daemon's ancestors is killed. Never set it for a daemon running on a host.
 * Every other variable is the session's environment (cold start). Prints `READY <pid>` when listening.
 */
import fs from "node:fs";
import { ExecTracker } from "./exec";
import { startModelForwarder, type ModelForwarder } from "./model-forward";
import { createDaemonServer, type DaemonState } from "./server";
import { Workspace } from "./workspace";

const CONFIG_KEYS = ["BERTH_DAEMON_LISTEN", "BERTH_DAEMON_TOKEN", "BERTH_WORKSPACE", "BERTH_DAEMON_UNBOUND", "BERTH_DAEMON_MODEL_RELAY", "BERTH_DAEMON_MODEL_TOKEN", "BERTH_DAEMON_SWEEP"] as const;

type Listen = { kind: "unix"; path: string } | { kind: "tcp"; host: string; port: number };

function fail(message: string): never {
  process.stderr.write(`sandboxd: ${message}\n`);
  process.exit(1);
}

function parseListen(value: string | undefined): Listen {
  if (!value) fail("BERTH_DAEMON_LISTEN is required (unix:/abs/path.sock or tcp:HOST:PORT)");
  if (value.startsWith("unix:")) {
    const path = value.slice("unix:".length);
    if (!path.startsWith("/")) fail(`BERTH_DAEMON_LISTEN: the socket path must be absolute, got ${value}`);
    return { kind: "unix", path };
  }
  const tcp = /^tcp:(.+):(\d{1,5})$/.exec(value);
  if (tcp) {
    const host = tcp[1]!.replace(/^\[(.*)\]$/, "$1");
    const port = Number(tcp[2]);
    if (port < 1 || port > 65_535) fail(`BERTH_DAEMON_LISTEN: port out of range in ${value}`);
    return { kind: "tcp", host, port };
  }
  fail(`BERTH_DAEMON_LISTEN must be unix:/abs/path.sock or tcp:HOST:PORT, got ${value}`);
}

function readConfig() {
  const env = process.env;
  const listen = parseListen(env.BERTH_DAEMON_LISTEN);
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
  let modelRelay: { socket: string; token: string } | null = null;
  if (env.BERTH_DAEMON_MODEL_RELAY) {
    const socket = env.BERTH_DAEMON_MODEL_RELAY.replace(/^unix:/, "");
    if (!env.BERTH_DAEMON_MODEL_RELAY.startsWith("unix:/")) fail(`BERTH_DAEMON_MODEL_RELAY must be unix:/abs/path.sock, got ${env.BERTH_DAEMON_MODEL_RELAY}`);
    const relayToken = env.BERTH_DAEMON_MODEL_TOKEN ?? "";
    if (relayToken.length < 32) fail("BERTH_DAEMON_MODEL_TOKEN is required with BERTH_DAEMON_MODEL_RELAY and must be at least 32 characters");
    modelRelay = { socket, token: relayToken };
  }
  const sweep = env.BERTH_DAEMON_SWEEP === "1" && sweepIsSafe();
  for (const key of CONFIG_KEYS) delete env[key];
  const sessionEnv: Record<string, string> = {};
  if (!unbound) for (const [key, value] of Object.entries(env)) if (value !== undefined) sessionEnv[key] = value;
  return { listen, token, workspacePath, workspaceReal, unbound, sessionEnv, modelRelay, sweep };
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
  let forwarder: ModelForwarder | null = null;
  if (config.modelRelay) {
    try {
      forwarder = await startModelForwarder(config.modelRelay.socket);
    } catch (error) {
      fail(`cannot listen for model requests on 127.0.0.1: ${(error as Error).message}`);
    }
  }
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
    platformEnv:
      forwarder && config.modelRelay
        ? { BERTH_MODEL_BASE_URL: `http://127.0.0.1:${forwarder.port}/v1`, BERTH_MODEL_API_KEY: config.modelRelay.token }
        : {},
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
