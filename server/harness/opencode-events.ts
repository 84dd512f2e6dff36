import { z } from "zod";
import { parseJsonLine } from "./external";
import type { EventInput } from "../services/event-log";
import type { TurnUsage } from "../services/turns";

/**
 * opencode's `run --format json` output (one JSON object per line), mapped to Berth events in the
 * shapes the builtin harness records: `assistant_message {text}`, `tool_call {id, name, input}`,
 * `tool_result {callId, output, exitCode?, isError}`. Checked against opencode-ai 1.18 (pinned in
 * package.json); lines of other types are ignored, so a newer opencode that adds types still works.
 */

const part = z.object({ sessionID: z.string().optional() }).loose();

const line = z.discriminatedUnion("type", [
  z.object({ type: z.literal("step_start"), sessionID: z.string(), part }).loose(),
  z.object({ type: z.literal("text"), sessionID: z.string(), part: part.extend({ text: z.string() }) }).loose(),
  z
    .object({
      type: z.literal("tool_use"),
      sessionID: z.string(),
      part: part.extend({
        tool: z.string(),
        callID: z.string(),
        state: z.union([
          z.object({ status: z.literal("completed"), input: z.unknown(), output: z.string(), metadata: z.object({ exit: z.number().nullish() }).loose().optional() }).loose(),
          z.object({ status: z.literal("error"), input: z.unknown(), error: z.string() }).loose(),
        ]),
      }),
    })
    .loose(),
  z
    .object({
      type: z.literal("step_finish"),
      sessionID: z.string(),
      part: part.extend({
        reason: z.string().optional(),
        tokens: z.object({ input: z.number(), output: z.number(), reasoning: z.number().optional(), cache: z.object({ read: z.number(), write: z.number() }).partial().optional() }).optional(),
        cost: z.number().optional(),
      }),
    })
    .loose(),
  z.object({ type: z.literal("error"), sessionID: z.string().optional(), error: z.unknown() }).loose(),
]);

export type OpencodeOutput =
  | { kind: "session"; sessionId: string }
  | { kind: "events"; sessionId: string; events: EventInput[] }
  /** One model call ended; `toolStep` when it asked for tools (the turn goes on). */
  | { kind: "step"; sessionId: string; usage: TurnUsage; toolStep: boolean }
  | { kind: "error"; message: string }
  | { kind: "ignored" };

export function parseOpencodeLine(text: string): OpencodeOutput {
  const value = parseJsonLine(line, text);
  if (!value) return { kind: "ignored" };
  switch (value.type) {
    case "step_start":
      return { kind: "session", sessionId: value.sessionID };
    case "text":
      return value.part.text.trim() ? { kind: "events", sessionId: value.sessionID, events: [{ type: "assistant_message", payload: { text: value.part.text } }] } : { kind: "session", sessionId: value.sessionID };
    case "tool_use": {
      const { callID, tool, state } = value.part;
      const call: EventInput = { type: "tool_call", payload: { id: callID, name: tool, input: state.input ?? {} } };
      const result: EventInput =
        state.status === "completed"
          ? { type: "tool_result", payload: { callId: callID, output: state.output, ...(typeof state.metadata?.exit === "number" ? { exitCode: state.metadata.exit } : {}), isError: false } }
          : { type: "tool_result", payload: { callId: callID, output: state.error, isError: true } };
      return { kind: "events", sessionId: value.sessionID, events: [call, result] };
    }
    case "step_finish": {
      const tokens = value.part.tokens;
      const usage: TurnUsage = {
        promptTokens: tokens ? tokens.input + (tokens.cache?.read ?? 0) + (tokens.cache?.write ?? 0) : 0,
        completionTokens: tokens ? tokens.output + (tokens.reasoning ?? 0) : 0,
        ...(value.part.cost ? { cost: value.part.cost } : {}),
      };
      return { kind: "step", sessionId: value.sessionID, usage, toolStep: value.part.reason === "tool-calls" };
    }
    case "error":
      return { kind: "error", message: errorMessage(value.error) };
  }
}

function errorMessage(error: unknown): string {
  if (typeof error === "string") return error;
  if (error && typeof error === "object") {
    const record = error as { data?: { message?: unknown }; message?: unknown; name?: unknown };
    if (typeof record.data?.message === "string") return record.data.message;
    if (typeof record.message === "string") return record.message;
    if (typeof record.name === "string") return record.name;
  }
  return "opencode reported an error";
}
