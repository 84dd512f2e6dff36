import { Fragment, memo, useState } from "react";
import { egressCount, egressFigures, egressTarget, hostPort, type EgressEventPayload } from "../lib/egress";
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
  egress: EgressEventPayload;
};

export type EgressItem = Payloads["egress"] & { seq: number; at: Date };

type Entry =
  | { kind: "user" | "assistant"; seq: number; text: string; at: Date }
  | { kind: "tool"; seq: number; call: Payloads["tool_call"]; result: (Payloads["tool_result"] & { seq: number }) | null; at: Date }
  | { kind: "orphan_result"; seq: number; result: Payloads["tool_result"]; at: Date }
  | { kind: "status"; seq: number; steps: Array<Payloads["status"] & { seq: number; at: Date }> }
  | { kind: "error"; seq: number; message: string; at: Date }
  | { kind: "usage"; seq: number; usage: Payloads["usage"]; at: Date }
  | { kind: "egress"; seq: number; items: EgressItem[] };

const payload = <T extends keyof Payloads>(event: StoredEvent) => event.payload as Payloads[T];

/** Denied, or carrying a brokered secret's stub to a host it is not bound to: never folded away. */
export function isEgressAlarm(item: Pick<EgressEventPayload, "decision" | "stubsSeen">): boolean {
  return item.decision === "denied" || (item.stubsSeen?.length ?? 0) > 0;
}

/**
 * Events to what the page shows: each tool result goes inside its call, consecutive status changes
 * make one line, consecutive egress events one block. Entries are keyed by the seq of their first event, so they never move once shown.
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
      case "egress": {
        const last = entries[entries.length - 1];
        const item = { ...payload<"egress">(event), seq: event.seq, at };
        if (last?.kind === "egress") entries[entries.length - 1] = { ...last, items: [...last.items, item] };
        else entries.push({ kind: "egress", seq: event.seq, items: [item] });
        break;
      }
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

function EgressLine({ item }: { item: EgressItem }) {
  const denied = item.decision === "denied";
  const count = egressCount(item);
  return (
    <li
      className={denied ? "egress-line egress-denied" : "egress-line"}
      data-egress-seq={item.seq}
      data-decision={item.decision}
      data-testid="egress-event"
      title={denied ? undefined : item.rule ? `allowed by ${item.rule === "open" ? "open mode" : `rule ${item.rule}`}` : "allowed"}
    >
      <span className="egress-main">
        <span className="egress-icon" aria-hidden="true">
          {denied ? "⊘" : "↗"}
        </span>
        {denied ? <strong className="egress-verdict">denied</strong> : null}
        <span className="egress-target mono">{egressTarget(item)}</span>
        {item.status !== undefined ? <span className={item.status >= 400 ? "egress-status egress-status-error" : "egress-status"}>→ {item.status}</span> : null}
        {count > 1 ? (
          <span className="egress-count" title={`${count} alike within a second, figures summed`}>
            ×{count}
          </span>
        ) : null}
        {denied ? (
          item.reason ? <span className="egress-reason">{item.reason}</span> : null
        ) : (
          <span className="egress-figures muted">{egressFigures(item)}</span>
        )}
        {item.brokered?.length ? (
          <span className="egress-brokered" title="The gateway put these brokered secrets into the request">
            brokered {item.brokered.join(", ")}
          </span>
        ) : null}
        <span className="entry-time muted small">{time(item.at)}</span>
      </span>
      {item.stubsSeen?.length ? (
        <span className="egress-stubs" role="note">
          <strong>⚠ Possible secret exfiltration:</strong> the stub of {item.stubsSeen.join(", ")} was sent to {hostPort(item.host, item.port)}, which{" "}
          {item.stubsSeen.length === 1 ? "it is" : "they are"} not bound to. The gateway left the stub as it was; the secret itself did not leave.
        </span>
      ) : null}
    </li>
  );
}

/** Lines of a folded block: the last few, plus every denial and stub warning wherever it is. */
const EGRESS_FOLDED_LINES = 6;

function EgressBlock({ entry }: { entry: Extract<Entry, { kind: "egress" }> }) {
  const [expanded, setExpanded] = useState(false);
  const { items } = entry;
  const foldable = items.length > EGRESS_FOLDED_LINES + 2;
  const shown = items
    .map((item, index) => ({ item, index }))
    .filter(({ item, index }) => !foldable || expanded || index >= items.length - EGRESS_FOLDED_LINES || isEgressAlarm(item));
  const connections = items.reduce((sum, item) => sum + egressCount(item), 0);
  const denied = items.filter((item) => item.decision === "denied").reduce((sum, item) => sum + egressCount(item), 0);
  return (
    <section className={denied > 0 ? "egress-block egress-block-denied" : "egress-block"} data-seq={entry.seq} data-testid="egress-block" aria-label="Network connections">
      <header className="egress-head small">
        <span>Network</span>
        <span className="muted">
          {connections} {connections === 1 ? "connection" : "connections"}
          {denied > 0 ? <strong className="egress-head-denied"> · {denied} denied</strong> : null}
        </span>
      </header>
      <ul className="egress-lines">
        {shown.map(({ item, index }, position) => (
          <Fragment key={item.seq}>
            {index !== (position === 0 ? 0 : shown[position - 1]!.index + 1) ? (
              <li className="egress-gap muted small" aria-hidden="true">
                ⋯
              </li>
            ) : null}
            <EgressLine item={item} />
          </Fragment>
        ))}
      </ul>
      {foldable ? (
        <button type="button" className="button button-small output-toggle" aria-expanded={expanded} onClick={() => setExpanded((value) => !value)}>
          {expanded ? "Fold" : `Show all ${items.length} lines (${items.length - shown.length} folded)`}
        </button>
      ) : null}
    </section>
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
    case "egress":
      return <EgressBlock entry={entry} />;
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
  if (entry.kind === "egress") return `${entry.seq}:${entry.items.length}`;
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
