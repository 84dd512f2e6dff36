import type { ChatMessage } from "../gateway/client";
import { DaemonRequestError, SandboxUnavailableError, type DaemonClient } from "../sandbox/port";
import type { TurnUsage } from "../services/turns";

/** Helpers shared by the harnesses that run an external coding agent (opencode, Claude Code) in the sandbox. */

/** Replayed tool output is cut to this many characters each: the replay is context, not an archive. */
const REPLAY_OUTPUT_CHARS = 2_000;

export const ABORTED = "the turn was aborted by request";

/** The sandbox cannot run the harness at all (no binary, no relay): the turn fails with this message. */
export class HarnessSetupError extends Error {}

/** The new message, preceded by the earlier conversation when the agent starts without it. */
export function replayPrompt(earlier: ChatMessage[], message: string): string {
  if (earlier.length === 0) return message;
  const lines: string[] = [];
  for (const entry of earlier) {
    if (entry.role === "user") lines.push(`User: ${entry.content}`);
    else if (entry.role === "assistant") {
      if (entry.content) lines.push(`Assistant: ${entry.content}`);
      for (const call of entry.tool_calls ?? []) lines.push(`Assistant called ${call.function.name} ${call.function.arguments}`);
    } else if (entry.role === "tool") {
      const output = entry.content.length > REPLAY_OUTPUT_CHARS ? `${entry.content.slice(0, REPLAY_OUTPUT_CHARS)}… (cut)` : entry.content;
      lines.push(`Tool result: ${output}`);
    }
  }
  return [
    "This conversation started earlier in a workspace that is gone; the files you made then may be missing. Here it is, from the platform's log:",
    "",
    "<earlier-conversation>",
    ...lines,
    "</earlier-conversation>",
    "",
    "The new message:",
    "",
    message,
  ].join("\n");
}

/** Checks that the sandbox has the harness's binary and a model relay; throws HarnessSetupError when not. */
export async function checkSandbox(client: DaemonClient, tool: { name: string; binary: string; source: string }): Promise<void> {
  let output = "";
  let exitCode: number | null = null;
  for await (const chunk of client.exec({ command: `test -x ${tool.binary} || echo missing-binary; test -n "$BERTH_MODEL_BASE_URL" || echo missing-relay`, timeoutMs: 10_000 })) {
    if (chunk.type === "stdout") output += chunk.data;
    else if (chunk.type === "exit") exitCode = chunk.exitCode;
  }
  if (exitCode !== 0) throw new SandboxUnavailableError("the sandbox could not run a check command");
  if (output.includes("missing-binary")) {
    throw new HarnessSetupError(`${tool.name} is not installed in this sandbox (${tool.binary}); the local backend binds the binary of ${tool.source}, Kubernetes sandbox images must carry it there`);
  }
  if (output.includes("missing-relay")) {
    throw new HarnessSetupError(`this sandbox has no model relay (BERTH_MODEL_BASE_URL), which ${tool.name} needs to reach the gateway; the Kubernetes backend does not provide one yet`);
  }
}

/** Whether a file (or directory) exists in the workspace. */
export async function exists(client: DaemonClient, file: string): Promise<boolean> {
  const slash = file.lastIndexOf("/");
  try {
    const entries = await client.listFiles(file.slice(0, slash));
    return entries.some((entry) => entry.name === file.slice(slash + 1));
  } catch (error) {
    if (error instanceof DaemonRequestError) return false;
    throw error;
  }
}

export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

export function addUsage(a: TurnUsage, b: TurnUsage): TurnUsage {
  const cost = (a.cost ?? 0) + (b.cost ?? 0);
  return { promptTokens: a.promptTokens + b.promptTokens, completionTokens: a.completionTokens + b.completionTokens, ...(cost ? { cost } : {}) };
}

export function isDomainUnavailable(error: unknown): boolean {
  return typeof error === "object" && error !== null && (error as { kind?: string }).kind === "unavailable";
}
