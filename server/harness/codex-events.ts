import { z } from "zod";
import { parseJsonLine } from "./external";
import type { EventInput } from "../services/event-log";

/**
 * codex's `exec --json` output (one JSON object per line), mapped to Berth events in the shapes the
 * builtin harness records: `assistant_message {text}`, `tool_call {id, name, input}`,
 * `tool_result {callId, output, exitCode?, isError}`. Checked against @openai/codex 0.169 (pinned in
 * package.json). Items are recorded when they complete (`item.completed`); reasoning, to-do lists and
 * codex's own notices (`error` items such as "model metadata not found") are not conversation and
 * are left out, as are line types a newer codex may add.
 *
 * codex numbers its items per run (`item_0`, `item_1`, …), so call ids get a prefix unique to the
 * Berth turn.
 */

const item = z.discriminatedUnion("type", [
  z.object({ id: z.string(), type: z.literal("agent_message"), text: z.string() }).loose(),
  z
    .object({
      id: z.string(),
      type: z.literal("command_execution"),
      command: z.string(),
      aggregated_output: z.string(),
      exit_code: z.number().nullable(),
      status: z.string(),
    })
    .loose(),
  z
    .object({
      id: z.string(),
      type: z.literal("file_change"),
      changes: z.array(z.object({ path: z.string(), kind: z.string() }).loose()),
      status: z.string(),
    })
    .loose(),
  z
    .object({
      id: z.string(),
      type: z.literal("mcp_tool_call"),
      server: z.string(),
      tool: z.string(),
      arguments: z.unknown().optional(),
      result: z.unknown().optional(),
      error: z.object({ message: z.string() }).loose().nullish(),
      status: z.string(),
    })
    .loose(),
]);

const usage = z
  .object({ input_tokens: z.number(), cached_input_tokens: z.number().optional(), output_tokens: z.number(), reasoning_output_tokens: z.number().optional() })
  .loose();

const line = z.discriminatedUnion("type", [
  z.object({ type: z.literal("thread.started"), thread_id: z.string().min(1) }).loose(),
  z.object({ type: z.literal("item.completed"), item: z.object({ id: z.string(), type: z.string() }).loose() }).loose(),
  z.object({ type: z.literal("turn.completed"), usage }).loose(),
  z.object({ type: z.literal("turn.failed"), error: z.object({ message: z.string() }).loose() }).loose(),
  z.object({ type: z.literal("error"), message: z.string() }).loose(),
]);

/** Token totals of the codex thread so far (codex reports them for the whole thread, not per turn). */
export type CodexUsage = { inputTokens: number; outputTokens: number };

export type CodexOutput =
  | { kind: "thread"; threadId: string }
  | { kind: "events"; events: EventInput[] }
  | { kind: "usage"; total: CodexUsage }
  /** The turn failed (the model call did, after codex's retries). */
  | { kind: "failed"; message: string }
  /** A notice on the way (e.g. "Reconnecting... 1/5"); the last one explains an exit without `turn.failed`. */
  | { kind: "notice"; message: string }
  | { kind: "ignored" };

export function parseCodexLine(text: string, idPrefix: string): CodexOutput {
  const value = parseJsonLine(line, text);
  if (!value) return { kind: "ignored" };
  switch (value.type) {
    case "thread.started":
      return { kind: "thread", threadId: value.thread_id };
    case "turn.completed":
      return { kind: "usage", total: { inputTokens: value.usage.input_tokens, outputTokens: value.usage.output_tokens } };
    case "turn.failed":
      return { kind: "failed", message: errorMessage(value.error.message) };
    case "error":
      return { kind: "notice", message: errorMessage(value.message) };
    case "item.completed": {
      const events = itemEvents(value.item, idPrefix);
      return events ? { kind: "events", events } : { kind: "ignored" };
    }
  }
}

function itemEvents(raw: unknown, idPrefix: string): EventInput[] | null {
  const parsed = item.safeParse(raw);
  if (!parsed.success) return null;
  const value = parsed.data;
  const id = `${idPrefix}${value.id}`;
  switch (value.type) {
    case "agent_message":
      return value.text.trim() ? [{ type: "assistant_message", payload: { text: value.text } }] : null;
    case "command_execution":
      return [
        { type: "tool_call", payload: { id, name: "command_execution", input: { command: value.command } } },
        {
          type: "tool_result",
          payload: {
            callId: id,
            output: value.aggregated_output,
            ...(value.exit_code !== null ? { exitCode: value.exit_code } : {}),
            // As the builtin harness's bash: a non-zero exit is an error; so is a command that never ran (declined).
            isError: value.exit_code !== 0,
          },
        },
      ];
    case "file_change":
      return [
        { type: "tool_call", payload: { id, name: "file_change", input: { changes: value.changes.map((change) => ({ path: change.path, kind: change.kind })) } } },
        {
          type: "tool_result",
          payload: { callId: id, output: value.changes.map((change) => `${change.kind} ${change.path}`).join("\n"), isError: value.status !== "completed" },
        },
      ];
    case "mcp_tool_call": {
      const failed = value.status !== "completed" || Boolean(value.error);
      const output = value.error?.message ?? (typeof value.result === "string" ? value.result : JSON.stringify(value.result ?? null));
      return [
        { type: "tool_call", payload: { id, name: `${value.server}.${value.tool}`, input: value.arguments ?? {} } },
        { type: "tool_result", payload: { callId: id, output, isError: failed } },
      ];
    }
  }
}

/** codex passes the gateway's error body through as it came; show its message when it is an OpenAI error. */
function errorMessage(message: string): string {
  try {
    const body = JSON.parse(message) as { error?: { message?: unknown } };
    if (typeof body?.error?.message === "string") return body.error.message;
  } catch {
    // not JSON: the message as it is
  }
  return message;
}
