import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { buildInputsHash as inputsHash, needsBuild as needs } from "./build-if-changed.mjs";

describe("npm start builds only a changed tree", () => {
  const root = mkdtempSync(path.join(os.tmpdir(), "berth-build-stamp-"));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const write = (relative: string, content: string) => {
    mkdirSync(path.dirname(path.join(root, relative)), { recursive: true });
    writeFileSync(path.join(root, relative), content);
  };
  const stamp = () => write("build/.inputs", `${inputsHash(root)}\n`);

  it("skips the build while sources and outputs are as the last build left them; rebuilds on any source change", () => {
    write("package.json", "{}");
    write("package-lock.json", "{}");
    write("server/main.ts", "export {};");
    write("server/main.test.ts", "test");
    write("app/root.tsx", "export {};");
    for (const output of ["build/main.js", "build/client.js", "build/sandboxd.js", "build/berth.js", "build/server/index.js", "build/client/x.js"]) write(output, "built");
    expect(needs(root)).toBe(true); // never built here
    stamp();
    expect(needs(root)).toBe(false);

    write("server/main.test.ts", "a changed test is no build input");
    expect(needs(root)).toBe(false);

    write("server/main.ts", "export const changed = 1;");
    expect(needs(root)).toBe(true);
    stamp();
    write("server/new-file.ts", "export {};");
    expect(needs(root)).toBe(true);
    stamp();
    write("package-lock.json", '{"lockfileVersion":3}');
    expect(needs(root)).toBe(true);
    stamp();
    expect(needs(root)).toBe(false);

    rmSync(path.join(root, "build/sandboxd.js"));
    expect(needs(root)).toBe(true);
  });
});
