import { z } from "zod";
import { parseJsonLine } from "./external";
import type { EventInput } from "../services/event-log";
import type { TurnUsage } from "../services/turns";

/**
 * Claude Code's `-p --output-format stream-json --verbose --include-partial-messages` output (one
 * JSON object per line), mapped to Berth events in the shapes the builtin harness records:
 * `assistant_message {text}`, `tool_call {id, name, input}`, `tool_result {callId, output, exitCode?,
 * isError}`. Checked against @anthropic-ai/claude-code 2.1.331 (pinned in package.json):
 *
 * - `system` / `init` carries the session id;
 * - `assistant` lines carry one content block each (text, tool_use), several per model call;
 * - `user` lines carry the tool results (`is_error`; Bash failures start with "Exit code N");
 * - `stream_event` lines are the raw API stream: only `message_start` (input tokens) and
 *   `message_delta` (output tokens, stop reason) are used, for the usage of each model call;
 * - `result` ends the run (`is_error`, `result` or `errors`).
 *
 * Lines of a subagent (`parent_tool_use_id` set) and other types are ignored, so a newer Claude Code
 * that adds types still works. One parser per run: it pairs each call's start and end.
 */

const usage = z
  .object({
    input_tokens: z.number().nullish(),
    output_tokens: z.number().nullish(),
    cache_read_input_tokens: z.number().nullish(),
    cache_creation_input_tokens: z.number().nullish(),
  })
  .loose();

const textBlock = z.object({ type: z.literal("text"), text: z.string() }).loose();
const toolUseBlock = z.object({ type: z.literal("tool_use"), id: z.string(), name: z.string(), input: z.unknown() }).loose();
const toolResultBlock = z
  .object({
    type: z.literal("tool_result"),
    tool_use_id: z.string(),
    content: z.union([z.string(), z.array(z.object({ type: z.string(), text: z.string().optional() }).loose())]).optional(),
    is_error: z.boolean().optional(),
  })
  .loose();
const anyBlock = z.object({ type: z.string() }).loose();
const messageStart = z.object({ type: z.literal("message_start"), message: z.object({ usage: usage.optional() }).loose() }).loose();
const messageDelta = z.object({ type: z.literal("message_delta"), delta: z.object({ stop_reason: z.string().nullish() }).loose(), usage: usage.nullish() }).loose();

const line = z.discriminatedUnion("type", [
  z.object({ type: z.literal("system"), subtype: z.string(), session_id: z.string() }).loose(),
  z
    .object({
      type: z.literal("assistant"),
      session_id: z.string(),
      parent_tool_use_id: z.string().nullish(),
      is_api_error_message: z.boolean().optional(),
      message: z.object({ model: z.string().optional(), content: z.array(anyBlock) }).loose(),
    })
    .loose(),
  z
    .object({
      type: z.literal("user"),
      session_id: z.string(),
      parent_tool_use_id: z.string().nullish(),
      message: z.object({ content: z.union([z.string(), z.array(anyBlock)]) }).loose(),
      tool_use_result: z.unknown().optional(),
    })
    .loose(),
  z
    .object({
      type: z.literal("stream_event"),
      session_id: z.string(),
      parent_tool_use_id: z.string().nullish(),
      event: anyBlock,
    })
    .loose(),
  z
    .object({
      type: z.literal("result"),
      session_id: z.string(),
      subtype: z.string().optional(),
      is_error: z.boolean(),
      result: z.string().nullish(),
      errors: z.array(z.string()).nullish(),
    })
    .loose(),
]);

export type ClaudeCodeOutput =
  /** Claude Code started (or resumed) this session. */
  | { kind: "session"; sessionId: string }
  | { kind: "events"; sessionId: string; events: EventInput[] }
  /** One model call ended; `toolStep` when it asked for tools (the turn goes on). */
  | { kind: "step"; sessionId: string; usage: TurnUsage; toolStep: boolean }
  /** The run ended; `error` when Claude Code reports it failed. */
  | { kind: "result"; sessionId: string; error: string | null }
  | { kind: "ignored" };

