"""jobworkerd.sandbox.seccomp: the program loads into this kernel, denies what it lists with EPERM
without killing, checks unshare/clone/personality/socket arguments, answers clone3 with ENOSYS, kills
foreign-ABI calls, and leaves ordinary programs alone. Each filtered run is a forked child (which ends
with os._exit and reports through a pipe); the same calls without the filter show that the EPERMs are
the filter's. The x86_64 and aarch64 programs are also run on a small classic-BPF interpreter."""

import ctypes
import json
import mmap
import os
import platform
import re
import signal
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from jobworkerd.sandbox import seccomp

MACHINE = platform.machine()
TABLE = seccomp._ARCHES.get(MACHINE, (None, {}, False))[1]
EPERM, ENOSYS = 1, 38
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17
AF_UNIX, AF_VSOCK, SOCK_STREAM = 1, 40, 1
ADDR_NO_RANDOMIZE = 0x0040000
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
NOWHERE = b"/nonexistent/jobworkerd-seccomp-test"

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

needs_table = pytest.mark.skipif(not TABLE, reason=f"no seccomp table for {MACHINE}")


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _arg(value):
    if value is None or isinstance(value, bytes):
        return ctypes.c_char_p(value)
    return ctypes.c_long(value)


def syscall(nr, *args):
    """A raw system call: its result, or -errno."""
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(nr), *map(_arg, args))
    return -ctypes.get_errno() if result == -1 else result


