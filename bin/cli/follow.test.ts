import { describe, expect, it } from "vitest";
import { TurnTracker } from "./follow";

const at = new Date(0);
let seq = 0;
const ev = (type: string, payload: Record<string, unknown> = {}) => ({ seq: ++seq, type, payload, createdAt: at });

describe("TurnTracker", () => {
  it("ends queued turns in message order, each at its usage or error event", () => {
    seq = 0;
    const ends: [number, string][] = [];
    const tracker = new TurnTracker((outcome) => ends.push([outcome.userSeq, outcome.status]));
    const log = [
      ev("user_message", { text: "a" }), // 1
      ev("status", { from: "ready", to: "running" }),
      ev("user_message", { text: "b" }), // 3, queued behind a
      ev("tool_call", { id: "c1", name: "bash", input: {} }),
      ev("user_message", { text: "c" }), // 5, queued behind b
      ev("tool_result", { callId: "c1", output: "", isError: false }),
      ev("assistant_message", { text: "answer a" }),
      ev("usage", { promptTokens: 1, completionTokens: 1 }), // 8: a ends
      ev("status", { from: "running", to: "ready" }),
      ev("error", { message: "model call failed" }), // 10: b fails without usage
      ev("assistant_message", { text: "answer c" }),
      ev("usage", { promptTokens: 1, completionTokens: 1 }), // 12: c ends
    ];
    for (const event of log) tracker.push(event);
    expect(ends).toEqual([[1, "completed"], [3, "failed"], [5, "completed"]]);
    expect(tracker.ended.get(1)!.events.map((event) => event.type)).toEqual(["tool_call", "tool_result", "assistant_message", "usage"]);
    expect(tracker.ended.get(5)!.events.map((event) => event.seq)).toEqual([11, 12]);
    expect([1, 3, 5].some((userSeq) => tracker.isOpen(userSeq))).toBe(false);
  });

  it("a failed turn that used tokens writes usage then error: one turn, failed", () => {
    seq = 0;
    const tracker = new TurnTracker();
    for (const event of [ev("user_message"), ev("user_message"), ev("usage", { promptTokens: 3, completionTokens: 0 }), ev("error", { message: "stalled" })]) tracker.push(event);
    expect(tracker.ended.get(1)).toMatchObject({ status: "failed", endSeq: 4 });
    expect(tracker.isOpen(2)).toBe(true);
    tracker.push(ev("assistant_message", { text: "second" }));
    tracker.push(ev("usage", { promptTokens: 1, completionTokens: 1 }));
    expect(tracker.ended.get(2)).toMatchObject({ status: "completed", endSeq: 6 });
  });

  it("a session that fails or is terminated drops its open turns", () => {
    seq = 0;
    const tracker = new TurnTracker();
    for (const event of [ev("user_message"), ev("user_message"), ev("status", { from: "running", to: "terminated" })]) tracker.push(event);
    expect(tracker.ended.get(1)).toMatchObject({ status: "failed" });
    expect(tracker.ended.get(2)).toMatchObject({ status: "failed" });
    expect(tracker.dropped).toEqual({ seq: 3, status: "terminated" });
  });
});

describe("TurnTracker with egress events", () => {
  const egress = (decision: "allowed" | "denied" = "allowed") => ev("egress", { host: "api.example.com", port: 443, decision, bytesOut: 10, bytesIn: 20, durationMs: 3 });

  it("egress events during a turn neither end it nor join its events", () => {
    seq = 0;
    const ends: number[] = [];
    const tracker = new TurnTracker((outcome) => ends.push(outcome.endSeq));
    for (const event of [ev("user_message"), ev("tool_call", { id: "c1", name: "bash", input: {} }), egress(), egress("denied"), ev("tool_result", { callId: "c1", output: "", isError: false })]) tracker.push(event);
    expect(tracker.isOpen(1)).toBe(true);
    tracker.push(egress());
    tracker.push(ev("usage", { promptTokens: 1, completionTokens: 1 })); // 7
    expect(ends).toEqual([7]);
    expect(tracker.ended.get(1)!.events.map((event) => event.type)).toEqual(["tool_call", "tool_result", "usage"]);
    expect(tracker.ended.get(1)!.events.at(-1)!.type).toBe("usage");
  });

  it("egress events between turns (a background process) leave the next turn's accounting alone", () => {
    seq = 0;
    const tracker = new TurnTracker();
    for (const event of [ev("user_message"), ev("usage", { promptTokens: 1, completionTokens: 1 }), egress(), egress(), ev("user_message"), egress(), ev("error", { message: "boom" })]) tracker.push(event);
    expect(tracker.ended.get(1)).toMatchObject({ status: "completed", endSeq: 2 });
    expect(tracker.ended.get(5)).toMatchObject({ status: "failed", endSeq: 7 });
  });
});
