import { z } from "zod";
import type { ToolDefinition } from "../gateway/client";
import { runExec } from "../sandbox/daemon-client";
import { DaemonRequestError, type DaemonClient } from "../sandbox/port";

/** What a tool returns to the model and records as the `tool_result` event. */
export type ToolOutcome = { output: string; exitCode?: number | null; isError: boolean };

/** Output kept per tool result (head and tail); the rest is elided, with a note saying so. */
export const MAX_TOOL_OUTPUT_CHARS = 32_000;
/**
 * What the platform takes in of a bash command's output, per stream (the daemon drops the rest):
 * the result for the model is MAX_TOOL_OUTPUT_CHARS of it.
 */
export const MAX_BASH_STREAM_BYTES = 1024 * 1024;

const DEFAULT_BASH_TIMEOUT_S = 120;

const inputs = {
  bash: z.strictObject({ command: z.string().min(1).max(100_000), timeoutSeconds: z.number().int().min(1).max(3_600).optional() }),
  read_file: z.strictObject({ path: z.string().min(1).max(4_096) }),
  write_file: z.strictObject({ path: z.string().min(1).max(4_096), content: z.string().max(10 * 1024 * 1024) }),
  list_files: z.strictObject({ path: z.string().min(1).max(4_096).optional() }),
};

export type ToolName = keyof typeof inputs;

/** The builtin harness's tools, as the model sees them. */
export const BUILTIN_TOOLS: ToolDefinition[] = [
  {
    name: "bash",
    description: "Run a shell command in the session's sandbox (cwd /workspace). Returns the exit code and combined stdout/stderr.",
    parameters: {
      type: "object",
      properties: {
        command: { type: "string", description: "The command line, run with bash -lc." },
        timeoutSeconds: { type: "integer", minimum: 1, maximum: 3600, description: `Kill the command after this many seconds (default ${DEFAULT_BASH_TIMEOUT_S}).` },
      },
      required: ["command"],
      additionalProperties: false,
    },
  },
  {
    name: "read_file",
    description: "Read a UTF-8 text file from the workspace (paths are relative to /workspace).",
    parameters: { type: "object", properties: { path: { type: "string" } }, required: ["path"], additionalProperties: false },
  },
  {
    name: "write_file",
    description: "Create or overwrite a file in the workspace with the given content; parent folders are created.",
    parameters: { type: "object", properties: { path: { type: "string" }, content: { type: "string" } }, required: ["path", "content"], additionalProperties: false },
  },
  {
    name: "list_files",
    description: "List a folder of the workspace (default: its root).",
    parameters: { type: "object", properties: { path: { type: "string" } }, additionalProperties: false },
  },
];

/** Parses a model's raw argument text for a tool; a bad call becomes an error result, not a crash. */
export function parseToolInput(name: string, rawArguments: string): { ok: true; name: ToolName; input: unknown } | { ok: false; input: unknown; error: string } {
  let input: unknown;
  try {
    input = rawArguments.trim() === "" ? {} : JSON.parse(rawArguments);
  } catch (error) {
    return { ok: false, input: { raw: rawArguments.slice(0, 10_000) }, error: `the arguments are not valid JSON: ${(error as Error).message}` };
  }
  if (!(name in inputs)) return { ok: false, input, error: `unknown tool "${name}"; the tools are ${Object.keys(inputs).join(", ")}` };
  const parsed = inputs[name as ToolName].safeParse(input);
  if (!parsed.success) {
    return { ok: false, input, error: `invalid arguments for ${name}: ${parsed.error.issues.map((issue) => `${issue.path.join(".") || "input"}: ${issue.message}`).join("; ")}` };
  }
  return { ok: true, name: name as ToolName, input: parsed.data };
}

/** Runs one parsed tool call against the sandbox's daemon. Daemon refusals become error results. */
export async function runTool(client: DaemonClient, name: ToolName, input: unknown, signal: AbortSignal): Promise<ToolOutcome> {
  try {
    switch (name) {
      case "bash": {
        const { command, timeoutSeconds } = inputs.bash.parse(input);
        const result = await runExec(client, { command, timeoutMs: (timeoutSeconds ?? DEFAULT_BASH_TIMEOUT_S) * 1000 }, { maxOutputBytes: MAX_BASH_STREAM_BYTES, signal });
        let output = result.stdout + (result.stderr ? (result.stdout && !result.stdout.endsWith("\n") ? "\n" : "") + result.stderr : "");
        output = truncate(output);
        // The tail shown after a cut stream is the end of its first MiB, not of the output: say so.
        const cut = [
          result.stdoutTruncated ? `stdout (${result.stdoutBytes} bytes)` : null,
          result.stderrTruncated ? `stderr (${result.stderrBytes} bytes)` : null,
        ].filter((part) => part !== null);
        if (cut.length > 0) output += `\n[truncated: only the first ${MAX_BASH_STREAM_BYTES} bytes of ${cut.join(" and ")} were read]`;
        if (result.timedOut) output += `\n[killed: the command ran longer than ${timeoutSeconds ?? DEFAULT_BASH_TIMEOUT_S} s]`;
        return { output, exitCode: result.exitCode, isError: result.exitCode !== 0 };
      }
      case "read_file": {
        const { path } = inputs.read_file.parse(input);
        const file = await client.readFile(path);
        if (file.encoding !== "utf8") return { output: `${path} is a binary file (${file.size} bytes); it cannot be shown as text`, isError: true };
        return { output: truncate(file.content), isError: false };
      }
      case "write_file": {
        const { path, content } = inputs.write_file.parse(input);
        const written = await client.writeFile(path, content, "utf8");
        return { output: `wrote ${written.size} bytes to ${path}`, isError: false };
      }
      case "list_files": {
        const { path = "." } = inputs.list_files.parse(input);
        const entries = await client.listFiles(path);
        const lines = entries.map((entry) => `${entry.type === "directory" ? `${entry.name}/` : entry.name}${entry.type === "file" ? `  (${entry.size} bytes)` : ""}`);
        return { output: lines.length ? truncate(lines.join("\n")) : "(empty folder)", isError: false };
      }
    }
  } catch (error) {
    if (error instanceof DaemonRequestError) return { output: error.message, isError: true };
    throw error;
  }
}

/** Head and tail of `text` in MAX_TOOL_OUTPUT_CHARS, with a note of what was elided. */
export function truncateToolOutput(text: string): string {
  return truncate(text);
}

function truncate(text: string): string {
  if (text.length <= MAX_TOOL_OUTPUT_CHARS) return text;
  const half = MAX_TOOL_OUTPUT_CHARS / 2;
  return `${text.slice(0, half)}\n[… ${text.length - MAX_TOOL_OUTPUT_CHARS} characters elided …]\n${text.slice(-half)}`;
}
