import { randomBytes } from "node:crypto";
import { and, asc, eq, isNull, sql } from "drizzle-orm";
import type { Database } from "../../db/client";
import { agents, agentVersions } from "../../db/schema";
import { DEMO_MODEL } from "./agent-config";
import type { AgentService } from "./agents";
import { DomainError, forbidden } from "./errors";
import { hasRole, type Principal } from "./principal";
import type { SandboxLifecycle } from "./sandbox-lifecycle";
import type { SessionService, SessionView } from "./sessions";

/** The name the demo agent gets when "Start a demo session" makes it. */
export const DEMO_AGENT_NAME = "demo";
export const DEMO_SESSION_TITLE = "Demo session";
/**
 * The demo session's first message: the demo model runs it with the `bash` tool and answers with its
 * output, so the page shows a sandbox at work (who it runs as, where, on what) with nothing typed.
 */
export const DEMO_FIRST_MESSAGE = "run: uname -a && id && pwd && ls -la";

/**
 * One click from an empty dashboard to a running session with a command's output
 * (docs/decisions/024-first-minutes.md): a session of the team's demo agent, its first message
 * already sent. The agent is made on first use rather than at bootstrap, so a fresh team's agent
 * list stays what its members made.
 */
export class DemoService {
  constructor(
    private readonly db: Database,
    private readonly principal: Principal,
    private readonly agents: AgentService,
    private readonly sessions: SessionService,
    private readonly lifecycle: SandboxLifecycle,
  ) {}

  async start(): Promise<{ session: SessionView; agentId: string; agentCreated: boolean; message: string }> {
    // Checked before the agent is made: on a host without sandboxes the click leaves nothing behind.
    this.lifecycle.assertSandboxesAvailable();
    let agentId = await this.findDemoAgent();
    let agentCreated = false;
    if (!agentId) {
      if (!hasRole(this.principal, "admin")) {
        throw forbidden("this team has no demo agent yet, and making one needs the admin role: ask an admin to start the first demo session");
      }
      agentId = await this.createDemoAgent();
      agentCreated = true;
    }
    const session = await this.db.transaction(async (tx) => {
      const created = await this.sessions.createIn(tx, { agentId, title: DEMO_SESSION_TITLE });
      // Queued with the session: the turn waits for the sandbox, then runs the command.
      await this.sessions.sendIn(tx, { sessionId: created.id, text: DEMO_FIRST_MESSAGE, idempotencyKey: "demo-first-message" });
      return created;
    });
    return { session, agentId, agentCreated, message: DEMO_FIRST_MESSAGE };
  }

  /** Any agent of the team on the builtin harness and the demo model does (one named "demo" first). */
  private async findDemoAgent(): Promise<string | null> {
    const [row] = await this.db
      .select({ id: agents.id })
      .from(agents)
      .innerJoin(agentVersions, and(eq(agentVersions.agentId, agents.id), eq(agentVersions.version, agents.currentVersion)))
      .where(and(eq(agents.teamId, this.principal.teamId), isNull(agents.deletedAt), eq(agentVersions.model, DEMO_MODEL), eq(agentVersions.harness, "builtin")))
      .orderBy(sql`${agents.name} = ${DEMO_AGENT_NAME} desc`, asc(agents.createdAt))
      .limit(1);
    return row?.id ?? null;
  }

  private async createDemoAgent(): Promise<string> {
    const config = {
      model: DEMO_MODEL,
      systemPrompt: "Berth's offline demo agent: `run: <command>` runs the command in this session's sandbox.",
    };
    try {
      return (await this.agents.create({ name: DEMO_AGENT_NAME, ...config })).id;
    } catch (error) {
      if (!(error instanceof DomainError && error.kind === "conflict")) throw error;
      // Another click made it meanwhile, or the team has an agent called "demo" of its own.
      return (await this.findDemoAgent()) ?? (await this.agents.create({ name: `${DEMO_AGENT_NAME}-${randomBytes(3).toString("hex")}`, ...config })).id;
    }
  }
}
