import type { ChatMessage } from "../gateway/client";

export type HistoryEvent =
  | { seq: number; type: "user_message"; payload: { text: string } }
  | { seq: number; type: "assistant_message"; payload: { text: string } }
  | { seq: number; type: "tool_call"; payload: { id: string; name: string; input: unknown } }
  | { seq: number; type: "tool_result"; payload: { callId: string; output: string; exitCode?: number | null; isError: boolean } };

/** A turn as the history needs it: the user message it answers and where its own events start. */
export type HistoryTurn = { userSeq: number; startSeq: number | null };

/**
 * Rebuilds the model conversation from the event log. Turns run one at a time per session, so every
 * assistant/tool event belongs to the latest turn started at or before it; a user message belongs to
 * its own turn. Turns are replayed in the order they started, so a message queued while another turn
 * ran is placed after that turn's answer, and messages still queued are left out.
 */
export function buildConversation(events: HistoryEvent[], turns: HistoryTurn[], systemPrompt: string): ChatMessage[] {
  const started = turns.filter((turn): turn is { userSeq: number; startSeq: number } => turn.startSeq !== null).sort((a, b) => a.startSeq - b.startSeq);
  const buckets = new Map<number, HistoryEvent[]>(started.map((turn) => [turn.userSeq, []]));
  const userMessages = new Map<number, HistoryEvent>();
  for (const event of events) {
    if (event.type === "user_message") {
      userMessages.set(event.seq, event);
      continue;
    }
    let owner: number | undefined;
    for (const turn of started) {
      if (turn.startSeq < event.seq) owner = turn.userSeq;
      else break;
    }
    if (owner !== undefined) buckets.get(owner)!.push(event);
  }

  const messages: ChatMessage[] = systemPrompt ? [{ role: "system", content: systemPrompt }] : [];
  for (const turn of started) {
    const user = userMessages.get(turn.userSeq);
    if (user?.type === "user_message") messages.push({ role: "user", content: user.payload.text });
    let pendingText: string | null = null;
    for (const event of buckets.get(turn.userSeq)!) {
      if (event.type === "assistant_message") {
        if (pendingText !== null) messages.push({ role: "assistant", content: pendingText });
        pendingText = event.payload.text;
      } else if (event.type === "tool_call") {
        const last = messages[messages.length - 1];
        const call = { id: event.payload.id, type: "function" as const, function: { name: event.payload.name, arguments: JSON.stringify(event.payload.input ?? {}) } };
        // Consecutive tool calls (and any text just before them) are one assistant message.
        if (pendingText === null && last?.role === "assistant" && last.tool_calls) last.tool_calls.push(call);
        else messages.push({ role: "assistant", content: pendingText, tool_calls: [call] });
        pendingText = null;
      } else if (event.type === "tool_result") {
        if (pendingText !== null) messages.push({ role: "assistant", content: pendingText });
        pendingText = null;
        messages.push({ role: "tool", tool_call_id: event.payload.callId, content: event.payload.output });
      }
    }
    if (pendingText !== null) messages.push({ role: "assistant", content: pendingText });
  }
  return messages;
}

/** Tool calls of a turn's events that have no recorded result, in call order. */
export function unansweredCalls(events: HistoryEvent[]): { id: string; name: string }[] {
  const answered = new Set(events.filter((event) => event.type === "tool_result").map((event) => (event.payload as { callId: string }).callId));
  return events
    .filter((event): event is Extract<HistoryEvent, { type: "tool_call" }> => event.type === "tool_call")
    .filter((event) => !answered.has(event.payload.id))
    .map((event) => ({ id: event.payload.id, name: event.payload.name }));
}
