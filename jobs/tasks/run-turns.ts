import { defineTask } from "../registry";

/** Runs the session's queued agent turns, one after another (resuming one a crash interrupted). */
export const runTurns = defineTask("turn:run", async ({ sessionId }, { services, signal }) => {
  await services.turns.runPending(sessionId, signal);
});
