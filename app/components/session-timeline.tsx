import { memo, useState } from "react";
import { formatCost, formatDateTime, formatNumber } from "../lib/format";
import type { StoredEvent } from "../lib/types";
import { OutputBlock } from "./ui";

type Payloads = {
  user_message: { text: string };
  assistant_message: { text: string };
  tool_call: { id: string; name: string; input: unknown };
  tool_result: { callId: string; output: string; exitCode?: number | null; isError: boolean };
  status: { from: string; to: string; reason?: string };
  error: { message: string };
  usage: { promptTokens: number; completionTokens: number; cost?: number };
};

type Entry =
  | { kind: "user" | "assistant"; seq: number; text: string; at: Date }
  | { kind: "tool"; seq: number; call: Payloads["tool_call"]; result: (Payloads["tool_result"] & { seq: number }) | null; at: Date }
  | { kind: "orphan_result"; seq: number; result: Payloads["tool_result"]; at: Date }
  | { kind: "status"; seq: number; steps: Array<Payloads["status"] & { seq: number; at: Date }> }
  | { kind: "error"; seq: number; message: string; at: Date }
  | { kind: "usage"; seq: number; usage: Payloads["usage"]; at: Date };

const payload = <T extends keyof Payloads>(event: StoredEvent) => event.payload as Payloads[T];

/**
 * Events to what the page shows: each tool result goes inside its call, consecutive status changes
 * make one line. Entries are keyed by the seq of their first event, so they never move once shown.
 */
export function buildTimeline(events: StoredEvent[]): Entry[] {
  const entries: Entry[] = [];
  const calls = new Map<string, Extract<Entry, { kind: "tool" }>>();
  for (const event of events) {
    const at = new Date(event.createdAt);
    switch (event.type) {
      case "user_message":
      case "assistant_message":
        entries.push({ kind: event.type === "user_message" ? "user" : "assistant", seq: event.seq, text: payload<"user_message">(event).text, at });
        break;
      case "tool_call": {
        const entry = { kind: "tool" as const, seq: event.seq, call: payload<"tool_call">(event), result: null, at };
        calls.set(entry.call.id, entry);
        entries.push(entry);
        break;
      }
      case "tool_result": {
        const result = payload<"tool_result">(event);
        const call = calls.get(result.callId);
        if (call && !call.result) {
          // Replace, not mutate: memoised rows re-render only when their entry changes.
          const index = entries.lastIndexOf(call);
          const updated = { ...call, result: { ...result, seq: event.seq } };
          entries[index] = updated;
          calls.set(result.callId, updated);
        } else entries.push({ kind: "orphan_result", seq: event.seq, result, at });
        break;
      }
      case "status": {
        const last = entries[entries.length - 1];
        const step = { ...payload<"status">(event), seq: event.seq, at };
        if (last?.kind === "status") entries[entries.length - 1] = { ...last, steps: [...last.steps, step] };
        else entries.push({ kind: "status", seq: event.seq, steps: [step] });
        break;
      }
      case "error":
        entries.push({ kind: "error", seq: event.seq, message: payload<"error">(event).message, at });
        break;
      case "usage":
        entries.push({ kind: "usage", seq: event.seq, usage: payload<"usage">(event), at });
        break;
    }
  }
  return entries;
}

const LONG_MESSAGE_LINES = 40;

/** A message; a very long one (an agent quoting a whole command output) starts collapsed. */
function MessageText({ text }: { text: string }) {
  const lines = text.split("\n").length;
  const long = lines > LONG_MESSAGE_LINES || text.length > 6_000;
  const [expanded, setExpanded] = useState(false);
  return (
    <>
      <div className={long && !expanded ? "message-text collapsed" : "message-text"}>{text}</div>
      {long ? (
        <button type="button" className="button button-small output-toggle" aria-expanded={expanded} onClick={() => setExpanded((value) => !value)}>
          {expanded ? "Collapse" : `Show the whole message (${lines.toLocaleString("en")} lines)`}
        </button>
      ) : null}
    </>
  );
}

function time(at: Date) {
  return (
    <time dateTime={at.toISOString()} title={formatDateTime(at)}>
      {at.toLocaleTimeString("en", { hour: "2-digit", minute: "2-digit", second: "2-digit" })}
    </time>
  );
}

function ToolInput({ call }: { call: Payloads["tool_call"] }) {
  const input = call.input as Record<string, unknown> | null;
  if (call.name === "bash" && input && typeof input.command === "string") {
    return (
      <pre className="tool-input">
        <span className="prompt" aria-hidden="true">
          ${" "}
        </span>
        {input.command}
      </pre>
    );
  }
  if (input && typeof input.path === "string" && Object.keys(input).length === 1) {
    return <pre className="tool-input">{input.path}</pre>;
  }
  return <OutputBlock text={JSON.stringify(call.input, null, 2) ?? ""} label="input" />;
}

