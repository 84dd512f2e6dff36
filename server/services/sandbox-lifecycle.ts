import { setTimeout as delay } from "node:timers/promises";
import { and, desc, eq, gt, inArray, isNull, lt, lte, sql } from "drizzle-orm";
import type { Database, DatabaseOrTransaction } from "../../db/client";
import { agents, agentVersions, sandboxes, sessions } from "../../db/schema";
import type { Config } from "../config";
import type { Logger } from "../logger";
import { SandboxUnavailableError, type DaemonClient, type SandboxAvailability, type SandboxBackend } from "../sandbox/port";
import { recordAudit, SYSTEM_ACTOR } from "./audit";
import { conflict, DomainError, notFound, precondition } from "./errors";
import { appendEvents, type EventInput } from "./event-log";
import { enqueueJob } from "./job-queue";
import type { SecretBox } from "./secret-box";
import type { BerthMetrics } from "../metrics";
import { SecretService } from "./secrets";

export type SessionStatus = (typeof sessions.$inferSelect)["status"];

const LIVE: SessionStatus[] = ["ready", "running", "idle"];
/** Reconciliation's health check of each running daemon. */
const HEALTH_TIMEOUT_MS = 3_000;
/** Daemons reconciliation asks at once; a hung one holds a lane for up to two HEALTH_TIMEOUT_MS. */
const HEALTH_CHECKS_AT_ONCE = 8;
/**
 * The minute's reconciliation starts its health checks this far apart, and all of them within
 * HEALTH_CHECK_SPREAD_MS. Asked all together, every jail's daemon woke at once (a first request costs
 * a cold daemon some 20-50 ms of CPU) and the machine had no CPU left for message accepts for a
 * second or two each minute.
 */
const HEALTH_CHECK_INTERVAL_MS = 250;
const HEALTH_CHECK_SPREAD_MS = 30_000;
const ALLOWED: Record<SessionStatus, SessionStatus[]> = {
  pending: ["provisioning", "failed", "terminated"],
  provisioning: ["ready", "failed", "terminated", "reconnecting"],
  ready: ["running", "idle", "suspended", "reconnecting", "provisioning", "terminated"],
  running: ["ready", "idle", "reconnecting", "provisioning", "terminated"],
  idle: ["running", "ready", "suspended", "reconnecting", "provisioning", "terminated"],
  suspended: ["provisioning", "terminated"],
  reconnecting: ["provisioning", "failed", "terminated"],
  failed: ["provisioning", "terminated"],
  terminated: [],
};

function unavailableMessage(availability: Extract<SandboxAvailability, { available: false }>): string {
  return `sandboxes are unavailable on this host: ${availability.reason}. ${availability.fix}`;
}

/** Moves a locked session to a new status and records the `status` event, in the caller's transaction. */
export async function transition(tx: DatabaseOrTransaction, session: { id: string; status: SessionStatus }, to: SessionStatus, reason?: string): Promise<boolean> {
  if (session.status === to) return false;
  await appendEvents(tx, session.id, [statusEvent(session, to, reason)], { status: { to, reason: reason ?? null } });
  return true;
}

/**
 * The `status` event of a move; throws if the move is not allowed. The turn functions of
 * db/migrations/0005_turn_functions.sql write the same shape for ready/idle → running → ready.
 */
function statusEvent(session: { status: SessionStatus }, to: SessionStatus, reason?: string): EventInput {
  if (!ALLOWED[session.status].includes(to)) throw conflict(`a ${session.status} session cannot become ${to}`);
  return { type: "status", payload: { from: session.status, to, ...(reason ? { reason } : {}) } };
}

async function lockSession(tx: DatabaseOrTransaction, sessionId: string) {
  const [session] = await tx.select().from(sessions).where(eq(sessions.id, sessionId)).for("update");
  return session;
}

