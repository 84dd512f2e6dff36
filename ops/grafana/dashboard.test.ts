/**
 * The operator pack against a live Berth (the built server, on its own database): every query of
 * the Grafana dashboard and every alert rule parses as PromQL (promtool's parser) and names only
 * metrics the server exports, and `promtool check metrics` has nothing to say about Berth's own
 * metrics. The server does some work first (a turn, a sandbox start that fails) so that the metrics
 * recorded where things happen have samples, which are checked too.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { ROOT, startTestBerth, type TestBerth } from "../../tests/helpers/berth";
import { waitFor } from "../../tests/helpers/processes";
import { exportedNames, GRAFANA_BUILTINS, metricNames, promqlErrors, withGrafanaVariables } from "../../tests/helpers/promql";
import { promtoolPath } from "../../tests/helpers/system-tools";

const KEY = "dashboard_test_key_0123456789abcdefghij";
const TOKEN = "dashboard-metrics-token-0123456789";
const DASHBOARD = path.join(import.meta.dirname, "berth-dashboard.json");
const RULES = path.join(ROOT, "ops", "prometheus", "berth-alerts.yml");

type Target = { expr?: string; datasource?: { type?: string; uid?: string } };
type Panel = { type: string; title: string; datasource?: { type?: string; uid?: string }; targets?: Target[]; panels?: Panel[] };
type Variable = { name: string; type: string; query?: string | { query: string }; datasource?: { uid?: string } };
type Dashboard = { panels: Panel[]; templating: { list: Variable[] } };

const dashboard = JSON.parse(readFileSync(DASHBOARD, "utf8")) as Dashboard;
/** Rows may hold their panels (collapsed) or precede them. */
const panels = dashboard.panels.flatMap((panel) => [panel, ...(panel.panels ?? [])]).filter((panel) => panel.type !== "row");
/** What the dashboard's variables are replaced with before parsing: one job, every instance. */
const VARIABLES = { ...GRAFANA_BUILTINS, job: "berth", instance: ".*" };

