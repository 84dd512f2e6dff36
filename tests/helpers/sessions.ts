import type postgres from "postgres";
import type { TestBerth } from "./berth";
import { waitFor } from "./processes";

export type LoggedEvent = { seq: number; type: string; payload: Record<string, unknown> };
type Api = ReturnType<TestBerth["client"]>;
type AgentInput = Parameters<Api["agents"]["create"]["mutate"]>[0];

/**
 * What end-to-end tests of agent turns keep asking a live Berth: a ready session for an agent, a
 * session's whole event log (through the API, page by page), the log once every turn has ended, and
 * what a harness stored on the session.
 */
export function sessionProbe(api: Api, sql: postgres.Sql) {
  async function events(sessionId: string): Promise<LoggedEvent[]> {
    const all: LoggedEvent[] = [];
    let afterSeq = 0;
    for (;;) {
      const page = await api.sessions.events.query({ sessionId, afterSeq, limit: 100 });
      all.push(...(page.items as LoggedEvent[]));
      if (page.nextCursor === null) return all;
      afterSeq = page.nextCursor;
    }
  }

  return {
    events,

    /** Creates the agent and a session on it; returns once the session is ready. */
    async readySession(agent: AgentInput): Promise<string> {
      const created = await api.agents.create.mutate(agent);
      const { id } = await api.sessions.create.mutate({ agentId: created.id });
      await waitFor("the session to be ready", async () => ((await api.sessions.get.query({ sessionId: id })).status === "ready" ? true : undefined), 30_000);
      return id;
    },

    /** Waits until at least `turnCount` turns ended and none is queued or running, then returns the log. */
    async settled(sessionId: string, turnCount: number, timeoutMs = 90_000): Promise<LoggedEvent[]> {
      await waitFor(`${turnCount} finished turns`, async () => {
        const [row] = await sql<{ open: number; done: number }[]>`
          select count(*) filter (where status in ('queued','running'))::int as open,
                 count(*) filter (where status not in ('queued','running'))::int as done
          from turns where session_id = ${sessionId}`;
        return row!.open === 0 && row!.done >= turnCount ? true : undefined;
      }, timeoutMs);
      return events(sessionId);
    },

    /** One value a harness keeps on the session (`sessions.harness_state`). */
    async harnessValue(sessionId: string, harness: string, key: string): Promise<string | undefined> {
      const [row] = await sql<{ value: string | null }[]>`select harness_state->${harness}->>${key} as value from sessions where id = ${sessionId}`;
      return row?.value ?? undefined;
    },

    exec: (sessionId: string, command: string) => api.sessions.exec.mutate({ sessionId, command }),
  };
}

/** The events of the last turn (from its user message on), without status changes. */
export function lastTurn(log: LoggedEvent[]): LoggedEvent[] {
  // Status changes and egress records (written by the gateway as the sandbox connects, e.g. opencode
  // asking registry.npmjs.org at start) interleave with a turn but are not the harness's own events.
  return log.slice(log.findLastIndex((event) => event.type === "user_message")).filter((event) => event.type !== "status" && event.type !== "egress");
}

/** Queues scripted replies on a test gateway and returns the requests that consumed them, in order. */
export function recordingScript<Step, Request>(gateway: { script(...entries: ((request: Request) => Step)[]): void }, steps: Step[]): Request[] {
  const seen: Request[] = [];
  gateway.script(
    ...steps.map((step) => (request: Request) => {
      seen.push(request);
      return step;
    }),
  );
  return seen;
}
