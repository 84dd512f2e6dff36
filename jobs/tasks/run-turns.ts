import { defineTask } from "../registry";

/** Runs the session's queued agent turns, one after another (resuming one a crash interrupted). */
export const runTurns = defineTask("turn:run", async ({ sessionId }, { services, signal, helpers }) => {
  // graphile-worker counts the attempt when it takes the job: this is the last one when they are equal.
  const { attempts, max_attempts: maxAttempts } = helpers.job;
  await services.turns.runPending(sessionId, signal, { finalAttempt: attempts >= maxAttempts ? { attempts } : undefined });
});
