import { describe, expect, it } from "vitest";
import { replayPrompt } from "./external";
import { opencodeCommand } from "./opencode";
import { parseOpencodeLine } from "./opencode-events";

/** Lines printed by opencode-ai 1.18.33 (`opencode run --format json`) against the test gateway. */
const REAL = {
  stepStart: "{\"type\":\"step_start\",\"timestamp\":1795561508005,\"sessionID\":\"ses_df031b995ffeSMydmNsdhirM7A\",\"part\":{\"id\":\"prt_20fce4c89001JPiQ6Zu4Dsn9q9\",\"messageID\":\"msg_20fce49a50011nDehdUm2xN0CH\",\"sessionID\":\"ses_df031b995ffeSMydmNsdhirM7A\",\"type\":\"step-start\"}}",
  toolWrite: "{\"type\":\"tool_use\",\"timestamp\":1795561508065,\"sessionID\":\"ses_df031b995ffeSMydmNsdhirM7A\",\"part\":{\"type\":\"tool\",\"tool\":\"write\",\"callID\":\"call_test_1_0\",\"state\":{\"status\":\"completed\",\"input\":{\"filePath\":\"hello.txt\",\"content\":\"hi from opencode\\n\"},\"output\":\"Wrote file successfully.\",\"metadata\":{\"diagnostics\":{},\"filepath\":\"/workspace/hello.txt\",\"exists\":false,\"truncated\":false},\"title\":\"workspace/hello.txt\",\"time\":{\"start\":1795561507996,\"end\":1795561508020}},\"id\":\"prt_20fce4c8e001UXiD2511K5nHmn\",\"sessionID\":\"ses_df031b995ffeSMydmNsdhirM7A\",\"messageID\":\"msg_20fce49a50011nDehdUm2xN0CH\"}}",
  toolStepFinish: "{\"type\":\"step_finish\",\"timestamp\":1795561508065,\"sessionID\":\"ses_df031b995ffeSMydmNsdhirM7A\",\"part\":{\"id\":\"prt_20fce4cc6001IddKYlWoRGdhQy\",\"reason\":\"tool-calls\",\"messageID\":\"msg_20fce49a50011nDehdUm2xN0CH\",\"sessionID\":\"ses_df031b995ffeSMydmNsdhirM7A\",\"type\":\"step-finish\",\"tokens\":{\"total\":120,\"input\":100,\"output\":20,\"reasoning\":0,\"cache\":{\"write\":0,\"read\":0}},\"cost\":0}}",
  text: "{\"type\":\"text\",\"timestamp\":1795561508146,\"sessionID\":\"ses_df031b995ffeSMydmNsdhirM7A\",\"part\":{\"id\":\"prt_20fce4d1f001Z9ywHGq3MfSdGm\",\"messageID\":\"msg_20fce4cdb001HKcY8GtAgpyUWn\",\"sessionID\":\"ses_df031b995ffeSMydmNsdhirM7A\",\"type\":\"text\",\"text\":\"I wrote the file.\",\"time\":{\"start\":1795561508127,\"end\":1795561508129}}}",
  stopStepFinish: "{\"type\":\"step_finish\",\"timestamp\":1795561508146,\"sessionID\":\"ses_df031b995ffeSMydmNsdhirM7A\",\"part\":{\"id\":\"prt_20fce4d23001EdbvL2qhhK45ZQ\",\"reason\":\"stop\",\"messageID\":\"msg_20fce4cdb001HKcY8GtAgpyUWn\",\"sessionID\":\"ses_df031b995ffeSMydmNsdhirM7A\",\"type\":\"step-finish\",\"tokens\":{\"total\":135,\"input\":130,\"output\":5,\"reasoning\":0,\"cache\":{\"write\":0,\"read\":0}},\"cost\":0}}",
  toolBash: "{\"type\":\"tool_use\",\"timestamp\":1795561522032,\"sessionID\":\"ses_df031b995ffeSMydmNsdhirM7A\",\"part\":{\"type\":\"tool\",\"tool\":\"bash\",\"callID\":\"call_test_3_0\",\"state\":{\"status\":\"completed\",\"input\":{\"command\":\"cat hello.txt\",\"description\":\"show file\"},\"output\":\"hi from opencode\\n\",\"metadata\":{\"output\":\"hi from opencode\\n\",\"exit\":0,\"truncated\":false},\"title\":\"cat hello.txt\",\"time\":{\"start\":1795561521770,\"end\":1795561521989}},\"id\":\"prt_20fce823a001OiMKEXiqV1i1OQ\",\"sessionID\":\"ses_df031b995ffeSMydmNsdhirM7A\",\"messageID\":\"msg_20fce7e2a001FIQCVVN7M1mS0H\"}}",
  apiError: "{\"type\":\"error\",\"timestamp\":1795562134985,\"sessionID\":\"ses_df0282a93ffez3EPxpJQJHmW1c\",\"error\":{\"name\":\"APIError\",\"data\":{\"message\":\"this model does not exist\",\"statusCode\":400,\"isRetryable\":false,\"responseHeaders\":{\"connection\":\"keep-alive\",\"content-type\":\"application/json\",\"date\":\"Tue, 24 Nov 2026 23:15:34 GMT\",\"keep-alive\":\"timeout=5\",\"transfer-encoding\":\"chunked\"},\"responseBody\":\"{\\\"error\\\":{\\\"message\\\":\\\"this model does not exist\\\",\\\"type\\\":\\\"invalid_request_error\\\",\\\"param\\\":null,\\\"code\\\":\\\"400\\\"}}\",\"metadata\":{\"url\":\"http://127.0.0.1:4000/v1/chat/completions\"}}}}",
};

