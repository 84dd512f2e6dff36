/**
 * k8s/monitoring: the PrometheusRule is exactly what bin/build-monitoring-manifests.mjs makes of
 * ops/prometheus/berth-alerts.yml (same groups, so one source of truth) and promtool accepts its
 * groups; the ServiceMonitor scrapes the platform Service's HTTP port, not the egress one, with the
 * token the Deployment gets, under the job name the alert rules use.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import YAML from "yaml";
import { PROMETHEUS_RULE_FILE, prometheusRuleYaml, RULES_FILE } from "../bin/build-monitoring-manifests.mjs";
import { promtoolPath } from "../tests/helpers/system-tools";

const DIR = path.join(import.meta.dirname, "monitoring");
const MANIFESTS = path.join(import.meta.dirname, "manifests");

type Doc = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; spec?: Record<string, unknown>; [key: string]: unknown };
function load(file: string): Doc[] {
  return YAML.parseAllDocuments(readFileSync(file, "utf8")).map((doc) => {
    expect(doc.errors, file).toEqual([]);
    return doc.toJS() as Doc;
  });
}

describe("k8s/monitoring", () => {
  const [rule] = load(PROMETHEUS_RULE_FILE);
  const [monitor] = load(path.join(DIR, "servicemonitor.yaml"));

  it("the kustomization applies both into the berth namespace", () => {
    const [kustomization] = load(path.join(DIR, "kustomization.yaml"));
    expect(kustomization).toMatchObject({ kind: "Kustomization", namespace: "berth" });
    expect((kustomization as unknown as { resources: string[] }).resources.sort()).toEqual(["prometheusrule.yaml", "servicemonitor.yaml"]);
    for (const doc of [rule!, monitor!]) {
      expect(doc.apiVersion).toBe("monitoring.coreos.com/v1");
      expect(doc.metadata).toMatchObject({ name: "berth", namespace: "berth" });
    }
  });

  it("the PrometheusRule holds exactly the groups of ops/prometheus/berth-alerts.yml, as the script writes it", () => {
    const rulesText = readFileSync(RULES_FILE, "utf8");
    expect(rule!.kind).toBe("PrometheusRule");
    expect((rule!.spec as { groups: unknown }).groups).toEqual((YAML.parse(rulesText) as { groups: unknown }).groups);
    expect(readFileSync(PROMETHEUS_RULE_FILE, "utf8"), "k8s/monitoring/prometheusrule.yaml is stale: run node bin/build-monitoring-manifests.mjs").toBe(prometheusRuleYaml(rulesText));
    // And a change to the rules shows: the comparison is not vacuous.
    expect(prometheusRuleYaml(rulesText.replace("berth_database_up == 0", "berth_database_up < 1"))).not.toBe(prometheusRuleYaml(rulesText));
  });

  it("promtool accepts the PrometheusRule's groups as a rule file", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "berth-prometheusrule-"));
    try {
      const file = path.join(dir, "rules.yml");
      writeFileSync(file, YAML.stringify({ groups: (rule!.spec as { groups: unknown }).groups }));
      const result = spawnSync(promtoolPath(), ["check", "rules", file], { encoding: "utf8" });
      expect(result.status, `${result.stdout}${result.stderr}`).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("the ServiceMonitor scrapes /metrics on the berth Service's http port with the Deployment's metrics token, as job berth", () => {
    const services = load(path.join(MANIFESTS, "service.yaml"));
    const [deployment] = load(path.join(MANIFESTS, "deployment.yaml"));
    const spec = monitor!.spec as {
      selector: { matchLabels: Record<string, string> };
      jobLabel?: string;
      namespaceSelector?: unknown;
      endpoints: Array<{ port: string; path: string; authorization: { type: string; credentials: { name: string; key: string } } }>;
    };
    expect(monitor!.kind).toBe("ServiceMonitor");
    const selected = services.filter((service) => Object.entries(spec.selector.matchLabels).every(([key, value]) => service.metadata.labels?.[key] === value));
    expect(selected.map((service) => service.metadata.name)).toEqual(["berth"]);
    const ports = (selected[0]!.spec as { ports: Array<{ name: string }> }).ports.map((port) => port.name);
    expect(spec.endpoints).toHaveLength(1);
    const [endpoint] = spec.endpoints;
    expect(ports).toContain(endpoint!.port);
    expect(endpoint!.path).toBe("/metrics");
    // Same namespace as the Service (kustomize's namespace then moves both), and the Service's name as job.
    expect(spec.namespaceSelector).toBeUndefined();
    expect(spec.jobLabel).toBeUndefined();
    expect(JSON.stringify((rule!.spec as { groups: unknown }).groups)).toContain(`up{job=\\"${selected[0]!.metadata.name}\\"}`);
    // The token: the key of the Secret the Deployment takes its environment from, named as the server reads it.
    expect(endpoint!.authorization).toEqual({ type: "Bearer", credentials: { name: "berth", key: "BERTH_METRICS_TOKEN" } });
    const container = (deployment!.spec as { template: { spec: { containers: Array<{ envFrom: Array<{ secretRef?: { name: string } }> }> } } }).template.spec.containers[0]!;
    expect(container.envFrom).toContainEqual({ secretRef: { name: endpoint!.authorization.credentials.name } });
    expect(readFileSync(path.join(import.meta.dirname, "..", "server", "config.ts"), "utf8")).toContain(endpoint!.authorization.credentials.key);
  });
});
