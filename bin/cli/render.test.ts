import { describe, expect, it } from "vitest";
import { createOutput } from "./output";
import { EventPrinter } from "./render";

function capture() {
  let text = "";
  const stream = { write: (chunk: string) => ((text += chunk), true), isTTY: false } as unknown as NodeJS.WriteStream;
  return { out: createOutput({ json: false, stdout: stream, stderr: stream, env: {} as NodeJS.ProcessEnv }), text: () => text };
}

const at = new Date(0);
const egress = (seq: number, payload: Record<string, unknown>) => ({ seq, type: "egress", payload: { host: "api.example.com", port: 443, decision: "allowed", bytesOut: 1200, bytesIn: 3400, durationMs: 12, ...payload }, createdAt: at });

describe("egress events in the CLI", () => {
  it("prints one line each: requests, tunnels, summed ones, and denials marked in words", () => {
    const { out, text } = capture();
    const printer = new EventPrinter(out);
    printer.event(egress(1, { method: "GET", path: "/v1/x", status: 200 }));
    printer.event(egress(2, { count: 4 }));
    printer.event(egress(3, { host: "evil.example", decision: "denied", reason: "no allow rule for host evil.example port 443", bytesOut: 0, bytesIn: 0 }));
    printer.event(egress(4, { host: "paste.example", stubsSeen: ["GITHUB_TOKEN"] }));
    expect(text().split("\n")).toEqual([
      "↗ GET api.example.com:443/v1/x → 200 · 1.2 kB out · 3.4 kB in · 12 ms  #1",
      "↗ CONNECT api.example.com:443 ×4 · 1.2 kB out · 3.4 kB in · 12 ms  #2",
      "⊘ DENIED CONNECT evil.example:443: no allow rule for host evil.example port 443  #3",
      "↗ CONNECT paste.example:443 · 1.2 kB out · 3.4 kB in · 12 ms  #4",
      "  ⚠ stub of brokered secret GITHUB_TOKEN sent to paste.example:443, which it is not bound to (possible exfiltration; the stub was left as it was)",
      "",
    ]);
  });

  it("holds an egress line that arrives while a message streams until the message ends", () => {
    const { out, text } = capture();
    const printer = new EventPrinter(out);
    printer.event({ seq: 1, type: "user_message", payload: { text: "hi" }, createdAt: at });
    printer.delta(1, "Hel");
    printer.event(egress(2, {}));
    printer.delta(2, "lo");
    printer.event({ seq: 3, type: "assistant_message", payload: { text: "Hello" }, createdAt: at });
    expect(text().split("\n")).toEqual(["you › hi  #1", "assistant › Hello  #3", "↗ CONNECT api.example.com:443 · 1.2 kB out · 3.4 kB in · 12 ms  #2", ""]);
  });
});
