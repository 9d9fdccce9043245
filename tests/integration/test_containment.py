"""Containment (issue 9), through the real jobctl against a real daemon, as user-role clients (and an admin
where the issue says so): a job reaches nothing outside itself.

- process groups and sessions: kill(0), killpg, kill(-1), setpriority(PRIO_PGRP|PRIO_USER) and
  ioprio_set(IOPRIO_WHO_PGRP) from one job reach neither another job (same run-as uid) nor the daemon;
- the recorded output: the job holds only a pipe, so ftruncate, lseek and fallocate cannot change what was
  recorded or hold run-directory space;
- the run directory: root's alone, and hidden inside every job, root jobs included;
- the output budget: a tmpfs of its own, so filling it refuses new starts and caps running jobs while the
  host's /run keeps its space and recorded output stays.
"""

from __future__ import annotations

import ctypes
import os
import stat
import subprocess
from pathlib import Path

import grpc
import pytest
from faultkit import forkserver_of, marked_processes, new_marker, rpc_error, small_tmpfs, start, wait_until
from faultkit import wait_job as wait_job_rpc

from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.root
R = pb.TerminationReason
IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP, IOPRIO_CLASS_IDLE = 1, 2, 3
SYS_IOPRIO_SET, SYS_IOPRIO_GET = 251, 252  # x86_64
_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    from daemon_harness import Daemon

    daemon = Daemon(tmp_path_factory.mktemp("contained"), {"limits": {"output_cap": "1M"}}).start()
    yield daemon
    daemon.stop()


def run(d, script: str, who: str = "alice", role: str = "user") -> subprocess.CompletedProcess:
    return d.jobctl("run", "--", "sh", "-c", script, name=who, role=role)


def detached(d, *argv: str, who: str = "bob", role: str = "user") -> str:
    done = d.jobctl("run", "-d", "--", *argv, name=who, role=role)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


def job_state(d, job_id: str, who: str = "bob", role: str = "user") -> str:
    done = d.jobctl("status", "-o", "json", job_id, name=who, role=role)
    assert done.returncode == 0, done.stderr
    import json

    return json.loads(done.stdout)["state"]


def nice_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def ioprio_of(pid: int) -> int:
    return _libc.syscall(SYS_IOPRIO_GET, IOPRIO_WHO_PROCESS, pid)


@pytest.fixture
def victim(d):
    """Another user's running job (each user's jobs run as a dynamic uid of its own), and the daemon's processes."""
    marker = new_marker()
    job_id = detached(d, "sleep", f"1000.{marker}")
    (pid,) = wait_until(lambda: list(marked_processes(marker)), "the victim job's sleep")
    yield job_id, pid
    d.jobctl("stop", "--grace", "0", job_id, name="bob", role="user")


def untouched(d, job_id: str, pid: int, nice: int = 0, ioprio: int | None = None) -> None:
    assert d.proc.poll() is None, "the daemon has exited"
    assert job_state(d, job_id) == "running"
    assert pid in [p for p in (int(x) for x in os.listdir("/proc") if x.isdigit())]
    for process in (pid, d.pid, forkserver_of(d)):
        assert nice_of(process) == nice, f"process {process} was reniced"
        if ioprio is not None:
            assert ioprio_of(process) == ioprio, f"process {process} got another io priority"


# -- process groups and sessions -------------------------------------------------------------------------------

SIGNAL_ATTACKS = {  # each also kills the attacker itself, but for kill -1, which spares its caller
    "kill-0": ("kill -KILL 0", b""),
    "killpg": ("python3 -c 'import os, signal; os.killpg(os.getpgid(0), signal.SIGKILL)'", b""),
    "kill-minus-1": ("kill -KILL -1 2>/dev/null", b"survived\n"),
}


@pytest.mark.parametrize("attack,output", SIGNAL_ATTACKS.values(), ids=SIGNAL_ATTACKS.keys())
def test_signals_to_the_process_group_or_everyone_reach_only_the_job(d, victim, attack, output):
    job_id, pid = victim
    done = run(d, f"{attack}; echo survived")
    assert done.stdout == output, done
    untouched(d, job_id, pid)


