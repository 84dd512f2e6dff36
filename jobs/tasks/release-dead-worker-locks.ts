import { defineTask } from "../registry";

/** Survivors sweep for replicas that died, so their jobs run again without waiting for a restart. */
export const releaseDeadWorkerLocks = defineTask("maintenance:release-dead-worker-locks", async (_payload, { services }) => {
  await services.workerLiveness.releaseLocksOfDeadWorkers();
});