/**
 * Sandbox lifecycle of every session, for jobs and services (not team-bound: jobs act for the
 * platform). Each step commits its state before the next slow operation, so a crash anywhere leaves
 * a state that the provision job (retried) or the reconciliation cron picks up.
 */
export class SandboxLifecycle {
  /** Sessions with a command running in this process: activity, whatever the clock says. */
  private readonly activeCommands = new Map<string, number>();

  constructor(
    private readonly deps: {
      db: Database;
      backend: SandboxBackend;
      config: Pick<Config, "containerEnv" | "workspaceRetentionHours">;
      secretBox: SecretBox;
      metrics: BerthMetrics;
      logger: Logger;
    },
  ) {
    // Exported from the start, so the first failure already shows in rate() and increase().
    deps.metrics.sandboxStartFailures.inc({ backend: deps.backend.name }, 0);
    // Decided once, at start (a fixed host needs a restart, as the fix says).
    deps.metrics.sandboxesAvailable.set({ backend: deps.backend.name }, (deps.backend.availability?.() ?? { available: true }).available ? 1 : 0);
    deps.backend.onLost((loss) => {
      this.handleLoss(loss.name, loss.reason).catch((error: unknown) => deps.logger.error({ err: error, sandbox: loss.name }, "could not handle a lost sandbox"));
    });
  }

  get backendName(): string {
    return this.deps.backend.name;
  }

  /** Whether sandboxes can start here (a backend that does not say can). */
  availability(): SandboxAvailability {
    return this.deps.backend.availability?.() ?? { available: true };
  }

  /** Refuses, with the reason and the fix, what needs a new sandbox on a host that cannot start one. */
  assertSandboxesAvailable(): void {
    const availability = this.availability();
    if (!availability.available) throw precondition(unavailableMessage(availability));
  }

  /** The environment a sandbox of this session gets: platform CONTAINER_ENV_*, agent env, team secrets, agent secrets (last wins). */
  private async environmentFor(teamId: string, agentId: string, agentEnv: Record<string, string>): Promise<Record<string, string>> {
    const secrets = new SecretService(this.deps.db, { teamId, role: "owner", actor: SYSTEM_ACTOR, userId: null, via: "api_key" }, this.deps.secretBox);
    return { ...this.deps.config.containerEnv, ...agentEnv, ...(await secrets.environmentFor(agentId)) };
  }

