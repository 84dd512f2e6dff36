#!/usr/bin/env node
// The `berth` command (package.json "bin"). Runs the bundled CLI, build/berth.js, which `npm run build`
// makes from bin/berth.ts; nothing here needs TypeScript. The bundle also runs alone: `node build/berth.js`.
import { existsSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";

const bundle = fileURLToPath(new URL("../build/berth.js", import.meta.url));
if (!existsSync(bundle)) {
  console.error(`berth: ${bundle} is missing: run \`npm run build\` in ${fileURLToPath(new URL("..", import.meta.url))}`);
  process.exit(1);
}
await import(pathToFileURL(bundle).href);
