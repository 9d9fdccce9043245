"""The seccomp program every job runs under, compiled by the daemon to classic BPF (stdlib only) and
installed by the launcher with prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER) just before execve.

It is a denylist modelled on docker's default profile (moby profiles/seccomp/default.json): most of
what docker refuses to a container with its default capabilities is refused here too, because jobs share
the host's filesystem, clock, hostname and kernel, and a root job still holds every capability. A denylist
rather than docker's allowlist because jobs run arbitrary programs, and a system call this file has never
heard of must keep working. A denied call fails with EPERM and the process goes on (a program probing for
a feature sees an error, it is not killed). Denied (DENIED below, one reason a group): kernel modules,
reboot and kexec, swap, mounts and the new mount API, setns, keyrings, bpf and perf, io_uring,
userfaultfd, open_by_handle_at, kcmp/pidfd_getfd/process_madvise, setting the clock, I/O ports, the
hostname, accounting/quotas/syslog/vhangup/fanotify, and obsolete calls. Two calls do not get EPERM:

- a call through another ABI (i386 `int 0x80` on x86_64, arm32 on aarch64) kills the process: the table
  below would not apply to its numbers, so nothing of it may run (x32 calls, which carry the x86_64
  audit arch, fail with EPERM);
- `clone3` fails with ENOSYS, as in docker, so that glibc falls back to `clone`, whose flags the filter
  can see (clone3's are in memory).

Checked by argument: `unshare` and `clone` with CLONE_NEWUSER (a user namespace gives back every
capability in a namespace of its own, the usual first step of a kernel exploit); `personality` except
docker's harmless values; `socket(AF_VSOCK)`, which no network namespace bounds (a job has no network).

Allowed as in docker: `ptrace`, `process_vm_readv` and `process_vm_writev` (docker allows them on kernels
>= 4.8; the job's PID namespace bounds them), `name_to_handle_at` (harmless without `open_by_handle_at`),
`chroot`. Unlike docker: the NUMA memory policy calls are allowed (docker keeps them for CAP_SYS_NICE; the
kernel itself checks the privileged modes), and `adjtimex` and `clock_adjtime` are denied (docker allows
them relying on CAP_SYS_TIME being absent; a root job has it).
"""

from __future__ import annotations

import functools
import platform
import struct

__all__ = ["DENIED", "compile_program"]

# Denied outright, with EPERM. A name missing from an architecture's table does not exist there.
DENIED: tuple[str, ...] = (
    # Loading or unloading kernel code: everything else here is moot after it (docker: CAP_SYS_MODULE).
    "init_module", "finit_module", "delete_module", "create_module", "get_kernel_syms", "query_module",
    # Rebooting, or booting another kernel (docker: CAP_SYS_BOOT for reboot, kexec never).
    "reboot", "kexec_load", "kexec_file_load",
    # The host's swap (docker: never).
    "swapon", "swapoff",
    # Mounts: a root job could lift the cover over the state directory or mount the host's disk (docker: CAP_SYS_ADMIN).
    "mount", "umount2", "pivot_root",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "open_tree_attr", "mount_setattr",
    # Entering another process's namespaces leaves the job's (docker: CAP_SYS_ADMIN); unshare/clone: by flag below.
    "setns",
    # Kernel keyrings are not namespaced: the host's and other jobs' keys (docker: never).
    "keyctl", "add_key", "request_key",
    # eBPF and perf: a large kernel attack surface and a view of the whole host (docker: CAP_BPF, CAP_PERFMON).
    "bpf", "perf_event_open", "lookup_dcookie",
    # io_uring: a large attack surface whose operations bypass seccomp (docker since moby#46762, 2023).
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # Exploit helpers: userfaultfd stalls the kernel mid-copy; open_by_handle_at opens any inode ("shocker").
    "userfaultfd", "open_by_handle_at",
    # Into other processes' files and kernel objects: docker keeps these for CAP_SYS_PTRACE (ptrace stays allowed).
    "kcmp", "pidfd_getfd", "process_madvise",
    # The host's clock: jobs share it (docker: CAP_SYS_TIME; adjtimex too here, as a root job has CAP_SYS_TIME).
    "clock_settime", "clock_adjtime", "settimeofday", "adjtimex",
    # Raw I/O ports (docker: CAP_SYS_RAWIO).
    "ioperm", "iopl",
    # The hostname the launcher gave the job (its own UTS namespace) stays (docker: CAP_SYS_ADMIN).
    "sethostname", "setdomainname",
    # Host-wide administration: process accounting, quotas, the kernel log, terminals, fanotify on host filesystems.
    "acct", "quotactl", "quotactl_fd", "syslog", "vhangup", "fanotify_init",
    # Obsolete (docker: never).
    "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl",
)

