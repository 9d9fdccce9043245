"""Parent side of a job start: spawn the launcher and read what it reports.

The launcher (jobworkerd/launcher/__main__.py) documents the protocol. The daemon is threaded, so the
launcher is started with subprocess (vfork+exec, no preexec_fn), never with a plain fork of this process.
"""

from __future__ import annotations

import array
import errno as errno_mod
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import InternalError, StartFailed
from .models import ResolvedSpec

LAUNCHER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launcher", "__main__.py")
START_TIMEOUT = 30.0

STEP_HINTS = {
    "exec": "cannot execute program",
    "chdir": "cannot enter directory",
    "setuid": "cannot switch to the run-as user",
    "setgid": "cannot switch to the run-as group",
    "setgroups": "cannot set supplementary groups",
    "join-cgroup": "cannot join the job's cgroup",
    "unshare": "cannot create namespaces",
    "make-mounts-private": "cannot make mounts private",
    "mount-proc": "cannot mount /proc in the job's namespace",
    "hide-path": "cannot hide a daemon directory in the job's mount namespace",
    "read-spec": "the launcher could not read the job's spec",
    "loopback-up": "cannot bring up loopback in the job's network namespace",
    "open-exit-file": "cannot create the job's exit file",
    "set-hostname": "cannot set the job's hostname",
    "mount-rootfs": "cannot bind the job's rootfs",
    "read-only-root": "cannot make the job's view of / read-only",
    "bind-mount": "cannot bind mount into the job",
    "mount-dev": "cannot build the job's /dev",
    "mount-devpts": "cannot mount the job's /dev/pts",
    "mask-proc": "cannot make /proc paths read-only in the job",
    "mask-path": "cannot mask a /proc or /sys path in the job",
    "mount-tmp": "cannot mount the job's /tmp",
    "mount-run": "cannot mount the job's /run",
    "mount-sys": "cannot mount the job's /sys",
    "pivot-root": "cannot enter the job's rootfs",
    "cgroup-namespace": "cannot create the job's cgroup namespace",
    "mount-cgroup-view": "cannot mount the job's cgroup view",
    "drop-capabilities": "cannot drop the job's capabilities",
    "no-new-privileges": "cannot set no_new_privs",
    "seccomp": "cannot install the job's seccomp filter",
}


@dataclass
class Launched:
    init_pid: int  # host PID of the job's PID 1; informational (jobs are tracked by cgroup)
    status_fd: int  # read end of the status pipe: EOF when the job's init has exited


@dataclass(frozen=True)
class LaunchPlan:
    """What the launcher needs besides the resolved spec (see the launcher's protocol)."""

    join_files: list[str]  # the job cgroup's files the program's process writes "0" into
    exit_file: str  # where the job's init writes "<raw wait status> [capped|full]"
    output_cap: int  # bytes of output the init copies at most
    hidden_paths: list[str] = field(default_factory=list)  # shown empty inside the job
    sandbox_fields: list[tuple[str, str]] = field(default_factory=list)  # jobworkerd.sandbox.plan.launcher_fields
    # Bridge mode: called with the init's host pid once its network namespace exists; returns the line the
    # init configures its veth end from (jobworkerd/launcher/netcfg.py), or raises to fail the start.
    attach: Callable[[int], str] | None = None
    netns_fd: int = -1  # a prepared network namespace of the pool the job joins (net=pooled), or -1


def encode_spec(resolved: ResolvedSpec, plan: LaunchPlan) -> bytes:
    fields: list[tuple[str, str]] = [("join", f) for f in plan.join_files]
    fields += [("hide", p) for p in plan.hidden_paths]
    fields += [("uid", str(resolved.uid)), ("gid", str(resolved.gid))]
    fields += [("group", str(g)) for g in resolved.groups]
    fields += [("cwd", resolved.directory), ("program", resolved.program), ("exit_file", plan.exit_file)]
    fields += [("cap", str(plan.output_cap))]
    fields += [("arg", a) for a in resolved.argv]
    fields += [("env", f"{k}={v}") for k, v in resolved.env.items()]
    fields += plan.sandbox_fields
    fields += [("end", "")]  # the launcher runs no spec that lacks it (a daemon that died mid-write)
    return b"".join(f"{k}={v}".encode("utf-8", "surrogateescape") + b"\0" for k, v in fields)


