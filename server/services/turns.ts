import { and, asc, eq, gt, inArray, sql } from "drizzle-orm";
import type { Database, DatabaseOrTransaction } from "../../db/client";
import { agentVersions, sessionEvents, sessions, turns } from "../../db/schema";
import type { HistoryEvent, HistoryTurn } from "../harness/history";
import type { Logger } from "../logger";
import { postgresErrorOf } from "./errors";
import { enqueueJob } from "./job-queue";
import { eventBatch, storableText, storedEvents, usageArguments, type EventInput, type StoredEvent } from "./event-log";
import { TURN_ABORT_CHANNEL, TURN_TAKEN_OVER_CHANNEL, type EventBus } from "./event-bus";
import { transition, type SessionStatus } from "./sandbox-lifecycle";
import type { BerthMetrics } from "../metrics";

export type TurnRow = typeof turns.$inferSelect;
export type AgentVersionRow = typeof agentVersions.$inferSelect;
export type TurnUsage = { promptTokens: number; completionTokens: number; cost?: number };
/** What fences a write to a turn's run: the turn, the run that writes, and its session. */
type HeldTurn = Pick<TurnRow, "id" | "run" | "sessionId">;

/**
 * What a harness needs to run one turn. `resumed`: the turn was already running when this run picked
 * it up (a crash or a shutdown interrupted it), so its log may hold a call without a result.
 * `sessionStatus`: the session's status once the turn started.
 */
export type TurnToRun = { turn: TurnRow; agent: AgentVersionRow; resumed: boolean; sessionStatus: SessionStatus };

export interface Harness {
  readonly name: string;
  /**
   * Runs the turn to its end (completed, failed or aborted), recording every step through the
   * TurnStore before starting the next. Throws only when it must stop without ending the turn (the
   * process is shutting down): the job then runs again and the harness resumes from the log.
   */
  runTurn(work: TurnToRun, signals: { abort: AbortSignal; shutdown: AbortSignal }): Promise<void>;
}

/** SQLSTATE of a turn step refused because the turn ended or another run resumed it (0008_turn_runs.sql). */
const TURN_NOT_HELD = "BT410";

/**
 * A step of a turn was not recorded: the turn has ended, or another run of it (another replica, after
 * a lock mix-up) has resumed it since this run started. The run must stop: the newer one carries on.
 */
export class TurnSupersededError extends Error {
  constructor(
    readonly turn: Pick<TurnRow, "id" | "run">,
    reason: string,
  ) {
    super(reason);
    this.name = "TurnSupersededError";
  }
}

const CONVERSATION_TYPES = ["user_message", "assistant_message", "tool_call", "tool_result"] as const;

async function lockSession(tx: DatabaseOrTransaction, sessionId: string) {
  const [session] = await tx.select().from(sessions).where(eq(sessions.id, sessionId)).for("update");
  return session;
}

/**
 * Durable state of agent turns: which turn runs next, and every step a harness records. Each method is
 * one transaction, so the log and the turn's counters never disagree.
 */
export class TurnStore {
  /** Agent versions never change once written: a turn reads its agent's from here after the first time. */
  private readonly agentVersions = new Map<string, AgentVersionRow>();

  constructor(
    private readonly db: Database,
    private readonly metrics?: Pick<BerthMetrics, "turnDuration">,
  ) {}

  /**
   * Resumes the session's running turn, or starts its oldest queued one; null when none is left. One
   * statement (`berth_start_turn`, db/migrations/0005_turn_functions.sql) locks the session, moves it
   * to running and starts the turn.
   */
  async startNext(sessionId: string): Promise<TurnToRun | null> {
    const [row] = await this.db.execute<{ turn: TurnJson; resumed: boolean; session_status: SessionStatus; agent_id: string; agent_version: number }>(
      sql`select * from berth_start_turn(${sessionId}::uuid)`,
    );
    if (!row) return null;
    const agent = await this.agentVersion(this.db, row.agent_id, row.agent_version);
    return { turn: turnFromJson(row.turn), agent, resumed: row.resumed, sessionStatus: row.session_status };
  }

  /**
   * Whether the session has a turn to start or resume, without locking anything: after a turn ends
   * there nearly never is, and a message accepted after this look queues a job of its own.
   */
  async hasOpenTurns(sessionId: string): Promise<boolean> {
    const [row] = await this.db.select({ id: turns.id }).from(turns).where(openTurnsOf(sessionId)).limit(1);
    return row !== undefined;
  }

