import { describe, expect, it } from "vitest";
import { parseCodexLine } from "./codex-events";

// Lines as codex-cli 0.169.0 printed them (`codex exec --json`, against the scripted Responses API gateway).
const REAL = {
  threadStarted: `{"type":"thread.started","thread_id":"01a20fde-1d71-7901-9d9c-b924cc052a0a"}`,
  metadataNotice: `{"type":"item.completed","item":{"id":"item_0","type":"error","message":"Model metadata for \`test-model\` not found. Defaulting to fallback metadata; this can degrade performance and cause issues."}}`,
  turnStarted: `{"type":"turn.started"}`,
  message: `{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"Let me check."}}`,
  commandStarted: `{"type":"item.started","item":{"id":"item_2","type":"command_execution","command":"/bin/bash -lc 'echo oops >&2; exit 3'","aggregated_output":"","exit_code":null,"status":"in_progress"}}`,
  commandFailed: `{"type":"item.completed","item":{"id":"item_2","type":"command_execution","command":"/bin/bash -lc 'echo oops >&2; exit 3'","aggregated_output":"oops\\n","exit_code":3,"status":"failed"}}`,
  commandDone: String.raw`{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc \"mkdir -p notes && printf \\\"hello from codex\\\\n\\\" > notes/hello.txt\"","aggregated_output":"","exit_code":0,"status":"completed"}}`,
  turnCompleted: `{"type":"turn.completed","usage":{"input_tokens":120,"cached_input_tokens":10,"cache_write_input_tokens":0,"output_tokens":11,"reasoning_output_tokens":0}}`,
  reconnecting: `{"type":"error","message":"Reconnecting... 1/5 (We’re currently experiencing high demand, which may cause temporary errors.)"}`,
  refused: String.raw`{"type":"error","message":"{\"error\":{\"message\":\"this model does not exist\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"400\"}}"}`,
  turnFailed: String.raw`{"type":"turn.failed","error":{"message":"{\"error\":{\"message\":\"this model does not exist\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"400\"}}"}}`,
  turnFailedPlain: `{"type":"turn.failed","error":{"message":"We’re currently experiencing high demand, which may cause temporary errors."}}`,
};

const prefix = "codex_abcd1234_";

describe("parseCodexLine", () => {
  it("reads the thread id", () => {
    expect(parseCodexLine(REAL.threadStarted, prefix)).toEqual({ kind: "thread", threadId: "01a20fde-1d71-7901-9d9c-b924cc052a0a" });
  });

  it("records agent messages as assistant messages", () => {
    expect(parseCodexLine(REAL.message, prefix)).toEqual({ kind: "events", events: [{ type: "assistant_message", payload: { text: "Let me check." } }] });
  });

  it("records a finished command as a tool call and its result, with an id unique to the turn", () => {
    expect(parseCodexLine(REAL.commandDone, prefix)).toEqual({
      kind: "events",
      events: [
        { type: "tool_call", payload: { id: "codex_abcd1234_item_1", name: "command_execution", input: { command: `/bin/bash -lc "mkdir -p notes && printf \\"hello from codex\\\\n\\" > notes/hello.txt"` } } },
        { type: "tool_result", payload: { callId: "codex_abcd1234_item_1", output: "", exitCode: 0, isError: false } },
      ],
    });
    expect(parseCodexLine(REAL.commandFailed, prefix)).toEqual({
      kind: "events",
      events: [
        { type: "tool_call", payload: { id: "codex_abcd1234_item_2", name: "command_execution", input: { command: "/bin/bash -lc 'echo oops >&2; exit 3'" } } },
        { type: "tool_result", payload: { callId: "codex_abcd1234_item_2", output: "oops\n", exitCode: 3, isError: true } },
      ],
    });
  });

  it("records file changes and MCP tool calls (shapes of codex's exec events)", () => {
    const fileChange = `{"type":"item.completed","item":{"id":"item_4","type":"file_change","changes":[{"path":"/w/a.txt","kind":"add"},{"path":"/w/b.txt","kind":"update"}],"status":"completed"}}`;
    expect(parseCodexLine(fileChange, prefix)).toEqual({
      kind: "events",
      events: [
        { type: "tool_call", payload: { id: "codex_abcd1234_item_4", name: "file_change", input: { changes: [{ path: "/w/a.txt", kind: "add" }, { path: "/w/b.txt", kind: "update" }] } } },
        { type: "tool_result", payload: { callId: "codex_abcd1234_item_4", output: "add /w/a.txt\nupdate /w/b.txt", isError: false } },
      ],
    });
    const mcp = `{"type":"item.completed","item":{"id":"item_5","type":"mcp_tool_call","server":"docs","tool":"search","arguments":{"q":"x"},"result":null,"error":{"message":"server gone"},"status":"failed"}}`;
    expect(parseCodexLine(mcp, prefix)).toEqual({
      kind: "events",
      events: [
        { type: "tool_call", payload: { id: "codex_abcd1234_item_5", name: "docs.search", input: { q: "x" } } },
        { type: "tool_result", payload: { callId: "codex_abcd1234_item_5", output: "server gone", isError: true } },
      ],
    });
  });

  it("reports the thread's token totals", () => {
    expect(parseCodexLine(REAL.turnCompleted, prefix)).toEqual({ kind: "usage", total: { inputTokens: 120, outputTokens: 11 } });
  });

  it("reads failures, showing the gateway's own message from an OpenAI error body", () => {
    expect(parseCodexLine(REAL.turnFailed, prefix)).toEqual({ kind: "failed", message: "this model does not exist" });
    expect(parseCodexLine(REAL.turnFailedPlain, prefix)).toEqual({ kind: "failed", message: "We’re currently experiencing high demand, which may cause temporary errors." });
    expect(parseCodexLine(REAL.refused, prefix)).toEqual({ kind: "notice", message: "this model does not exist" });
    expect(parseCodexLine(REAL.reconnecting, prefix)).toMatchObject({ kind: "notice" });
  });

  it("ignores what is not conversation: codex's notices as items, started items, turn starts, other text", () => {
    for (const text of [REAL.metadataNotice, REAL.turnStarted, REAL.commandStarted, "Reading additional input from stdin...", "{}", `{"type":"item.completed","item":{"id":"item_9","type":"reasoning","text":"hm"}}`]) {
      expect(parseCodexLine(text, prefix)).toEqual({ kind: "ignored" });
    }
  });
});
