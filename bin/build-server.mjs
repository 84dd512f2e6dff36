// Bundles the server entry and the typed client (our code only; packages stay external) to build/main.js, the
// sandbox daemon (self-contained) to build/sandboxd.js, and copies the migrations beside them.
// The Remix build (build/server, build/client) comes from `remix vite:build`.
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
// The sandbox daemon, with every dependency bundled: a jail needs only the runtime binary and this file.
await build({
  entryPoints: ["sandboxd/main.ts"],
  outfile: "build/sandboxd.js",
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  logLevel: "warning",
});
await cp("db/migrations", "build/migrations", { recursive: true });
