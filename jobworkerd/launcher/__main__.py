"""Launcher: the child side of a job start. It imports nothing from jobworkerd and only low-level stdlib
modules, because it is on the hot path of every start (`import json` alone costs ~5 ms here,
`import pyroute2` ~90 ms). Two ways to run it:

    python3 -I -S <this file> --forkserver SOCK_FD
        Normal mode. Started once by the daemon; waits on a SOCK_SEQPACKET socket for one message per
        job carrying three file descriptors (spec pipe, output file, status pipe) and forks a launcher
        L for each, which saves the ~10 ms of interpreter start and imports per job. Single-threaded,
        so forking it is safe. It exits when the daemon closes the socket.
    python3 -I -S <this file> STATUS_FD
        One launcher L, spec on stdin, output on stdout/stderr: the fallback when no forkserver runs.

Processes and pipes:

    daemon ──spawn──▶ L (this file, host namespaces)
      │  stdin: job spec (NUL-separated key=value fields, see read_spec)
      │  stdout/stderr: the job's output file (O_APPEND)
      │  fd STATUS_FD: status pipe, write end ──────────────────────────────┐
      │                                                                      │
      │   L: join the job cgroup ─ unshare(PID|NS|NET) ─ mounts private ─ fork ─ report "pid N" ─ exit
      │                                                          │
      │                                  C: PID 1 of the job (init): mount /proc, lo up, fork
      │                                      │                         reap everything; when G ends,
      │                                      │                         write "<raw wait status>" to the
      │                                      │                         exit file, exit (the kernel then
      │                                      │                         kills what is left in the namespace)
      │                                      G: setgroups/setgid/setuid, chdir, execve(program)
      │                                         (exec pipe, close-on-exec: empty = exec happened)
      ◀──────────── status pipe lines: "pid N", then "ok" or "fail STEP ERRNO DETAIL" ──────────┘
                    EOF = C has exited (the job is over; its status is in the exit file,
                    and no exit file means C itself was killed)

Why a separate PID 1: the kernel drops signals that PID 1 has no handler for, so a program run
as PID 1 would ignore a polite SIGTERM; C exists so that the program is not PID 1, and so that
orphans are reaped.
"""

import ctypes
import fcntl
import os
import struct
import sys

import _signal
import _socket

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
EXIT_STATUS_WIDTH = 16  # the raw wait status, in decimal, padded with blanks
RLIMIT_NOFILE, JOB_NOFILE_SOFT = 7, 1024

_libc = ctypes.CDLL(None, use_errno=True)


class StepError(Exception):
    def __init__(self, step, err, detail=""):
        super().__init__(step)
        self.step, self.err, self.detail = step, err, detail


def check(step, result, detail=""):
    if result != 0:
        raise StepError(step, ctypes.get_errno(), detail)


def read_spec(fd):
    """Fields 'key=value' separated by NUL; repeated keys (arg, env, join, group) form lists."""
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    spec = {"arg": [], "env": [], "join": [], "group": []}
    for field in b"".join(chunks).split(b"\0"):
        if field:
            key, _, value = field.partition(b"=")
            key = key.decode()
            if key in spec:
                spec[key].append(value)
            else:
                spec[key] = value
    return spec


def report(status_fd, line):
    try:
        os.write(status_fd, line.encode(errors="replace") + b"\n")
    except OSError:
        pass  # the daemon is gone (EPIPE); the job carries on, and the next daemon reconciles it


def join_cgroup(files):
    # Before unshare and fork, so that every process of the job is accounted from its first page.
    for path in files:
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError as exc:
            raise StepError("join-cgroup", exc.errno, path.decode(errors="replace")) from None


def bring_up_loopback():
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))
    except OSError as exc:
        raise StepError("loopback-up", exc.errno) from None
    finally:
        sock.close()


