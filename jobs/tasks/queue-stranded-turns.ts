import { defineTask } from "../registry";

/** Queues a job for sessions whose turns wait with none left to run them (out of attempts, cut off). */
export const queueStrandedTurns = defineTask("turn:queue-stranded", async (_payload, { services }) => {
  await services.turns.queueStrandedTurns();
});
