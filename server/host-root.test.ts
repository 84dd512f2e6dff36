import { describe, expect, it } from "vitest";
import { runningInChroot } from "./host-root";

describe("telling a chroot", () => {
  it("is chrooted when no listed mount is at /, as the kernel lists only what the root reaches", () => {
    const machine = "26 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n21 26 0:20 / /proc rw,relatime - proc proc rw\n";
    const chroot = "21 26 0:20 / /proc rw,relatime - proc proc rw\n22 26 0:21 / /sys rw,relatime - sysfs sysfs rw\n";
    expect(runningInChroot(machine)).toBe(false);
    expect(runningInChroot(chroot)).toBe(true);
    // A mount at /proc/x is not one at /.
    expect(runningInChroot("30 1 0:5 / /run rw - tmpfs tmpfs rw\n")).toBe(true);
  });
});
