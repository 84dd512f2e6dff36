import type postgres from "postgres";
import type { Database } from "../../db/client";
import type { Config } from "../config";
import type { Logger } from "../logger";
import { HealthService } from "./health";
import { WorkerLiveness } from "./worker-liveness";

export type ServiceDependencies = {
  db: Database;
  sql: postgres.Sql;
  config: Config;
  logger: Logger;
  shippedMigrations: number;
  isWorkerRunning: () => boolean;
};

/** Builds the domain services over their dependencies; called only by the composition root. */
export function createServices(deps: ServiceDependencies) {
  return {
    config: deps.config,
    health: new HealthService({
      sql: deps.sql,
      config: deps.config,
      shippedMigrations: deps.shippedMigrations,
      isWorkerRunning: deps.isWorkerRunning,
      sandboxBackend: () => undefined,
    }),
    workerLiveness: new WorkerLiveness(deps.sql, deps.logger.child({ component: "worker-liveness" })),
  };
}

export type Services = ReturnType<typeof createServices>;
