import { createTRPCClient, httpBatchLink, TRPCClientError } from "@trpc/client";
import superjson from "superjson";
import type { AppRouter } from "./trpc/router";

/**
 * The typed Berth client for other TypeScript services: `import { createBerthClient } from "berth/client"`.
 * Every procedure, input and output is typed by the server's router; nothing of the server runs here.
 */
export type { AppRouter };
export { TRPCClientError };

export type BerthClientOptions = {
  /** The Berth base URL, e.g. `http://localhost:3000`. */
  url: string;
  apiKey: string;
  /** A fetch implementation (defaults to the global one). */
  fetch?: typeof fetch;
};

export function createBerthClient(options: BerthClientOptions) {
  const base = options.url.replace(/\/+$/, "");
  return createTRPCClient<AppRouter>({
    links: [
      httpBatchLink({
        url: `${base}/api/trpc`,
        transformer: superjson,
        headers: { authorization: `Bearer ${options.apiKey}` },
        fetch: options.fetch,
      }),
    ],
  });
}

export type BerthClient = ReturnType<typeof createBerthClient>;
