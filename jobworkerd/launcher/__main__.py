"""Launcher: the child side of a job start. It imports nothing from jobworkerd and only low-level stdlib
modules, because it is on the hot path of every start (`import json` alone costs ~5 ms here,
`import pyroute2` ~90 ms). It is a small package run as a file: __main__.py (this: the forkserver and
L), shim.py (the job's init C and the program's process G), sandbox.py (the filesystem view, the cgroup
view and the privileges C and G set up), syscalls.py (ctypes on libc). Two ways to
run it:

    python3 -I -S <this file> --forkserver SOCK_FD
        Normal mode. Started once by the daemon; waits on a SOCK_SEQPACKET socket for one message per
        job carrying three file descriptors (spec pipe, output file, status pipe) and forks a launcher
        L for each, which saves the ~10 ms of interpreter start and imports per job. Single-threaded,
        so forking it is safe. It exits when the daemon closes the socket.
    python3 -I -S <this file> STATUS_FD OUTPUT_FD
        One launcher L, spec on stdin: the fallback when no forkserver runs.

Processes and pipes:

    daemon ──spawn──▶ L (host namespaces, the daemon's cgroup and session)
      │  spec pipe: NUL-separated key=value fields, ending in "end=" (see read_spec); the sandbox's
      │             fields (jobworkerd/sandbox/plan.py) say what sandbox.py builds
      │  output file fd (the recorded output; only C ever holds it)
      │  status pipe, write end ─────────────────────────────────────────────────────────────┐
      │  bridge mode: the network pipe's read end, or a prepared namespace (net=pooled)       │
      │                                                                                       │
      │   L: open the exit file and the cgroup's join files (writers on the host's mounts)   │
      │      ─ [setns pooled] ─ unshare(PID|NS|NET|UTS|IPC) ─ mounts private ─ fork ─         │
      │      report "pid N" ─ exit                                                            │
      │                                       │                                               │
      │        C: PID 1 of the job, root, stays in the daemon's cgroup: setsid, hostname,     │
      │           lo up (bridge: eth0 as the network pipe says, once the daemon put the veth  │
      │           in; netcfg.py), hide the run and state directories, build the sandbox's     │
      │           filesystem (sandbox.py: read-only host, own /dev /proc /tmp /run /sys,      │
      │           binds, rootfs), make the output pipe,                                       │
      │           fork ──────────────────────┐                                                │
      │           copy the output pipe into  │  G: stdout+stderr = the output pipe's write    │
      │           the output file (at most   │     end (stdin /dev/null), join the job's      │
      │           cap bytes), reap all; when │     cgroup, cgroup namespace and its view,     │
      │           G ends or the cap or the   │     setgroups/setgid, bounding set, setuid,    │
      │           budget is reached: kill -1,│     capabilities, no_new_privs, chdir,         │
      │           copy the rest, write       │     seccomp, execve(program)                   │
      │           "<raw wait status> [capped|full]" to the exit file, exit                    │
      │                                      │     (exec pipe, close-on-exec: EOF = exec'd)   │
      ◀──────────── status pipe lines: "pid N", then "ok" or "fail STEP ERRNO DETAIL" ────────┘
                    EOF = C has exited (the job is over; its status is in the exit file,
                    and no status there means C itself was killed)

Why a separate PID 1: the kernel drops signals that PID 1 has no handler for, so a program run as
PID 1 would ignore a polite SIGTERM; C exists so that the program is not PID 1, and so that orphans
are reaped. Why C is also the shim (as conmon and containerd-shim are for containers): the job holds
only a pipe, so it cannot truncate, seek, fallocate or rewrite its recorded output; C knows the exact
byte count, so the cap is exact; C's session is the job's, so kill(0) and friends stay inside.

Designed to grow, without a new protocol:
  - Interactive jobs: C owns the job's stdio, so a stdin pipe (or a pty whose slave G makes its
    controlling terminal after its own setsid, in place of the output pipe) is one more descriptor
    made by C; the master side is copied to the output file by the same loop, and input reaches C
    over the control socket below.
  - Re-adoption after a daemon restart: nothing the job needs lives in the daemon. The output file is
    written only by C and followed by path; the exit file holds the end; the cap is enforced by C. A
    daemon that wants to re-attach instead of reconciling needs C's host pid (reported as "pid N",
    kept in the job's record) checked by its start time in /proc/N/stat, and a unix socket that C
    listens on in the job's run directory (jobs/<id>/control), speaking these same status lines, in
    place of the status pipe, whose EOF a new daemon cannot inherit.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves the script's directory out

import _signal  # noqa: E402
import _socket  # noqa: E402
import struct  # noqa: E402

from netcfg import bring_up_loopback, configure, read_assignment  # noqa: E402
from shim import open_host_files, run_init  # noqa: E402
from syscalls import (  # noqa: E402
    CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUTS, MS_PRIVATE, MS_REC, StepError, check, libc,
)

LIST_FIELDS = ("arg", "env", "join", "group", "hide", "bind", "runfile", "device", "cgview", "cglink")


class TruncatedSpec(Exception):
    pass


def read_spec(fd):
    """Fields 'key=value' separated by NUL; repeated keys (LIST_FIELDS) form lists. The last field is
    'end=': a spec without it was cut short (the daemon died while writing) and is never run."""
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data.endswith(b"\0end=\0"):
        raise TruncatedSpec()
    spec = {key: [] for key in LIST_FIELDS}
    for field in data[: -len(b"end=\0")].split(b"\0"):
        if field:
            key, _, value = field.partition(b"=")
            key = key.decode()
            if key in spec and key in LIST_FIELDS:
                spec[key].append(value)
            else:
                spec[key] = value
    return spec


def report(status_fd, line):
    # One line per report: a newline in a detail (a directory name a user chose) must not start another.
    text = line.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    try:
        os.write(status_fd, text.encode(errors="replace") + b"\n")
    except OSError:
        pass  # the daemon is gone (EPIPE); the job carries on, and the next daemon reconciles it


def launch_job(spec_fd, output_fd, status_fd, net_fd=-1):
    """L: everything from reading the spec to forking the job's init. Never returns. `net_fd`: for a job the
    daemon attaches to its bridge, the network pipe's read end (netcfg.py); for one given a prepared
    network namespace of the daemon's pool (net=pooled), that namespace."""
    try:
        spec = read_spec(spec_fd)
    except TruncatedSpec:
        report(status_fd, "fail read-spec 0 the job spec arrived incomplete")
        os._exit(1)
    if spec.get("hold") == b"1":
        hold_network(status_fd, net_fd)
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    if spec_fd != 0:
        os.close(spec_fd)
    os.close(devnull)
    try:
        exit_fd, cgroup_files = open_host_files(spec)
        # net=host (admins): the host's network namespace; net=pooled: a namespace the pool prepared (its veth
        # set up already); otherwise a new one (bridge: attached by the daemon once it exists).
        network = CLONE_NEWNET
        if spec.get("net") == b"host":
            network = 0
        elif spec.get("net") == b"pooled":
            check("join-network", libc.setns(net_fd, CLONE_NEWNET))
            os.close(net_fd)
            net_fd, network = -1, 0
        check("unshare", libc.unshare(CLONE_NEWPID | CLONE_NEWNS | network | CLONE_NEWUTS | CLONE_NEWIPC))
        # Private before anything is mounted, so nothing the job's init mounts or hides reaches the host.
        check("make-mounts-private", libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None))
        pid = os.fork()
    except StepError as exc:
        report(status_fd, f"fail {exc.step} {exc.err} {exc.detail}")
        os._exit(1)
    except OSError as exc:
        report(status_fd, f"fail open-exit-file {exc.errno} {exc.filename}")
        os._exit(1)
    if pid:
        report(status_fd, f"pid {pid}")
        os._exit(0)
    code = 1
    try:
        code = run_init(spec, status_fd, output_fd, exit_fd, cgroup_files, net_fd, report)
    except StepError as exc:
        report(status_fd, f"fail {exc.step} {exc.err} {exc.detail}")
    except OSError as exc:
        report(status_fd, f"fail init {exc.errno} {exc.strerror}")
    os._exit(code)


