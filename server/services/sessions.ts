import { and, desc, eq, isNull } from "drizzle-orm";
import type { Database } from "../../db/client";
import { agents, sandboxes, sessions } from "../../db/schema";
import { collectExec } from "../sandbox/daemon-client";
import { DaemonRequestError, SandboxUnavailableError, type FileEntry } from "../sandbox/port";
import type { SandboxBackend } from "../sandbox/port";
import { recordAudit } from "./audit";
import { DomainError, invalid, notFound } from "./errors";
import { readEvents } from "./event-log";
import { enqueueJob } from "./job-queue";
import { before, cursorAt, toPage, type Page } from "./pagination";
import type { Principal } from "./principal";
import type { SandboxLifecycle, SessionStatus } from "./sandbox-lifecycle";

export type SandboxView = {
  generation: number;
  status: string;
  backend: string;
  name: string;
  hostPid: number | null;
  fromWarmPool: boolean;
  createdAt: Date;
  readyAt: Date | null;
  endedAt: Date | null;
  endReason: string | null;
};

export type SessionView = {
  id: string;
  agentId: string;
  agentVersion: number;
  title: string;
  status: SessionStatus;
  statusReason: string | null;
  lastSeq: number;
  promptTokens: number;
  completionTokens: number;
  costUsd: string;
  createdAt: Date;
  lastActivityAt: Date;
};

const view = (row: typeof sessions.$inferSelect): SessionView => ({
  id: row.id,
  agentId: row.agentId,
  agentVersion: row.agentVersion,
  title: row.title,
  status: row.status,
  statusReason: row.statusReason,
  lastSeq: row.lastSeq,
  promptTokens: row.promptTokens,
  completionTokens: row.completionTokens,
  costUsd: row.costUsd,
  createdAt: row.createdAt,
  lastActivityAt: row.lastActivityAt,
});

/** Sessions of the caller's team, and what runs in their sandboxes. */
export class SessionService {
  constructor(
    private readonly db: Database,
    private readonly principal: Principal,
    private readonly lifecycle: SandboxLifecycle,
    private readonly backend: SandboxBackend,
  ) {}

  private async own(sessionId: string) {
    const [row] = await this.db.select().from(sessions).where(and(eq(sessions.teamId, this.principal.teamId), eq(sessions.id, sessionId)));
    if (!row) throw notFound("session");
    return row;
  }

  /** Persists the session and enqueues its provisioning in one transaction. */
  async create(input: { agentId: string; title?: string }): Promise<SessionView> {
    return this.db.transaction(async (tx) => {
      const [agent] = await tx.select().from(agents).where(and(eq(agents.teamId, this.principal.teamId), eq(agents.id, input.agentId), isNull(agents.deletedAt)));
      if (!agent) throw notFound("agent");
      const [row] = await tx.insert(sessions).values({ teamId: this.principal.teamId, agentId: agent.id, agentVersion: agent.currentVersion, title: input.title ?? "" }).returning();
      await enqueueJob(tx, "sandbox:provision", { sessionId: row!.id, reason: "create" }, { jobKey: `provision:${row!.id}`, maxAttempts: 3 });
      await recordAudit(tx, { teamId: this.principal.teamId, actor: this.principal.actor, action: "session.create", targetType: "session", targetId: row!.id, metadata: { agentId: agent.id, agentVersion: agent.currentVersion } });
      return view(row!);
    });
  }

  async get(input: { sessionId: string }): Promise<SessionView & { sandbox: SandboxView | null }> {
    const row = await this.own(input.sessionId);
    const [sandbox] = await this.db.select().from(sandboxes).where(eq(sandboxes.sessionId, row.id)).orderBy(desc(sandboxes.generation)).limit(1);
    return {
      ...view(row),
      sandbox: sandbox
        ? { generation: sandbox.generation, status: sandbox.status, backend: sandbox.backend, name: sandbox.name, hostPid: sandbox.hostPid, fromWarmPool: sandbox.fromWarmPool, createdAt: sandbox.createdAt, readyAt: sandbox.readyAt, endedAt: sandbox.endedAt, endReason: sandbox.endReason }
        : null,
    };
  }

  /** A page of sessions; rows carry no history, so the cost does not grow with session length. */
  async list(input: { cursor?: string; limit: number; status?: SessionStatus; agentId?: string }): Promise<Page<SessionView>> {
    const rows = await this.db
      .select({ row: sessions, at: cursorAt(sessions.createdAt) })
      .from(sessions)
      .where(
        and(
          eq(sessions.teamId, this.principal.teamId),
          input.status ? eq(sessions.status, input.status) : undefined,
          input.agentId ? eq(sessions.agentId, input.agentId) : undefined,
          before(sessions.createdAt, sessions.id, input.cursor),
        ),
      )
      .orderBy(desc(sessions.createdAt), desc(sessions.id))
      .limit(input.limit + 1);
    return toPage(rows, input.limit, ({ row, at }) => ({ at, id: row.id }), ({ row }) => view(row));
  }

  async events(input: { sessionId: string; afterSeq: number; limit: number }) {
    await this.own(input.sessionId);
    return readEvents(this.db, { teamId: this.principal.teamId, sessionId: input.sessionId, afterSeq: input.afterSeq, limit: input.limit });
  }

  /** Runs a command in the session's sandbox (resuming it if suspended). */
  async exec(input: { sessionId: string; command: string; timeoutMs?: number }) {
    await this.own(input.sessionId);
    return this.inSandbox(input.sessionId, async (client) => {
      const result = await collectExec(client.exec({ command: input.command, timeoutMs: input.timeoutMs }));
      return { exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr, timedOut: result.timedOut, durationMs: result.durationMs };
    });
  }

  async readFile(input: { sessionId: string; path: string }) {
    await this.own(input.sessionId);
    return this.inSandbox(input.sessionId, (client) => client.readFile(input.path));
  }

  async writeFile(input: { sessionId: string; path: string; content: string; encoding: "utf8" | "base64" }) {
    await this.own(input.sessionId);
    return this.inSandbox(input.sessionId, (client) => client.writeFile(input.path, input.content, input.encoding));
  }

  async listFiles(input: { sessionId: string; path: string }): Promise<FileEntry[]> {
    await this.own(input.sessionId);
    return this.inSandbox(input.sessionId, (client) => client.listFiles(input.path));
  }

  async terminate(input: { sessionId: string }) {
    await this.own(input.sessionId);
    await this.lifecycle.terminate(input.sessionId);
    await recordAudit(this.db, { teamId: this.principal.teamId, actor: this.principal.actor, action: "session.terminate", targetType: "session", targetId: input.sessionId });
    return this.get(input);
  }

  async restart(input: { sessionId: string }) {
    await this.own(input.sessionId);
    await this.lifecycle.restart(input.sessionId);
    await recordAudit(this.db, { teamId: this.principal.teamId, actor: this.principal.actor, action: "session.restart", targetType: "session", targetId: input.sessionId });
    return this.get(input);
  }

  private async inSandbox<T>(sessionId: string, work: (client: ReturnType<SandboxBackend["connect"]>) => Promise<T>): Promise<T> {
    const { address } = await this.lifecycle.ensureReady(sessionId);
    try {
      return await this.lifecycle.withActivity(sessionId, () => work(this.backend.connect(address)));
    } catch (error) {
      if (error instanceof DaemonRequestError) throw invalid(error.message);
      if (error instanceof SandboxUnavailableError) throw new DomainError("unavailable", "the session's sandbox is not reachable; it is being reconnected, try again shortly");
      throw error;
    }
  }
}
