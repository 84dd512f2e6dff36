import { useState, type FormEvent } from "react";
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
  network: Agent["network"];
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
  network: Agent["network"];
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
  network: "none",
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
    network: agent.network,
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

function toInput(values: FormValues): { input?: AgentInput; errors: Record<string, string> } {
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
  if (Object.keys(errors).length > 0) return { errors };
  return {
    errors,
    input: {
      name: values.name.trim(),
      model: values.model.trim(),
      harness: values.harness,
      systemPrompt: values.systemPrompt,
      sandboxImage: values.sandboxImage.trim() || null,
      ...numbers,
      network: values.network,
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
  const [errors, setErrors] = useState<Record<string, string>>({});
  const server = fieldErrors(error);
  const problem = (key: string) => errors[key] ?? server[key] ?? Object.entries(server).find(([path]) => path.startsWith(`${key}.`))?.[1];
  const set = <K extends keyof FormValues>(key: K) => (value: FormValues[K]) => setValues((current) => ({ ...current, [key]: value }));

  function submit(event: FormEvent) {
    event.preventDefault();
    const { input, errors: found } = toInput(values);
    setErrors(found);
    if (input) onSubmit(input);
  }

  return (
    <form className="agent-form" onSubmit={submit} noValidate>
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
        <Field label="Network" error={problem("network")} hint="none: no network inside the sandbox; egress: outbound access.">
          {(props) => (
            <select {...props} value={values.network} onChange={(event) => set("network")(event.target.value as Agent["network"])}>
              <option value="none">none</option>
              <option value="egress">egress</option>
            </select>
          )}
        </Field>
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
    if (stable(before) !== stable(next[key])) (changes as Record<string, unknown>)[key] = next[key];
  }
  return changes;
}

function stable(value: unknown): string {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    return JSON.stringify(Object.entries(value).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  }
  return JSON.stringify(value);
}
