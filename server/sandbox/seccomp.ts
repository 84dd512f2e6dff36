/**
 * The seccomp filter every local jail runs under (bubblewrap's `--seccomp FD`): classic BPF that
 * refuses, with EPERM, the system calls a sandboxed command never needs and that widen the kernel
 * surface a jail can reach (mounts, namespaces, keyrings, BPF, perf, module and kexec loading,
 * userfaultfd, io_uring, ptrace, clock and swap changes, TIOCSTI, AF_VSOCK sockets), and any mode that would make a
 * file setuid or setgid. Everything else is allowed: this is a deny list on top of the namespaces,
 * not an allow list. Foreign system call ABIs (i386 and x32 on x86-64) end the process.
 *
 * No maintained JavaScript library builds seccomp programs, and libseccomp is reachable only from
 * native code or Python, so the program is assembled here from the tables below; every refused
 * call is tried from inside a real jail by tests/security (decision 022).
 */

/** `struct seccomp_data` offsets. */
const NR = 0;
const ARCH = 4;
const argLow = (index: number) => 16 + 8 * index;

// Classic BPF opcodes.
const LD_W_ABS = 0x20;
const JEQ_K = 0x15;
const JSET_K = 0x45;
const JGE_K = 0x35;
const RET_K = 0x06;

const RET_KILL_PROCESS = 0x80000000;
const RET_ALLOW = 0x7fff0000;
const RET_ERRNO = 0x00050000;
const EPERM = 1;
const ENOSYS = 38;

const CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000;
const SETUID_SETGID = 0o6000;
const O_CREAT = 0o100;
const O_TMPFILE = 0o20000000;
const TIOCSTI = 0x5412;
const TIOCLINUX = 0x541c;
const X32_SYSCALL_BIT = 0x40000000;
/** Virtual-machine sockets reach the hypervisor's services, which no network namespace separates. */
const AF_VSOCK = 40;

export type SeccompArch = "x64" | "arm64";

type Table = {
  auditArch: number;
  /** Refused outright: name → number. */
  refused: Record<string, number>;
  /** Answered with ENOSYS so that callers fall back to an older call we can inspect (clone3, openat2). */
  unsupported: Record<string, number>;
  clone: number;
  ioctl: number;
  socket: number;
  /** Calls whose mode argument (index) is refused when it carries setuid or setgid bits. */
  modeArg: Record<string, [number, number]>;
  /** Calls that create a file when their flags argument has O_CREAT or O_TMPFILE: [nr, flags index, mode index]. */
  createMode: Record<string, [number, number, number]>;
};

const COMMON_REFUSED = {
  open_tree: 428,
  move_mount: 429,
  fsopen: 430,
  fsconfig: 431,
  fsmount: 432,
  fspick: 433,
  mount_setattr: 442,
  io_uring_setup: 425,
  io_uring_enter: 426,
  io_uring_register: 427,
  quotactl_fd: 443,
};

export const SECCOMP_TABLES: Record<SeccompArch, Table> = {
  x64: {
    auditArch: 0xc000003e,
    refused: {
      ...COMMON_REFUSED,
      mount: 165,
      umount2: 166,
      pivot_root: 155,
      chroot: 161,
      unshare: 272,
      setns: 308,
      keyctl: 250,
      add_key: 248,
      request_key: 249,
      bpf: 321,
      perf_event_open: 298,
      kexec_load: 246,
      kexec_file_load: 320,
      init_module: 175,
      finit_module: 313,
      delete_module: 176,
      userfaultfd: 323,
      ptrace: 101,
      process_vm_readv: 310,
      process_vm_writev: 311,
      swapon: 167,
      swapoff: 168,
      reboot: 169,
      syslog: 103,
      acct: 163,
      settimeofday: 164,
      clock_settime: 227,
      clock_adjtime: 305,
      adjtimex: 159,
      quotactl: 179,
      open_by_handle_at: 304,
      name_to_handle_at: 303,
      lookup_dcookie: 212,
      iopl: 172,
      ioperm: 173,
      vhangup: 153,
      uselib: 134,
      _sysctl: 156,
      fanotify_init: 300,
      nfsservctl: 180,
      sethostname: 170,
      setdomainname: 171,
    },
    unsupported: { clone3: 435, openat2: 437 },
    clone: 56,
    ioctl: 16,
    socket: 41,
    modeArg: { chmod: [90, 1], fchmod: [91, 1], fchmodat: [268, 2], fchmodat2: [452, 2], creat: [85, 1], mknod: [133, 1], mknodat: [259, 2] },
    createMode: { open: [2, 1, 2], openat: [257, 2, 3] },
  },
  arm64: {
    auditArch: 0xc00000b7,
    refused: {
      ...COMMON_REFUSED,
      mount: 40,
      umount2: 39,
      pivot_root: 41,
      chroot: 51,
      unshare: 97,
      setns: 268,
      keyctl: 219,
      add_key: 217,
      request_key: 218,
      bpf: 280,
      perf_event_open: 241,
      kexec_load: 104,
      kexec_file_load: 294,
      init_module: 105,
      finit_module: 273,
      delete_module: 106,
      userfaultfd: 282,
      ptrace: 117,
      process_vm_readv: 270,
      process_vm_writev: 271,
      swapon: 224,
      swapoff: 225,
      reboot: 142,
      syslog: 116,
      acct: 89,
      settimeofday: 170,
      clock_settime: 112,
      clock_adjtime: 266,
      adjtimex: 171,
      quotactl: 60,
      open_by_handle_at: 265,
      name_to_handle_at: 264,
      lookup_dcookie: 18,
      vhangup: 58,
      fanotify_init: 262,
      nfsservctl: 42,
      sethostname: 161,
      setdomainname: 162,
    },
    unsupported: { clone3: 435, openat2: 437 },
    clone: 220,
    ioctl: 29,
    socket: 198,
    modeArg: { fchmod: [52, 1], fchmodat: [53, 2], fchmodat2: [452, 2], mknodat: [33, 2] },
    createMode: { openat: [56, 2, 3] },
  },
};