# Called with argument checks (below), not in DENIED.
_SPECIAL = ("unshare", "clone", "clone3", "personality", "socket")

# System call numbers, only those used here. x86_64: arch/x86/entry/syscalls/syscall_64.tbl;
# aarch64: include/uapi/asm-generic/unistd.h (no x86-only calls, nor the pre-2.6 ones). Numbers from 424
# on are the same everywhere (open_tree_attr is 6.15's). Unknown to an older kernel, a number is ENOSYS.
_X86_64 = {
    "init_module": 175, "finit_module": 313, "delete_module": 176,
    "create_module": 174, "get_kernel_syms": 177, "query_module": 178,
    "reboot": 169, "kexec_load": 246, "kexec_file_load": 320,
    "swapon": 167, "swapoff": 168,
    "mount": 165, "umount2": 166, "pivot_root": 155,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "move_mount": 429, "open_tree": 428, "open_tree_attr": 467, "mount_setattr": 442,
    "setns": 308,
    "keyctl": 250, "add_key": 248, "request_key": 249,
    "bpf": 321, "perf_event_open": 298, "lookup_dcookie": 212,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "userfaultfd": 323, "open_by_handle_at": 304,
    "kcmp": 312, "pidfd_getfd": 438, "process_madvise": 440,
    "clock_settime": 227, "clock_adjtime": 305, "settimeofday": 164, "adjtimex": 159,
    "ioperm": 173, "iopl": 172,
    "sethostname": 170, "setdomainname": 171,
    "acct": 163, "quotactl": 179, "quotactl_fd": 443, "syslog": 103, "vhangup": 153, "fanotify_init": 300,
    "nfsservctl": 180, "uselib": 134, "ustat": 136, "sysfs": 139, "_sysctl": 156,
    "unshare": 272, "clone": 56, "clone3": 435, "personality": 135, "socket": 41,
}
_AARCH64 = {
    "init_module": 105, "finit_module": 273, "delete_module": 106,
    "reboot": 142, "kexec_load": 104, "kexec_file_load": 294,
    "swapon": 224, "swapoff": 225,
    "mount": 40, "umount2": 39, "pivot_root": 41,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "move_mount": 429, "open_tree": 428, "open_tree_attr": 467, "mount_setattr": 442,
    "setns": 268,
    "keyctl": 219, "add_key": 217, "request_key": 218,
    "bpf": 280, "perf_event_open": 241, "lookup_dcookie": 18,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "userfaultfd": 282, "open_by_handle_at": 265,
    "kcmp": 272, "pidfd_getfd": 438, "process_madvise": 440,
    "clock_settime": 112, "clock_adjtime": 266, "settimeofday": 170, "adjtimex": 171,
    "sethostname": 161, "setdomainname": 162,
    "acct": 89, "quotactl": 60, "quotactl_fd": 443, "syslog": 116, "vhangup": 58, "fanotify_init": 262,
    "nfsservctl": 42,
    "unshare": 97, "clone": 220, "clone3": 435, "personality": 92, "socket": 198,
}

# arch -> (AUDIT_ARCH_* value in seccomp_data.arch, syscall table, whether the x32 ABI exists)
_ARCHES = {
    "x86_64": (0xC000003E, _X86_64, True),
    "aarch64": (0xC00000B7, _AARCH64, False),
}

# Classic BPF (linux/bpf_common.h, linux/filter.h).
BPF_LD, BPF_JMP, BPF_RET = 0x00, 0x05, 0x06
BPF_W, BPF_ABS, BPF_K = 0x00, 0x20, 0x00
BPF_JA, BPF_JEQ, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x30, 0x40
LD_W_ABS = BPF_LD | BPF_W | BPF_ABS
JEQ, JGE, JSET, JA = (BPF_JMP | op | BPF_K for op in (BPF_JEQ, BPF_JGE, BPF_JSET, BPF_JA))
RET = BPF_RET | BPF_K
BPF_MAXINSNS = 4096

# struct seccomp_data {int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];}: offsets. Both
# architectures are little-endian, so an argument's low 32 bits (all of an int, and every flag used
# here) are at its own offset.
OFF_NR, OFF_ARCH, OFF_ARG0 = 0, 4, 16

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
EPERM, ENOSYS = 1, 38

X32_SYSCALL_BIT = 0x40000000
CLONE_NEWUSER = 0x10000000
AF_VSOCK = 40
# personality(2) values docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query.
PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)

_DENY_RET = SECCOMP_RET_ERRNO | EPERM
_JUMP_MAX = 255  # jt and jf are 8 bits
_CHAIN = 200  # deny-chain links per shared return, so every jt stays within _JUMP_MAX