  private async agentVersion(tx: DatabaseOrTransaction, agentId: string, version: number): Promise<AgentVersionRow> {
    const key = `${agentId}:${version}`;
    const cached = this.agentVersions.get(key);
    if (cached) return cached;
    const [row] = await tx.select().from(agentVersions).where(and(eq(agentVersions.agentId, agentId), eq(agentVersions.version, version)));
    if (this.agentVersions.size >= AGENT_VERSION_CACHE_SIZE) this.agentVersions.delete(this.agentVersions.keys().next().value!);
    this.agentVersions.set(key, row!);
    return row!;
  }

  /** Shows the session as `running` while a turn works (it may have started before the sandbox was ready). */
  async markSessionRunning(sessionId: string): Promise<void> {
    // Every step calls this and the session is nearly always `running` already: look before locking
    // the row that message accepts also need.
    const [current] = await this.db.select({ status: sessions.status }).from(sessions).where(eq(sessions.id, sessionId));
    if (current?.status !== "ready" && current?.status !== "idle") return;
    await this.db.transaction(async (tx) => {
      const session = await lockSession(tx, sessionId);
      if (session && (session.status === "ready" || session.status === "idle")) await transition(tx, session, "running");
    });
  }

  /** Which run holds each of these turns, and whether an abort was asked for (the notifications' state). */
  async runStates(turnIds: string[]): Promise<Pick<TurnRow, "id" | "run" | "abortRequestedAt">[]> {
    if (turnIds.length === 0) return [];
    return this.db.select({ id: turns.id, run: turns.run, abortRequestedAt: turns.abortRequestedAt }).from(turns).where(inArray(turns.id, turnIds));
  }

  async get(turnId: string): Promise<TurnRow> {
    const [turn] = await this.db.select().from(turns).where(eq(turns.id, turnId));
    return turn!;
  }

  /**
   * The conversation events and the turns of a session, for rebuilding the model's history: one
   * statement, as the model call waits for it.
   */
  async history(sessionId: string): Promise<{ events: HistoryEvent[]; turns: HistoryTurn[] }> {
    const [row] = await this.db.execute<{ events: HistoryEvent[] | null; turns: HistoryTurn[] | null }>(sql`
      select
        (select json_agg(json_build_object('seq', e.seq, 'type', e.type, 'payload', e.payload) order by e.seq)
           from ${sessionEvents} e where e.session_id = ${sessionId}::uuid and e.type in (${sql.join(CONVERSATION_TYPES.map((type) => sql`${type}::session_event_type`), sql`, `)})) as events,
        (select json_agg(json_build_object('userSeq', t.user_seq, 'startSeq', t.start_seq))
           from ${turns} t where t.session_id = ${sessionId}::uuid) as turns`);
    return { events: row?.events ?? [], turns: row?.turns ?? [] };
  }

  /** What an external harness stored for the session (e.g. opencode's own session id); {} when nothing. */
  async harnessState(sessionId: string, harness: string): Promise<Record<string, unknown>> {
    const [row] = await this.db.select({ state: sessions.harnessState }).from(sessions).where(eq(sessions.id, sessionId));
    const state = row?.state?.[harness];
    return state && typeof state === "object" ? (state as Record<string, unknown>) : {};
  }

  /**
   * Merges `patch` into what the harness keeps for the turn's session (a null value removes that key),
   * only while `turn.run` holds the turn: a TurnSupersededError, and nothing written, otherwise.
   */
  async setHarnessState(turn: HeldTurn, harness: string, patch: Record<string, unknown>): Promise<void> {
    const key = sql`array[${harness}]::text[]`;
    await this.whileHeld(turn, (tx) =>
      tx
        .update(sessions)
        .set({
          harnessState: sql`jsonb_set(${sessions.harnessState}, ${key}, jsonb_strip_nulls(coalesce(${sessions.harnessState} #> ${key}, '{}'::jsonb) || ${JSON.stringify(patch)}::jsonb))`,
        })
        .where(eq(sessions.id, turn.sessionId)),
    );
  }