type Instruction = [code: number, jt: number, jf: number, k: number];

/** The filter for one architecture, as the bytes of `struct sock_filter[]` bwrap reads. */
export function seccompProgram(arch: SeccompArch): Buffer {
  const table = SECCOMP_TABLES[arch];
  const errno = (value: number): Instruction => [RET_K, 0, 0, RET_ERRNO | value];
  const loadNr: Instruction = [LD_W_ABS, 0, 0, NR];
  const program: Instruction[] = [[LD_W_ABS, 0, 0, ARCH], [JEQ_K, 1, 0, table.auditArch], [RET_K, 0, 0, RET_KILL_PROCESS], loadNr];
  if (arch === "x64") program.push([JGE_K, 0, 1, X32_SYSCALL_BIT], [RET_K, 0, 0, RET_KILL_PROCESS]);
  for (const nr of Object.values(table.refused)) program.push([JEQ_K, 0, 1, nr], errno(EPERM));
  for (const nr of Object.values(table.unsupported)) program.push([JEQ_K, 0, 1, nr], errno(ENOSYS));
  // clone with any namespace flag (its low byte is the exit signal, so CLONE_NEWTIME is not among them).
  program.push([JEQ_K, 0, 4, table.clone], [LD_W_ABS, 0, 0, argLow(0)], [JSET_K, 0, 1, CLONE_NAMESPACES], errno(EPERM), loadNr);
  // ioctl(fd, TIOCSTI | TIOCLINUX): typing into the terminal of whoever else holds it.
  program.push([JEQ_K, 0, 5, table.ioctl], [LD_W_ABS, 0, 0, argLow(1)], [JEQ_K, 1, 0, TIOCSTI], [JEQ_K, 0, 1, TIOCLINUX], errno(EPERM), loadNr);
  program.push([JEQ_K, 0, 4, table.socket], [LD_W_ABS, 0, 0, argLow(0)], [JEQ_K, 0, 1, AF_VSOCK], errno(EPERM), loadNr);
  for (const [nr, modeIndex] of Object.values(table.modeArg)) {
    program.push([JEQ_K, 0, 4, nr], [LD_W_ABS, 0, 0, argLow(modeIndex)], [JSET_K, 0, 1, SETUID_SETGID], errno(EPERM), loadNr);
  }
  for (const [nr, flagsIndex, modeIndex] of Object.values(table.createMode)) {
    program.push(
      [JEQ_K, 0, 6, nr],
      [LD_W_ABS, 0, 0, argLow(flagsIndex)],
      [JSET_K, 0, 3, O_CREAT | O_TMPFILE],
      [LD_W_ABS, 0, 0, argLow(modeIndex)],
      [JSET_K, 0, 1, SETUID_SETGID],
      errno(EPERM),
      loadNr,
    );
  }
  program.push([RET_K, 0, 0, RET_ALLOW]);

  const bytes = Buffer.alloc(program.length * 8);
  program.forEach(([code, jt, jf, k], index) => {
    bytes.writeUInt16LE(code, index * 8);
    bytes.writeUInt8(jt, index * 8 + 2);
    bytes.writeUInt8(jf, index * 8 + 3);
    bytes.writeUInt32LE(k >>> 0, index * 8 + 4);
  });
  return bytes;
}

/** This machine's filter, or null on an architecture without a table (the jail then starts without one, and says so). */
export function hostSeccompProgram(): Buffer | null {
  return process.arch === "x64" || process.arch === "arm64" ? seccompProgram(process.arch) : null;
}
