import { defineTask } from "../registry";

/** Drops failed-login counts whose window has ended (server/services/login-throttle.ts). */
export const pruneLoginFailures = defineTask("maintenance:prune-login-failures", async (_payload, { services, logger }) => {
  const pruned = await services.loginThrottle.prune();
  if (pruned > 0) logger.debug({ pruned }, "pruned failed-login counts");
});
