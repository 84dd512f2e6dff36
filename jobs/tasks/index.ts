import type { BerthTask } from "../registry";
import { provisionSandbox } from "./provision-sandbox";
import { pruneLoginFailures } from "./prune-login-failures";
import { queueStrandedTurns } from "./queue-stranded-turns";
import { reconcileSandboxes } from "./reconcile-sandboxes";
import { runTurns } from "./run-turns";
import { releaseDeadWorkerLocks } from "./release-dead-worker-locks";
import { suspendIdleSandboxes } from "./suspend-idle-sandboxes";

/** Every task the platform runs. One file per task in this folder. */
export const allTasks: BerthTask[] = [releaseDeadWorkerLocks, provisionSandbox, suspendIdleSandboxes, reconcileSandboxes, runTurns, queueStrandedTurns, pruneLoginFailures];
