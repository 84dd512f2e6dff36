/**
 * Egress policies and `egress` events as people read them, in the dashboard and the CLI alike.
 * Free of zod on purpose: pages that only show egress do not load the rule parser (egress-rules.ts).
 */
import type { EgressMode, EgressRule } from "../../server/egress/policy";
import type { EgressRecord } from "../../server/egress/egress-log";

export type { EgressMode, EgressRule };

export const EGRESS_MODES: readonly EgressMode[] = ["none", "allowlist", "open"];

export type EgressPolicyView = { mode: EgressMode; allow: EgressRule[] };

export const EGRESS_MODE_LABEL: Record<EgressMode, string> = { none: "none", allowlist: "allow-list", open: "open" };

export const EGRESS_MODE_HINT: Record<EgressMode, string> = {
  none: "No network: nothing inside the sandbox can reach outside it.",
  allowlist: "Only what the rules name; everything else is refused. Every connection is recorded.",
  open: "Any public host, through the gateway. Every connection is recorded.",
};

/** "none", "open", "allow-list (2 rules)". */
export function egressSummary(policy: EgressPolicyView): string {
  if (policy.mode !== "allowlist") return EGRESS_MODE_LABEL[policy.mode];
  return `allow-list (${policy.allow.length} ${policy.allow.length === 1 ? "rule" : "rules"})`;
}

// ---------------------------------------------------------------------------------------------
// Events

/** The `egress` event's payload, as the server defines it (server/services/event-log.ts). */
export type EgressEventPayload = EgressRecord;

export function hostPort(host: string, port: number): string {
  return `${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/** `GET api.example.com:443/v1/x`, or `CONNECT host:443` for a tunnel the gateway did not look into. */
export function egressTarget(event: Pick<EgressEventPayload, "host" | "port" | "method" | "path">): string {
  return `${event.method ?? "CONNECT"} ${hostPort(event.host, event.port)}${event.path ?? ""}`;
}

/** 812 B, 1.2 kB, 34 kB, 5.6 MB (powers of 1000, as network tools count). */
export function formatBytes(bytes: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  if (unit === 0) return `${Math.round(value)} B`;
  return `${value < 10 ? value.toFixed(1).replace(/\.0$/, "") : Math.round(value)} ${units[unit]}`;
}

export function formatMilliseconds(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1).replace(/\.0$/, "")} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

/** `1.2 kB out · 3.4 kB in · 12 ms` (summed over `count` alike connections). */
export function egressFigures(event: Pick<EgressEventPayload, "bytesOut" | "bytesIn" | "durationMs">): string {
  return `${formatBytes(event.bytesOut)} out · ${formatBytes(event.bytesIn)} in · ${formatMilliseconds(event.durationMs)}`;
}

export function egressCount(event: Pick<EgressEventPayload, "count">): number {
  return event.count && event.count > 1 ? event.count : 1;
}

export type EgressHostSummary = {
  host: string;
  port: number;
  allowed: number;
  denied: number;
  bytesOut: number;
  bytesIn: number;
  /** The reasons its denials gave, each once. */
  reasons: string[];
};

export type EgressSummary = {
  allowed: number;
  denied: number;
  /** Hosts with denials first (most denied first), then by connections. */
  hosts: EgressHostSummary[];
  /** Brokered secrets whose stub went to a host it is not bound to. */
  stubs: Array<{ secret: string; host: string; port: number; count: number }>;
};

/** Counts (weighted by `count`) per host and port of the given egress events. */
export function summariseEgress(events: EgressEventPayload[]): EgressSummary {
  const byTarget = new Map<string, EgressHostSummary>();
  const stubs = new Map<string, EgressSummary["stubs"][number]>();
  let allowed = 0;
  let denied = 0;
  for (const event of events) {
    const count = egressCount(event);
    const key = hostPort(event.host, event.port);
    const entry = byTarget.get(key) ?? { host: event.host, port: event.port, allowed: 0, denied: 0, bytesOut: 0, bytesIn: 0, reasons: [] };
    byTarget.set(key, entry);
    entry.bytesOut += event.bytesOut;
    entry.bytesIn += event.bytesIn;
    if (event.decision === "denied") {
      entry.denied += count;
      denied += count;
      if (event.reason && !entry.reasons.includes(event.reason)) entry.reasons.push(event.reason);
    } else {
      entry.allowed += count;
      allowed += count;
    }
    for (const secret of event.stubsSeen ?? []) {
      const stubKey = `${secret} ${key}`;
      const stub = stubs.get(stubKey) ?? { secret, host: event.host, port: event.port, count: 0 };
      stub.count += count;
      stubs.set(stubKey, stub);
    }
  }
  const hosts = [...byTarget.values()].sort((a, b) => b.denied - a.denied || b.allowed - a.allowed || a.host.localeCompare(b.host));
  return { allowed, denied, hosts, stubs: [...stubs.values()] };
}
