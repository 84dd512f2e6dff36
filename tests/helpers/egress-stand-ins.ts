import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import type tls from "node:tls";

/**
 * Outside hosts for egress tests, on 127.0.0.1 only: one port that speaks plain HTTP and HTTPS
 * (the first byte tells them apart), so a name mapped to it with BERTH_EGRESS_RESOLVE answers both
 * `http://name/` and `https://name/` as a real host would. Certificates come from `certificateFor`
 * (the installation's egress CA, or a test CA, through EgressCa.leafFor) by the name the client asked
 * for (SNI). Requests are answered by the handler registered for their host, or with
 * `hello from <host>`; every one is recorded.
 */

export type StandInRequest = {
  scheme: "http" | "https";
  /** The Host header's name (without port), lower case. */
  host: string;
  /** The TLS server name the client asked for (https only). */
  servername?: string;
  method: string;
  /** Path and query as sent. */
  url: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
};

export type StandInHandler = (request: StandInRequest, res: http.ServerResponse) => void | Promise<void>;

export type StandIn = {
  port: number;
  /** Every request received, in order. */
  requests: StandInRequest[];
  /** Raw TCP connections accepted (a probe that must not arrive counts here even when it never sends a request). */
  readonly connections: number;
  route(host: string, handler: StandInHandler): void;
  close(): Promise<void>;
};

export async function startStandIn(options: { certificateFor: (servername: string) => Promise<tls.SecureContext> }): Promise<StandIn> {
  const requests: StandInRequest[] = [];
  const routes = new Map<string, StandInHandler>();
  let connections = 0;

  const handle = (scheme: "http" | "https") => (req: http.IncomingMessage, res: http.ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const host = String(req.headers.host ?? "")
        .replace(/:\d+$/, "")
        .toLowerCase();
      const servername = scheme === "https" ? ((req.socket as tls.TLSSocket).servername || undefined) : undefined;
      const request: StandInRequest = { scheme, host, ...(servername ? { servername } : {}), method: req.method ?? "GET", url: req.url ?? "/", headers: req.headers, body: Buffer.concat(chunks) };
      requests.push(request);
      const handler = routes.get(host) ?? hello;
      Promise.resolve(handler(request, res)).catch((error: unknown) => {
        if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
        res.end(`stand-in failed: ${(error as Error).message}\n`);
      });
    });
  };

  const plain = http.createServer(handle("http"));
  const secure = https.createServer(
    {
      SNICallback: (servername, callback) => {
        options.certificateFor(servername).then(
          (context) => callback(null, context),
          (error: Error) => callback(error),
        );
      },
    },
    handle("https"),
  );
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    // The first byte tells TLS (0x16, a handshake record) from HTTP; it is put back for the server that takes the socket.
    socket.once("readable", () => {
      const first = socket.read(1) as Buffer | null;
      if (first === null) return void socket.destroy();
      socket.unshift(first);
      (first[0] === 0x16 ? secure : plain).emit("connection", socket);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    requests,
    get connections() {
      return connections;
    },
    route: (host, handler) => void routes.set(host.toLowerCase(), handler),
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

function hello(request: StandInRequest, res: http.ServerResponse): void {
  res.writeHead(200, { "content-type": "text/plain" });
  res.end(`hello from ${request.host}\n`);
}

/** Exactly these variables (and PATH) for a child process. */
function onlyEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env } as unknown as NodeJS.ProcessEnv;
}

// ---------------------------------------------------------------------------------------------
// A git host: a bare repository served with git's own smart HTTP (git http-backend as CGI).

export type GitHost = { root: string; handler: StandInHandler; close(): void };