export class ClaudeCodeParser {
  /** Input tokens of the model call under way, from its message_start. */
  private callInput: { input: number; cache: number } | null = null;

  parse(text: string): ClaudeCodeOutput {
    const value = parseJsonLine(line, text);
    if (!value) return { kind: "ignored" };
    switch (value.type) {
      case "system":
        return value.subtype === "init" ? { kind: "session", sessionId: value.session_id } : { kind: "ignored" };
      case "assistant": {
        // An API error is reported as a made-up assistant message, then again by the result line.
        if (value.parent_tool_use_id || value.is_api_error_message || value.message.model === "<synthetic>") return { kind: "ignored" };
        const events: EventInput[] = [];
        for (const block of value.message.content) {
          const text = textBlock.safeParse(block);
          if (text.success && text.data.text.trim()) events.push({ type: "assistant_message", payload: { text: text.data.text } });
          const use = toolUseBlock.safeParse(block);
          if (use.success) events.push({ type: "tool_call", payload: { id: use.data.id, name: use.data.name, input: use.data.input ?? {} } });
        }
        return events.length > 0 ? { kind: "events", sessionId: value.session_id, events } : { kind: "ignored" };
      }
      case "user": {
        if (value.parent_tool_use_id || typeof value.message.content === "string") return { kind: "ignored" };
        const events: EventInput[] = [];
        for (const block of value.message.content) {
          const result = toolResultBlock.safeParse(block);
          if (!result.success) continue;
          const output = typeof result.data.content === "string" ? result.data.content : (result.data.content ?? []).map((part) => part.text ?? `[${part.type}]`).join("\n");
          const isError = result.data.is_error === true;
          const exitCode = isError ? Number(/^Exit code (\d+)/.exec(output)?.[1] ?? Number.NaN) : isShellResult(value.tool_use_result) ? 0 : Number.NaN;
          events.push({ type: "tool_result", payload: { callId: result.data.tool_use_id, output, ...(Number.isNaN(exitCode) ? {} : { exitCode }), isError } });
        }
        return events.length > 0 ? { kind: "events", sessionId: value.session_id, events } : { kind: "ignored" };
      }
      case "stream_event": {
        if (value.parent_tool_use_id) return { kind: "ignored" };
        const started = messageStart.safeParse(value.event);
        if (started.success) {
          const start = started.data.message.usage;
          this.callInput = { input: start?.input_tokens ?? 0, cache: (start?.cache_read_input_tokens ?? 0) + (start?.cache_creation_input_tokens ?? 0) };
          return { kind: "ignored" };
        }
        const ended = messageDelta.safeParse(value.event);
        if (ended.success) {
          const delta = ended.data;
          const start = this.callInput ?? { input: 0, cache: 0 };
          this.callInput = null;
          // message_delta's usage is cumulative for the call; its input counts, when given, are the final ones.
          const input = delta.usage?.input_tokens ?? start.input;
          const cache = delta.usage?.cache_read_input_tokens != null || delta.usage?.cache_creation_input_tokens != null
            ? (delta.usage.cache_read_input_tokens ?? 0) + (delta.usage.cache_creation_input_tokens ?? 0)
            : start.cache;
          return {
            kind: "step",
            sessionId: value.session_id,
            usage: { promptTokens: input + cache, completionTokens: delta.usage?.output_tokens ?? 0 },
            toolStep: delta.delta.stop_reason === "tool_use",
          };
        }
        return { kind: "ignored" };
      }
      case "result": {
        if (!value.is_error) return { kind: "result", sessionId: value.session_id, error: null };
        const message = value.errors?.length ? value.errors.join("; ") : value.result?.trim() || `Claude Code stopped (${value.subtype ?? "error"})`;
        return { kind: "result", sessionId: value.session_id, error: message };
      }
    }
  }
}

/** The Bash tool's structured result (stdout, stderr): a command that ran and exited 0. */
function isShellResult(result: unknown): boolean {
  return typeof result === "object" && result !== null && typeof (result as { stdout?: unknown }).stdout === "string" && (result as { interrupted?: unknown }).interrupted !== true;
}
