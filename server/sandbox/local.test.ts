import { describe, expect, it } from "vitest";
import { addressSpaceLimit } from "./local";

describe("a jail's address-space limit", () => {
  it("is left to the memory cgroup when there is one, and is a wide backstop when there is none", () => {
    expect(addressSpaceLimit(1024, true)).toBeNull();
    // Wide enough for several WebAssembly memories (about 10 GiB of reservation each) beyond the memory size.
    expect(addressSpaceLimit(1024, false)).toBe((1024 + 64 * 1024) * 1024 * 1024);
  });
});