  /**
   * Runs `write` while `turn.run` holds the turn, under the session's row lock, which a resume also
   * takes before it moves the turn to its next run (the order of berth_append_turn_events).
   */
  private async whileHeld(turn: HeldTurn, write: (tx: DatabaseOrTransaction) => Promise<unknown>): Promise<void> {
    await this.db.transaction(async (tx) => {
      await lockSession(tx, turn.sessionId);
      const [current] = await tx.select({ run: turns.run, status: turns.status }).from(turns).where(eq(turns.id, turn.id));
      if (current?.run !== turn.run) throw new TurnSupersededError(turn, `the turn is held by run ${current?.run}, not run ${turn.run}`);
      if (current.status !== "running") throw new TurnSupersededError(turn, `the turn is no longer running (${current.status})`);
      await write(tx);
    });
  }

  /**
   * Queues a `turn:run` job for each session whose turns wait with no job left to run them (one that
   * ran out of attempts, or was cut off on its last one), so no session stays `running` for good.
   * Returns those sessions. Jobs of a queue run one at a time, so a job too many finds nothing to do.
   */
  async queueStrandedTurns(): Promise<string[]> {
    const rows = await this.db.execute<{ session_id: string }>(sql`
      select distinct t.session_id from ${turns} t
      where t.status in ('running', 'queued')
        and not exists (
          select 1 from graphile_worker._private_jobs j
            join graphile_worker._private_job_queues q on q.id = j.job_queue_id
          where q.queue_name = ${sessionQueuePrefix} || t.session_id::text and (j.attempts < j.max_attempts or j.locked_at is not null))`);
    for (const { session_id: sessionId } of rows) {
      await enqueueJob(this.db, "turn:run", { sessionId }, { queueName: `${sessionQueuePrefix}${sessionId}`, maxAttempts: TURN_JOB_MAX_ATTEMPTS });
    }
    return rows.map((row) => row.session_id);
  }

  /**
   * Removes the harness's `runningTurn` marker if it is this turn's, only while `turn.run` holds the
   * turn: a run that was taken over must not clear the marker the newer run of the turn set.
   */
  async clearRunningTurn(turn: HeldTurn, harness: string): Promise<void> {
    await this.whileHeld(turn, (tx) =>
      tx
        .update(sessions)
        .set({ harnessState: sql`${sessions.harnessState} #- ${`{${harness},runningTurn}`}::text[]` })
        .where(and(eq(sessions.id, turn.sessionId), sql`${sessions.harnessState} #>> ${`{${harness},runningTurn}`}::text[] = ${turn.id}`)),
    );
  }

  /** The turn's own conversation events (after it started). */
  async turnEvents(turn: TurnRow): Promise<HistoryEvent[]> {
    const rows = await this.db
      .select({ seq: sessionEvents.seq, type: sessionEvents.type, payload: sessionEvents.payload })
      .from(sessionEvents)
      .where(and(eq(sessionEvents.sessionId, turn.sessionId), gt(sessionEvents.seq, turn.startSeq ?? 0), inArray(sessionEvents.type, ["tool_call", "tool_result", "assistant_message"])))
      .orderBy(asc(sessionEvents.seq));
    return rows as HistoryEvent[];
  }

  /** Records a model step that asked for tools: its events, one more step, and its usage. */
  async recordStep(turn: TurnRow, events: EventInput[], usage: TurnUsage | null): Promise<StoredEvent[]> {
    return this.appendTurnEvents(turn, events, 1, usage);
  }

  async append(turn: TurnRow, events: EventInput[]): Promise<StoredEvent[]> {
    return this.appendTurnEvents(turn, events, 0, null);
  }

  /**
   * One statement (`berth_append_turn_events`, db/migrations/0008_turn_runs.sql), written only while
   * `turn.run` still holds the turn: a TurnSupersededError, and nothing written, once the turn has
   * ended or another run has resumed it.
   */
  private async appendTurnEvents(turn: TurnRow, events: EventInput[], steps: number, usage: TurnUsage | null): Promise<StoredEvent[]> {
    const rows = await fenced(turn, () =>
      this.db.execute<{ appended_seq: string; appended_at: string | Date }>(
        sql`select * from berth_append_turn_events(${turn.id}::uuid, ${turn.run}::integer, ${turn.sessionId}::uuid, ${eventBatch(events)}::jsonb, ${steps}::integer, ${usageArguments(usageChange(usage))})`,
      ),
    );
    return storedEvents(rows, events);
  }

