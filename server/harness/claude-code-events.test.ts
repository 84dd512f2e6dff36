import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ClaudeCodeParser, type ClaudeCodeOutput } from "./claude-code-events";

/** Lines the real claude 2.1.331 printed (`-p --output-format stream-json --verbose --include-partial-messages`) against the scripted gateway. */
function fixture(name: string): string[] {
  return readFileSync(path.join(import.meta.dirname, "../../tests/fixtures", name), "utf8").split("\n").filter((text) => text.trim());
}

function parseAll(lines: string[]): ClaudeCodeOutput[] {
  const parser = new ClaudeCodeParser();
  return lines.map((text) => parser.parse(text)).filter((output) => output.kind !== "ignored");
}

describe("Claude Code's stream-json output", () => {
  it("maps a turn (Write, then Bash, then an answer) to Berth events and one usage step per model call", () => {
    const outputs = parseAll(fixture("claude-code-2.1.331-turn.jsonl"));
    const sessionId = "edb8e518-f4ec-485f-a427-658b02798989";
    expect(outputs).toEqual([
      { kind: "session", sessionId },
      {
        kind: "events",
        sessionId,
        events: [{ type: "tool_call", payload: { id: "toolu_test_1_0", name: "Write", input: { file_path: "/workspace/notes/hello.txt", content: "hello from claude\n" } } }],
      },
      { kind: "step", sessionId, usage: { promptTokens: 120, completionTokens: 20 }, toolStep: true },
      {
        kind: "events",
        sessionId,
        events: [
          {
            type: "tool_result",
            payload: { callId: "toolu_test_1_0", output: "File created successfully at: /workspace/notes/hello.txt (file state is current in your context — no need to Read it back)", isError: false },
          },
        ],
      },
      { kind: "events", sessionId, events: [{ type: "assistant_message", payload: { text: "Now a command." } }] },
      { kind: "events", sessionId, events: [{ type: "tool_call", payload: { id: "toolu_test_2_0", name: "Bash", input: { command: "echo marker", description: "print" } } }] },
      // Cache reads count as prompt tokens.
      { kind: "step", sessionId, usage: { promptTokens: 180, completionTokens: 10 }, toolStep: true },
      { kind: "events", sessionId, events: [{ type: "tool_result", payload: { callId: "toolu_test_2_0", output: "marker", exitCode: 0, isError: false } }] },
      { kind: "events", sessionId, events: [{ type: "assistant_message", payload: { text: "I wrote notes/hello.txt." } }] },
      { kind: "step", sessionId, usage: { promptTokens: 160, completionTokens: 8 }, toolStep: false },
      { kind: "result", sessionId, error: null },
    ]);
  });

  it("reports a gateway error once (not as an assistant message), and a session it cannot resume", () => {
    const outputs = parseAll(fixture("claude-code-2.1.331-gateway-error.jsonl"));
    expect(outputs).toEqual([
      { kind: "session", sessionId: "edb8e518-f4ec-485f-a427-658b02798989" },
      { kind: "result", sessionId: "edb8e518-f4ec-485f-a427-658b02798989", error: "API Error: 400 this model does not exist" },
      // No init line: the session was not found.
      { kind: "result", sessionId: "11111111-2222-3333-4444-555555555555", error: "No conversation found with session ID: 11111111-2222-3333-4444-555555555555" },
    ]);
  });

  it("reports the turn limit (--max-turns) as an error", () => {
    // The result line of claude 2.1.331 run with --max-turns 1 (fields that matter here).
    const line = '{"type":"result","subtype":"error_max_turns","is_error":true,"num_turns":2,"stop_reason":"tool_use","session_id":"4eda3f02-7f31-49cd-a654-bf5dd9b01e70","errors":["Reached maximum number of turns (1)"],"terminal_reason":"max_turns"}';
    expect(new ClaudeCodeParser().parse(line)).toEqual({ kind: "result", sessionId: "4eda3f02-7f31-49cd-a654-bf5dd9b01e70", error: "Reached maximum number of turns (1)" });
    expect(new ClaudeCodeParser().parse('{"type":"result","subtype":"error_during_execution","is_error":true,"session_id":"s","result":null}')).toEqual({ kind: "result", sessionId: "s", error: "Claude Code stopped (error_during_execution)" });
  });

  it("reads a failed command's exit code, text parts of a result, and ignores subagents and noise", () => {
    const parser = new ClaudeCodeParser();
    const user = (content: unknown, extra: Record<string, unknown> = {}) => JSON.stringify({ type: "user", session_id: "s", parent_tool_use_id: null, message: { role: "user", content }, ...extra });
    expect(parser.parse(user([{ type: "tool_result", tool_use_id: "t1", content: "Exit code 3\nhello", is_error: true }], { tool_use_result: "Error: Exit code 3\nhello" }))).toEqual({
      kind: "events",
      sessionId: "s",
      events: [{ type: "tool_result", payload: { callId: "t1", output: "Exit code 3\nhello", exitCode: 3, isError: true } }],
    });
    expect(parser.parse(user([{ type: "tool_result", tool_use_id: "t2", content: [{ type: "text", text: "a" }, { type: "image" }] }]))).toMatchObject({
      events: [{ type: "tool_result", payload: { callId: "t2", output: "a\n[image]", isError: false } }],
    });
    expect(parser.parse(JSON.stringify({ type: "assistant", session_id: "s", parent_tool_use_id: "toolu_task", message: { content: [{ type: "text", text: "sub" }] } }))).toEqual({ kind: "ignored" });
    expect(parser.parse("not json")).toEqual({ kind: "ignored" });
    expect(parser.parse(JSON.stringify({ type: "something_new", session_id: "s" }))).toEqual({ kind: "ignored" });
  });
});