function ToolEntry({ entry, running }: { entry: Extract<Entry, { kind: "tool" }>; running: boolean }) {
  const { call, result } = entry;
  const state = !result ? (running ? "running" : "pending") : result.isError ? "error" : "ok";
  return (
    <article className={`tool tool-${state}`} aria-label={`Tool call ${call.name}`} data-seq={entry.seq} data-testid="tool-call">
      <header className="tool-head">
        <span className="tool-name mono">{call.name}</span>
        <span className="tool-state">
          {state === "running" ? (
            <>
              <span className="spinner" aria-hidden="true" /> running
            </>
          ) : state === "pending" ? (
            "waiting for result"
          ) : result?.exitCode !== undefined && result?.exitCode !== null ? (
            `exit ${result.exitCode}`
          ) : state === "error" ? (
            "failed"
          ) : (
            "done"
          )}
        </span>
        <span className="entry-time muted small">{time(entry.at)}</span>
      </header>
      <ToolInput call={call} />
      {result ? (
        <div data-testid="tool-output">
          <OutputBlock text={result.output} tone={result.isError ? "error" : undefined} />
        </div>
      ) : (
        <div className="output output-placeholder" aria-hidden="true">
          <pre>…</pre>
        </div>
      )}
    </article>
  );
}

const EntryView = memo(function EntryView({ entry, running }: { entry: Entry; running: boolean }) {
  switch (entry.kind) {
    case "user":
    case "assistant":
      return (
        <article className={`message message-${entry.kind}`} data-seq={entry.seq} data-testid={`${entry.kind}-message`}>
          <header className="message-head">
            <span>{entry.kind === "user" ? "You" : "Agent"}</span>
            <span className="muted small">{time(entry.at)}</span>
          </header>
          <MessageText text={entry.text} />
        </article>
      );
    case "tool":
      return <ToolEntry entry={entry} running={running} />;
    case "orphan_result":
      return (
        <article className="tool tool-ok" data-seq={entry.seq}>
          <header className="tool-head">
            <span className="tool-name mono">result of {entry.result.callId}</span>
          </header>
          <OutputBlock text={entry.result.output} tone={entry.result.isError ? "error" : undefined} />
        </article>
      );
    case "status":
      return (
        <div className="status-line" data-seq={entry.seq} data-testid="status-line">
          <span className="status-line-rule" aria-hidden="true" />
          <span className="status-line-text">
            {entry.steps.map((step, index) => (
              <span key={step.seq} className={`status-step status-${step.to}`} title={`${formatDateTime(step.at)}${step.reason ? `: ${step.reason}` : ""}`}>
                {index === 0 ? <span className="muted">{step.from} → </span> : <span className="muted"> → </span>}
                <strong>{step.to}</strong>
                {step.reason ? <span className="muted"> ({step.reason})</span> : null}
              </span>
            ))}
          </span>
          <span className="status-line-rule" aria-hidden="true" />
        </div>
      );
    case "error":
      return (
        <div className="event-error" role="note" data-seq={entry.seq}>
          <strong>Error</strong> {entry.message}
        </div>
      );
    case "usage":
      return (
        <div className="usage-line muted small" data-seq={entry.seq}>
          {formatNumber(entry.usage.promptTokens)} prompt + {formatNumber(entry.usage.completionTokens)} completion tokens
          {entry.usage.cost !== undefined ? ` · ${formatCost(entry.usage.cost)}` : ""}
        </div>
      );
  }
}, sameEntry);

/** Events never change once stored: an entry changes only by gaining its result or another status step. */
function entryVersion(entry: Entry): string {
  if (entry.kind === "tool") return `${entry.seq}:${entry.result?.seq ?? ""}`;
  if (entry.kind === "status") return `${entry.seq}:${entry.steps.length}`;
  return String(entry.seq);
}

function sameEntry(previous: { entry: Entry; running: boolean }, next: { entry: Entry; running: boolean }) {
  return previous.running === next.running && entryVersion(previous.entry) === entryVersion(next.entry);
}

export function Timeline({ entries, running }: { entries: Entry[]; running: boolean }) {
  return (
    <>
      {entries.map((entry) => (
        <EntryView key={entry.seq} entry={entry} running={running && entry.kind === "tool" && !entry.result} />
      ))}
    </>
  );
}

export function StreamingMessage({ text }: { text: string }) {
  return (
    <article className="message message-assistant message-streaming" aria-busy="true" data-testid="streaming-message">
      <header className="message-head">
        <span>Agent</span>
        <span className="muted small">typing…</span>
      </header>
      <div className="message-text">
        {text}
        <span className="caret" aria-hidden="true" />
      </div>
    </article>
  );
}
