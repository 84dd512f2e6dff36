import dns from "node:dns";
import net from "node:net";

/**
 * Network access for programs in the sandbox: a TCP listener on the sandbox's own loopback that pipes
 * each connection, byte for byte, to the platform's egress gateway (a Unix socket the platform bound
 * into the sandbox, or a TCP address such as the Berth pods' gateway port). The gateway is an HTTP
 * proxy (absolute-form requests, CONNECT) that also serves the model route (origin-form `/v1/...`); it
 * checks the sandbox's gateway token, so no credential of the platform enters the sandbox, and a
 * sandbox whose only network is loopback still reaches what it is allowed to.
 *
 * Each direction is a pipe (backpressure), an end of one side half-closes the other (a client that
 * ends its write side still gets the answer), an error on either side destroys both.
 */
export type GatewayTarget = { kind: "unix"; path: string } | { kind: "tcp"; host: string; port: number };
export type GatewayForwarder = { port: number; close(): void };

/** How long a gateway host name's address is reused: a lookup per connection (cluster DNS, search domains) costs milliseconds. */
const LOOKUP_TTL_MS = 5_000;

export function startGatewayForwarder(target: GatewayTarget): Promise<GatewayForwarder> {
  const sockets = new Set<net.Socket>();
  const resolve = target.kind === "tcp" ? hostResolver(target.host) : null;

  const connectUpstream = (client: net.Socket, host?: string) => {
    if (client.destroyed) return;
    const upstream =
      target.kind === "unix"
        ? net.connect({ path: target.path, allowHalfOpen: true })
        : net.connect({ host: host!, port: target.port, allowHalfOpen: true });
    if (target.kind === "tcp") {
      upstream.setNoDelay(true);
      // A gateway that moved (a new pod IP behind a headless name) is looked up again at once.
      if (resolve) upstream.once("error", resolve.forget);
    }
    track(upstream);
    link(client, upstream);
    link(upstream, client);
    client.pipe(upstream);
    upstream.pipe(client);
  };

  const track = (socket: net.Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  };

  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    client.setNoDelay(true);
    track(client);
    // Until it is linked (a host name being looked up), a client that fails just goes away; its bytes wait in its buffer.
    client.on("error", () => client.destroy());
    if (!resolve) return connectUpstream(client);
    resolve((error, host) => (error ? client.destroy() : connectUpstream(client, host)));
  });

  return new Promise((resolvePromise, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject);
      const { port } = server.address() as net.AddressInfo;
      resolvePromise({
        port,
        close() {
          server.close();
          for (const socket of sockets) socket.destroy();
        },
      });
    });
  });
}

/**
 * What happens to `to` when `from` is done. An error destroys both. A clean close of `from` means its
 * read side ended (the pipe has called `to.end()`): `to` is destroyed once what it still has to write
 * is flushed, since nothing it could read has anywhere to go any more.
 */
function link(from: net.Socket, to: net.Socket): void {
  from.on("error", () => {
    from.destroy();
    to.destroy();
  });
  from.once("close", (hadError: boolean) => {
    if (hadError || to.destroyed || to.writableFinished) {
      to.destroy();
      return;
    }
    to.end();
    to.once("finish", () => to.destroy());
  });
}

type Resolver = ((callback: (error: Error | null, host: string) => void) => void) & { forget(): void };

/** An IP is used as is; a name is looked up and its first address reused for LOOKUP_TTL_MS. */
function hostResolver(host: string): Resolver {
  let cached: { address: string; until: number } | null = null;
  const resolver = ((callback) => {
    if (net.isIP(host)) return callback(null, host);
    if (cached && cached.until > Date.now()) return callback(null, cached.address);
    dns.lookup(host, (error, address) => {
      if (error) return callback(error, "");
      cached = { address, until: Date.now() + LOOKUP_TTL_MS };
      callback(null, address);
    });
  }) as Resolver;
  resolver.forget = () => (cached = null);
  return resolver;
}
