import type { ActionFunctionArgs, LoaderFunctionArgs } from "@remix-run/node";

// The server answers /api/trpc in Express, before Remix (server/trpc/node-adapter.ts, decision 013);
// this resource route serves the same handler wherever the Remix app runs without that mount.
export const loader = ({ request, context }: LoaderFunctionArgs) => context.handleTrpc(request);
export const action = ({ request, context }: ActionFunctionArgs) => context.handleTrpc(request);
