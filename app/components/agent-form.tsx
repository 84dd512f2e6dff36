import { useEffect, useRef, useState, type FormEvent } from "react";
import { EGRESS_MODE_HINT, EGRESS_MODES, type EgressMode, type EgressRule } from "../lib/egress";
import { formatAllowRule, parseAllowRules } from "../lib/egress-rules";
import { fieldErrors } from "../lib/errors";
import type { Agent } from "../lib/types";
import { Field, MutationError } from "./ui";

/** Every field of an agent version, as the form edits it (strings until submitted). */
type FormValues = {
  name: string;
  model: string;
  harness: Agent["harness"];
  systemPrompt: string;
  sandboxImage: string;
  cpuMillis: string;
  memoryMb: string;
  diskMb: string;
  egressMode: EgressMode;
  /** One rule a line, in the one-line syntax of `berth agents create --allow`. */
  allowRules: string;
  idleTimeoutSeconds: string;
  maxSteps: string;
  busyPolicy: Agent["busyPolicy"];
  warmPoolSize: string;
  env: string;
};

export type AgentInput = {
  name: string;
  model: string;
  harness: Agent["harness"];
  systemPrompt: string;
  sandboxImage: string | null;
  cpuMillis: number;
  memoryMb: number;
  diskMb: number;
  /** Sent instead of the `network` shorthand, which the server derives from it. */
  egress: { mode: EgressMode; allow: EgressRule[] };
  idleTimeoutSeconds: number;
  maxSteps: number;
  busyPolicy: Agent["busyPolicy"];
  warmPoolSize: number;
  env: Record<string, string>;
};

const DEFAULTS: FormValues = {
  name: "",
  model: "demo",
  harness: "builtin",
  systemPrompt: "",
  sandboxImage: "",
  cpuMillis: "1000",
  memoryMb: "1024",
  diskMb: "2048",
  egressMode: "none",
  allowRules: "",
  idleTimeoutSeconds: "900",
  maxSteps: "20",
  busyPolicy: "queue",
  warmPoolSize: "0",
  env: "",
};

function valuesOf(agent: Agent): FormValues {
  return {
    name: agent.name,
    model: agent.model,
    harness: agent.harness,
    systemPrompt: agent.systemPrompt,
    sandboxImage: agent.sandboxImage ?? "",
    cpuMillis: String(agent.cpuMillis),
    memoryMb: String(agent.memoryMb),
    diskMb: String(agent.diskMb),
    egressMode: agent.egress.mode,
    allowRules: agent.egress.allow.map(formatAllowRule).join("\n"),
    idleTimeoutSeconds: String(agent.idleTimeoutSeconds),
    maxSteps: String(agent.maxSteps),
    busyPolicy: agent.busyPolicy,
    warmPoolSize: String(agent.warmPoolSize),
    env: Object.entries(agent.env)
      .map(([key, value]) => `${key}=${value}`)
      .join("\n"),
  };
}

/** `KEY=value` lines to an object; blank lines and `#` comments are skipped. */
export function parseEnv(text: string): { env: Record<string, string>; error?: string } {
  const env: Record<string, string> = {};
  for (const [index, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const equals = line.indexOf("=");
    if (equals <= 0) return { env, error: `line ${index + 1}: expected KEY=value` };
    const key = line.slice(0, equals).trim();
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) return { env, error: `line ${index + 1}: ${key} is not a valid variable name` };
    env[key] = raw.slice(raw.indexOf("=") + 1);
  }
  return { env };
}

const NUMBERS = {
  cpuMillis: [100, 64_000],
  memoryMb: [128, 262_144],
  diskMb: [64, 1_048_576],
  idleTimeoutSeconds: [30, 7 * 24 * 3600],
  maxSteps: [1, 500],
  warmPoolSize: [0, 50],
} as const;

const EGRESS_OPTION: Record<EgressMode, string> = {
  none: "none: no network",
  allowlist: "allow-list: only the rules below",
  open: "open: any public host",
};

const RULES_PLACEHOLDER = ["api.example.com", "*.github.com:443", "registry.npmjs.org:443 GET /*", "[2001:db8::1]:8080"].join("\n");