# Each changes the priority of the attacker's own process group or user, then prints its own: the call did act
# (on the job itself; as its non-root uid it fails with EPERM for the job's root-owned init, which is in that group).
PRIORITY_ATTACKS = {
    "setpriority-pgrp": ("os.setpriority(os.PRIO_PGRP, 0, 19)", b"19 False\n"),
    "setpriority-user": ("os.setpriority(os.PRIO_USER, os.getuid(), 19)", b"19 False\n"),
    "ioprio-pgrp": (f"libc.syscall({SYS_IOPRIO_SET}, {IOPRIO_WHO_PGRP}, 0, {IOPRIO_CLASS_IDLE << 13})", b"0 True\n"),
}
SHOW_OWN_PRIORITY = (f"print(os.getpriority(os.PRIO_PROCESS, 0), libc.syscall({SYS_IOPRIO_GET}, "
                     f"{IOPRIO_WHO_PROCESS}, 0) == {IOPRIO_CLASS_IDLE << 13})")


@pytest.mark.parametrize("attack,expected", PRIORITY_ATTACKS.values(), ids=PRIORITY_ATTACKS.keys())
def test_priorities_of_the_process_group_or_the_user_reach_only_the_job(d, victim, attack, expected):
    job_id, pid = victim
    before = ioprio_of(pid)
    program = f"import ctypes, os\nlibc = ctypes.CDLL(None)\ntry:\n    {attack}\nexcept OSError:\n    pass\n{SHOW_OWN_PRIORITY}"
    done = d.jobctl("run", "--", "python3", "-c", program, name="alice", role="user")
    assert done.stdout == expected, done
    untouched(d, job_id, pid, ioprio=before)


def test_an_admins_root_job_cannot_stop_or_renice_the_daemon(d, victim):
    job_id, pid = victim
    done = run(d, "renice -n 10 -g 0 >/dev/null; kill -TERM 0; sleep 1; echo after", who="root", role="admin")
    assert done.returncode == 143, done  # SIGTERM reached the job's own shell
    untouched(d, job_id, pid)


def test_a_job_has_its_own_session_and_no_controlling_terminal(d):
    done = run(d, "ps -o pid=,pgid=,sid= -p $$; true </dev/tty 2>/dev/null || echo no-tty")
    fields = done.stdout.split(b"\n")[0].split()
    assert fields == [b"2", b"1", b"1"], done  # the program is PID 2 in the session and group of its init (1)
    assert b"no-tty" in done.stdout, done


def test_a_job_holds_only_stdin_from_dev_null_and_the_output_pipe(d):
    done = run(d, "cat; for fd in 0 1 2; do readlink /proc/$$/fd/$fd; done; ls /proc/$$/fd")
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "/dev/null" and lines[1].startswith("pipe:") and lines[2] == lines[1], lines
    assert lines[3:] == ["0", "1", "2"], lines  # nothing else inherited: not the output file, no daemon fd


# -- the recorded output -----------------------------------------------------------------------------------------

TAMPER = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
os.write(1, b"a" * 1000)
def attempt(name, call):
    try:
        result = call()
        if result not in (None, 0):
            raise OSError(ctypes.get_errno(), "")
        os.write(1, f"\n{name}: done".encode())
    except OSError as exc:
        os.write(1, f"\n{name}: {errno.errorcode.get(exc.errno, exc.errno)}".encode())
