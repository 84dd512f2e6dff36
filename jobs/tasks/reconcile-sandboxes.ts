import { defineTask } from "../registry";

/** Stops sandboxes with no live session, reconnects sessions whose sandbox vanished, deletes terminated sessions' workspaces. */
export const reconcileSandboxes = defineTask("sandbox:reconcile", async (_payload, { services, logger, signal }) => {
  const result = await services.sandboxes.reconcile({ paced: true, signal });
  if (result.stopped > 0 || result.lost > 0 || result.workspacesDeleted > 0) logger.info(result, "reconciled sandboxes");
});