/** The first errors of the rule lines, as one message (a long pasted list may have many). */
function ruleErrorsMessage(errors: Array<{ line: number; message: string }>): string {
  const shown = errors.slice(0, 3).map((error) => `Line ${error.line}: ${error.message}`);
  if (errors.length > 3) shown.push(`and ${errors.length - 3} more lines`);
  return shown.join(" · ");
}

function toInput(values: FormValues): { input?: AgentInput; errors: Record<string, string>; ruleLines: number[] } {
  const errors: Record<string, string> = {};
  if (!values.name.trim()) errors.name = "Name is required.";
  if (!values.model.trim()) errors.model = "Model is required.";
  const numbers = {} as Record<keyof typeof NUMBERS, number>;
  for (const [key, [min, max]] of Object.entries(NUMBERS) as Array<[keyof typeof NUMBERS, readonly [number, number]]>) {
    const value = Number(values[key]);
    if (!Number.isInteger(value) || value < min || value > max) errors[key] = `A whole number from ${min.toLocaleString("en")} to ${max.toLocaleString("en")}.`;
    numbers[key] = value;
  }
  const env = parseEnv(values.env);
  if (env.error) errors.env = env.error;
  const allow = parseAllowRules(values.allowRules);
  if (allow.errors.length > 0) {
    // Rules are kept (unused) in the other modes, so a broken one hidden there must still be fixed.
    if (values.egressMode === "allowlist") errors["egress.allow"] = ruleErrorsMessage(allow.errors);
    else errors["egress.mode"] = `The allow-list kept for allow-list mode has an error (${ruleErrorsMessage(allow.errors)}): choose allow-list to fix it.`;
  }
  if (Object.keys(errors).length > 0) return { errors, ruleLines: allow.lines };
  return {
    errors,
    ruleLines: allow.lines,
    input: {
      name: values.name.trim(),
      model: values.model.trim(),
      harness: values.harness,
      systemPrompt: values.systemPrompt,
      sandboxImage: values.sandboxImage.trim() || null,
      ...numbers,
      egress: { mode: values.egressMode, allow: allow.rules },
      busyPolicy: values.busyPolicy,
      env: env.env,
    },
  };
}

