// A program as another team's service would write it: it imports only the published client.
// Usage: tsx create-and-list-agent.ts <berth url> <api key> <agent name>
import { createBerthClient } from "berth/client";

const [url, apiKey, name] = process.argv.slice(2);
if (!url || !apiKey || !name) {
  console.error("usage: create-and-list-agent <url> <api key> <agent name>");
  process.exit(2);
}

const berth = createBerthClient({ url, apiKey });
const created = await berth.agents.create.mutate({ name, model: "demo", systemPrompt: "You are terse.", network: "none", idleTimeoutSeconds: 300 });
const listed = await berth.agents.list.query({ limit: 100 });
const found = listed.items.find((agent) => agent.id === created.id);
// Typed end to end: `version` is a number and `isDemo` a boolean here without any cast.
const version: number = created.version;
const isDemo: boolean = created.isDemo;
console.log(JSON.stringify({ id: created.id, version, isDemo, listed: Boolean(found), names: listed.items.map((agent) => agent.name) }));