def install(program):
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def in_child(body, filtered=True):
    """body() in a forked child, in a session of its own (no controlling terminal for vhangup), under
    this machine's program unless not `filtered`; its JSON-able result, or the test fails."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            try:
                os.setsid()
                if filtered:
                    install(seccomp.compile_program())
                report = {"result": body()}
            except BaseException as error:  # noqa: BLE001 - reported to the parent
                report = {"error": repr(error)}
            data = json.dumps(report).encode()
            while data:
                data = data[os.write(write_end, data) :]
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child ended with wait status {status:#x}"
    report = json.loads(data)
    if "error" in report:
        pytest.fail(f"in the child: {report['error']}")
    return report["result"]


# Every denied call of this machine, with arguments that do nothing even unfiltered and as root: bad
# magic, flags or descriptors, NULL pointers, paths that do not exist.
HARMLESS = {
    "init_module": (None, 0, None),
    "finit_module": (-1, b"", 0),
    "delete_module": (b"jobworkerd_no_such_module", 0),
    "create_module": (None, 0),
    "get_kernel_syms": (None,),
    "query_module": (None, 0, None, 0, None),
    "reboot": (0, 0, 0, None),
    "kexec_load": (0, 0, None, 0xFFFFFFFF),
    "kexec_file_load": (-1, -1, 0, None, 0xFFFFFFFF),
    "swapon": (NOWHERE, 0),
    "swapoff": (NOWHERE,),
    "mount": (b"none", NOWHERE, b"tmpfs", 0, None),
    "umount2": (NOWHERE, 0),
    "pivot_root": (NOWHERE, NOWHERE),
    "fsopen": (b"jobworkerd-no-such-fs", 0),
    "fsconfig": (-1, 0, None, None, 0),
    "fsmount": (-1, 0, 0),
    "fspick": (-1, NOWHERE, 0),
    "move_mount": (-1, NOWHERE, -1, NOWHERE, 0),
    "open_tree": (-1, NOWHERE, 0),
    "open_tree_attr": (-1, NOWHERE, 0, None, 0),
    "mount_setattr": (-1, NOWHERE, 0, None, 0),
    "setns": (-1, 0),
    "keyctl": (0x7FFF, 0, 0, 0, 0),
    "add_key": (None, None, None, 0, 0),
    "request_key": (None, None, None, 0),
    "bpf": (0x7FFF, None, 0),
    "perf_event_open": (None, 0, -1, -1, 0),
    "lookup_dcookie": (0, None, 0),
    "io_uring_setup": (0, None),
    "io_uring_enter": (-1, 0, 0, 0, None, 0),
    "io_uring_register": (-1, 0, None, 0),
    "userfaultfd": (0xFFFFFFFF,),
    "open_by_handle_at": (-1, None, 0),
    "kcmp": (0x7FFFFFFF, 0x7FFFFFFF, 0, 0, 0),
    "pidfd_getfd": (-1, 0, 0),
    "process_madvise": (-1, None, 0, 0, 0),
    "clock_settime": (0x7FFFFFFF, None),
    "clock_adjtime": (0x7FFFFFFF, None),
    "settimeofday": (None, None),  # both NULL: sets nothing
    "adjtimex": (None,),
    "ioperm": (0, 0, 0),
    "iopl": (4,),
    "sethostname": (None, 65),  # longer than the 64 the kernel takes
    "setdomainname": (None, 65),
    "acct": (NOWHERE,),
    "quotactl": (0, None, 0, None),
    "quotactl_fd": (-1, 0, 0, None),
    "syslog": (0x7FFF, None, 0),
    "vhangup": (),  # the child has no controlling terminal
    "fanotify_init": (0xFFFFFFFF, 0),
    "nfsservctl": (0, None, None),
    "uselib": (None,),
    "ustat": (0, None),
    "sysfs": (0x7FFF,),
    "_sysctl": (None,),
}
DENIED_HERE = [name for name in seccomp.DENIED if name in TABLE]


def call_all_denied():
    return {name: syscall(TABLE[name], *HARMLESS[name]) for name in DENIED_HERE}


def test_every_denied_call_has_harmless_arguments():
    assert set(seccomp.DENIED) <= set(HARMLESS)


@needs_table
def test_denied_calls_fail_with_eperm_and_the_process_goes_on():
    results = in_child(call_all_denied)  # a report at all: the child lived through every call
    assert {name: err for name, err in results.items() if err != -EPERM} == {}


@needs_table
@pytest.mark.skipif(os.geteuid() != 0, reason="unfiltered, an unprivileged caller gets EPERM from the kernel")
def test_without_the_filter_the_same_calls_are_not_eperm():
    results = in_child(call_all_denied, filtered=False)
    assert [name for name, err in results.items() if err == -EPERM] == []


def _argument_rules():
    nr = TABLE
    results = {
        "unshare_newuser": syscall(nr["unshare"], CLONE_NEWUSER),
        "unshare_0": syscall(nr["unshare"], 0),
        "clone3": syscall(nr["clone3"], None, 0),
        "personality_query": syscall(nr["personality"], 0xFFFFFFFF),
        "personality_no_randomize": syscall(nr["personality"], ADDR_NO_RANDOMIZE),
        "personality_linux": syscall(nr["personality"], 0),
        "socket_vsock": syscall(nr["socket"], AF_VSOCK, SOCK_STREAM, 0),
    }
    unix = syscall(nr["socket"], AF_UNIX, SOCK_STREAM, 0)
    results["socket_unix"] = unix >= 0
    # clone as fork: a new user namespace is refused; if it were not, the copy must leave at once
    child = syscall(nr["clone"], CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
    if child == 0:
        os._exit(0)
    if child > 0:
        os.waitpid(child, 0)
    results["clone_newuser"] = child
    child = syscall(nr["clone"], SIGCHLD, 0, 0, 0, 0)
    if child == 0:
        os._exit(5)
    results["clone_plain"] = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) if child > 0 else child
    return results


@needs_table
def test_argument_rules():
    assert in_child(_argument_rules) == {
        "unshare_newuser": -EPERM,
        "unshare_0": 0,
        "clone3": -ENOSYS,
        "personality_query": 0,
        "personality_no_randomize": -EPERM,
        "personality_linux": 0,
        "socket_vsock": -EPERM,
        "socket_unix": True,
        "clone_newuser": -EPERM,
        "clone_plain": 5,
    }


def _ordinary_calls(path):
    results = {"getpid": os.getpid() == syscall(39 if MACHINE == "x86_64" else 172)}
    fd = os.open(path, os.O_RDONLY)
    results["read"] = os.read(fd, 100).decode()
    os.close(fd)
    child = os.fork()
    if child == 0:
        os._exit(7)
    results["fork_wait"] = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    child = os.fork()
    if child == 0:
        try:
            os.execv("/bin/true", ["true"])
        finally:
            os._exit(127)
    results["execve_true"] = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    results["subprocess_sh"] = subprocess.run(["/bin/sh", "-c", "exit 3"]).returncode  # vfork + execve
    seen = []
    thread = threading.Thread(target=lambda: seen.append(threading.get_native_id()))  # clone3 -> clone
    thread.start()
    thread.join()
    results["thread"] = len(seen) == 1 and seen[0] != threading.get_native_id()
    return results


@needs_table
def test_ordinary_calls_still_work(tmp_path):
    path = tmp_path / "data"
    path.write_text("hello seccomp")
    assert in_child(lambda: _ordinary_calls(str(path))) == {
        "getpid": True,
        "read": "hello seccomp",
        "fork_wait": 7,
        "execve_true": 0,
        "subprocess_sh": 3,
        "thread": True,
    }


@pytest.mark.skipif(MACHINE != "x86_64", reason="x32 is an x86_64 ABI")
def test_x32_calls_fail_with_eperm():
    x32_getpid = seccomp.X32_SYSCALL_BIT | 39
    assert in_child(lambda: syscall(x32_getpid)) == -EPERM
    assert in_child(lambda: syscall(x32_getpid), filtered=False) != -EPERM


def _int80_getpid():
    """getpid through the i386 ABI (int 0x80, eax = 20), from a page of machine code."""
    code = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"  # mov eax, 20; int 0x80; ret
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return ctypes.CFUNCTYPE(ctypes.c_int)(address)()


def _wait_status_of_int80(filtered):
    child = os.fork()
    if child == 0:
        try:
            if filtered:
                install(seccomp.compile_program())
            os._exit(0 if _int80_getpid() == os.getpid() else 1)
        finally:
            os._exit(2)
    return os.waitpid(child, 0)[1]


@pytest.mark.skipif(MACHINE != "x86_64", reason="the i386 ABI of x86_64")
def test_a_foreign_abi_call_kills_the_process():
    status = _wait_status_of_int80(filtered=False)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        pytest.skip(f"no working i386 emulation here (wait status {status:#x})")
    status = _wait_status_of_int80(filtered=True)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


# The programs themselves, without a kernel.


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_the_program_compiles_within_the_kernel_limit(arch):
    program = seccomp.compile_program(arch)
    assert len(program) % 8 == 0
    assert 0 < len(program) // 8 < seccomp.BPF_MAXINSNS
    assert seccomp.compile_program(arch) is program  # compiled once


def test_none_means_this_machine():
    if MACHINE not in seccomp._ARCHES:
        with pytest.raises(ValueError):
            seccomp.compile_program()
    else:
        assert seccomp.compile_program() is seccomp.compile_program(MACHINE)


@pytest.mark.parametrize("arch", ["i686", "armv7l", "mips64", "riscv64", "", "X86_64"])
def test_an_unknown_architecture_is_a_value_error(arch):
    with pytest.raises(ValueError, match="architecture"):
        seccomp.compile_program(arch)


def test_the_lists():
    assert len(set(seccomp.DENIED)) == len(seccomp.DENIED)
    assert "ptrace" not in seccomp.DENIED
    assert not set(seccomp._SPECIAL) & set(seccomp.DENIED)
    x86_64, aarch64 = seccomp._ARCHES["x86_64"][1], seccomp._ARCHES["aarch64"][1]
    assert set(x86_64) == set(seccomp.DENIED) | set(seccomp._SPECIAL)
    assert set(aarch64) <= set(x86_64)
    assert set(x86_64) - set(aarch64) == {
        "create_module", "get_kernel_syms", "query_module", "ioperm", "iopl", "uselib", "ustat", "sysfs", "_sysctl",
    }


def _header_numbers(path):
    text = Path(path).read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"^#define __NR(?:3264)?_(\w+)\s+(\d+)\b", text, re.M)}


@pytest.mark.parametrize(
    ("arch", "header"),
    [("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), ("aarch64", "/usr/include/asm-generic/unistd.h")],
)
def test_the_numbers_match_the_kernel_headers(arch, header):
    if not Path(header).exists():
        pytest.skip(f"{header} is not installed")
    known = _header_numbers(header)
    table = seccomp._ARCHES[arch][1]
    checked = {name: nr for name, nr in table.items() if name in known}
    assert checked == {name: known[name] for name in checked}
    assert len(checked) >= len(table) - 1  # open_tree_attr (6.15) may be newer than the headers


def run_bpf(program, nr, arch, args=(0,) * 6):
    """A classic BPF interpreter for the instructions the compiler emits: the action for seccomp_data."""
    data = struct.pack("=IIQ6Q", nr & 0xFFFFFFFF, arch, 0, *args)
    insns = [struct.unpack_from("=HBBI", program, at) for at in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == seccomp.LD_W_ABS:
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == seccomp.RET:
            return k
        elif code == seccomp.JA:
            pc += k
        elif code in (seccomp.JEQ, seccomp.JGE, seccomp.JSET):
            taken = {seccomp.JEQ: acc == k, seccomp.JGE: acc >= k, seccomp.JSET: bool(acc & k)}[code]
            pc += jt if taken else jf
        else:
            raise AssertionError(f"unexpected instruction {code:#x} at {pc - 1}")


ALLOW, KILL = seccomp.SECCOMP_RET_ALLOW, seccomp.SECCOMP_RET_KILL_PROCESS
DENY, NOSYS = seccomp.SECCOMP_RET_ERRNO | EPERM, seccomp.SECCOMP_RET_ERRNO | ENOSYS


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_the_program_on_an_interpreter(arch):
    audit, table, has_x32 = seccomp._ARCHES[arch]
    program = seccomp.compile_program(arch)

    def action(name_or_nr, *args, audit_arch=audit):
        nr = table[name_or_nr] if isinstance(name_or_nr, str) else name_or_nr
        return run_bpf(program, nr, audit_arch, args + (0,) * (6 - len(args)))

    assert {name: action(name) for name in seccomp.DENIED if name in table} == dict.fromkeys(
        (name for name in seccomp.DENIED if name in table), DENY
    )
    ordinary = {"x86_64": [0, 1, 39, 59, 101, 310, 311, 303], "aarch64": [63, 64, 172, 221, 117, 270, 271, 264]}[arch]
    assert [action(nr) for nr in ordinary] == [ALLOW] * len(ordinary)  # read, write, getpid, execve, ptrace...
    assert action(ordinary[2], audit_arch=0x40000003) == KILL  # i386
    assert action(0, audit_arch=0x40000028) == KILL  # arm
    assert action("unshare", CLONE_NEWUSER) == DENY
    assert action("unshare", CLONE_NEWUSER | 0x20000) == DENY
    assert action("unshare", 0x20000 | (1 << 40)) == ALLOW
    assert action("clone", CLONE_NEWUSER | SIGCHLD) == DENY
    assert action("clone", 0x3D0F00) == ALLOW  # pthread_create's flags
    assert action("clone3") == NOSYS
    assert [action("personality", p) for p in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF)] == [ALLOW] * 5
    assert [action("personality", p) for p in (ADDR_NO_RANDOMIZE, 0x400000, 1)] == [DENY] * 3
    assert action("socket", AF_VSOCK) == DENY
    assert action("socket", AF_UNIX) == ALLOW
    assert action(seccomp.X32_SYSCALL_BIT | ordinary[2]) == (DENY if has_x32 else ALLOW)


def test_long_deny_chains_keep_their_jumps_short():
    numbers = list(range(1000, 2000))
    program = seccomp._assemble(
        [seccomp._stmt(seccomp.LD_W_ABS, seccomp.OFF_NR), *seccomp._deny_chain(numbers), seccomp._ret(ALLOW)]
    )
    assert [run_bpf(program, nr, 0) for nr in (999, 1000, 1199, 1200, 1500, 1999, 2000)] == [
        ALLOW, DENY, DENY, DENY, DENY, DENY, ALLOW,
    ]


def test_a_jump_too_far_is_refused():
    program = [seccomp._jump(seccomp.JEQ, 0, jt="far"), *[seccomp._ret(ALLOW)] * 256, "far", seccomp._ret(DENY)]
    with pytest.raises(ValueError, match="jump of 256"):
        seccomp._assemble(program)
