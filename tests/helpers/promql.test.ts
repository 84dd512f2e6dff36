import { describe, expect, it } from "vitest";
import { exportedNames, GRAFANA_BUILTINS, metricNames, promqlErrors, withGrafanaVariables } from "./promql";
import { promtoolPath } from "./system-tools";

describe("metricNames", () => {
  it("finds the selected series and nothing else: not functions, aggregations, keywords, label names, strings or durations", () => {
    expect(metricNames('histogram_quantile(0.95, sum by (le, route) (rate(berth_http_request_duration_seconds_bucket{job="berth", route!~"/readyz|/metrics"}[5m])))')).toEqual([
      "berth_http_request_duration_seconds_bucket",
    ]);
    expect(metricNames("sum without (instance) (rate(a_total[5m] offset 1h)) / on (job) group_left (instance) b_total > bool 0.5 and c unless d or e")).toEqual(["a_total", "b_total", "c", "d", "e"]);
    expect(metricNames('label_replace(up{job="x"}, "host", "$1", "instance", "(.*):.*") * ignoring(host) group_right rate(x_seconds_count[1m:10s])')).toEqual(["up", "x_seconds_count"]);
    expect(metricNames("SUM BY (le) (foo) + vector(1) + 1e3 + Inf + NaN + max_over_time(bar[5m]) @ end()")).toEqual(["bar", "foo"]);
    expect(metricNames("topk(5, sum by (task) (increase(berth_job_wait_seconds_count[1h])))")).toEqual(["berth_job_wait_seconds_count"]);
  });

  it("replaces Grafana variables, and refuses one it has no value for", () => {
    const values = { ...GRAFANA_BUILTINS, job: "berth", instance: ".*" };
    expect(withGrafanaVariables('rate(x{job="$job", instance=~"${instance}"}[$__rate_interval])', values)).toBe('rate(x{job="berth", instance=~".*"}[5m])');
    expect(withGrafanaVariables('x{instance=~"${instance:regex}"}', values)).toBe('x{instance=~".*"}');
    expect(() => withGrafanaVariables('x{pod="$pod"}', values)).toThrow(/\$pod/);
  });
});

describe("promqlErrors (promtool's parser)", () => {
  it("accepts valid expressions and names the one it cannot parse", () => {
    const promtool = promtoolPath();
    expect(promqlErrors(promtool, ["sum by (le) (rate(a_bucket[5m]))", 'histogram_quantile(0.9, b_bucket{x="y"})'])).toBe("");
    const errors = promqlErrors(promtool, ["sum(rate(a[5m]))", "sum by (le (rate(a[5m]))"]);
    expect(errors).toMatch(/expr_1/);
    expect(errors).not.toMatch(/expr_0/);
  });
});

describe("exportedNames", () => {
  it("declares a histogram's and a summary's series under their suffixes", () => {
    const names = exportedNames("# HELP h x\n# TYPE h histogram\n# HELP s x\n# TYPE s summary\n# TYPE c_total counter\n# TYPE g gauge\ng 1\n");
    expect([...names].sort()).toEqual(["c_total", "g", "h_bucket", "h_count", "h_sum", "s", "s_count", "s_sum"]);
  });
});
