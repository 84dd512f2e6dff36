import parsePrometheusTextFormat, { type PrometheusFamily } from "parse-prometheus-text-format";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestBerth, type TestBerth } from "../helpers/berth";
import { waitFor } from "../helpers/processes";

const KEY = "metrics_test_key_0123456789abcdefghijk";
const TOKEN = "metrics-token-0123456789";

describe("GET /metrics", () => {
  let berth: TestBerth;
  beforeAll(async () => {
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: KEY, BERTH_METRICS_TOKEN: TOKEN } });
  });
  afterAll(async () => {
    await berth?.close();
  });

  async function scrape(): Promise<{ families: Map<string, PrometheusFamily>; text: string }> {
    const response = await fetch(`${berth.url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toMatch(/^text\/plain/);
    const text = await response.text();
    // The parser throws on any line that is not valid exposition format.
    return { families: new Map(parsePrometheusTextFormat(text).map((family) => [family.name, family])), text };
  }

  /** The parser folds labelled histograms together, so their per-label counts are read from the text. */
  function histogramCount(text: string, name: string, labels: Record<string, string>): number {
    const line = text.split("\n").find((candidate) => candidate.startsWith(`${name}_count{`) && Object.entries(labels).every(([key, value]) => candidate.includes(`${key}="${value}"`)));
    return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : 0;
  }

  it("refuses a scrape without the token", async () => {
    expect((await fetch(`${berth.url}/metrics`)).status).toBe(401);
    expect((await fetch(`${berth.url}/metrics`, { headers: { authorization: "Bearer wrong-token-0123456789" } })).status).toBe(401);
  });

  it("parses as Prometheus text and reports sessions, sandbox starts, jobs, events and HTTP latency", async () => {
    const api = berth.client(KEY);
    const agent = await api.agents.create.mutate({ name: "measured", model: "demo" });
    const session = await api.sessions.create.mutate({ agentId: agent.id });
    await api.sessions.send.mutate({ sessionId: session.id, text: "run: echo measured" });
    await waitFor("the turn to finish", async () => {
      const page = await api.sessions.events.query({ sessionId: session.id, limit: 100 });
      return page.items.some((event) => event.type === "usage") ? true : undefined;
    });

    const { families, text } = await scrape();
    const value = (name: string, labels: Record<string, string> = {}) =>
      Number(families.get(name)?.metrics.find((metric) => Object.entries(labels).every(([key, v]) => metric.labels?.[key] === v))?.value);

    expect(families.get("berth_sessions")?.type).toBe("GAUGE");
    expect(value("berth_sessions", { status: "ready" })).toBeGreaterThanOrEqual(1);
    expect(value("berth_session_events_stored")).toBeGreaterThanOrEqual(6);
    expect(value("berth_tokens_used", { kind: "prompt" })).toBeGreaterThan(0);
    expect(families.get("berth_cost_usd_spent")?.type).toBe("GAUGE");
    expect(families.get("berth_job_queue_depth")?.metrics.map((metric) => metric.labels?.state).sort()).toEqual(["blocked", "failed", "runnable", "running", "scheduled"]);

    expect(families.get("berth_sandbox_start_seconds")?.type).toBe("HISTOGRAM");
    expect(histogramCount(text, "berth_sandbox_start_seconds", { backend: "local", warm: "false" })).toBeGreaterThanOrEqual(1);
    expect(value("berth_sandboxes_available", { backend: "local" })).toBe(1);
    expect(histogramCount(text, "berth_job_wait_seconds", { task: "turn:run" })).toBeGreaterThanOrEqual(1);
    expect(histogramCount(text, "berth_http_request_duration_seconds", { route: "/api/trpc/sessions.send", status: "200" })).toBeGreaterThanOrEqual(1);
    // Declared even before the first observation (this test makes no reconnect and no gateway call).
    expect(text).toContain("# TYPE berth_sandbox_reconnects_total counter");
    expect(text).toContain("# TYPE berth_gateway_request_duration_seconds histogram");
    expect(families.has("berth_process_resident_memory_bytes")).toBe(true);
  });
});
