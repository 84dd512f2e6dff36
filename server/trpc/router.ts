import { router } from "./init";
import { agentsRouter } from "./routers/agents";
import { apiKeysRouter } from "./routers/api-keys";
import { auditRouter } from "./routers/audit";
import { authRouter } from "./routers/auth";
import { invitationsRouter } from "./routers/invitations";
import { jobsRouter } from "./routers/jobs";
import { secretsRouter } from "./routers/secrets";
import { sessionsRouter } from "./routers/sessions";
import { systemRouter } from "./routers/system";
import { teamsRouter } from "./routers/teams";

export const appRouter = router({
  system: systemRouter,
  auth: authRouter,
  teams: teamsRouter,
  invitations: invitationsRouter,
  apiKeys: apiKeysRouter,
  agents: agentsRouter,
  secrets: secretsRouter,
  audit: auditRouter,
  sessions: sessionsRouter,
  jobs: jobsRouter,
});

export type AppRouter = typeof appRouter;