# A program is a list of instructions (code, jt, jf, k) and labels (str) placed between them. A jump
# target (jt, jf, or k of a JA) is an offset or the name of a label further on.
def _stmt(code, k):
    return (code, 0, 0, k)


def _jump(code, k, jt=0, jf=0):
    return (code, jt, jf, k)


def _ret(value):
    return _stmt(RET, value)


def _ja(label):
    return _stmt(JA, label)


def _assemble(program) -> bytes:
    labels, pc = {}, 0
    for item in program:
        if isinstance(item, str):
            if item in labels:
                raise ValueError(f"seccomp: label {item!r} placed twice")
            labels[item] = pc
        else:
            pc += 1
    if pc > BPF_MAXINSNS:
        raise ValueError(f"seccomp: {pc} instructions, over the kernel's {BPF_MAXINSNS}")

    def offset(target, at, limit):
        if isinstance(target, str):
            target = labels[target] - at - 1  # relative to the next instruction
        if not 0 <= target <= limit:
            raise ValueError(f"seccomp: jump of {target} at instruction {at} (at most {limit}, forward)")
        return target

    out, pc = bytearray(), 0
    for item in program:
        if isinstance(item, str):
            continue
        code, jt, jf, k = item
        if code == JA:
            k = offset(k, pc, 0xFFFFFFFF)
        elif (code & 0x07) == BPF_JMP:
            jt, jf = offset(jt, pc, _JUMP_MAX), offset(jf, pc, _JUMP_MAX)
        out += struct.pack("=HBBI", code, jt, jf, k)
        pc += 1
    return bytes(out)


def _deny_chain(numbers):
    """`if nr == n: return EPERM` for each n, A holding nr; falls through with A unchanged. A chain of
    JEQs sharing one return per _CHAIN links, so any length works with 8-bit jumps."""
    program = []
    for start in range(0, len(numbers), _CHAIN):
        deny, done = f"deny{start}", f"chain{start}"
        program += [_jump(JEQ, nr, jt=deny) for nr in numbers[start : start + _CHAIN]]
        program += [_ja(done), deny, _ret(_DENY_RET), done]
    return program


def _build(arch: str):
    try:
        audit_arch, table, has_x32 = _ARCHES[arch]
    except KeyError:
        raise ValueError(f"seccomp: no syscall table for architecture {arch!r} (known: {', '.join(_ARCHES)})") from None
    nr = {name: table[name] for name in _SPECIAL}
    program = [
        # Another ABI's numbers mean other calls: kill rather than filter them with this table.
        _stmt(LD_W_ABS, OFF_ARCH),
        _jump(JEQ, audit_arch, jt=1),
        _ret(SECCOMP_RET_KILL_PROCESS),
        _stmt(LD_W_ABS, OFF_NR),
    ]
    if has_x32:  # x32 calls come with AUDIT_ARCH_X86_64 and the number's bit 30 set
        program += [_jump(JGE, X32_SYSCALL_BIT, jf=1), _ret(_DENY_RET)]
    program += _deny_chain([table[name] for name in DENIED if name in table])
    program += [
        _jump(JEQ, nr["unshare"], jt="newuser"),
        _jump(JEQ, nr["clone"], jt="newuser"),  # flags are args[0] on both (CLONE_BACKWARDS on aarch64)
        _jump(JEQ, nr["clone3"], jt="enosys"),
        _jump(JEQ, nr["personality"], jt="personality"),
        _jump(JEQ, nr["socket"], jt="socket"),
        _ret(SECCOMP_RET_ALLOW),
        "newuser",
        _stmt(LD_W_ABS, OFF_ARG0),
        _jump(JSET, CLONE_NEWUSER, jt="eperm", jf="allow"),
        "socket",
        _stmt(LD_W_ABS, OFF_ARG0),
        _jump(JEQ, AF_VSOCK, jt="eperm", jf="allow"),
        "personality",
        _stmt(LD_W_ABS, OFF_ARG0),
        *(_jump(JEQ, value, jt="allow") for value in PERSONALITIES),
        "eperm",
        _ret(_DENY_RET),
        "allow",
        _ret(SECCOMP_RET_ALLOW),
        "enosys",
        _ret(SECCOMP_RET_ERRNO | ENOSYS),
    ]
    return program


@functools.lru_cache(maxsize=None)
def _compile(arch: str) -> bytes:
    return _assemble(_build(arch))


def compile_program(arch: str | None = None) -> bytes:
    """The packed struct sock_filter array for `arch` (a platform.machine() value; None: this machine's),
    8 bytes an instruction: sock_fprog.len is len(result) // 8. Compiled once per architecture."""
    return _compile(platform.machine() if arch is None else arch)
