import { execFile } from "node:child_process";
import net from "node:net";
import { promisify } from "node:util";

/**
 * Abstract Unix sockets (Linux) belong to a network namespace: a jail with its own must not reach
 * the host's. Node binds an abstract name padded with NULs to the whole of `sun_path` (108 bytes),
 * while most other programs use the name's exact length, and the two are different names to the
 * kernel. The probe tries both, and a test runs it on the host too: it must connect there, so a
 * refusal in a jail means the jail, not a misspelt name.
 */
export async function listenAbstract(name: string): Promise<{ close(): void }> {
  const server = net.createServer((socket) => {
    socket.on("error", () => socket.destroy()); // a probe hangs up without reading
    socket.end("reached\n");
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ path: `\0${name}` }, resolve);
  });
  return { close: () => void server.close() };
}

/** A shell command (perl, which every Debian system has) printing `abstract=connected`, `abstract=refused` or `abstract=error …`. */
export function abstractProbe(name: string): string {
  if (!/^[\w.-]+$/.test(name)) throw new Error(`unsafe abstract socket name ${name}`);
  return `perl -MIO::Socket::UNIX -e 'for my $n ("\\0${name}", "\\0${name}" . ("\\0" x (107 - length "${name}"))) { $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $n) and last } print "abstract=", ($s ? "connected" : $!{ECONNREFUSED} ? "refused" : "error $!"), "\\n"'`;
}

/** The probe's answer on the host (asynchronously: the listener may live in this very process). */
export async function probeAbstractOnHost(name: string): Promise<string> {
  const { stdout } = await promisify(execFile)("sh", ["-c", abstractProbe(name)]);
  return stdout.trim();
}