  /** The provision job: a new sandbox generation for the session, then `ready`. */
  async provision(sessionId: string, options: { finalAttempt: boolean }): Promise<void> {
    const { db, backend, logger } = this.deps;
    const availability = this.availability();
    const prepared = await db.transaction(async (tx) => {
      const session = await lockSession(tx, sessionId);
      if (!session || session.status === "terminated") return null;
      if (!availability.available) {
        // Retrying cannot help until an operator fixes the host and restarts: fail the session now,
        // once, instead of a job that errors and backs off (a suspended one stays suspended).
        if (ALLOWED[session.status].includes("failed")) {
          const reason = unavailableMessage(availability).slice(0, 1000);
          await transition(tx, session, "failed", reason);
          await recordAudit(tx, { teamId: session.teamId, actor: SYSTEM_ACTOR, action: "session.fail", targetType: "session", targetId: sessionId, metadata: { reason: reason.slice(0, 500) } });
          logger.warn({ sessionId }, "sandboxes are unavailable on this host: the session failed");
          this.deps.metrics.sandboxStartFailures.inc({ backend: backend.name });
        }
        return null;
      }
      const [current] = await tx.select().from(sandboxes).where(eq(sandboxes.sessionId, sessionId)).orderBy(desc(sandboxes.generation)).limit(1);
      if (LIVE.includes(session.status) && current?.status === "ready" && (await backend.status(current.name)) === "running") return null;
      if (current && (current.status === "ready" || current.status === "provisioning")) {
        await tx.update(sandboxes).set({ status: "stopped", endedAt: new Date(), endReason: "replaced" }).where(eq(sandboxes.id, current.id));
      }
      await transition(tx, session, "provisioning");
      const generation = (current?.generation ?? 0) + 1;
      const name = `s-${sessionId.slice(0, 8)}-g${generation}-${Math.random().toString(36).slice(2, 7)}`;
      const [row] = await tx.insert(sandboxes).values({ sessionId, teamId: session.teamId, generation, backend: backend.name, name, status: "provisioning" }).returning();
      const [version] = await tx
        .select()
        .from(agentVersions)
        .where(and(eq(agentVersions.agentId, session.agentId), eq(agentVersions.version, session.agentVersion)));
      return { session, row: row!, version: version!, previous: current };
    });
    if (!prepared) return;
    const { session, row, version, previous } = prepared;
    if (previous && (previous.status === "ready" || previous.status === "provisioning")) await backend.stop(previous.name, "replaced");

    let provisioned;
    try {
      provisioned = await backend.provision({
        name: row.name,
        teamId: session.teamId,
        agentId: session.agentId,
        sessionId,
        generation: row.generation,
        network: version.network,
        env: await this.environmentFor(session.teamId, session.agentId, version.env),
        resources: { cpuMillis: version.cpuMillis, memoryMb: version.memoryMb, diskMb: version.diskMb },
        image: version.sandboxImage,
        warmPoolSize: version.warmPoolSize,
      });
    } catch (error) {
      const reason = `sandbox could not start: ${(error as Error).message}`;
      logger.warn({ err: error, sessionId }, "provisioning failed");
      this.deps.metrics.sandboxStartFailures.inc({ backend: backend.name });
      await db.transaction(async (tx) => {
        await tx.update(sandboxes).set({ status: "failed", endedAt: new Date(), endReason: reason.slice(0, 1000) }).where(eq(sandboxes.id, row.id));
        if (options.finalAttempt) {
          const locked = await lockSession(tx, sessionId);
          if (locked && locked.status === "provisioning") {
            await transition(tx, locked, "failed", reason.slice(0, 1000));
            await recordAudit(tx, { teamId: locked.teamId, actor: SYSTEM_ACTOR, action: "session.fail", targetType: "session", targetId: sessionId, metadata: { reason: reason.slice(0, 500) } });
          }
          if (previous?.status === "lost") this.deps.metrics.reconnects.inc({ outcome: "failed" });
        }
      });
      throw error;
    }

    const stale = await db.transaction(async (tx) => {
      const locked = await lockSession(tx, sessionId);
      const [latest] = await tx.select({ id: sandboxes.id }).from(sandboxes).where(eq(sandboxes.sessionId, sessionId)).orderBy(desc(sandboxes.generation)).limit(1);
      if (!locked || locked.status !== "provisioning" || latest?.id !== row.id) {
        await tx.update(sandboxes).set({ status: "stopped", endedAt: new Date(), endReason: "session moved on while provisioning" }).where(eq(sandboxes.id, row.id));
        return true;
      }
      await tx
        .update(sandboxes)
        .set({ name: provisioned.name, address: provisioned.address, hostPid: provisioned.hostPid, fromWarmPool: provisioned.fromWarmPool, status: "ready", readyAt: new Date() })
        .where(eq(sandboxes.id, row.id));
      await transition(tx, locked, "ready");
      await recordAudit(tx, { teamId: session.teamId, actor: SYSTEM_ACTOR, action: "sandbox.ready", targetType: "session", targetId: sessionId, metadata: { generation: row.generation, sandbox: provisioned.name, startMs: Math.round(provisioned.startMs), warm: provisioned.fromWarmPool } });
      return false;
    });
    if (stale) {
      await backend.stop(provisioned.name, "session moved on while provisioning");
      return;
    }
    this.deps.metrics.sandboxStart.observe({ backend: backend.name, warm: String(provisioned.fromWarmPool) }, provisioned.startMs / 1000);
    if (previous?.status === "lost") this.deps.metrics.reconnects.inc({ outcome: "recovered" });
  }