/** A sample's value from the exposition text, or undefined when the series is not there. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const line = text
    .split("\n")
    .find((candidate) => (candidate.startsWith(`${name}{`) || candidate.startsWith(`${name} `)) && Object.entries(labels).every(([key, value]) => candidate.includes(`${key}="${value}"`)));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(" ") + 1));
}

describe("the operator pack against a live Berth", () => {
  let berth: TestBerth;
  let dir: string;
  let exposition: string;

  async function scrape(): Promise<string> {
    const response = await fetch(`${berth.url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(response.status).toBe(200);
    return response.text();
  }

  beforeAll(async () => {
    // A sandbox start that fails, as in tests/e2e/provisioning-failure.test.ts: the real daemon,
    // made to exit at start while its env says FAIL_START=1.
    dir = mkdtempSync(path.join(os.tmpdir(), "berth-dashboard-daemon-"));
    const daemon = path.join(dir, "sandboxd.js");
    const real = readFileSync(path.join(ROOT, "build/sandboxd.js"), "utf8").replace(/^#!.*\n/, "");
    writeFileSync(daemon, `if (process.env.FAIL_START === "1") { process.stderr.write("sandboxd: refusing to start (FAIL_START=1)\\n"); process.exit(3); }\n${real}`);
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: KEY, BERTH_METRICS_TOKEN: TOKEN }, daemonScript: daemon });

    const api = berth.client(KEY);
    const agent = await api.agents.create.mutate({ name: "watched", model: "demo" });
    const session = await api.sessions.create.mutate({ agentId: agent.id });
    await api.sessions.send.mutate({ sessionId: session.id, text: "run: echo watched" });
    await waitFor("the turn to finish", async () => {
      const page = await api.sessions.events.query({ sessionId: session.id, limit: 100 });
      return page.items.some((event) => event.type === "usage") ? true : undefined;
    });
    await api.secrets.set.mutate({ name: "FAIL_START", value: "1" });
    await api.sessions.create.mutate({ agentId: agent.id });
    exposition = await waitFor("a failed sandbox start to be counted", async () => {
      const text = await scrape();
      return (sample(text, "berth_sandbox_start_failures_total", { backend: "local" }) ?? 0) >= 1 ? text : undefined;
    });
  });
  afterAll(async () => {
    await berth?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("records the metrics the alerts need where things happen", () => {
    expect(sample(exposition, "berth_database_up")).toBe(1);
    expect(sample(exposition, "berth_turn_duration_seconds_count", { outcome: "completed" })).toBeGreaterThanOrEqual(1);
    expect(sample(exposition, "berth_turn_duration_seconds_count", { outcome: "failed" })).toBe(0);
    expect(sample(exposition, "berth_sandbox_start_seconds_count", { backend: "local" })).toBeGreaterThanOrEqual(1);
    expect(sample(exposition, "berth_sandbox_start_failures_total", { backend: "local" })).toBeGreaterThanOrEqual(1);
    expect(sample(exposition, "berth_sandbox_reconnects_total", { outcome: "failed" })).toBe(0);
    expect(sample(exposition, "berth_egress_errors_total", { kind: "internal" })).toBe(0);
    expect(sample(exposition, "berth_job_queue_oldest_runnable_age_seconds")).toBeGreaterThanOrEqual(0);
    expect(sample(exposition, "berth_job_queue_depth", { state: "blocked" })).toBeGreaterThanOrEqual(0);
    expect(sample(exposition, "berth_nodejs_eventloop_lag_p99_seconds")).toBeDefined();
  });

  it("the dashboard: a Prometheus ${datasource} variable that every panel and query uses", () => {
    const datasource = dashboard.templating.list.find((variable) => variable.name === "datasource");
    expect(datasource).toMatchObject({ type: "datasource", query: "prometheus" });
    expect(panels.length).toBeGreaterThanOrEqual(20);
    for (const panel of panels) {
      expect(panel.datasource, panel.title).toEqual({ type: "prometheus", uid: "${datasource}" });
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
      for (const target of panel.targets!) {
        expect(target.datasource, panel.title).toEqual({ type: "prometheus", uid: "${datasource}" });
        expect(target.expr?.trim(), panel.title).toBeTruthy();
      }
    }
    for (const variable of dashboard.templating.list.filter((v) => v.type === "query")) expect(variable.datasource?.uid, variable.name).toBe("${datasource}");
  });

  it("every dashboard query parses as PromQL and names only metrics the live server exports", () => {
    const exported = exportedNames(exposition);
    const queries = panels.flatMap((panel) => panel.targets!.map((target) => ({ where: `panel "${panel.title}"`, expr: withGrafanaVariables(target.expr!, VARIABLES) })));
    for (const variable of dashboard.templating.list.filter((v) => v.type === "query")) {
      const query = typeof variable.query === "string" ? variable.query : variable.query!.query;
      const selector = /^label_values\((.+),\s*\w+\)$/.exec(query);
      expect(selector, `variable ${variable.name}: ${query}`).not.toBeNull();
      queries.push({ where: `variable ${variable.name}`, expr: withGrafanaVariables(selector![1]!, VARIABLES) });
    }
    expect(promqlErrors(promtoolPath(), queries.map((query) => query.expr))).toBe("");

    const used = new Set<string>();
    for (const { where, expr } of queries) {
      const names = metricNames(expr);
      expect(names.length, `${where}: ${expr}`).toBeGreaterThan(0);
      for (const name of names) {
        expect(exported.has(name), `${where} names ${name}, which the server does not export: ${expr}`).toBe(true);
        used.add(name);
      }
    }
    // What an on-call person looks for is all there.
    for (const name of [
      "berth_http_request_duration_seconds_bucket",
      "berth_sessions",
      "berth_sandbox_start_seconds_bucket",
      "berth_sandbox_start_failures_total",
      "berth_sandbox_reconnects_total",
      "berth_turn_duration_seconds_bucket",
      "berth_job_queue_depth",
      "berth_job_queue_oldest_runnable_age_seconds",
      "berth_egress_requests_total",
      "berth_egress_errors_total",
      "berth_egress_bytes_total",
      "berth_gateway_request_duration_seconds_bucket",
      "berth_tokens_used",
      "berth_cost_usd_spent",
      "berth_process_cpu_seconds_total",
      "berth_process_resident_memory_bytes",
      "berth_nodejs_eventloop_lag_p99_seconds",
    ]) {
      expect(used.has(name), `no panel shows ${name}`).toBe(true);
    }
  });

  it("the alert rules name only metrics the live server exports (and Prometheus's own up)", () => {
    const exported = exportedNames(exposition);
    const rules = (YAML.parse(readFileSync(RULES, "utf8")) as { groups: Array<{ rules: Array<{ alert: string; expr: string }> }> }).groups.flatMap((group) => group.rules);
    for (const rule of rules) {
      for (const name of metricNames(rule.expr)) {
        if (name === "up") continue;
        expect(exported.has(name), `${rule.alert} names ${name}, which the server does not export`).toBe(true);
      }
    }
  });

  it("the checks above catch a name the server does not export", () => {
    const exported = exportedNames(exposition);
    const names = metricNames(withGrafanaVariables('sum(rate(berth_sandbox_starts_total{job="$job"}[$__rate_interval]))', VARIABLES));
    expect(names).toEqual(["berth_sandbox_starts_total"]);
    expect(exported.has(names[0]!)).toBe(false);
  });

  it("promtool check metrics reports nothing about Berth's metrics", () => {
    const check = (text: string) => {
      const result = spawnSync(promtoolPath(), ["check", "metrics"], { input: text, encoding: "utf8" });
      if (result.error) throw result.error;
      const findings = `${result.stdout}${result.stderr}`.split("\n").filter((line) => line.trim());
      return { status: result.status, findings };
    };
    // prom-client's default metrics carry the berth_ prefix here, so they count as Berth's own. Should a
    // finding ever be about a metric without the prefix (a library registering its own), it is not
    // ours to rename; only berth_* findings fail the test.
    const { findings } = check(exposition);
    expect(exposition).toContain("# TYPE berth_sessions gauge");
    expect(findings.filter((line) => line.startsWith("berth_"))).toEqual([]);
    // The same check does catch a misnamed Berth metric.
    const broken = check(`${exposition}# HELP berth_broken_total A gauge named like a counter.\n# TYPE berth_broken_total gauge\nberth_broken_total 1\n`);
    expect(broken.status).not.toBe(0);
    expect(broken.findings.filter((line) => line.startsWith("berth_"))).toEqual([expect.stringContaining("berth_broken_total")]);
  });
});
