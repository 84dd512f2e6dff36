import { describe, expect, it } from "vitest";
import { eventBatch } from "./event-log";

describe("eventBatch", () => {
  it("passes ordinary events through as JSON", () => {
    const batch = eventBatch([{ type: "tool_result", payload: { callId: "c1", output: "plain \\u0000 text", isError: false } }]);
    expect(JSON.parse(batch)).toEqual([{ type: "tool_result", payload: { callId: "c1", output: "plain \\u0000 text", isError: false }, key: null }]);
  });

  it("replaces NUL characters, which Postgres text and jsonb cannot hold, in values and keys", () => {
    const batch = eventBatch([
      { type: "tool_result", payload: { callId: "c1", output: "a\u0000b\u0000", isError: false } },
      { type: "tool_call", payload: { id: "c2", name: "write_file", input: { "pa\u0000th": ["x\u0000"] } }, idempotencyKey: "k" },
    ]);
    expect(batch).not.toContain("\\u0000");
    expect(JSON.parse(batch)).toEqual([
      { type: "tool_result", payload: { callId: "c1", output: "a\uFFFDb\uFFFD", isError: false }, key: null },
      { type: "tool_call", payload: { id: "c2", name: "write_file", input: { "pa\uFFFDth": ["x\uFFFD"] } }, key: "k" },
    ]);
  });

  it("replaces lone UTF-16 surrogates (a model's JSON can escape one; jsonb refuses them) and keeps real pairs", () => {
    const batch = eventBatch([{ type: "assistant_message", payload: { text: "lone \ud800 high, lone \udc00 low, pair \ud83d\ude00" } }]);
    expect(JSON.parse(batch)[0].payload.text).toBe("lone \uFFFD high, lone \uFFFD low, pair \u{1F600}");
  });

  it("refuses a payload that does not match its type", () => {
    expect(() => eventBatch([{ type: "assistant_message", payload: { text: 42 } } as never])).toThrow();
  });
});
