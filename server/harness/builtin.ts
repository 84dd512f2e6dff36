import { GatewayError, type ModelGateway, type ToolCall } from "../gateway/client";
import type { Logger } from "../logger";
import { SandboxUnavailableError } from "../sandbox/port";
import type { EventBus } from "../services/event-bus";
import type { EventInput, StoredEvent } from "../services/event-log";
import type { SandboxLifecycle } from "../services/sandbox-lifecycle";
import { TurnSupersededError, type Harness, type TurnStore, type TurnToRun, type TurnUsage } from "../services/turns";
import { buildConversation, unansweredCalls, type HistoryEvent, type HistoryTurn } from "./history";
import { BUILTIN_TOOLS, parseToolInput, runTool, type ToolOutcome } from "./tools";

/** Resolves an agent's model name to the gateway that serves it (the demo model, or the LiteLLM Gateway). */
export type ModelResolver = (model: string) => ModelGateway | { unavailable: string };

const CONVERSATION = new Set<string>(["user_message", "assistant_message", "tool_call", "tool_result"]);

const INTERRUPTED =
  "interrupted: this tool call was started but its result was never recorded (the platform or the sandbox stopped). It was not run again; check the workspace before repeating it.";

/**
 * The builtin harness: the agent loop. Reads the conversation from the event log, calls the model,
 * records the tool calls, runs them in the session's sandbox, records each result, and repeats until
 * the model answers or the agent's step limit. Every step is committed before the next begins, so a
 * turn resumes from the log alone after a crash.
 */
export class BuiltinHarness implements Harness {
  readonly name = "builtin";

  constructor(
    private readonly deps: { store: TurnStore; lifecycle: SandboxLifecycle; bus: EventBus; models: ModelResolver; logger: Logger },
  ) {}