/** A bare repository `<name>.git` with one commit holding `files`, served by `git http-backend`. */
export function gitHost(name: string, files: Record<string, string>): GitHost {
  const root = mkdtempSync(path.join(os.tmpdir(), "berth-test-git-"));
  const work = path.join(root, "work");
  mkdirSync(work);
  for (const [file, content] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(work, file)), { recursive: true });
    writeFileSync(path.join(work, file), content);
  }
  const git = (args: string[], cwd: string) =>
    execFileSync("git", args, {
      cwd,
      env: onlyEnv({ HOME: root, GIT_AUTHOR_NAME: "t", GIT_AUTHOR_EMAIL: "t@example.test", GIT_COMMITTER_NAME: "t", GIT_COMMITTER_EMAIL: "t@example.test" }),
      stdio: ["ignore", "pipe", "pipe"],
    });
  git(["init", "-q", "-b", "main"], work);
  git(["add", "-A"], work);
  git(["commit", "-q", "-m", "first"], work);
  git(["clone", "-q", "--bare", work, path.join(root, `${name}.git`)], root);

  const handler: StandInHandler = (request, res) =>
    new Promise<void>((resolve, reject) => {
      const url = new URL(request.url, "http://stand-in");
      const child = spawn("git", ["http-backend"], {
        env: onlyEnv({
          HOME: root,
          GIT_PROJECT_ROOT: root,
          GIT_HTTP_EXPORT_ALL: "1",
          PATH_INFO: decodeURIComponent(url.pathname),
          QUERY_STRING: url.search.slice(1),
          REQUEST_METHOD: request.method,
          CONTENT_TYPE: String(request.headers["content-type"] ?? ""),
          CONTENT_LENGTH: String(request.body.length),
          HTTP_CONTENT_ENCODING: String(request.headers["content-encoding"] ?? ""),
          GIT_PROTOCOL: String(request.headers["git-protocol"] ?? ""),
          REMOTE_ADDR: "127.0.0.1",
        }),
        stdio: ["pipe", "pipe", "pipe"],
      });
      const out: Buffer[] = [];
      let errors = "";
      child.stdout.on("data", (chunk: Buffer) => out.push(chunk));
      child.stderr.on("data", (chunk: Buffer) => (errors += chunk.toString()));
      child.on("error", reject);
      child.on("close", () => {
        const all = Buffer.concat(out);
        const split = all.indexOf("\r\n\r\n");
        const headerEnd = split === -1 ? all.indexOf("\n\n") : split;
        if (headerEnd === -1) return reject(new Error(`git http-backend answered no headers: ${errors}`));
        const headers: Record<string, string> = {};
        let status = 200;
        for (const line of all.subarray(0, headerEnd).toString().split(/\r?\n/)) {
          const colon = line.indexOf(":");
          if (colon === -1) continue;
          const key = line.slice(0, colon).trim();
          const value = line.slice(colon + 1).trim();
          if (key.toLowerCase() === "status") status = Number.parseInt(value, 10);
          else headers[key] = value;
        }
        res.writeHead(status, headers);
        res.end(all.subarray(headerEnd + (split === -1 ? 2 : 4)));
        resolve();
      });
      child.stdin.end(request.body);
    });
  return { root, handler, close: () => rmSync(root, { recursive: true, force: true }) };
}

// ---------------------------------------------------------------------------------------------
// An npm registry: package documents and tarballs made with `npm pack`.

export type NpmRegistry = { handler: StandInHandler; close(): void };

/**
 * A registry at `baseUrl` holding one version of each package: `index.js` exports `exports`
 * (JSON), packed with the host's `npm pack`.
 */
export function npmRegistry(baseUrl: string, packages: Array<{ name: string; version: string; exports: unknown }>): NpmRegistry {
  const dir = mkdtempSync(path.join(os.tmpdir(), "berth-test-npm-"));
  const documents = new Map<string, string>();
  const tarballs = new Map<string, Buffer>();
  for (const pkg of packages) {
    const source = path.join(dir, pkg.name);
    mkdirSync(source);
    writeFileSync(path.join(source, "package.json"), JSON.stringify({ name: pkg.name, version: pkg.version, main: "index.js", license: "MIT" }));
    writeFileSync(path.join(source, "index.js"), `module.exports = ${JSON.stringify(pkg.exports)};\n`);
    const packed = JSON.parse(
      execFileSync("npm", ["pack", "--json", "--pack-destination", dir], { cwd: source, encoding: "utf8", env: { ...process.env, npm_config_update_notifier: "false" } }),
    ) as Array<{ filename: string }>;
    const tarball = readFileSync(path.join(dir, packed[0]!.filename));
    const file = `${pkg.name}-${pkg.version}.tgz`;
    tarballs.set(`/${pkg.name}/-/${file}`, tarball);
    documents.set(
      `/${pkg.name}`,
      JSON.stringify({
        name: pkg.name,
        "dist-tags": { latest: pkg.version },
        versions: {
          [pkg.version]: {
            name: pkg.name,
            version: pkg.version,
            main: "index.js",
            dist: {
              tarball: `${baseUrl.replace(/\/$/, "")}/${pkg.name}/-/${file}`,
              shasum: createHash("sha1").update(tarball).digest("hex"),
              integrity: `sha512-${createHash("sha512").update(tarball).digest("base64")}`,
            },
          },
        },
      }),
    );
  }
  const handler: StandInHandler = (request, res) => {
    const pathname = decodeURIComponent(new URL(request.url, "http://stand-in").pathname);
    const document = documents.get(pathname);
    if (document !== undefined) {
      res.writeHead(200, { "content-type": "application/json" });
      return void res.end(document);
    }
    const tarball = tarballs.get(pathname);
    if (tarball) {
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": tarball.length });
      return void res.end(tarball);
    }
    res.writeHead(404, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: "Not found" }));
  };
  return { handler, close: () => rmSync(dir, { recursive: true, force: true }) };
}
