import net from "node:net";

/**
 * Model access for programs in the sandbox (coding-agent harnesses): a TCP listener on the
 * sandbox's own loopback that pipes each connection to the platform's model relay, a Unix socket
 * the platform bound into the sandbox. The relay checks the sandbox's model token and talks to the
 * LiteLLM Gateway with the platform's key, so that key never enters the sandbox, and a sandbox with
 * no network still reaches the model.
 */
export type ModelForwarder = { port: number; close(): void };

export function startModelForwarder(relaySocket: string): Promise<ModelForwarder> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(relaySocket);
    sockets.add(client).add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject);
      const { port } = server.address() as net.AddressInfo;
      resolve({
        port,
        close() {
          server.close();
          for (const socket of sockets) socket.destroy();
        },
      });
    });
  });
}
