import type { BerthTask } from "../registry";
import { releaseDeadWorkerLocks } from "./release-dead-worker-locks";

/** Every task the platform runs. One file per task in this folder. */
export const allTasks: BerthTask[] = [releaseDeadWorkerLocks];
