import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";

/** PromQL words that look like names but are not series: operators, modifiers, grouping, literals. */
const KEYWORDS = new Set(["and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "atan2", "inf", "nan"]);

/**
 * The metric names a PromQL expression selects. Strings (label values, label_replace's arguments)
 * go first, then label matchers `{…}`, ranges `[…]` and the label lists of by / without / on /
 * ignoring / group_left / group_right; of the words left, numbers and durations, functions and
 * aggregations (a word followed by "(") and keywords are not metric names. Grafana variables must
 * be replaced before (see withGrafanaVariables).
 */
export function metricNames(expr: string): string[] {
  let text = expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, " ");
  text = text.replace(/\{[^}]*\}/g, " ").replace(/\[[^\]]*\]/g, " ");
  text = text.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/gi, " ");
  const names = new Set<string>();
  for (const match of text.matchAll(/(\d[\w.]*)|([A-Za-z_:][A-Za-z0-9_:]*)/g)) {
    const word = match[2];
    if (!word || KEYWORDS.has(word.toLowerCase())) continue;
    const after = text.slice(match.index! + word.length).trimStart();
    if (after.startsWith("(")) continue;
    names.add(word);
  }
  return [...names].sort();
}

/** Grafana's own and the dashboard's variables, replaced by values a query can be parsed with. */
export function withGrafanaVariables(expr: string, values: Record<string, string>): string {
  return expr.replace(/\$\{(\w+)(?::\w+)?\}|\$(\w+)/g, (whole, braced: string | undefined, plain: string | undefined) => {
    const name = (braced ?? plain)!;
    const value = values[name];
    if (value === undefined) throw new Error(`no test value for the Grafana variable ${whole} in: ${expr}`);
    return value;
  });
}

/** Values for Grafana's built-in interval variables. */
export const GRAFANA_BUILTINS: Record<string, string> = {
  __rate_interval: "5m",
  __interval: "1m",
  __interval_ms: "60000",
  __range: "6h",
  __range_s: "21600",
  __range_ms: "21600000",
};

/**
 * Parses expressions with Prometheus's own parser: `promtool check rules` on a rule file holding
 * each one as a recording rule. Returns promtool's complaints, empty when every one parses.
 */
export function promqlErrors(promtool: string, exprs: string[]): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), "berth-promql-"));
  try {
    const file = path.join(dir, "expressions.yml");
    // JSON strings are YAML double-quoted scalars: no escaping of our own.
    const rules = exprs.map((expr, index) => `      - record: berth_check:expr_${index}\n        expr: ${JSON.stringify(expr)}`).join("\n");
    writeFileSync(file, `groups:\n  - name: expressions\n    rules:\n${rules}\n`);
    const result = spawnSync(promtool, ["check", "rules", file], { encoding: "utf8" });
    if (result.error) throw result.error;
    return result.status === 0 ? "" : `${result.stdout}${result.stderr}`.trim() || `promtool exited with ${result.status}`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The metric names a Prometheus text exposition declares (`# TYPE`): a histogram's _bucket, _sum
 * and _count, a summary's series and its _sum and _count; declared even before any sample.
 */
export function exportedNames(exposition: string): Set<string> {
  const names = new Set<string>();
  for (const [, name, type] of exposition.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    if (type === "histogram") for (const suffix of ["_bucket", "_sum", "_count"]) names.add(`${name}${suffix}`);
    else if (type === "summary") for (const suffix of ["", "_sum", "_count"]) names.add(`${name}${suffix}`);
    else names.add(name!);
  }
  return names;
}
