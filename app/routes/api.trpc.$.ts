import type { ActionFunctionArgs, LoaderFunctionArgs } from "@remix-run/node";

// tRPC is served by this resource route (fetch adapter); GET for queries and SSE, POST for mutations.
export const loader = ({ request, context }: LoaderFunctionArgs) => context.handleTrpc(request);
export const action = ({ request, context }: ActionFunctionArgs) => context.handleTrpc(request);