def exec_program(spec, exec_w):
    """G: drop to the run-as user, chdir, exec. Never returns; failures go to the exec pipe."""
    step, target = "setgroups", b""
    try:
        # Python ignores SIGPIPE and SIGXFSZ at start-up, and ignored signals survive execve: give the
        # program the defaults it expects (e.g. `yes | head` ends by SIGPIPE).
        for signum in (_signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGCHLD):
            _signal.signal(signum, _signal.SIG_DFL)
        # The daemon lifts its own soft fd limit for its many pipes; jobs get the usual soft limit back
        # (1024, as systemd gives services: select() breaks above it), the hard limit unchanged.
        limit = (ctypes.c_ulong * 2)()
        if _libc.getrlimit(RLIMIT_NOFILE, limit) == 0 and limit[0] > JOB_NOFILE_SOFT:
            limit[0] = min(JOB_NOFILE_SOFT, limit[1])
            _libc.setrlimit(RLIMIT_NOFILE, limit)
        uid, gid = int(spec["uid"]), int(spec["gid"])
        os.setgroups([int(g) for g in spec["group"]])
        step = "setgid"
        os.setgid(gid)
        step = "setuid"
        os.setuid(uid)
        step, target = "chdir", spec["cwd"]
        os.chdir(target)
        step, target = "exec", spec["program"]
        os.execve(target, spec["arg"], dict(e.partition(b"=")[::2] for e in spec["env"]))
    except OSError as exc:
        detail = target.decode(errors="replace") if target else ""
        os.write(exec_w, f"fail {step} {exc.errno} {detail}".encode(errors="replace"))
    finally:
        os._exit(127)


def run_init(spec, status_fd):
    """C, PID 1 of the job's namespaces."""
    check("mount-proc", _libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None))
    bring_up_loopback()
    exit_fd = os.open(spec["exit_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    # Allocate the exit file's space now: when the job ends, a full run directory (its own output may
    # have filled it) must not keep the status from being written. Blanks read as "no status yet".
    os.write(exit_fd, b" " * EXIT_STATUS_WIDTH)
    os.set_inheritable(status_fd, False)  # the program must not hold it: its EOF means "init has exited"
    exec_r, exec_w = os.pipe()  # both close-on-exec
    child = os.fork()
    if child == 0:
        os.close(exec_r)
        os.close(exit_fd)
        exec_program(spec, exec_w)
    os.close(exec_w)
    outcome = os.read(exec_r, 4096).decode(errors="replace")
    os.close(exec_r)
    report(status_fd, outcome or "ok")
    os.close(0)  # the init keeps no handle on the job's stdio
    os.close(1)
    os.close(2)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # cannot happen while the program lives; be safe
            status = 0
            break
        if pid == child:
            break
    os.pwrite(exit_fd, str(status).encode().ljust(EXIT_STATUS_WIDTH), 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def launch_job(spec_fd, status_fd):
    """L: everything from reading the spec to forking the job's init. Never returns."""
    spec = read_spec(spec_fd)
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    if spec_fd != 0:
        os.close(spec_fd)
    os.close(devnull)
    try:
        join_cgroup(spec["join"])
        check("unshare", _libc.unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET))
        # Private before anything is mounted, so the job's /proc never propagates to the host.
        check("make-mounts-private", _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None))
        pid = os.fork()
    except StepError as exc:
        report(status_fd, f"fail {exc.step} {exc.err} {exc.detail}")
        os._exit(1)
    if pid:
        report(status_fd, f"pid {pid}")
        os._exit(0)
    try:
        run_init(spec, status_fd)
    except StepError as exc:
        report(status_fd, f"fail {exc.step} {exc.err} {exc.detail}")
    except OSError as exc:
        report(status_fd, f"fail init {exc.errno} {exc.strerror}")
    os._exit(1)


def received_fds(ancillary):
    fds = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4])
    return fds


def serve_forks(sock_fd):
    """The forkserver loop: one message (with spec, output and status fds) -> one forked launcher."""
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)  # launchers exit at once; the kernel reaps them
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # a Ctrl-C meant for a foreground daemon is not ours
    sock = _socket.socket(fileno=sock_fd)
    while True:
        try:
            message, ancillary, _flags, _addr = sock.recvmsg(16, _socket.CMSG_SPACE(3 * 4))
        except InterruptedError:
            continue
        fds = received_fds(ancillary)
        if not message:  # the daemon closed its end
            return
        if len(fds) == 3:
            if os.fork() == 0:
                _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
                _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
                sock.close()
                spec_fd, output_fd, status_fd = fds
                os.dup2(output_fd, 1)
                os.dup2(output_fd, 2)
                os.close(output_fd)
                launch_job(spec_fd, status_fd)
        for fd in fds:
            os.close(fd)


def main():
    if sys.argv[1] == "--forkserver":
        serve_forks(int(sys.argv[2]))
    else:
        launch_job(0, int(sys.argv[1]))


if __name__ == "__main__":
    main()