def _unescape(text: str) -> str:
    """The launcher escapes backslash, newline and CR in status lines (each report is one line)."""
    return re.sub(r"\\([\\nr])", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), "\\"), text)


def describe_failure(line: str) -> StartFailed:
    """'fail STEP ERRNO DETAIL' -> StartFailed with a message naming the step, file and errno."""
    parts = line.split(" ", 3)
    step = parts[1] if len(parts) > 1 else "unknown"
    err = int(parts[2]) if len(parts) > 2 and parts[2].lstrip("-").isdigit() else 0
    detail = _unescape(parts[3]) if len(parts) > 3 else ""
    name = errno_mod.errorcode.get(err, str(err))
    what = STEP_HINTS.get(step, step)
    target = f" {detail!r}" if detail else ""
    return StartFailed(f"{what}{target}: {os.strerror(err)} ({name})", step=step, errno=err)


def launch(resolved: ResolvedSpec, plan: LaunchPlan, output_fd: int) -> Launched:
    """Start one launcher process directly and wait until the program has been exec'd. Raises StartFailed.
    The fallback when no forkserver is running (costs ~10 ms of interpreter start per job)."""
    status_r, status_w = os.pipe()
    net_r, net_w = os.pipe() if plan.attach else (-1, -1)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", LAUNCHER, str(status_w), str(output_fd), str(max(net_r, plan.netns_fd))],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            pass_fds=tuple(fd for fd in (status_w, output_fd, net_r, plan.netns_fd) if fd >= 0),
            cwd="/",
            env={},
        )
    except OSError as exc:
        os.close(status_r)
        _close(net_w)
        raise InternalError(f"cannot start the launcher {sys.executable}: {exc.strerror}") from exc
    finally:
        os.close(status_w)
        _close(net_r)
    try:
        _write_spec(proc.stdin.fileno(), encode_spec(resolved, plan))  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
        return _await_outcome(status_r, plan.attach, net_w)
    finally:
        proc.wait()


class ForkServerUnavailable(InternalError):
    pass