def hold_network(status_fd, net_fd):
    """A prepared network namespace for the daemon's pool: made here, lo up, "pid N" reported so that the
    daemon can put a veth in it; then its one line on the network pipe says how to set eth0 up (netcfg.py),
    "ok" is reported, and this process exits: the daemon holds the namespace by an fd until a job joins it,
    so no pid (which could be reused) ever names it. Never returns."""
    try:
        check("unshare", libc.unshare(CLONE_NEWNET))
        bring_up_loopback()
        report(status_fd, f"pid {os.getpid()}")
        configure(*read_assignment(net_fd))
    except StepError as exc:
        report(status_fd, f"fail {exc.step} {exc.err} {exc.detail}")
        os._exit(1)
    report(status_fd, "ok")
    os._exit(0)


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
            message, ancillary, _flags, _addr = sock.recvmsg(16, _socket.CMSG_SPACE(4 * 4))
        except InterruptedError:
            continue
        fds = received_fds(ancillary)
        if not message:  # the daemon closed its end
            return
        if len(fds) in (3, 4):
            if os.fork() == 0:
                _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
                _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
                sock.close()
                launch_job(*fds)  # spec, output, status[, network]
        for fd in fds:
            os.close(fd)


def main():
    if sys.argv[1] == "--forkserver":
        serve_forks(int(sys.argv[2]))
    else:
        launch_job(0, int(sys.argv[2]), int(sys.argv[1]), int(sys.argv[3]) if len(sys.argv) > 3 else -1)


if __name__ == "__main__":
    main()
