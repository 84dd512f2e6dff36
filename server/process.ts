import type { Logger } from "./logger";
import type { RunningBerth } from "./main";

/**
 * Turns SIGTERM/SIGINT into a graceful shutdown: exit 0 when everything stopped in time, 1 when the
 * shutdown failed or overran its budget, and at once on a second signal.
 */
export function exitOnSignals(berth: RunningBerth, logger: Logger, shutdownTimeoutMs: number): void {
  let signalled = false;
  const shutdown = (signal: NodeJS.Signals) => {
    if (signalled) {
      logger.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    signalled = true;
    logger.info({ signal }, "signal received, shutting down gracefully");
    const deadline = setTimeout(() => {
      logger.error("graceful shutdown timed out");
      process.exit(1);
    }, shutdownTimeoutMs + 3_000);
    deadline.unref();
    berth.stop().then(
      () => {
        logger.flush();
        process.exit(0);
      },
      (error: unknown) => {
        logger.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);
}
