// Bundles the server entry and the typed client (our code only; packages stay external) to build/main.js, and copies the
// migrations beside it. The Remix build (build/server, build/client) comes from `remix vite:build`.
import { cp } from "node:fs/promises";
import { build } from "esbuild";

await build({
  entryPoints: ["server/entry.ts"],
  outfile: "build/main.js",
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  packages: "external",
  sourcemap: true,
  logLevel: "warning",
});
// The typed client for other services (package export `./client`).
await build({
  entryPoints: ["server/client.ts"],
  outfile: "build/client.js",
  bundle: true,
  platform: "neutral",
  format: "esm",
  target: "es2022",
  packages: "external",
  logLevel: "warning",
});
await cp("db/migrations", "build/migrations", { recursive: true });
