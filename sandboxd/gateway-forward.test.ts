import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { startGatewayForwarder, type GatewayForwarder, type GatewayTarget } from "./gateway-forward";

/**
 * The forwarder alone, between real sockets: a raw TCP client on its 127.0.0.1 port and a raw
 * "gateway" on a Unix socket or on 127.0.0.1 (never any other address).
 */

const cleanups: (() => void | Promise<void>)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

async function upstream(kind: "unix" | "tcp", onConnection: (socket: net.Socket) => void): Promise<{ target: GatewayTarget; connections: net.Socket[] }> {
  const connections: net.Socket[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    connections.push(socket);
    socket.on("error", () => socket.destroy());
    onConnection(socket);
  });
  let target: GatewayTarget;
  if (kind === "unix") {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "gateway-forward-"));
    const socketPath = path.join(dir, "gateway.sock");
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    target = { kind: "unix", path: socketPath };
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  } else {
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    target = { kind: "tcp", host: "127.0.0.1", port: (server.address() as net.AddressInfo).port };
  }
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const socket of connections) socket.destroy();
        server.close(() => resolve());
      }),
  );
  return { target, connections };
}

async function forwarder(target: GatewayTarget): Promise<GatewayForwarder> {
  const started = await startGatewayForwarder(target);
  cleanups.push(() => started.close());
  return started;
}

/** A client of the forwarder; with allowHalfOpen it stays open after the forwarder's end until it ends itself. */
function connect(port: number, allowHalfOpen = false): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: "127.0.0.1", allowHalfOpen }, () => resolve(socket));
    socket.once("error", reject);
  });
}

function readAll(socket: net.Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.once("end", () => resolve(Buffer.concat(chunks)));
    socket.once("error", reject);
  });
}

const closed = (socket: net.Socket) => new Promise<void>((resolve) => (socket.destroyed ? resolve() : socket.once("close", () => resolve())));
/** The gateway's side of a connection (it allows half-open): the forwarder has ended or reset it. */
const ended = (socket: net.Socket) =>
  new Promise<void>((resolve) => {
    if (socket.destroyed || socket.readableEnded) return resolve();
    socket.once("end", () => resolve()).once("close", () => resolve());
    socket.resume(); // 'end' comes only once what was sent has been read
  });
const sha = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");

describe.each(["unix", "tcp"] as const)("gateway forwarder to a %s gateway", (kind) => {
  it("listens on 127.0.0.1 only, on an ephemeral port", async () => {
    const { target } = await upstream(kind, (socket) => socket.end());
    const { port } = await forwarder(target);
    expect(port).toBeGreaterThan(0);
    await expect(connect(port)).resolves.toBeInstanceOf(net.Socket);
  });

  it("answers a client that ended its write side (half-close both ways)", async () => {
    // The gateway answers only once it has seen the end of the request.
    const { target } = await upstream(kind, (socket) => {
      const chunks: Buffer[] = [];
      socket.on("data", (chunk: Buffer) => chunks.push(chunk));
      socket.once("end", () => socket.end(`got ${Buffer.concat(chunks).toString()}`));
    });
    const { port } = await forwarder(target);
    const client = await connect(port, true);
    const reply = readAll(client);
    client.end("request");
    expect((await reply).toString()).toBe("got request");
    await closed(client);
  });

  it("carries large transfers both ways intact, with a slow reader (backpressure)", async () => {
    const size = 24 * 1024 * 1024;
    const toGateway = randomBytes(size);
    const toClient = randomBytes(size);
    let gatewayReceived: Promise<Buffer> = Promise.resolve(Buffer.alloc(0));
    const { target } = await upstream(kind, (socket) => {
      gatewayReceived = readAll(socket);
      socket.end(toClient);
    });
    const { port } = await forwarder(target);
    const client = await connect(port);
    // Read slowly at first: the gateway's writes must wait, not pile up in the forwarder.
    client.pause();
    client.end(toGateway);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const received = readAll(client);
    client.resume();
    expect(sha(await received)).toBe(sha(toClient));
    expect(sha(await gatewayReceived)).toBe(sha(toGateway));
  });

  it("closes the client when the gateway cannot be reached, and keeps serving", async () => {
    const { target } = await upstream(kind, (socket) => socket.end("hello"));
    const broken: GatewayTarget = target.kind === "unix" ? { kind: "unix", path: `${target.path}.missing` } : { ...target, port: 1 };
    const failing = await forwarder(broken);
    const client = await connect(failing.port);
    client.on("error", () => {});
    client.write("anyone?");
    await closed(client);
    // The same forwarder still accepts connections; a working one still works.
    const again = await connect(failing.port);
    again.on("error", () => {});
    await closed(again);
    const working = await forwarder(target);
    expect((await readAll(await connect(working.port))).toString()).toBe("hello");
  });

  it("closes the other side when one side fails or goes away, and close() ends every connection", async () => {
    const { target, connections } = await upstream(kind, () => {});
    const forward = await startGatewayForwarder(target);
    // The gateway's side fails (a reset over TCP; a Unix socket can only close).
    const first = await connect(forward.port);
    first.on("error", () => {});
    await expect.poll(() => connections.length).toBe(1);
    if (kind === "tcp") connections[0]!.resetAndDestroy();
    else connections[0]!.destroy();
    await closed(first);
    // The client's side fails.
    const second = await connect(forward.port);
    await expect.poll(() => connections.length).toBe(2);
    second.resetAndDestroy();
    await ended(connections[1]!);

    const third = await connect(forward.port);
    third.on("error", () => {});
    await expect.poll(() => connections.length).toBe(3);
    forward.close();
    await closed(third);
    await ended(connections[2]!);
    await expect(connect(forward.port)).rejects.toMatchObject({ code: "ECONNREFUSED" });
  });

  it("adds no Nagle delay to small writes in either direction (write, pause, write, wait for the answer)", async () => {
    const pause = () => new Promise((resolve) => setTimeout(resolve, 1));
    // The gateway answers each two-byte request in two small writes, as the client sends it.
    const { target } = await upstream(kind, (socket) => {
      socket.setNoDelay(true);
      let pending = "";
      socket.on("data", (chunk: Buffer) => {
        pending += chunk.toString();
        if (pending.length < 2) return;
        pending = "";
        socket.write("!");
        void pause().then(() => socket.write("?"));
      });
    });
    const { port } = await forwarder(target);
    const client = await connect(port);
    client.setNoDelay(true);
    const times: number[] = [];
    for (let round = 0; round < 30; round++) {
      const started = performance.now();
      const answered = new Promise<void>((resolve) => {
        let got = "";
        const onData = (chunk: Buffer) => {
          got += chunk.toString();
          if (got.length < 2) return;
          client.off("data", onData);
          resolve();
        };
        client.on("data", onData);
      });
      client.write("a");
      await pause();
      client.write("b");
      await answered;
      times.push(performance.now() - started);
    }
    client.destroy();
    times.sort((a, b) => a - b);
    // With Nagle on a hop, the second write waits for the delayed ACK of the first (about 40 ms on Linux);
    // without, a round is the two 1 ms pauses and little more.
    expect(times[Math.floor(times.length / 2)]!).toBeLessThan(20);
  });
});
