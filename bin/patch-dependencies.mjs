// Applies Berth's small, idempotent fixes to installed dependencies (run by npm's postinstall).
// Each fix names the upstream report; drop it when a release carries the fix.
//
// postgres 3.4.9, src/connection.js (porsager/postgres#1154, #1208; fix proposed in #1176/#1209):
// a write scheduled with setImmediate can run after the socket closed and throw an uncatchable
// TypeError that kills the process; and a close leaves `nextWriteTimer`/`chunk` set, so the
// reconnected connection never flushes again (queries hang). Seen here when Postgres restarts.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";

const MARKER = "/* berth-patch: socket-close-guard */";

function patchPostgresFile(file) {
  if (!existsSync(file)) return `${path.relative(process.cwd(), file)} not found; nothing to patch`;
  let source = readFileSync(file, "utf8");
  if (source.includes(MARKER)) return `${path.relative(process.cwd(), file)}: already patched`;
  const replacements = [
    [
      "  function nextWrite(fn) {\n    const x = socket.write(chunk, fn)",
      `  function nextWrite(fn) {\n    ${MARKER}\n    if (!socket) {\n      nextWriteTimer !== null && clearImmediate(nextWriteTimer)\n      chunk = nextWriteTimer = null\n      error(Errors.connection('CONNECTION_CLOSED', options))\n      return false\n    }\n    const x = socket.write(chunk, fn)`,
    ],
    ["    clearImmediate(nextWriteTimer)\n    if (socket) {", "    clearImmediate(nextWriteTimer)\n    chunk = nextWriteTimer = null\n    if (socket) {"],
    ["    incomings = null\n    clearImmediate(nextWriteTimer)\n", "    incomings = null\n    clearImmediate(nextWriteTimer)\n    chunk = nextWriteTimer = null\n"],
  ];
  for (const [from, to] of replacements) {
    if (!source.includes(from)) return `${path.relative(process.cwd(), file)}: the source changed; patch not applied (check whether the release fixed it)`;
    source = source.replace(from, to);
  }
  writeFileSync(file, source);
  return `${path.relative(process.cwd(), file)}: patched (socket-close guard)`;
}

function patchPostgres() {
  const root = path.resolve(import.meta.dirname, "..", "node_modules", "postgres");
  if (!existsSync(root)) return ["postgres is not installed; nothing to patch"];
  return ["src/connection.js", "cjs/src/connection.js"].map((file) => patchPostgresFile(path.join(root, file)));
}

for (const line of patchPostgres()) console.log(`berth postinstall: ${line}`);
