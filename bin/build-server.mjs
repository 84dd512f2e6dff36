// Bundles the server entry and the typed client (our code only; packages stay external) to build/main.js, the
// sandbox daemon (self-contained) to build/sandboxd.js, the `berth` CLI (self-contained) to build/berth.js,
// and copies the migrations beside them.
// The Remix build (build/server, build/client) comes from `remix vite:build`.
import { chmod, cp } from "node:fs/promises";
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
// The `berth` CLI, with every dependency bundled (it runs from a bare copy of the file too). Some of them
// are CommonJS that require Node built-ins: give the ESM bundle a `require` for those.
await build({
  entryPoints: ["bin/berth.ts"],
  outfile: "build/berth.js",
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  banner: { js: '#!/usr/bin/env node\nimport { createRequire as __berthCreateRequire } from "node:module";\nconst require = __berthCreateRequire(import.meta.url);' },
  logLevel: "warning",
});
await chmod("build/berth.js", 0o755);
await cp("db/migrations", "build/migrations", { recursive: true });
