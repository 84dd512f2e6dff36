import { describe, expect, it } from "vitest";
import { buildTimeline } from "../components/session-timeline";
import type { StoredEvent } from "./types";
import { applyItems, prependEvents, type FollowItem, type FollowState } from "./use-session-follow";

const empty: FollowState = { events: [], lastSeq: 0, windowStart: 0, started: true, streaming: null, connection: "live", error: null };
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

describe("a long session's window of events", () => {
  const stored = (seq: number): StoredEvent => ({ seq, type: "user_message", payload: { text: `m${seq}` }, createdAt: at });

  it("puts an earlier page in front of the held events, each once, and moves the window start back", () => {
    // Opened 3 events before the end of a 7-event log: 5..7 held, 1..4 not.
    let state: FollowState = { ...empty, windowStart: 4, lastSeq: 4 };
    state = applyItems(state, [4, 5, 6, 7].map((seq) => ({ kind: "event" as const, event: stored(seq) })));
    expect(state.events.map((item) => item.seq)).toEqual([5, 6, 7]);
    // A page that overlaps what is held (and reaches below the window it was asked for) adds only the gap.
    state = prependEvents(state, [1, 2, 3, 4, 5, 6].map(stored), 2);
    expect(state.events.map((item) => item.seq)).toEqual([3, 4, 5, 6, 7]);
    expect(state.windowStart).toBe(2);
    state = prependEvents(state, [1, 2].map(stored), 0);
    expect(state.events.map((item) => item.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(state.windowStart).toBe(0);
    // Live events keep arriving after it.
    state = applyItems(state, [{ kind: "event", event: stored(8) }]);
    expect(state.events.map((item) => item.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it("pairs a tool result with its call once the page holding the call is loaded", () => {
    const call: StoredEvent = { seq: 4, type: "tool_call", payload: { id: "c1", name: "bash", input: { command: "ls" } }, createdAt: at };
    const result: StoredEvent = { seq: 5, type: "tool_result", payload: { callId: "c1", output: "a\n", exitCode: 0, isError: false }, createdAt: at };
    let state = applyItems({ ...empty, windowStart: 4, lastSeq: 4 }, [{ kind: "event", event: result }]);
    expect(buildTimeline(state.events).map((entry) => entry.kind)).toEqual(["orphan_result"]);
    state = prependEvents(state, [stored(3), call], 2);
    expect(buildTimeline(state.events).map((entry) => entry.kind)).toEqual(["user", "tool"]);
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

describe("live text with egress events in between", () => {
  it("keeps streaming across an egress event stored mid-step, then ends at the stored answer", () => {
    const egress = { host: "api.example.com", port: 443, decision: "allowed", bytesOut: 1, bytesIn: 2, durationMs: 3 };
    let state = applyItems(empty, [event(1, "user_message", { text: "hi" }), { kind: "delta", afterSeq: 1, text: "Hel" }]);
    state = applyItems(state, [event(2, "egress", egress), { kind: "delta", afterSeq: 2, text: "lo" }]);
    expect(state.streaming).toEqual({ afterSeq: 2, text: "Hello" });
    state = applyItems(state, [event(3, "assistant_message", { text: "Hello" })]);
    expect(state.streaming).toBeNull();
  });
});

describe("egress events in the timeline", () => {
  it("joins consecutive egress events into one block, keyed by the first", () => {
    const egress = (decision: string) => ({ host: "api.example.com", port: 443, decision, bytesOut: 1, bytesIn: 2, durationMs: 3 });
    const items = [event(1, "user_message", { text: "go" }), event(2, "egress", egress("allowed")), event(3, "egress", egress("denied")), event(4, "assistant_message", { text: "done" }), event(5, "egress", egress("allowed"))];
    const entries = buildTimeline(items.map((item) => (item as Extract<FollowItem, { kind: "event" }>).event));
    expect(entries.map((entry) => entry.kind)).toEqual(["user", "egress", "assistant", "egress"]);
    expect(entries[1]).toMatchObject({ seq: 2, items: [{ seq: 2, decision: "allowed" }, { seq: 3, decision: "denied" }] });
  });
});