attempt("ftruncate", lambda: os.ftruncate(1, 10))
attempt("lseek", lambda: os.lseek(1, 0, os.SEEK_SET))
attempt("pwrite", lambda: os.pwrite(1, b"XX", 0) and None)
attempt("fallocate", lambda: libc.fallocate(1, 0, 0, ctypes.c_long(200 << 20)))
attempt("fallocate-keep-size", lambda: libc.fallocate(1, 1, 0, ctypes.c_long(200 << 20)))
os.write(1, b"\nend\n")
"""


def test_the_job_cannot_truncate_seek_rewrite_or_preallocate_its_recorded_output(d):
    job_id = detached(d, "python3", "-c", TAMPER, who="alice")
    assert d.jobctl("wait", job_id, name="alice", role="user").returncode == 0
    recorded = d.jobctl("logs", job_id, name="alice", role="user").stdout
    lines = recorded.split(b"\n")
    assert lines[0] == b"a" * 1000
    results = dict(line.decode().split(": ") for line in lines[1:-2])
    assert results == {"ftruncate": "EINVAL", "lseek": "ESPIPE", "pwrite": "ESPIPE", "fallocate": "ESPIPE",
                       "fallocate-keep-size": "ESPIPE"}, results
    output = Path(d.run_dir, "jobs", job_id, "output")
    assert output.read_bytes() == recorded  # recorded exactly as written, in order
    assert output.stat().st_blocks * 512 <= 2 * 4096  # no space held beyond the bytes written


# -- the run directory -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("who,role", [("alice", "user"), ("root", "admin")], ids=["user-job", "admin-root-job"])
def test_no_job_can_list_or_read_the_run_or_state_directory(d, who, role):
    secret = new_marker()
    other = detached(d, "sh", "-c", f"echo {secret}; sleep 1000.{secret}", who="bob")
    wait_until(lambda: secret.encode() in Path(d.run_dir, "jobs", other, "output").read_bytes(), "bob's output")
    jobs, state = Path(d.run_dir, "jobs"), Path(d.dir, "state")
    done = run(d, f"ls -A {jobs} 2>/dev/null | wc -l; cat {jobs}/{other}/output 2>/dev/null; echo read $?; "
                  f"ls -A {state} 2>/dev/null | wc -l; cat {state}/* 2>/dev/null | wc -c", who=who, role=role)
    try:
        assert done.stdout.split() == [b"0", b"read", b"1", b"0", b"0"], done.stdout
    finally:
        d.jobctl("stop", "--grace", "0", other, name="bob", role="user")


def test_the_run_directory_tree_is_root_only(d):
    job_id = detached(d, "echo", "hi", who="alice")
    assert d.jobctl("wait", job_id, name="alice", role="user").returncode == 0
    for path, mode in [(d.run_dir, 0o700), (Path(d.run_dir, "jobs"), 0o700), (Path(d.run_dir, "jobs", job_id), 0o700),
                       (Path(d.run_dir, "jobs", job_id, "output"), 0o600),
                       (Path(d.run_dir, "jobs", job_id, "exit"), 0o600)]:
        info = os.stat(path)
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (mode, 0), path


# -- the output budget -------------------------------------------------------------------------------------------


@pytest.fixture
def host_run(tmp_path):
    """A small tmpfs standing for the host's /run (4M), holding the daemon's run directory."""
    with small_tmpfs(tmp_path / "host-run") as mount_point:
        yield mount_point


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_filling_the_output_budget_refuses_starts_caps_running_jobs_and_spares_the_host(daemon_factory, host_run):
    # The budget (8M) is larger than the filesystem the run directory is on (4M): output lands on the
    # daemon's own tmpfs, or the host's would fill.
    d = daemon_factory({"run_dir": str(host_run / "jobworkerd"),
                        "limits": {"output_cap": "3M", "output_total": "8M"}}).start()
    jobs = host_run / "jobworkerd" / "jobs"
    try:
        stub = d.stub("alice", "user")
        host_free = free_bytes(host_run)
        kept = []
        for n in range(2):
            job = start(stub, "sh", "-c", f"head -c 3000000 /dev/zero | tr '\\0' '{n}'")
            assert wait_job_rpc(stub, job.id).reason == R.TERMINATION_REASON_EXITED
            kept.append(job.id)
        flood = start(stub, "sh", "-c", "yes flood")
        ended = wait_job_rpc(stub, flood.id)
        assert ended.reason == R.TERMINATION_REASON_OUTPUT_CAPPED, ended
        assert "limits.output_total" in ended.message and "budget" in ended.message, ended.message
        flooded = (jobs / flood.id / "output").read_bytes()
        assert 0 < len(flooded) < 3000000 and flooded == b"flood\n" * (len(flooded) // 6) + b"flood\n"[: len(flooded) % 6]
        assert ended.usage.output_bytes == len(flooded)

        error = rpc_error(lambda: start(stub, "true"))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "output budget" in error.details() and "limits.output_total" in error.details(), error.details()

        for n, job_id in enumerate(kept):  # nothing already recorded is lost
            assert (jobs / job_id / "output").read_bytes() == str(n).encode() * 3000000
        assert free_bytes(host_run) >= host_free - (64 << 10), "the host's /run lost space"
        assert not marked_processes("flood")
    finally:
        d.stop()


def test_a_run_directory_that_is_a_mount_point_of_the_host_is_refused(daemon_factory, host_run):
    # The run directory is made root-only (0700): /run itself, /tmp or / would break the host.
    d = daemon_factory({"run_dir": str(host_run)})
    with pytest.raises(RuntimeError, match="is a mount point of the host; give jobworkerd a directory of its own"):
        d.start()
    assert stat.S_IMODE(os.stat(host_run).st_mode) == 0o755
