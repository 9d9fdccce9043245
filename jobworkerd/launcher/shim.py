"""C, the job's init and shim (PID 1 of its namespaces, root, in the daemon's cgroup), and G, the program's
process (PID 2, in the job's cgroup). __main__.py draws the whole protocol; this file is what runs
after L has forked C.

C owns everything of the job that the job must not touch: the write end of the recorded output (the
program only ever has the write end of a pipe), the output cap, the exit file and the status pipe.
"""

import fcntl
import os
import select
import struct

import _signal
from netcfg import bring_up_loopback, configure, read_assignment
from sandbox import (
    Sandbox, bind_run_files, build_filesystem, confine, drop_bounding_set, install_seccomp, mount_cgroup_view,
    open_bind_sources,
)
from syscalls import StepError, hide, lower_soft_nofile, set_hostname

F_SETPIPE_SZ, FIONREAD = 1031, 0x541B
OUTPUT_PIPE_SIZE = 1 << 20  # the kernel's default pipe-max-size: fewer wake-ups per MiB copied
COPY_CHUNK = 256 << 10  # one read: large enough to amortise the call, small enough to stay in cache
EXIT_FILE_WIDTH = 32  # "<raw wait status> [capped|full]", padded with blanks
JOB_NOFILE_SOFT = 1024
ENOSPC = 28


