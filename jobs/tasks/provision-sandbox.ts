import { defineTask } from "../registry";

/** Starts a new sandbox generation for a session: pending/suspended/reconnecting -> provisioning -> ready. */
export const provisionSandbox = defineTask("sandbox:provision", async ({ sessionId }, { services, helpers }) => {
  await services.sandboxes.provision(sessionId, { finalAttempt: helpers.job.attempts >= helpers.job.max_attempts });
});