  /** The backend noticed a sandbox died: mark it lost and reconnect its session to a new generation. */
  /** Marks the sandbox lost and reconnects its session; false when the sandbox was no longer live (someone else ended it). */
  async handleLoss(name: string, reason: string): Promise<boolean> {
    let marked = false;
    const sessionId = await this.deps.db.transaction(async (tx) => {
      const [row] = await tx.update(sandboxes).set({ status: "lost", endedAt: new Date(), endReason: reason }).where(and(eq(sandboxes.name, name), inArray(sandboxes.status, ["ready", "provisioning"]))).returning();
      if (!row) return null;
      marked = true;
      const session = await lockSession(tx, row.sessionId);
      if (!session || !LIVE.includes(session.status)) return null;
      await transition(tx, session, "reconnecting", reason);
      await recordAudit(tx, { teamId: session.teamId, actor: SYSTEM_ACTOR, action: "sandbox.lost", targetType: "session", targetId: session.id, metadata: { sandbox: name, reason } });
      await enqueueJob(tx, "sandbox:provision", { sessionId: session.id, reason: "reconnect" }, { jobKey: `provision:${session.id}`, maxAttempts: 5 });
      return session.id;
    });
    if (sessionId) {
      this.deps.metrics.reconnects.inc({ outcome: "started" });
      this.deps.logger.warn({ sessionId, sandbox: name, reason }, "sandbox lost: reconnecting the session");
    }
    return marked;
  }