def open_host_files(spec):
    """L opens, before it leaves the host's mount namespace, the files C and G write: the exit file and
    the job cgroup's join files. Opened there, they are writers on the host's mounts, not on the job's
    copies, which can then be made read-only (a mount with a writer cannot), and the job's view of
    /sys/fs/cgroup can replace the host's. Preallocated so that a full output budget (this job's own
    output may fill it) cannot keep the status from being written; blanks: no status yet."""
    exit_fd = os.open(spec["exit_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.write(exit_fd, b" " * EXIT_FILE_WIDTH)
    return exit_fd, _open_cgroup_files(spec["join"])


def _open_cgroup_files(files):
    opened = []
    for path in files:
        try:
            opened.append((path, os.open(path, os.O_WRONLY | os.O_CLOEXEC)))
        except OSError as exc:
            raise StepError("join-cgroup", exc.errno, path.decode(errors="replace")) from None
    return opened


def join_cgroup(opened):
    # G joins, not C: the init and the output it writes (tmpfs pages are charged to the writer's memory
    # cgroup) must not count against the job's own limits, as conmon and containerd-shim sit outside
    # their containers' cgroups. Before exec, so the program is accounted from its first page.
    for path, fd in opened:
        try:
            os.write(fd, b"0")
            os.close(fd)
        except OSError as exc:
            raise StepError("join-cgroup", exc.errno, path.decode(errors="replace")) from None


def exec_program(spec, box, cgroup_files, output_w, exec_w):
    """G: stdout and stderr onto the output pipe, into the job's cgroup and its view, drop to the run-as
    user and the sandbox's privileges, chdir, exec. Never returns; failures go to the exec pipe
    (close-on-exec: EOF there means exec happened)."""
    step, target = "setgroups", b""
    try:
        # Python ignores SIGPIPE and SIGXFSZ at start-up, and ignored signals survive execve: give the
        # program the defaults it expects (e.g. `yes | head` ends by SIGPIPE). SIGCHLD is the init's.
        _signal.set_wakeup_fd(-1)
        for signum in (_signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGCHLD):
            _signal.signal(signum, _signal.SIG_DFL)
        os.dup2(output_w, 1)
        os.dup2(output_w, 2)
        join_cgroup(cgroup_files)
        mount_cgroup_view(box)
        lower_soft_nofile(JOB_NOFILE_SOFT)
        os.setgroups([int(g) for g in spec["group"]])
        step = "setgid"
        os.setgid(int(spec["gid"]))
        drop_bounding_set(box)
        step = "setuid"
        os.setuid(int(spec["uid"]))
        confine(box)
        step, target = "chdir", spec["cwd"]
        os.chdir(target)
        env = dict(e.partition(b"=")[::2] for e in spec["env"])
        install_seccomp(box)
        step, target = "exec", spec["program"]
        os.execve(target, spec["arg"], env)
    except StepError as exc:
        os.write(exec_w, f"fail {exc.step} {exc.err} {exc.detail}".encode(errors="replace"))
    except OSError as exc:
        detail = target.decode(errors="replace") if target else ""
        os.write(exec_w, f"fail {step} {exc.errno} {detail}".encode(errors="replace"))
    finally:
        os._exit(127)


def _on_sigchld(_signum, _frame):
    pass  # only wakes the loop through the wakeup fd; the loop reaps


class Output:
    """Copies the output pipe into the recorded output file at exact offsets, up to the cap."""

    def __init__(self, pipe_r, file_fd, cap):
        self.pipe_r, self.file_fd, self.cap = pipe_r, file_fd, cap
        self.written = 0
        self.verdict = ""  # "capped": more than the cap was written; "full": the output budget ran out
        self.open = True  # False once the pipe is at EOF or no more is copied
        self._buffer = bytearray(COPY_CHUNK)
        self._view = memoryview(self._buffer)

    def pending(self):
        return struct.unpack("i", fcntl.ioctl(self.pipe_r, FIONREAD, b"\0\0\0\0"))[0]

    def copy_available(self):
        """One read from the pipe and its write into the file. False when the pipe had nothing to give."""
        room = self.cap - self.written
        if room <= 0:
            if self.pending():  # a byte past the cap: the job is over
                self.verdict, self.open = "capped", False
            return False
        view = self._view[: min(COPY_CHUNK, room)]
        try:
            n = os.readv(self.pipe_r, [view])
        except BlockingIOError:
            return False
        if n == 0:
            self.open = False
            return False
        done = 0
        try:
            while done < n:
                done += os.pwrite(self.file_fd, view[done:n], self.written + done)
        except OSError as exc:
            if exc.errno != ENOSPC:
                raise
            self.verdict, self.open = "full", False
        finally:
            self.written += done
        return True


def supervise(program, output, wake_r):
    """The shim's loop: copy output as it comes; reap every child (orphans included) when SIGCHLD says so.
    When the program has ended, or the output is over its cap or budget, end every process of the job
    (kill -1 from PID 1 reaches all of its namespace and nothing else), copy what is left in the pipe, and
    return the program's raw wait status."""
    poller = select.poll()
    poller.register(output.pipe_r, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    status = None
    killed = False
    while True:
        reap = False
        for fd, events in poller.poll():
            if fd == wake_r:
                os.read(wake_r, 256)
                reap = True
            elif events & select.POLLIN and output.copy_available():
                continue
            elif not output.open or not events & select.POLLIN:  # POLLHUP: every writer is gone
                output.open = False
                poller.unregister(output.pipe_r)
        if output.verdict and not killed:
            killed = kill_the_rest()
        while reap:
            try:
                pid, raw = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # nothing left in the namespace
                return drain(output, status)
            if pid == 0:
                break
            if pid == program:
                status = raw
                if not killed:
                    killed = kill_the_rest()


def kill_the_rest():
    """SIGKILL to every process of the job's PID namespace but the init (kill -1 from its PID 1)."""
    try:
        os.kill(-1, 9)
    except ProcessLookupError:
        pass  # nothing else is left
    return True


def drain(output, status):
    """Everything in the job is dead: copy what is still in the pipe, without waiting for an EOF that a
    write end passed out of the job could withhold."""
    os.set_blocking(output.pipe_r, False)
    while output.open and output.copy_available():
        pass
    return status if status is not None else 9


def run_init(spec, status_fd, output_fd, exit_fd, cgroup_files, net_fd, report):
    """C: own session and hostname, lo, the daemon's paths hidden, the sandbox's filesystem, the output
    pipe; fork G; report whether the program started; supervise; write the exit file. Returns the init's
    exit code."""
    os.setsid()  # kill(0), killpg(0) and setpriority(PRIO_PGRP, 0) from the job now reach only the job
    box = Sandbox(spec)
    if box.hostname:
        set_hostname(box.hostname)
    if spec.get("net") != b"host":
        bring_up_loopback()
    if net_fd >= 0:  # bridge: the daemon puts a veth end in this namespace, then says how to set it up
        configure(*read_assignment(net_fd))
    sources = open_bind_sources(box)
    bind_run_files(box)
    for path in spec["hide"]:
        hide(path)
    build_filesystem(box, sources)
    os.set_inheritable(status_fd, False)  # the program must not hold it: its EOF means "init has exited"
    os.set_inheritable(output_fd, False)
    output_r, output_w = os.pipe()  # both close-on-exec; G dups the write end onto 1 and 2
    try:
        fcntl.fcntl(output_w, F_SETPIPE_SZ, OUTPUT_PIPE_SIZE)
    except OSError:
        pass  # a smaller pipe only costs more wake-ups
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    _signal.signal(_signal.SIGCHLD, _on_sigchld)  # before the fork, so no child's end goes unnoticed
    exec_r, exec_w = os.pipe()
    program = os.fork()
    if program == 0:
        exec_program(spec, box, cgroup_files, output_w, exec_w)
    os.close(exec_w)
    os.close(output_w)
    for _path, fd in cgroup_files:
        os.close(fd)
    outcome = os.read(exec_r, 4096).decode(errors="replace")
    os.close(exec_r)
    report(status_fd, outcome or "ok")
    for fd in (0, 1, 2):  # the init keeps no handle on the daemon's or the job's stdio
        os.close(fd)
    output = Output(output_r, output_fd, int(spec["cap"]))
    status = supervise(program, output, wake_r)
    verdict = f" {output.verdict}" if output.verdict else ""
    os.pwrite(exit_fd, f"{status}{verdict}".encode().ljust(EXIT_FILE_WIDTH), 0)
    return os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
