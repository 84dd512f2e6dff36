import type { ChatMessage, Completion, CompletionRequest, ModelGateway } from "./client";

/** The model name that selects the offline demo model. */
export const DEMO_MODEL = "demo";

const RUN_PREFIX = /^\s*run:\s*([\s\S]+)$/i;

/**
 * The offline demo model: no gateway, no credentials, deterministic. `run: <command>` makes it call
 * the `bash` tool with that command and then answer with the command's output; anything else gets a
 * short fixed reply. For evaluation and tests; the UI labels it as an offline demo.
 */
export function createDemoModel(): ModelGateway {
  let calls = 0;
  return {
    async complete(request: CompletionRequest): Promise<Completion> {
      if (request.signal?.aborted) throw request.signal.reason;
      const last = request.messages[request.messages.length - 1];
      const prompt = JSON.stringify(request.messages).length;
      const usage = (reply: string) => ({ promptTokens: Math.ceil(prompt / 4), completionTokens: Math.max(1, Math.ceil(reply.length / 4)), cost: 0 });

      if (last?.role === "tool") {
        const text = `The command finished. Its output:\n\n${last.content}`;
        streamText(text, request.onTextDelta);
        return { text, toolCalls: [], finishReason: "stop", usage: usage(text) };
      }
      const command = last?.role === "user" ? RUN_PREFIX.exec(last.content)?.[1]?.trim() : undefined;
      if (command && request.tools.some((tool) => tool.name === "bash")) {
        calls++;
        const args = JSON.stringify({ command });
        return { text: "", toolCalls: [{ id: `demo_call_${Date.now().toString(36)}_${calls}`, name: "bash", arguments: args }], finishReason: "tool_calls", usage: usage(args) };
      }
      const text = demoReply(last);
      streamText(text, request.onTextDelta);
      return { text, toolCalls: [], finishReason: "stop", usage: usage(text) };
    },
    async health() {
      return { status: "ok" as const };
    },
  };
}

function demoReply(last: ChatMessage | undefined): string {
  const said = last?.role === "user" ? last.content.trim().slice(0, 200) : "";
  return (
    `This is Berth's offline demo model, not a real language model. You said: "${said}". ` +
    "Send `run: <command>` (for example `run: ls -la`) to run a command in this session's sandbox."
  );
}

function streamText(text: string, onTextDelta: ((text: string) => void) | undefined): void {
  if (!onTextDelta) return;
  for (const piece of text.match(/[\s\S]{1,24}/g) ?? []) onTextDelta(piece);
}
