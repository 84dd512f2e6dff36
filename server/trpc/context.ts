import type { Services } from "../services";

export type TrpcContext = {
  services: Services;
  request: Request;
  requestId: string;
};

/** Builds the per-request context; authentication is resolved here once it exists. */
export function createContextFactory(services: Services) {
  return (request: Request): TrpcContext => ({
    services,
    request,
    requestId: request.headers.get("x-request-id") ?? crypto.randomUUID(),
  });
}