class ForkServer:
    """Owns the long-lived forkserver process and its socket (see the launcher's docstring).

    launch() sends one message per job with three descriptors: the read end of a pipe carrying the
    spec, the output file, and the write end of the status pipe. Thread-safe: each message is one
    SOCK_SEQPACKET datagram. If the forkserver has died it is started again, once per launch.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", LAUNCHER, "--forkserver", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), cwd="/", env={},
            )
        finally:
            theirs.close()
        self._sock = ours
        return ours

    def _send(self, fds: list[int]) -> None:
        with self._lock:
            for attempt in (1, 2):
                sock = self._sock
                if sock is None or self._proc is None or self._proc.poll() is not None or _stopped(self._proc.pid):
                    self._discard()
                    sock = self._start()
                try:
                    sock.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                    return
                except OSError:
                    self._discard()
                    if attempt == 2:
                        raise

    def launch(self, resolved: ResolvedSpec, plan: LaunchPlan, output_fd: int) -> Launched:
        status_r, status_w = os.pipe()
        spec_r, spec_w = os.pipe()
        net_r, net_w = os.pipe() if plan.attach else (-1, -1)
        fourth = net_r if net_r >= 0 else plan.netns_fd
        try:
            self._send([spec_r, output_fd, status_w] + ([fourth] if fourth >= 0 else []))
        except OSError as exc:
            for fd in (status_r, spec_w, net_w):
                _close(fd)
            raise ForkServerUnavailable(f"cannot reach the launcher forkserver: {exc.strerror}") from exc
        finally:
            os.close(spec_r)
            os.close(status_w)
            _close(net_r)
        try:
            _write_spec(spec_w, encode_spec(resolved, plan))
        except BaseException:
            os.close(status_r)
            _close(net_w)
            raise
        finally:
            os.close(spec_w)
        return _await_outcome(status_r, plan.attach, net_w)

    def hold(self, attach: Callable[[int], str]) -> None:
        """A prepared network namespace for the pool (the launcher's hold_network): `attach` is called with
        the holder's pid once the namespace exists and returns the line that sets its eth0 up. Returns once
        that is done (the holder then exits); raises like a failed start."""
        status_r, status_w = os.pipe()
        spec_r, spec_w = os.pipe()
        net_r, net_w = os.pipe()
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            self._send([spec_r, devnull, status_w, net_r])
        except OSError as exc:
            for fd in (status_r, spec_w, net_w):
                os.close(fd)
            raise ForkServerUnavailable(f"cannot reach the launcher forkserver: {exc.strerror}") from exc
        finally:
            for fd in (spec_r, status_w, net_r, devnull):
                os.close(fd)
        try:
            _write_spec(spec_w, b"hold=1\0end=\0")
        finally:
            os.close(spec_w)
        os.close(_await_outcome(status_r, attach, net_w).status_fd)

    def _discard(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()  # EOF: the forkserver exits by itself
                self._sock = None
            if self._proc is not None:
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                self._proc = None


def _stopped(pid: int) -> bool:
    """A forkserver stopped by a signal (SIGSTOP, a debugger) would take orders and never fork: replace it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
    except (OSError, IndexError):
        return False


def _write_spec(fd: int, data: bytes) -> None:
    """All of the spec, or InternalError after START_TIMEOUT: a launcher that does not read must not hold
    the caller for ever."""
    view = memoryview(data)
    os.set_blocking(fd, False)
    deadline = time.monotonic() + START_TIMEOUT
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    try:
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not poller.poll(remaining * 1000):
                    raise InternalError(f"the launcher did not read the job's spec within {START_TIMEOUT:.0f}s")
    except BrokenPipeError:
        pass  # the launcher died early; its status line (or its absence) says why


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def _await_outcome(status_r: int, attach: Callable[[int], str] | None = None, net_w: int = -1) -> Launched:
    attached = _Attacher(attach, net_w)
    try:
        init_pid, outcome = _read_outcome(status_r, attached)
    except BaseException:
        os.close(status_r)
        raise
    finally:
        attached.close()
    if attached.error is not None and (outcome is None or outcome.startswith("fail")):
        os.close(status_r)
        raise attached.error
    if outcome is None or outcome.startswith("fail"):
        os.close(status_r)
        if outcome is None:
            raise StartFailed("the launcher exited before the program started (see the daemon's log)")
        raise describe_failure(outcome)
    return Launched(init_pid=init_pid or 0, status_fd=status_r)


class _Attacher:
    """Calls LaunchPlan.attach once the init's pid is known and hands its line to the init (or "fail")."""

    def __init__(self, attach: Callable[[int], str] | None, net_w: int):
        self.attach, self.net_w = attach, net_w
        self.error: BaseException | None = None

    def init_known(self, pid: int) -> None:
        if self.attach is None or self.net_w < 0:
            return
        try:
            line = self.attach(pid)
        except Exception as exc:  # the init is told, fails its start, and the caller gets this error
            self.error = exc
            line = f"fail {exc}".replace("\n", " ")
        try:
            os.write(self.net_w, line.encode() + b"\n")
        except OSError:
            pass  # the init is gone already: its status says why
        self.close()

    def close(self) -> None:
        _close(self.net_w)
        self.net_w = -1


def _read_outcome(fd: int, attached: _Attacher | None = None) -> tuple[int | None, str | None]:
    """Read status lines until both the init's PID and the outcome ('ok' or 'fail ...') are known, or EOF.
    The two come from different processes (launcher and init), in either order; a job to attach (bridge
    mode) has its veth put in place as soon as the pid is known, before the init can report."""
    buffer = b""
    init_pid: int | None = None
    outcome: str | None = None
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            text = line.decode(errors="replace")
            if text.startswith("pid "):
                init_pid = int(text[4:])
                if attached is not None:
                    attached.init_known(init_pid)
            elif text == "ok" or text.startswith("fail"):
                outcome = outcome or text
        if outcome is not None and init_pid is not None:
            return init_pid, outcome
        remaining = deadline - time.monotonic()
        poller = select.poll()  # not select(): the daemon holds over 1024 fds with many jobs running
        poller.register(fd, select.POLLIN)
        if remaining <= 0 or not poller.poll(remaining * 1000):
            raise InternalError(f"launcher did not report within {START_TIMEOUT:.0f}s")
        chunk = os.read(fd, 4096)
        if not chunk:
            return init_pid, outcome
        buffer += chunk