  /** Waits until the session has a ready sandbox, resuming a suspended one; returns its address. */
  async ensureReady(sessionId: string, timeoutMs = 60_000): Promise<{ address: string; name: string }> {
    const deadline = Date.now() + timeoutMs;
    let resumeRequested = false;
    for (;;) {
      const [session] = await this.deps.db.select().from(sessions).where(eq(sessions.id, sessionId));
      if (!session) throw notFound("session");
      if (session.status === "terminated") throw conflict("the session is terminated");
      // Nothing could start its sandbox (nor a restart help): say why now, not after the timeout.
      if (!LIVE.includes(session.status)) this.assertSandboxesAvailable();
      if (session.status === "failed") throw conflict(`the session failed (${session.statusReason ?? "unknown reason"}): restart it`);
      if (LIVE.includes(session.status)) {
        const [sandbox] = await this.deps.db.select().from(sandboxes).where(and(eq(sandboxes.sessionId, sessionId), eq(sandboxes.status, "ready"))).orderBy(desc(sandboxes.generation)).limit(1);
        if (sandbox?.address) return { address: sandbox.address, name: sandbox.name };
      }
      if (session.status === "suspended" && !resumeRequested) {
        await enqueueJob(this.deps.db, "sandbox:provision", { sessionId, reason: "resume" }, { jobKey: `provision:${sessionId}`, maxAttempts: 3 });
        resumeRequested = true;
      }
      if (Date.now() > deadline) throw new DomainError("unavailable", `the session's sandbox is not ready (status ${session.status}); try again shortly`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /**
   * Runs `work` against the session's ready sandbox (resuming a suspended one), as activity. A
   * sandbox that stops answering is handed to loss handling, so the session reconnects.
   */
  async withSandbox<T>(sessionId: string, work: (client: DaemonClient) => Promise<T>): Promise<T> {
    const { address, name } = await this.ensureReady(sessionId);
    try {
      return await this.withActivity(sessionId, () => work(this.deps.backend.connect(address)));
    } catch (error) {
      if (error instanceof SandboxUnavailableError && (await this.deps.backend.status(name)) !== "running") {
        await this.handleLoss(name, `sandbox stopped answering: ${error.message}`);
      }
      throw error;
    }
  }

  /** Runs `work` as activity of the session: idle suspension waits, last_activity_at keeps moving. */
  async withActivity<T>(sessionId: string, work: () => Promise<T>): Promise<T> {
    this.activeCommands.set(sessionId, (this.activeCommands.get(sessionId) ?? 0) + 1);
    const touch = () => this.deps.db.update(sessions).set({ lastActivityAt: sql`now()` }).where(eq(sessions.id, sessionId));
    const heartbeat = setInterval(() => void touch().catch(() => {}), 15_000);
    try {
      await touch();
      return await work();
    } finally {
      clearInterval(heartbeat);
      const left = (this.activeCommands.get(sessionId) ?? 1) - 1;
      if (left <= 0) this.activeCommands.delete(sessionId);
      else this.activeCommands.set(sessionId, left);
      await touch().catch(() => {});
    }
  }

  /** Cron: suspends sessions idle longer than their agent's idleTimeoutSeconds (workspace kept). */
  async suspendIdle(): Promise<number> {
    const candidates = await this.deps.db
      .select({ id: sessions.id })
      .from(sessions)
      .innerJoin(agentVersions, and(eq(agentVersions.agentId, sessions.agentId), eq(agentVersions.version, sessions.agentVersion)))
      .where(and(inArray(sessions.status, ["ready", "idle"]), lt(sessions.lastActivityAt, sql`now() - make_interval(secs => ${agentVersions.idleTimeoutSeconds})`)));
    let suspended = 0;
    for (const { id } of candidates) {
      if (this.activeCommands.has(id)) continue;
      const stopped = await this.deps.db.transaction(async (tx) => {
        const session = await lockSession(tx, id);
        if (!session || !["ready", "idle"].includes(session.status)) return null;
        const rows = await tx.update(sandboxes).set({ status: "suspended", endedAt: new Date(), endReason: "idle" }).where(and(eq(sandboxes.sessionId, id), eq(sandboxes.status, "ready"))).returning();
        await transition(tx, session, "suspended", "idle");
        await recordAudit(tx, { teamId: session.teamId, actor: SYSTEM_ACTOR, action: "session.suspend", targetType: "session", targetId: id, metadata: { reason: "idle" } });
        return rows;
      });
      for (const row of stopped ?? []) {
        if (this.deps.backend.suspend) await this.deps.backend.suspend(row.name);
        else await this.deps.backend.stop(row.name, "idle");
      }
      if (stopped) suspended++;
    }
    return suspended;
  }

  async terminate(sessionId: string): Promise<void> {
    const rows = await this.deps.db.transaction(async (tx) => {
      const session = await lockSession(tx, sessionId);
      if (!session) throw notFound("session");
      if (session.status === "terminated") return [];
      const live = await tx.update(sandboxes).set({ status: "stopped", endedAt: new Date(), endReason: "terminated" }).where(and(eq(sandboxes.sessionId, sessionId), inArray(sandboxes.status, ["ready", "provisioning"]))).returning();
      // A backend that keeps suspended sandboxes (Kubernetes) still holds the suspended session's one.
      const kept = session.status === "suspended" ? await tx.select().from(sandboxes).where(and(eq(sandboxes.sessionId, sessionId), eq(sandboxes.status, "suspended"))).orderBy(desc(sandboxes.generation)).limit(1) : [];
      await transition(tx, session, "terminated");
      return [...live, ...kept];
    });
    for (const row of rows) await this.deps.backend.stop(row.name, "terminated");
    // Nothing can reach a terminated session's files any more. With a retention period, or after a
    // failure here (or a crash before it), reconciliation deletes the workspace later.
    if (this.deps.config.workspaceRetentionHours > 0) return;
    await this.deps.backend.deleteWorkspace(sessionId).catch((error: unknown) => this.deps.logger.warn({ err: error, sessionId }, "could not delete the workspace of a terminated session; reconciliation will retry"));
  }

  /** Forces a new sandbox generation (also brings a failed session back). */
  async restart(sessionId: string): Promise<void> {
    this.assertSandboxesAvailable();
    const replaced = await this.deps.db.transaction(async (tx) => {
      const session = await lockSession(tx, sessionId);
      if (!session) throw notFound("session");
      if (session.status === "terminated") throw conflict("the session is terminated");
      const rows = await tx.update(sandboxes).set({ status: "stopped", endedAt: new Date(), endReason: "restart" }).where(and(eq(sandboxes.sessionId, sessionId), inArray(sandboxes.status, ["ready", "provisioning"]))).returning();
      await transition(tx, session, "provisioning", "restart requested");
      await enqueueJob(tx, "sandbox:provision", { sessionId, reason: "restart" }, { jobKey: `provision:${sessionId}`, maxAttempts: 3 });
      return rows;
    });
    for (const row of replaced) await this.deps.backend.stop(row.name, "restart");
  }

  /**
   * Cron: stops sandboxes no live session owns, marks sessions whose sandbox vanished (they
   * reconnect), and fails provisioning rows a dead process abandoned. `paced`: the health checks are
   * spread out (the minute's run; at start-up they go as fast as they can). A stop signal ends the
   * pacing and skips the checks not yet started.
   */
  async reconcile(options: { paced?: boolean; signal?: AbortSignal } = {}): Promise<{ stopped: number; lost: number; workspacesDeleted: number }> {
    const { db, backend } = this.deps;
    await this.syncWarmPools().catch((error: unknown) => this.deps.logger.warn({ err: error }, "could not sync the warm pools"));
    const listed = await backend.list();
    const rows = await db
      .select({ sandbox: sandboxes, sessionStatus: sessions.status })
      .from(sandboxes)
      .innerJoin(sessions, eq(sessions.id, sandboxes.sessionId))
      .where(and(eq(sandboxes.backend, backend.name), inArray(sandboxes.status, ["ready", "provisioning", "suspended"])));
    // A sandbox is owned only while its row is live and its session is not final, or while it is the
    // suspended sandbox of a suspended session (backends that keep suspended sandboxes).
    const owned = new Set(
      rows
        .filter((row) => (row.sandbox.status === "suspended" ? row.sessionStatus === "suspended" : row.sessionStatus !== "terminated" && row.sessionStatus !== "failed"))
        .map((row) => row.sandbox.name),
    );
    let stopped = 0;
    for (const sandbox of listed) {
      if (!owned.has(sandbox.name)) {
        await backend.stop(sandbox.name, "orphan: no live session owns it");
        await db
          .update(sandboxes)
          .set({ status: "stopped", endedAt: new Date(), endReason: "orphan: no live session owns it" })
          .where(and(eq(sandboxes.name, sandbox.name), inArray(sandboxes.status, ["ready", "provisioning"])));
        stopped++;
      }
    }
    const listedNames = new Set(listed.map((sandbox) => sandbox.name));
    let lost = 0;
    for (const { sandbox: row } of rows) {
      if (row.status === "suspended" || listedNames.has(row.name)) continue;
      if (row.status === "ready") {
        await this.handleLoss(row.name, "sandbox vanished");
        lost++;
      } else if (Date.now() - row.createdAt.getTime() > 120_000) {
        await db.update(sandboxes).set({ status: "failed", endedAt: new Date(), endReason: "abandoned while provisioning" }).where(eq(sandboxes.id, row.id));
      }
    }
    // A daemon whose process lives but does not answer (hung, starved) is as lost as a dead one.
    const running = rows.filter(({ sandbox: row }) => row.status === "ready" && row.address && listedNames.has(row.name) && owned.has(row.name));
    const unhealthy: string[] = [];
    const interval = options.paced && running.length > 0 ? Math.min(HEALTH_CHECK_INTERVAL_MS, HEALTH_CHECK_SPREAD_MS / running.length) : 0;
    const checksStarted = Date.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(HEALTH_CHECKS_AT_ONCE, running.length) }, async () => {
        while (next < running.length && !options.signal?.aborted) {
          const index = next++;
          const wait = checksStarted + index * interval - Date.now();
          // Aborted: the check below is skipped.
          if (wait > 0) await delay(wait, undefined, { signal: options.signal }).catch(() => {});
          if (options.signal?.aborted) return;
          const row = running[index]!.sandbox;
          if (await this.isUnresponsive(row.address!)) unhealthy.push(row.name);
        }
      }),
    );
    for (const name of unhealthy) {
      // Checked up to HEALTH_CHECK_SPREAD_MS after the rows were read: a sandbox suspended, stopped or
      // replaced meanwhile is its new owner's to stop (a suspended one is kept for its resume).
      if (!(await this.handleLoss(name, "the sandbox daemon did not answer its health check"))) continue;
      await backend.stop(name, "unresponsive daemon");
      lost++;
    }
    const workspacesDeleted = await this.deleteWorkspacesOfTerminatedSessions();
    return { stopped, lost, workspacesDeleted };
  }

