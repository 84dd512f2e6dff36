import { defineTask } from "../registry";

/** Stops the sandboxes of sessions idle past their agent's timeout; workspaces are kept. */
export const suspendIdleSandboxes = defineTask("sandbox:suspend-idle", async (_payload, { services, logger }) => {
  const suspended = await services.sandboxes.suspendIdle();
  if (suspended > 0) logger.info({ suspended }, "suspended idle sessions");
});