describe("parseOpencodeLine", () => {
  it("maps a completed tool call to a tool_call and its tool_result, in the builtin harness's shapes", () => {
    expect(parseOpencodeLine(REAL.toolWrite)).toEqual({
      kind: "events",
      sessionId: "ses_df031b995ffeSMydmNsdhirM7A",
      events: [
        { type: "tool_call", payload: { id: "call_test_1_0", name: "write", input: { filePath: "hello.txt", content: "hi from opencode\n" } } },
        { type: "tool_result", payload: { callId: "call_test_1_0", output: "Wrote file successfully.", isError: false } },
      ],
    });
    expect(parseOpencodeLine(REAL.toolBash)).toMatchObject({
      events: [{ type: "tool_call", payload: { name: "bash", input: { command: "cat hello.txt", description: "show file" } } }, { type: "tool_result", payload: { output: "hi from opencode\n", exitCode: 0, isError: false } }],
    });
  });

  it("maps text to an assistant message and step ends to usage, telling tool steps from the final one", () => {
    expect(parseOpencodeLine(REAL.stepStart)).toEqual({ kind: "session", sessionId: "ses_df031b995ffeSMydmNsdhirM7A" });
    expect(parseOpencodeLine(REAL.text)).toMatchObject({ kind: "events", events: [{ type: "assistant_message", payload: { text: "I wrote the file." } }] });
    expect(parseOpencodeLine(REAL.toolStepFinish)).toEqual({ kind: "step", sessionId: "ses_df031b995ffeSMydmNsdhirM7A", usage: { promptTokens: 100, completionTokens: 20 }, toolStep: true });
    expect(parseOpencodeLine(REAL.stopStepFinish)).toMatchObject({ kind: "step", usage: { promptTokens: 130, completionTokens: 5 }, toolStep: false });
  });

  it("reads the message of an error line, and ignores what it does not know", () => {
    expect(parseOpencodeLine(REAL.apiError)).toEqual({ kind: "error", message: "this model does not exist" });
    expect(parseOpencodeLine("not json")).toEqual({ kind: "ignored" });
    expect(parseOpencodeLine(JSON.stringify({ type: "reasoning", sessionID: "s", part: { text: "hmm" } }))).toEqual({ kind: "ignored" });
    expect(parseOpencodeLine(JSON.stringify({ type: "tool_use", sessionID: "s", part: { tool: "bash", callID: "c", state: { status: "error", input: { command: "x" }, error: "denied" } } }))).toMatchObject({
      events: [{ type: "tool_call" }, { type: "tool_result", payload: { callId: "c", output: "denied", isError: true } }],
    });
  });
});

describe("opencodeCommand", () => {
  it("quotes what comes from the agent and resumes only with a session id", () => {
    const fresh = opencodeCommand({ model: "it's-a-model", maxSteps: 7, resume: null, instructions: false });
    expect(fresh).toContain("'\\''");
    expect(fresh).not.toContain("--session");
    expect(fresh).not.toContain("--continue");
    expect(fresh).toContain('"steps":7');
    expect(fresh).toContain("< .berth/opencode/prompt.txt");
    expect(opencodeCommand({ model: "m", maxSteps: 1, resume: { sessionId: "ses_abc" }, instructions: true })).toContain("--session 'ses_abc'");
    expect(opencodeCommand({ model: "m", maxSteps: 1, resume: "last", instructions: true })).toContain(" --continue ");
  });
});

describe("replayPrompt", () => {
  it("is the message alone without history, and the earlier conversation followed by the message otherwise", () => {
    expect(replayPrompt([], "hello")).toBe("hello");
    const prompt = replayPrompt(
      [
        { role: "user", content: "list files" },
        { role: "assistant", content: null, tool_calls: [{ id: "c1", type: "function", function: { name: "bash", arguments: '{"command":"ls"}' } }] },
        { role: "tool", tool_call_id: "c1", content: "x".repeat(5000) },
        { role: "assistant", content: "There is one file." },
      ],
      "and now?",
    );
    expect(prompt).toContain("User: list files");
    expect(prompt).toContain('Assistant called bash {"command":"ls"}');
    expect(prompt).toContain("… (cut)");
    expect(prompt.length).toBeLessThan(3000);
    expect(prompt.endsWith("and now?")).toBe(true);
  });
});