/** Create (no agent) or edit (an agent: its current version fills the form). */
export function AgentForm({
  agent,
  onSubmit,
  pending,
  error,
  submitLabel,
  onCancel,
}: {
  agent?: Agent;
  onSubmit: (input: AgentInput) => void;
  pending: boolean;
  error: unknown;
  submitLabel: string;
  onCancel?: () => void;
}) {
  const [values, setValues] = useState<FormValues>(() => (agent ? valuesOf(agent) : DEFAULTS));
  const form = useRef<HTMLFormElement>(null);
  // The submit button is at the bottom of a long form: bring the first field in error into view.
  const focusFirstProblem = () => requestAnimationFrame(() => form.current?.querySelector<HTMLElement>('[aria-invalid="true"]')?.focus());
  useEffect(() => {
    if (error) focusFirstProblem();
  }, [error]);
  const [errors, setErrors] = useState<Record<string, string>>({});
  /** The line of each submitted rule, for the server's errors about `egress.allow.N`. */
  const [ruleLines, setRuleLines] = useState<number[]>([]);
  const server = fieldErrors(error);
  const problem = (key: string) => errors[key] ?? server[key] ?? Object.entries(server).find(([path]) => path.startsWith(`${key}.`))?.[1];
  const set = <K extends keyof FormValues>(key: K) => (value: FormValues[K]) => setValues((current) => ({ ...current, [key]: value }));
  const ruleCount = parseAllowRules(values.allowRules).rules.length;

  function allowProblem(): string | undefined {
    if (errors["egress.allow"]) return errors["egress.allow"];
    const found = Object.entries(server).flatMap(([path, message]) => {
      const match = /^egress\.allow(?:\.(\d+)(?:\.(.+))?)?$/.exec(path);
      if (!match) return [];
      if (match[1] === undefined) return [{ line: 0, message }];
      const line = ruleLines[Number(match[1])] ?? Number(match[1]) + 1;
      return [{ line, message: match[2] ? `${match[2].replace(/\.\d+$/, "")}: ${message}` : message }];
    });
    if (found.length === 0) return undefined;
    const whole = found.find((item) => item.line === 0);
    return whole ? whole.message : ruleErrorsMessage(found);
  }

  function modeProblem(): string | undefined {
    return errors["egress.mode"] ?? server["egress.mode"] ?? server.egress ?? server.network ?? (values.egressMode === "allowlist" ? undefined : allowProblem());
  }

  function submit(event: FormEvent) {
    event.preventDefault();
    const { input, errors: found, ruleLines: lines } = toInput(values);
    setErrors(found);
    setRuleLines(lines);
    if (input) onSubmit(input);
    else focusFirstProblem();
  }

  return (
    <form className="agent-form" onSubmit={submit} noValidate ref={form}>
      <div className="form-grid">
        <Field label="Name" error={problem("name")}>
          {(props) => <input {...props} value={values.name} maxLength={100} onChange={(event) => set("name")(event.target.value)} required />}
        </Field>
        <Field
          label="Model"
          error={problem("model")}
          hint={
            values.model.trim() === "demo" ? (
              <>
                <strong>demo</strong> is the offline demo model: no gateway, deterministic replies; <code>run: &lt;command&gt;</code> runs bash.
              </>
            ) : (
              "A model name your LiteLLM Gateway knows, or demo for the offline demo model."
            )
          }
        >
          {(props) => (
            <>
              <input {...props} value={values.model} list="model-suggestions" maxLength={200} onChange={(event) => set("model")(event.target.value)} required />
              <datalist id="model-suggestions">
                <option value="demo">offline demo</option>
              </datalist>
            </>
          )}
        </Field>
        <Field label="Harness" error={problem("harness")} hint="builtin: Berth's own agent loop. opencode, codex, claude-code: that coding agent runs in the sandbox and reaches the model through the LiteLLM Gateway.">
          {(props) => (
            <select {...props} value={values.harness} onChange={(event) => set("harness")(event.target.value as Agent["harness"])}>
              <option value="builtin">builtin</option>
              <option value="opencode">opencode</option>
              <option value="codex">codex</option>
              <option value="claude-code">claude-code</option>
            </select>
          )}
        </Field>
        <Field
          label="Egress"
          error={modeProblem()}
          hint={
            <>
              {EGRESS_MODE_HINT[values.egressMode]}
              {values.egressMode !== "allowlist" && ruleCount > 0 ? ` ${ruleCount} allow ${ruleCount === 1 ? "rule is" : "rules are"} kept but not applied in this mode.` : ""}
            </>
          }
        >
          {(props) => (
            <select {...props} value={values.egressMode} onChange={(event) => set("egressMode")(event.target.value as EgressMode)}>
              {EGRESS_MODES.map((mode) => (
                <option key={mode} value={mode}>
                  {EGRESS_OPTION[mode]}
                </option>
              ))}
            </select>
          )}
        </Field>
        {values.egressMode === "allowlist" ? (
          <Field
            label="Allow rules"
            error={allowProblem()}
            className="span-2"
            hint={
              <>
                One a line: <code>HOST[:PORT[,PORT]] [METHOD[,METHOD]] [PATH[,PATH]]</code>. Without ports: 80 and 443. <code>*.example.com</code> matches the names under
                example.com; a path ending in <code>*</code> is a prefix. No rules: nothing is allowed. Lines starting with # are not saved.
              </>
            }
          >
            {(props) => (
              <textarea
                {...props}
                rows={Math.min(12, Math.max(4, values.allowRules.split("\n").length + 1))}
                className="mono"
                spellCheck={false}
                autoCapitalize="off"
                autoCorrect="off"
                value={values.allowRules}
                placeholder={RULES_PLACEHOLDER}
                onChange={(event) => {
                  set("allowRules")(event.target.value);
                  // A fixed rule should not keep its old complaint until the next submit.
                  setErrors(({ "egress.allow": _fixed, ...rest }) => rest);
                }}
              />
            )}
          </Field>
        ) : null}
        <Field label="CPU (millicores)" error={problem("cpuMillis")}>
          {(props) => <input {...props} type="number" inputMode="numeric" min={100} max={64000} step={100} value={values.cpuMillis} onChange={(event) => set("cpuMillis")(event.target.value)} />}
        </Field>
        <Field label="Memory (MiB)" error={problem("memoryMb")}>
          {(props) => <input {...props} type="number" inputMode="numeric" min={128} max={262144} step={128} value={values.memoryMb} onChange={(event) => set("memoryMb")(event.target.value)} />}
        </Field>
        <Field label="Workspace disk (MiB)" error={problem("diskMb")} hint="Quota of the session's /workspace, from 64 MiB to 1 TiB.">
          {(props) => <input {...props} type="number" inputMode="numeric" min={64} max={1048576} step={64} value={values.diskMb} onChange={(event) => set("diskMb")(event.target.value)} />}
        </Field>
        <Field label="Idle timeout (seconds)" error={problem("idleTimeoutSeconds")} hint="An idle session is suspended after this long; its workspace stays.">
          {(props) => <input {...props} type="number" inputMode="numeric" min={30} value={values.idleTimeoutSeconds} onChange={(event) => set("idleTimeoutSeconds")(event.target.value)} />}
        </Field>
        <Field label="Max steps per turn" error={problem("maxSteps")}>
          {(props) => <input {...props} type="number" inputMode="numeric" min={1} max={500} value={values.maxSteps} onChange={(event) => set("maxSteps")(event.target.value)} />}
        </Field>
        <Field label="While busy" error={problem("busyPolicy")} hint="A message sent during a running turn: queue it, or reject it.">
          {(props) => (
            <select {...props} value={values.busyPolicy} onChange={(event) => set("busyPolicy")(event.target.value as Agent["busyPolicy"])}>
              <option value="queue">queue</option>
              <option value="reject">reject</option>
            </select>
          )}
        </Field>
        <Field label="Warm pool (Kubernetes)" error={problem("warmPoolSize")} hint="Sandboxes kept started in a SandboxWarmPool, so a new session skips the pod start. 0: none. The local backend ignores it (BERTH_WARM_POOL_SIZE).">
          {(props) => <input {...props} type="number" inputMode="numeric" min={0} max={50} value={values.warmPoolSize} onChange={(event) => set("warmPoolSize")(event.target.value)} />}
        </Field>
        <Field label="Sandbox image" error={problem("sandboxImage")} hint="Kubernetes backend; empty uses the default image.">
          {(props) => <input {...props} value={values.sandboxImage} placeholder="default" maxLength={300} onChange={(event) => set("sandboxImage")(event.target.value)} />}
        </Field>
        <Field label="System prompt" error={problem("systemPrompt")} className="span-2">
          {(props) => <textarea {...props} rows={5} value={values.systemPrompt} onChange={(event) => set("systemPrompt")(event.target.value)} />}
        </Field>
        <Field label="Environment" error={problem("env")} className="span-2" hint="Non-secret variables, one KEY=value a line. Use Secrets for credentials.">
          {(props) => <textarea {...props} rows={3} className="mono" spellCheck={false} value={values.env} placeholder="LOG_LEVEL=debug" onChange={(event) => set("env")(event.target.value)} />}
        </Field>
      </div>
      <MutationError error={Object.keys(server).length > 0 ? null : error} />
      <div className="button-row">
        <button type="submit" className="button button-primary" disabled={pending}>
          {pending ? "Saving…" : submitLabel}
        </button>
        {onCancel ? (
          <button type="button" className="button button-quiet" onClick={onCancel}>
            Cancel
          </button>
        ) : null}
      </div>
    </form>
  );
}

/** The fields of `next` that differ from the agent's current version (an update writes only those). */
export function changedFields(agent: Agent, next: AgentInput): Partial<AgentInput> {
  const changes: Partial<AgentInput> = {};
  for (const key of Object.keys(next) as Array<keyof AgentInput>) {
    const before = key === "name" ? agent.name : agent[key];
    if (stableJson(before) !== stableJson(next[key])) (changes as Record<string, unknown>)[key] = next[key];
  }
  return changes;
}

/** JSON with object keys sorted at every depth: Postgres' jsonb does not keep the order they were written in. */
export function stableJson(value: unknown): string {
  return JSON.stringify(sortedKeys(value));
}

function sortedKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortedKeys);
  if (value && typeof value === "object" && !(value instanceof Date)) {
    return Object.fromEntries(
      Object.entries(value)
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([key, item]) => [key, sortedKeys(item)]),
    );
  }
  return value;
}
