import { describe, expect, it } from "vitest";
import { buildTimeline } from "../components/session-timeline";
import type { StoredEvent } from "./types";
import { applyItems, type FollowItem, type FollowState } from "./use-session-follow";

const empty: FollowState = { events: [], lastSeq: 0, started: true, streaming: null, connection: "live", error: null };
const at = new Date("2026-01-01T00:00:00Z");
const event = (seq: number, type: StoredEvent["type"], payload: unknown): FollowItem => ({ kind: "event", event: { seq, type, payload, createdAt: at } });

describe("applying followed items", () => {
  it("keeps each event once, in seq order, however often a resumed stream repeats it", () => {
    let state = applyItems(empty, [event(1, "user_message", { text: "hi" }), event(2, "assistant_message", { text: "hello" })]);
    state = applyItems(state, [event(1, "user_message", { text: "hi" }), event(2, "assistant_message", { text: "hello" }), event(3, "usage", { promptTokens: 1, completionTokens: 1 })]);
    expect(state.events.map((item) => item.seq)).toEqual([1, 2, 3]);
    expect(state.lastSeq).toBe(3);
    expect(applyItems(state, [event(2, "assistant_message", { text: "hello" })])).toBe(state);
  });

  it("accumulates live text after a seq and drops it when the stored event that follows arrives", () => {
    let state = applyItems(empty, [event(1, "user_message", { text: "hi" })]);
    state = applyItems(state, [
      { kind: "delta", afterSeq: 1, text: "Hel" },
      { kind: "delta", afterSeq: 1, text: "lo" },
    ]);
    expect(state.streaming).toEqual({ afterSeq: 1, text: "Hello" });
    state = applyItems(state, [event(2, "assistant_message", { text: "Hello" })]);
    expect(state.streaming).toBeNull();
    // A delta of a step already stored (a late notification) is ignored.
    expect(applyItems(state, [{ kind: "delta", afterSeq: 1, text: "stale" }]).streaming).toBeNull();
  });
});

describe("the timeline", () => {
  it("puts each tool result in its call and joins consecutive status changes", () => {
    const items = [
      event(1, "status", { from: "pending", to: "provisioning" }),
      event(2, "status", { from: "provisioning", to: "ready" }),
      event(3, "user_message", { text: "run: echo hi" }),
      event(4, "tool_call", { id: "c1", name: "bash", input: { command: "echo hi" } }),
      event(5, "tool_result", { callId: "c1", output: "hi\n", exitCode: 0, isError: false }),
      event(6, "assistant_message", { text: "hi" }),
    ];
    const entries = buildTimeline(items.map((item) => (item as Extract<FollowItem, { kind: "event" }>).event));
    expect(entries.map((entry) => entry.kind)).toEqual(["status", "user", "tool", "assistant"]);
    expect(entries[0]).toMatchObject({ seq: 1, steps: [{ to: "provisioning" }, { to: "ready" }] });
    expect(entries[2]).toMatchObject({ seq: 4, result: { seq: 5, output: "hi\n", exitCode: 0 } });
  });
});
