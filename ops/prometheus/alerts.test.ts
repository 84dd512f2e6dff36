/**
 * The alert rules: promtool accepts them (`check rules`, its linter included) and their unit tests
 * pass (`test rules`); every alert is tested both firing and quiet, carries what on-call needs
 * (for, severity, summary, description, a runbook section that exists) and a broken rule makes
 * `test rules` fail. Which metrics the rules may name is checked against a live server in
 * ops/grafana/dashboard.test.ts.
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import YAML from "yaml";
import { promtoolPath } from "../../tests/helpers/system-tools";

const DIR = import.meta.dirname;
const RULES = path.join(DIR, "berth-alerts.yml");
const TESTS = path.join(DIR, "berth-alerts.test.yml");
const OPERATIONS = path.join(DIR, "..", "..", "docs", "operations.md");

type Rule = { alert?: string; record?: string; expr: string; for?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
type RuleFile = { groups: Array<{ name: string; rules: Rule[] }> };
type TestFile = { tests: Array<{ name: string; alert_rule_test?: Array<{ alertname: string; exp_alerts?: unknown[] }> }> };

function promtool(...args: string[]): { status: number | null; output: string } {
  const result = spawnSync(promtoolPath(), args, { encoding: "utf8", cwd: DIR });
  if (result.error) throw result.error;
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

/** GitHub's anchor of a Markdown heading. */
function anchorOf(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\w\- ]/g, "")
    .replace(/ /g, "-");
}

const rules = YAML.parse(readFileSync(RULES, "utf8")) as RuleFile;
const alerts = rules.groups.flatMap((group) => group.rules).filter((rule): rule is Rule & { alert: string } => Boolean(rule.alert));

describe("ops/prometheus/berth-alerts.yml", () => {
  it("passes promtool check rules", () => {
    const { status, output } = promtool("check", "rules", RULES);
    expect(output).toMatch(/SUCCESS: \d+ rules found/);
    expect(status, output).toBe(0);
  });

  it("passes its unit tests (promtool test rules)", () => {
    const { status, output } = promtool("test", "rules", TESTS);
    expect(status, output).toBe(0);
    expect(output).toContain("SUCCESS");
  });

  it("has a firing and a quiet case for every alert, and tests no alert that does not exist", () => {
    const tests = YAML.parse(readFileSync(TESTS, "utf8")) as TestFile;
    const cases = tests.tests.flatMap((test) => test.alert_rule_test ?? []);
    const names = new Set(alerts.map((alert) => alert.alert));
    expect(names.size).toBeGreaterThanOrEqual(12);
    for (const name of names) {
      const mine = cases.filter((c) => c.alertname === name);
      expect(mine.some((c) => (c.exp_alerts ?? []).length > 0), `${name}: a case where it fires`).toBe(true);
      expect(mine.some((c) => (c.exp_alerts ?? []).length === 0), `${name}: a case where it does not`).toBe(true);
    }
    for (const c of cases) expect(names.has(c.alertname), `tested but not defined: ${c.alertname}`).toBe(true);
  });

  it("gives every alert a for, a severity, a summary, a description and a runbook section of docs/operations.md", () => {
    const anchors = new Set([...readFileSync(OPERATIONS, "utf8").matchAll(/^#{1,6} (.+)$/gm)].map(([, heading]) => anchorOf(heading!)));
    for (const alert of alerts) {
      expect(alert.for, alert.alert).toMatch(/^\d+[smh]$/);
      expect(["critical", "warning"], alert.alert).toContain(alert.labels?.severity);
      expect(alert.annotations?.summary, alert.alert).toBeTruthy();
      expect(alert.annotations?.description, alert.alert).toBeTruthy();
      const runbook = /^docs\/operations\.md#([\w-]+)$/.exec(alert.annotations?.runbook ?? "");
      expect(runbook, `${alert.alert}: runbook ${alert.annotations?.runbook}`).not.toBeNull();
      expect(anchors.has(runbook![1]!), `${alert.alert}: docs/operations.md has no section #${runbook![1]}`).toBe(true);
    }
  });

  it("makes promtool test rules fail when a rule is broken (so the passing run above means something)", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "berth-alerts-"));
    try {
      copyFileSync(TESTS, path.join(dir, "berth-alerts.test.yml"));
      const text = readFileSync(RULES, "utf8");
      expect(text).toContain("expr: berth_database_up == 0");
      writeFileSync(path.join(dir, "berth-alerts.yml"), text.replace("expr: berth_database_up == 0", "expr: berth_database_up == 2"));
      const result = spawnSync(promtoolPath(), ["test", "rules", "berth-alerts.test.yml"], { encoding: "utf8", cwd: dir });
      expect(result.status).not.toBe(0);
      expect(`${result.stdout}${result.stderr}`).toContain("BerthDatabaseUnavailable");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
