import { fetchRequestHandler } from "@trpc/server/adapters/fetch";
import type { ClientAddressPolicy } from "../client-address";
import type { Logger } from "../logger";
import type { Services } from "../services";
import { createContextFactory, type ConnectionInfo } from "./context";
import { createCallerFactory } from "./init";
import { appRouter } from "./router";

export const TRPC_ENDPOINT = "/api/trpc";

export type TrpcRequestHandler = (request: Request, connection?: ConnectionInfo) => Promise<Response>;

/** The fetch-API handler for /api/trpc: Express calls it (server/trpc/node-adapter.ts), so does the Remix resource route. */
export function createTrpcHandler(services: Services, logger: Logger, options: { clientAddress?: ClientAddressPolicy } = {}): TrpcRequestHandler {
  const createContext = createContextFactory(services, options);
  return (request, connection = {}) =>
    fetchRequestHandler({
      endpoint: TRPC_ENDPOINT,
      req: request,
      router: appRouter,
      createContext: ({ resHeaders }) => createContext(request, resHeaders, connection),
      onError({ error, path }) {
        if (error.code === "INTERNAL_SERVER_ERROR") logger.error({ err: error.cause ?? error, path }, "tRPC procedure failed");
        else if (error.code === "SERVICE_UNAVAILABLE") logger.warn({ path, reason: error.message }, "tRPC procedure unavailable");
      },
    });
}

/** A server-side caller acting for the given request (same context, same authorisation). */
export function createTrpcCaller(services: Services) {
  const createContext = createContextFactory(services);
  const createCaller = createCallerFactory(appRouter);
  return (request: Request) => createCaller(createContext(request));
}