  async runTurn({ turn: initial, agent, resumed, sessionStatus }: TurnToRun, signals: { abort: AbortSignal; shutdown: AbortSignal }): Promise<void> {
    const { store } = this.deps;
    const logger = this.deps.logger.child({ sessionId: initial.sessionId, turnId: initial.id });
    const model = this.deps.models(agent.model);
    if ("unavailable" in model) {
      await store.finish(initial, { status: "failed", error: model.unavailable });
      return;
    }
    const signal = AbortSignal.any([signals.abort, signals.shutdown]);

    // The conversation is read from the log once per run of the turn (a resume reads it again) and
    // then kept in step with what this run records: a step does not re-read the whole session.
    let history: { events: HistoryEvent[]; turns: HistoryTurn[] } | undefined;
    const remember = (stored: StoredEvent[]) => history?.events.push(...(stored.filter((event) => CONVERSATION.has(event.type)) as HistoryEvent[]));
    // The first step works from the rows the turn was just started with; later steps re-read the
    // turn (an abort request, the step count) and the session (it may have become ready meanwhile).
    for (let step = 0; ; step++) {
      const turn = step === 0 ? initial : await store.get(initial.id);
      if (turn.run !== initial.run) throw new TurnSupersededError(initial, `run ${turn.run} resumed the turn`);
      if (turn.status !== "running") return;
      if (signals.abort.aborted || turn.abortRequestedAt) {
        await this.abort(turn, [], signals.abort);
        return;
      }
      if (signals.shutdown.aborted) throw new Error("shutting down");
      if (step > 0 || sessionStatus !== "running") await store.markSessionRunning(turn.sessionId);

      // A call recorded without its result was cut off by a crash: say so, never run it twice.
      // Only a resumed turn can have one, and this run records every result it starts.
      if (resumed && !history) {
        const interrupted = unansweredCalls(await store.turnEvents(turn));
        if (interrupted.length > 0) {
          logger.warn({ calls: interrupted.map((call) => call.id) }, "recording interrupted tool calls");
          await store.append(turn, interrupted.map((call) => ({ type: "tool_result", payload: { callId: call.id, output: INTERRUPTED, isError: true } })));
        }
      }
      if (turn.steps >= agent.maxSteps) {
        await store.finish(turn, { status: "failed", error: `the turn stopped after ${turn.steps} tool steps, the agent's limit (maxSteps ${agent.maxSteps})` });
        return;
      }

      history ??= await store.history(turn.sessionId);
      const deltas = new DeltaPublisher(this.deps.bus, turn.sessionId, logger);
      let completion;
      try {
        completion = await model.complete({
          model: agent.model,
          messages: buildConversation(history.events, history.turns, agent.systemPrompt),
          tools: BUILTIN_TOOLS,
          signal,
          onTextDelta: (text) => deltas.push(text),
        });
      } catch (error) {
        if (signals.shutdown.aborted) throw error;
        if (signals.abort.aborted) {
          await this.abort(turn, [], signals.abort);
          return;
        }
        const message = error instanceof GatewayError ? `model call failed: ${error.message}` : `model call failed: ${(error as Error).message}`;
        logger.warn({ err: error }, "model call failed");
        await store.finish(turn, { status: "failed", error: message });
        return;
      } finally {
        await deltas.flush();
      }

      const usage: TurnUsage | null = completion.usage;
      if (completion.toolCalls.length === 0) {
        await store.finish(turn, { status: "completed", events: [{ type: "assistant_message", payload: { text: completion.text } }], usage });
        return;
      }

      const calls = completion.toolCalls.map((call, index) => ({ call: { ...call, id: call.id || `call_${turn.steps}_${index}` }, parsed: parseToolInput(call.name, call.arguments) }));
      const stepEvents: EventInput[] = [];
      if (completion.text.trim()) stepEvents.push({ type: "assistant_message", payload: { text: completion.text } });
      for (const { call, parsed } of calls) stepEvents.push({ type: "tool_call", payload: { id: call.id, name: call.name, input: parsed.input } });
      remember(await store.recordStep(turn, stepEvents, usage));

      for (const [index, { call, parsed }] of calls.entries()) {
        let outcome: ToolOutcome;
        if (!parsed.ok) {
          outcome = { output: parsed.error, isError: true };
        } else {
          try {
            outcome = await this.deps.lifecycle.withSandbox(turn.sessionId, (client) => runTool(client, parsed.name, parsed.input, signal));
          } catch (error) {
            if (signals.shutdown.aborted) throw error;
            if (signals.abort.aborted) {
              await this.abort(turn, calls.slice(index).map(({ call: pending }) => pending), signals.abort);
              return;
            }
            // No sandbox can start on this host (decision 024): the call's result says why, and the
            // turn ends normally instead of being run again and again.
            if (isDomainKind(error, "precondition")) outcome = { output: (error as Error).message, isError: true };
            else if (!(error instanceof SandboxUnavailableError) && !isDomainKind(error, "unavailable")) throw error;
            else outcome = { output: `the sandbox stopped while this tool call ran (${(error as Error).message}); it is being reconnected. The call was not retried.`, isError: true };
          }
        }
        remember(await store.append(turn, [{ type: "tool_result", payload: { callId: call.id, output: outcome.output, exitCode: outcome.exitCode, isError: outcome.isError } }]));
      }
    }
  }

  /** Ends an aborted turn; a run stopped because another took the turn over (TurnRunner) records nothing. */
  private async abort(turn: TurnToRun["turn"], pending: ToolCall[], abort: AbortSignal): Promise<void> {
    if (abort.reason instanceof TurnSupersededError) throw abort.reason;
    await this.deps.store.finish(turn, {
      status: "aborted",
      events: pending.map((call) => ({ type: "tool_result" as const, payload: { callId: call.id, output: "aborted: the turn was aborted while this call ran", isError: true } })),
      error: "the turn was aborted by request",
    });
  }
}

function isDomainKind(error: unknown, kind: "unavailable" | "precondition"): boolean {
  return typeof error === "object" && error !== null && (error as { kind?: string }).kind === kind;
}

/** Batches live text deltas (every 50 ms) so a fast stream is a few notifications, not hundreds. */
class DeltaPublisher {
  private buffer = "";
  private timer: NodeJS.Timeout | undefined;
  private sending: Promise<void> = Promise.resolve();

  constructor(
    private readonly bus: EventBus,
    private readonly sessionId: string,
    private readonly logger: Logger,
  ) {}

  push(text: string): void {
    this.buffer += text;
    this.timer ??= setTimeout(() => this.send(), 50);
  }

  async flush(): Promise<void> {
    this.send();
    await this.sending;
  }

  private send(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.buffer) return;
    const text = this.buffer;
    this.buffer = "";
    this.sending = this.sending.then(() => this.bus.publishDelta(this.sessionId, text)).catch((error: unknown) => this.logger.debug({ err: error }, "a live delta was not broadcast"));
  }
}
