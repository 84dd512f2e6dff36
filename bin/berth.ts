/**
 * The `berth` command-line client (README, "CLI"). Bundled by bin/build-server.mjs into
 * build/berth.js, which the committed launcher bin/berth.mjs (package.json "bin") runs.
 */
import { main } from "./cli/program";

// `berth sessions logs S | head`: a reader that went away is not an error.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code === "EPIPE") process.exit(0);
    throw error;
  });
}

const code = await main(process.argv);
// Let stdout and stderr drain (they may be pipes), then exit: open sockets or stdin must not keep us.
await new Promise<void>((resolve) => process.stdout.write("", () => resolve()));
await new Promise<void>((resolve) => process.stderr.write("", () => resolve()));
process.exit(code);
