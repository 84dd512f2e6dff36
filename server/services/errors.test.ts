import net from "node:net";
import os from "node:os";
import path from "node:path";
import postgres from "postgres";
import { describe, expect, it } from "vitest";
import { isDatabaseUnavailable } from "./errors";

/** The error a real connection attempt gives, as the driver hands it to the service. */
async function connectionError(options: postgres.Options<Record<string, never>>): Promise<unknown> {
  const sql = postgres({ ...options, max: 1, connect_timeout: 2, onnotice: () => {} });
  try {
    await sql`select 1`;
    throw new Error("the connection should have failed");
  } catch (error) {
    return error;
  } finally {
    await sql.end({ timeout: 0 });
  }
}

describe("isDatabaseUnavailable", () => {
  it("knows a refused TCP connection and a Unix socket whose server is gone", async () => {
    const port = await new Promise<number>((resolve) => {
      const server = net.createServer().listen(0, "127.0.0.1", () => {
        const { port: free } = server.address() as net.AddressInfo;
        server.close(() => resolve(free));
      });
    });
    expect(isDatabaseUnavailable(await connectionError({ host: "127.0.0.1", port }))).toBe(true);
    expect(isDatabaseUnavailable(await connectionError({ host: path.join(os.tmpdir(), `berth-no-such-dir-${process.pid}`), port: 5432 }))).toBe(true);
  });

  it("follows causes, and leaves query errors alone", () => {
    const wrapped = new Error("the procedure failed", { cause: Object.assign(new Error("sorry, too many clients already"), { code: "53300" }) });
    expect(isDatabaseUnavailable(wrapped)).toBe(true);
    expect(isDatabaseUnavailable(Object.assign(new Error("syntax error"), { code: "42601" }))).toBe(false);
    expect(isDatabaseUnavailable(Object.assign(new Error("no such file"), { code: "ENOENT", syscall: "open" }))).toBe(false);
  });
});