  /**
   * Ends the turn: its last events, the `usage` event with the turn's totals, and the session back
   * to `ready` if it was `running`. For a failure, the `error` event comes last. Nothing happens if
   * the turn is no longer running (false then); a TurnSupersededError if another run holds it.
   */
  async finish(turn: TurnRow, outcome: { status: "completed" | "failed" | "aborted"; events?: EventInput[]; error?: string; usage?: TurnUsage | null }): Promise<boolean> {
    // One statement (`berth_finish_turn`, db/migrations/0008_turn_runs.sql).
    const [row] = await fenced(turn, () =>
      this.db.execute<{ finished: boolean }>(sql`select berth_finish_turn(${turn.id}::uuid, ${turn.run}::integer, ${turn.sessionId}::uuid, ${outcome.status}::turn_status,
        ${outcome.error === undefined ? null : storableText(outcome.error)}::text, ${eventBatch(outcome.events ?? [])}::jsonb, ${usageArguments(usageChange(outcome.usage ?? null))}) as finished`),
    );
    const finished = row?.finished === true;
    // createdAt is the database's clock and this is the process's: they differ by the hosts' skew.
    if (finished) this.metrics?.turnDuration.observe({ outcome: outcome.status }, Math.max(0, Date.now() - turn.createdAt.getTime()) / 1000);
    return finished;
  }
}

/** Runs a write of the turn's run, turning the database's refusal (BT410) into a TurnSupersededError. */
async function fenced<T>(turn: TurnRow, write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (error) {
    const cause = postgresErrorOf(error);
    if (cause.code === TURN_NOT_HELD) throw new TurnSupersededError(turn, cause.message ?? "the turn is no longer held by this run");
    throw error;
  }
}

/** A turn row as `berth_turn_json` returns it: the schema's keys, timestamps as ISO text. */
type TurnJson = Omit<TurnRow, "abortRequestedAt" | "createdAt" | "startedAt" | "finishedAt"> & {
  abortRequestedAt: string | null;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
};

function turnFromJson(json: TurnJson): TurnRow {
  const date = (value: string | null) => (value === null ? null : new Date(value));
  return { ...json, abortRequestedAt: date(json.abortRequestedAt), createdAt: new Date(json.createdAt), startedAt: date(json.startedAt), finishedAt: date(json.finishedAt) };
}

const AGENT_VERSION_CACHE_SIZE = 1000;

/** `turn:run` jobs as berth_accept_message queues them (db/migrations/0002_accept_message.sql). */
const TURN_JOB_MAX_ATTEMPTS = 10;
const sessionQueuePrefix = "session:";

/** The session's turns that still have work: one to resume, or queued ones. */
function openTurnsOf(sessionId: string) {
  return and(eq(turns.sessionId, sessionId), inArray(turns.status, ["running", "queued"]));
}

function usageChange(usage: TurnUsage | null) {
  if (!usage || (!usage.promptTokens && !usage.completionTokens && !usage.cost)) return null;
  return { promptTokens: usage.promptTokens, completionTokens: usage.completionTokens, cost: usage.cost ?? 0 };
}

/** Runs one turn may have (starts and resumes) before it is given up; see TurnRunner.runPending. */
export const MAX_TURN_RUNS = 10;

/**
 * Runs a session's turns one after another (the `turn:run` job; jobs of one session share a
 * graphile-worker queue, so two never run at once). A `sessions.abort` reaches the running turn
 * through the event bus, whichever replica runs it.
 */
export class TurnRunner {
  /** The runs of each turn under way in this process: normally one, two while one takes over from the other. */
  private readonly running = new Map<string, Set<{ run: number; controller: AbortController }>>();

  constructor(
    private readonly deps: { store: TurnStore; harnesses: Record<string, Harness>; bus: EventBus; logger: Logger },
  ) {
    deps.bus.onTurnAbort((turnId) => {
      for (const { controller } of this.running.get(turnId) ?? []) controller.abort(new Error("aborted by request"));
    });
    deps.bus.onTurnTakenOver((turnId, run) => this.stopOlderRuns(turnId, run));
    deps.bus.onNotificationsMissed((channel) => {
      if (channel === TURN_ABORT_CHANNEL || channel === TURN_TAKEN_OVER_CHANNEL) void this.recheckRunningTurns();
    });
  }

  private stopOlderRuns(turnId: string, run: number): void {
    for (const older of this.running.get(turnId) ?? []) {
      if (older.run < run) older.controller.abort(new TurnSupersededError({ id: turnId, run: older.run }, `run ${run} took the turn over`));
    }
  }

