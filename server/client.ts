import { createTRPCClient, httpBatchLink, httpLink, httpSubscriptionLink, splitLink, TRPCClientError } from "@trpc/client";
import { EventSource } from "eventsource";
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
  /**
   * true (default): queries and mutations issued in the same tick share one HTTP request, which waits
   * for the next timer tick. false: every call is its own request, sent at once; the lower latency for
   * a client that makes one call at a time (a chat backend sending messages, a benchmark).
   */
  batch?: boolean;
};

export function createBerthClient(options: BerthClientOptions) {
  const base = options.url.replace(/\/+$/, "");
  const authorization = `Bearer ${options.apiKey}`;
  const fetchImpl = options.fetch ?? fetch;
  return createTRPCClient<AppRouter>({
    links: [
      splitLink({
        condition: (op) => op.type === "subscription",
        // Server-sent events (sessions.follow); a reconnect resumes after the last received seq.
        true: httpSubscriptionLink({
          url: `${base}/api/trpc`,
          transformer: superjson,
          EventSource,
          eventSourceOptions: {
            fetch: (input, init) => fetchImpl(input, { ...init, headers: { ...(init?.headers as Record<string, string>), authorization } }),
          },
        }),
        false:
          options.batch === false
            ? httpLink({ url: `${base}/api/trpc`, transformer: superjson, headers: { authorization }, fetch: options.fetch })
            : httpBatchLink({ url: `${base}/api/trpc`, transformer: superjson, headers: { authorization }, fetch: options.fetch }),
      }),
    ],
  });
}

export type BerthClient = ReturnType<typeof createBerthClient>;
