"""A seccomp-BPF filter for sandboxed snippets, built by hand. Standalone (stdlib only).

Loaded by `_harness.py` before it leaves the host filesystem; `install()` runs in each test's
child after the uid drop and `no_new_privs`, so it binds the snippet and everything it starts.
The filter is defence in depth behind the namespaces and the minimal root: it denies, with
EPERM, what a Python program never needs and an escape usually does:

  * `socket()` of any family, `connect`, `bind`: no unix-socket path, abstract socket, TCP or
    netlink endpoint can be reached even if one were visible. seccomp sees only registers, not
    the sockaddr behind a pointer, so the calls are denied whole; `socketpair(AF_UNIX,
    SOCK_STREAM | SOCK_SEQPACKET)` stays allowed (asyncio and multiprocessing.Pipe use it; a
    connected stream pair cannot address another socket, a datagram pair could);
  * debugging and memory access of other processes (`ptrace`, `process_vm_*`, `pidfd_getfd`);
  * the filesystem and namespace machinery (`mount` and the new mount API, `umount2`,
    `pivot_root`, `chroot`, `unshare`, `setns`, `clone` with any CLONE_NEW* flag);
  * kernel attack surface (`keyctl`, `add_key`, `request_key`, `bpf`, `perf_event_open`,
    `userfaultfd`, `io_uring_*` which could issue connect() behind the filter's back,
    `open_by_handle_at`, modules, kexec, swap, reboot, clocks, syslog, fanotify, ...);
  * `clone3` returns ENOSYS: its flags sit behind a pointer, and glibc falls back to `clone`.
Other architectures' system calls (x32, ia32 via int 0x80) are denied or kill the process.
The tables cover x86_64 and aarch64 (tests check them against the kernel headers when those are
installed); elsewhere `supported()` is False and the sandbox logs that the layer is missing.
"""

import ctypes
import os
import platform
import struct

_NAMES = (
    "socket", "connect", "bind", "ptrace", "process_vm_readv", "process_vm_writev",
    "pidfd_getfd", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "keyctl",
    "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "open_by_handle_at", "name_to_handle_at",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "swapon",
    "swapoff", "reboot", "acct", "quotactl", "syslog", "fanotify_init", "settimeofday",
    "clock_settime", "clock_adjtime", "adjtimex", "vhangup", "lookup_dcookie", "iopl", "ioperm",
)

# System call numbers (from the kernel's uapi headers; x86_64: asm/unistd_64.h, aarch64:
# asm-generic/unistd.h). The extra names are the calls the filter inspects or the mount code
# needs.
SYSCALLS = {
    "x86_64": dict(
        socket=41, connect=42, bind=49, socketpair=53, clone=56, ptrace=101,
        process_vm_readv=310, process_vm_writev=311, pidfd_getfd=438, mount=165, umount2=166,
        pivot_root=155, chroot=161, unshare=272, setns=308, open_tree=428, move_mount=429,
        fsopen=430, fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, keyctl=250,
        add_key=248, request_key=249, bpf=321, perf_event_open=298, userfaultfd=323,
        io_uring_setup=425, io_uring_enter=426, io_uring_register=427, open_by_handle_at=304,
        name_to_handle_at=303, kexec_load=246, kexec_file_load=320, init_module=175,
        finit_module=313, delete_module=176, swapon=167, swapoff=168, reboot=169, acct=163,
        quotactl=179, syslog=103, fanotify_init=300, settimeofday=164, clock_settime=227,
        clock_adjtime=305, adjtimex=159, vhangup=153, lookup_dcookie=212, iopl=172, ioperm=173,
        clone3=435),
    "aarch64": dict(
        socket=198, connect=203, bind=200, socketpair=199, clone=220, ptrace=117,
        process_vm_readv=270, process_vm_writev=271, pidfd_getfd=438, mount=40, umount2=39,
        pivot_root=41, chroot=51, unshare=97, setns=268, open_tree=428, move_mount=429,
        fsopen=430, fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, keyctl=219,
        add_key=217, request_key=218, bpf=280, perf_event_open=241, userfaultfd=282,
        io_uring_setup=425, io_uring_enter=426, io_uring_register=427, open_by_handle_at=265,
        name_to_handle_at=264, kexec_load=104, kexec_file_load=294, init_module=105,
        finit_module=273, delete_module=106, swapon=224, swapoff=225, reboot=142, acct=89,
        quotactl=60, syslog=116, fanotify_init=262, settimeofday=170, clock_settime=112,
        clock_adjtime=266, adjtimex=171, vhangup=58, lookup_dcookie=18, clone3=435),
}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_BIT = 0x40000000

