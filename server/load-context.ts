import type { createTrpcCaller, TrpcRequestHandler } from "./trpc/handler";

type AppCaller = ReturnType<ReturnType<typeof createTrpcCaller>>;

/** What the HTTP layer hands every Remix loader and action: the API, and nothing else of the server. */
export type BerthLoadContext = {
  /** Serves /api/trpc (Express calls it before Remix; the resource route delegates here too). */
  handleTrpc: TrpcRequestHandler;
  /** Calls procedures server-side, as the given request's caller, for loaders that render data. */
  trpcCaller(request: Request): AppCaller;
};

declare module "@remix-run/node" {
  // Declaration merging needs an interface, even an empty one.
  // eslint-disable-next-line @typescript-eslint/no-empty-object-type
  interface AppLoadContext extends BerthLoadContext {}
}