  /**
   * Reads the aborts and takeovers this process may not have heard (its listening connection dropped)
   * from the turns themselves, and stops the runs concerned, instead of leaving them to their next
   * step or write.
   */
  private async recheckRunningTurns(): Promise<void> {
    if (this.running.size === 0) return;
    let states: Awaited<ReturnType<TurnStore["runStates"]>>;
    try {
      states = await this.deps.store.runStates([...this.running.keys()]);
    } catch (error) {
      this.deps.logger.warn({ err: error }, "could not read the running turns again; an abort or a takeover is seen at the turn's next step");
      return;
    }
    for (const state of states) {
      this.stopOlderRuns(state.id, state.run);
      if (state.abortRequestedAt) for (const { controller } of this.running.get(state.id) ?? []) controller.abort(new Error("aborted by request"));
    }
  }

  /**
   * A turn is given up, ended as failed with an error event, once it has had MAX_TURN_RUNS runs:
   * when its last one fails on an error its harness did not expect, or when it would start again
   * after its last one was cut off (a process that crashed or stopped each time it ran it). Until
   * then such an error fails the job, which runs again with graphile-worker's backoff.
   */
  /** The minute's check that no session's turns wait without a job (TurnStore.queueStrandedTurns). */
  async queueStrandedTurns(): Promise<void> {
    const sessionIds = await this.deps.store.queueStrandedTurns();
    if (sessionIds.length > 0) this.deps.logger.warn({ sessionIds }, "queued jobs for turns left without one");
  }

  async runPending(sessionId: string, shutdown: AbortSignal): Promise<void> {
    for (let first = true; ; first = false) {
      if (shutdown.aborted) throw new Error("the process is shutting down; the turn resumes in the next one");
      // The job exists because a message came; after a turn, look before taking the session's lock.
      if (!first && !(await this.deps.store.hasOpenTurns(sessionId))) return;
      const next = await this.deps.store.startNext(sessionId);
      if (!next) return;
      // A run that may still be going somewhere stops now rather than at its next write (the fence).
      if (next.resumed) {
        await this.deps.bus.announceTakeover(next.turn.id, next.turn.run).catch((error: unknown) => {
          this.deps.logger.warn({ err: error, sessionId, turnId: next.turn.id }, "the takeover of a turn could not be announced; an older run stops at its next write");
        });
      }
      if (next.turn.run > MAX_TURN_RUNS) {
        this.deps.logger.error({ sessionId, turnId: next.turn.id, runs: MAX_TURN_RUNS }, "a turn's runs were all cut off; ending it as failed");
        await this.deps.store.finish(next.turn, {
          status: "failed",
          error: `the turn was given up after ${MAX_TURN_RUNS} runs, each of them cut off before it ended (the platform stopped or crashed while it ran)`,
        });
        continue;
      }
      const harness = this.deps.harnesses[next.agent.harness];
      if (!harness) {
        await this.deps.store.finish(next.turn, { status: "failed", error: `the ${next.agent.harness} harness is not available in this version of Berth` });
        continue;
      }
      const controller = new AbortController();
      const entry = { run: next.turn.run, controller };
      const runs = this.running.get(next.turn.id) ?? new Set();
      this.running.set(next.turn.id, runs.add(entry));
      try {
        if (next.turn.abortRequestedAt) controller.abort(new Error("aborted by request"));
        await harness.runTurn(next, { abort: controller.signal, shutdown });
      } catch (error) {
        // The run that took the turn over carries it and the session's later turns. The job still
        // fails rather than completes: graphile-worker deletes a completed job whoever holds it now
        // (the run that took over may be running this very job), while a failure is only recorded
        // for this worker's lock; a retry of a job of its own finds the turn done or running.
        if (error instanceof TurnSupersededError) {
          this.deps.logger.warn({ sessionId, turnId: next.turn.id, run: next.turn.run, reason: error.message }, "another run took this turn over; this run stops");
          throw error;
        }
        if (shutdown.aborted || next.turn.run < MAX_TURN_RUNS) throw error;
        this.deps.logger.error({ err: error, sessionId, turnId: next.turn.id, runs: next.turn.run }, "a turn's last run failed; ending it as failed");
        const reason = (error instanceof Error ? error.message : String(error)).slice(0, 300);
        await this.deps.store.finish(next.turn, {
          status: "failed",
          error: `the turn could not be run: ${reason} (it failed ${next.turn.run} times; details are in the server log)`,
        });
      } finally {
        runs.delete(entry);
        if (runs.size === 0 && this.running.get(next.turn.id) === runs) this.running.delete(next.turn.id);
      }
    }
  }
}