AF_UNIX, SOCK_STREAM, SOCK_SEQPACKET, SOCK_TYPE_MASK = 1, 1, 5, 0xF
# CLONE_NEWTIME, NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
CLONE_NEW_MASK = 0x80 | 0x20000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 \
    | 0x20000000 | 0x40000000
EPERM, ENOSYS = 1, 38

# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
_LD_ABS, _JEQ, _JGE, _JSET, _AND, _RET = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06
_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
# struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6] (low word first: little endian).
_OFF_NR, _OFF_ARCH = 0, 4
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


def machine() -> str:
    return platform.machine().lower().replace("arm64", "aarch64").replace("amd64", "x86_64")


def supported() -> bool:
    return machine() in SYSCALLS


def syscall_number(name: str) -> int:
    return SYSCALLS[machine()][name]


def _arg_low(i: int) -> int:
    return 16 + 8 * i


def _assemble(program):
    """Resolve jump labels: items are (code, k, jt, jf) with jt/jf a label name or None
    (fall through), or a label marker ("label", name)."""
    where, flat = {}, []
    for item in program:
        if item[0] == "label":
            where[item[1]] = len(flat)
        else:
            flat.append(item)
    out = []
    for pc, (code, k, jt, jf) in enumerate(flat):
        offsets = []
        for target in (jt, jf):
            off = 0 if target is None else where[target] - pc - 1
            if not 0 <= off <= 255:
                raise ValueError(f"BPF jump to {target} out of range ({off})")
            offsets.append(off)
        out.append(struct.pack("=HBBI", code, offsets[0], offsets[1], k))
    return b"".join(out)


def build(arch: str | None = None) -> bytes:
    """The filter as packed `struct sock_filter` instructions for `arch` (default: this one)."""
    arch = arch or machine()
    nrs = SYSCALLS[arch]
    prog = [(_LD_ABS, _OFF_ARCH, None, None), (_JEQ, _AUDIT_ARCH[arch], None, "kill"),
            (_LD_ABS, _OFF_NR, None, None)]
    if arch == "x86_64":
        prog.append((_JGE, _X32_BIT, "deny", None))
    for name in _NAMES:
        if name in nrs:
            prog.append((_JEQ, nrs[name], "deny", None))
    prog += [(_JEQ, nrs["clone3"], "enosys", None),
             (_JEQ, nrs["socketpair"], "socketpair", None),
             (_JEQ, nrs["clone"], "clone", None),
             (_RET, _RET_ALLOW, None, None),
             ("label", "socketpair"),
             (_LD_ABS, _arg_low(0), None, None), (_JEQ, AF_UNIX, None, "deny"),
             (_LD_ABS, _arg_low(1), None, None), (_AND, SOCK_TYPE_MASK, None, None),
             (_JEQ, SOCK_STREAM, "allow", None), (_JEQ, SOCK_SEQPACKET, "allow", "deny"),
             ("label", "clone"),
             (_LD_ABS, _arg_low(0), None, None), (_JSET, CLONE_NEW_MASK, "deny", "allow"),
             ("label", "kill"), (_RET, _RET_KILL_PROCESS, None, None),
             ("label", "deny"), (_RET, _RET_ERRNO | EPERM, None, None),
             ("label", "enosys"), (_RET, _RET_ERRNO | ENOSYS, None, None),
             ("label", "allow"), (_RET, _RET_ALLOW, None, None)]
    return _assemble(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(program: bytes) -> None:
    """Load `program` for this thread and its descendants (needs no_new_privs or root).

    Raises:
      OSError: the kernel refused the filter.
    """
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                           ctypes.c_ulong]
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter refused: {os.strerror(err)}")
