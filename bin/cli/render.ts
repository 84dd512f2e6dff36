import { egressCount, egressFigures, egressTarget, hostPort, type EgressEventPayload } from "../../app/lib/egress";
import type { Output } from "./output";

/** A stored session event as the API returns it. */
export type SessionEvent = { seq: number; type: string; payload: unknown; createdAt: Date | string };

const MAX_TOOL_OUTPUT_LINES = 40;

/**
 * Prints a session's events one by one: JSON lines with `--json` (`{"kind":"event",seq,type,…}` and
 * `{"kind":"delta",afterSeq,text}`), otherwise one readable line per event ending with its `#seq`.
 * Live assistant text (deltas) is written as it arrives; when the stored `assistant_message` follows,
 * only what the deltas did not already show is added.
 */
export class EventPrinter {
  /** Text streamed so far for the message being written, or null when none is. */
  private streamed: string | null = null;
  /** Trailing blank space of the streamed text, written only once more text follows it. */
  private held = "";
  /**
   * Egress events that arrived while a message was streaming: the gateway records traffic whenever
   * it happens, and a line of it must not cut the message in two. Printed once the message ends.
   */
  private heldEgress: SessionEvent[] = [];

  constructor(
    private readonly out: Output,
    private readonly options: { deltas: boolean } = { deltas: true },
  ) {}

  event(event: SessionEvent): void {
    if (this.out.json) {
      this.out.jsonLine({ kind: "event", seq: event.seq, type: event.type, payload: event.payload, createdAt: event.createdAt });
      return;
    }
    const { style } = this.out;
    const seq = style.dim(`#${event.seq}`);
    const payload = (event.payload ?? {}) as Record<string, unknown>;
    if (this.streamed !== null && event.type === "egress") {
      this.heldEgress.push(event);
      return;
    }
    if (this.streamed !== null) {
      const streamed = this.streamed;
      const held = this.held;
      this.streamed = null;
      this.held = "";
      if (event.type === "assistant_message" && typeof payload.text === "string" && payload.text.startsWith(streamed)) {
        this.out.write(`${block(held + payload.text.slice(streamed.length))}  ${seq}\n`);
        this.flushEgress();
        return;
      }
      this.out.write(`${style.dim(" (incomplete)")}\n`);
      this.flushEgress();
    }
    switch (event.type) {
      case "user_message":
        this.out.line(`${style.bold(style.cyan("you ›"))} ${block(String(payload.text ?? ""))}  ${seq}`);
        break;
      case "assistant_message":
        this.out.line(`${style.bold(style.green("assistant ›"))} ${block(String(payload.text ?? ""))}  ${seq}`);
        break;
      case "tool_call": {
        const input = (payload.input ?? {}) as Record<string, unknown>;
        const shown = payload.name === "bash" && typeof input.command === "string" ? `$ ${input.command}` : JSON.stringify(input);
        this.out.line(`${style.yellow(`⚙ ${String(payload.name)}`)} ${indentContinuation(shown)}  ${seq}`);
        break;
      }
      case "tool_result": {
        const exit = typeof payload.exitCode === "number" ? `exit ${payload.exitCode}` : payload.isError ? "failed" : "done";
        const label = payload.isError ? style.red(`↳ ${exit}`) : style.dim(`↳ ${exit}`);
        this.out.line(`${label}  ${seq}`);
        const output = String(payload.output ?? "").replace(/\n$/, "");
        if (output) {
          const lines = output.split("\n");
          for (const line of lines.slice(0, MAX_TOOL_OUTPUT_LINES)) this.out.line(`  ${line}`);
          if (lines.length > MAX_TOOL_OUTPUT_LINES) this.out.line(style.dim(`  … ${lines.length - MAX_TOOL_OUTPUT_LINES} more lines (--json shows everything)`));
        }
        break;
      }
      case "status": {
        const reason = payload.reason ? ` (${String(payload.reason)})` : "";
        this.out.line(style.dim(`· ${String(payload.from)} → ${String(payload.to)}${reason}`) + `  ${seq}`);
        break;
      }
      case "error":
        this.out.line(`${style.red(`✗ ${String(payload.message ?? "error")}`)}  ${seq}`);
        break;
      case "usage": {
        const cost = typeof payload.cost === "number" ? `, $${payload.cost.toFixed(4)}` : "";
        this.out.line(style.dim(`· ${String(payload.promptTokens)} prompt + ${String(payload.completionTokens)} completion tokens${cost}`) + `  ${seq}`);
        break;
      }
      case "egress":
        this.out.line(`${egressLine(payload as unknown as EgressEventPayload, this.out.style)}  ${seq}`);
        for (const warning of stubWarnings(payload as unknown as EgressEventPayload)) this.out.line(`  ${style.bold(style.red(warning))}`);
        break;
      default:
        this.out.line(`${event.type} ${JSON.stringify(payload)}  ${seq}`);
    }
  }

  private flushEgress(): void {
    const held = this.heldEgress;
    this.heldEgress = [];
    for (const event of held) this.event(event);
  }

  delta(afterSeq: number, text: string): void {
    if (!this.options.deltas) return;
    if (this.out.json) {
      this.out.jsonLine({ kind: "delta", afterSeq, text });
      return;
    }
    if (this.streamed === null) {
      this.streamed = "";
      this.out.write(`${this.out.style.bold(this.out.style.green("assistant ›"))} `);
    }
    this.streamed += text;
    const pending = this.held + text;
    const trailing = /\s*$/.exec(pending)![0];
    this.out.write(indentContinuation(pending.slice(0, pending.length - trailing.length)));
    this.held = trailing;
  }

  /** Ends a half-streamed line (before a notice or on exit). */
  interrupt(): void {
    if (this.streamed !== null && !this.out.json) this.out.write("\n");
    this.streamed = null;
    this.held = "";
    this.flushEgress();
  }
}

/**
 * One line per egress event: `↗ GET api.example.com:443/v1/x → 200 · 1.2 kB out · 3.4 kB in · 12 ms`,
 * `↗ CONNECT host:443 …` for a tunnel, `⊘ DENIED …: reason` for a refusal (marked in words, not
 * only in colour), `×N` when the gateway summed N alike.
 */
export function egressLine(event: EgressEventPayload, style: Output["style"]): string {
  const count = egressCount(event);
  const times = count > 1 ? ` ×${count}` : "";
  if (event.decision === "denied") {
    return style.red(`⊘ DENIED ${egressTarget(event)}${times}${event.reason ? `: ${event.reason}` : ""}`);
  }
  const status = event.status !== undefined ? ` → ${event.status}` : "";
  const brokered = event.brokered?.length ? ` · brokered ${event.brokered.join(", ")}` : "";
  return `${style.cyan("↗")} ${egressTarget(event)}${status}${times} ${style.dim(`· ${egressFigures(event)}${brokered}`)}`;
}

function stubWarnings(event: EgressEventPayload): string[] {
  return (event.stubsSeen ?? []).map(
    (secret) => `⚠ stub of brokered secret ${secret} sent to ${hostPort(event.host, event.port)}, which it is not bound to (possible exfiltration; the stub was left as it was)`,
  );
}

function indentContinuation(text: string): string {
  return text.replace(/\n/g, "\n  ");
}

/** Message text as printed: continuation lines indented, trailing blank space dropped (the #seq follows). */
function block(text: string): string {
  return indentContinuation(text.replace(/\s+$/, ""));
}