  /**
   * Workspaces whose session was terminated longer ago than BERTH_WORKSPACE_RETENTION_HOURS (a
   * terminated session never changes again, so its `updated_at` is when it was terminated). Without
   * retention, terminate deletes them itself and this catches a crash or failure in between. A
   * workspace with no session row is left alone: it might be another installation's sharing this
   * data dir or namespace (docs/decisions/017-deleting-workspaces.md).
   */
  private async deleteWorkspacesOfTerminatedSessions(): Promise<number> {
    const { db, backend, config } = this.deps;
    const kept = await backend.listWorkspaces();
    if (kept.length === 0) return 0;
    const terminatedBefore = new Date(Date.now() - config.workspaceRetentionHours * 3_600_000);
    const terminated: string[] = [];
    for (let start = 0; start < kept.length; start += 1_000) {
      const rows = await db
        .select({ id: sessions.id })
        .from(sessions)
        .where(and(inArray(sessions.id, kept.slice(start, start + 1_000)), eq(sessions.status, "terminated"), lte(sessions.updatedAt, terminatedBefore)));
      terminated.push(...rows.map((row) => row.id));
    }
    let deleted = 0;
    for (const id of terminated) {
      try {
        await backend.deleteWorkspace(id);
        deleted++;
      } catch (error) {
        this.deps.logger.warn({ err: error, sessionId: id }, "could not delete the workspace of a terminated session");
      }
    }
    return deleted;
  }

  /**
   * Per-agent warm pools (backends that have them): one per agent whose current version asks for
   * one, sized as it says; pools of older versions and deleted agents go away.
   */
  async syncWarmPools(): Promise<void> {
    const { db, backend } = this.deps;
    if (!backend.syncWarmPools) return;
    const rows = await db
      .select({ version: agentVersions })
      .from(agents)
      .innerJoin(agentVersions, and(eq(agentVersions.agentId, agents.id), eq(agentVersions.version, agents.currentVersion)))
      .where(and(isNull(agents.deletedAt), gt(agentVersions.warmPoolSize, 0)));
    await backend.syncWarmPools(
      rows.map(({ version }) => ({
        teamId: version.teamId,
        agentId: version.agentId,
        network: version.network,
        resources: { cpuMillis: version.cpuMillis, memoryMb: version.memoryMb, diskMb: version.diskMb },
        image: version.sandboxImage,
        size: version.warmPoolSize,
      })),
    );
  }

  /** Two health checks, HEALTH_TIMEOUT_MS each, both unanswered. */
  private async isUnresponsive(address: string): Promise<boolean> {
    for (let attempt = 0; attempt < 2; attempt++) {
      const answered = await Promise.race([
        this.deps.backend.connect(address).health().then(() => true, () => false),
        new Promise<boolean>((resolve) => setTimeout(() => resolve(false), HEALTH_TIMEOUT_MS).unref()),
      ]);
      if (answered) return false;
    }
    return true;
  }
}
