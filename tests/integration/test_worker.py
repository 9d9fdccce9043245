"""The worker library on this host, as root: real cgroup v1 (hybrid host), real namespaces, through
JobManager directly (no daemon, no gRPC). Issue 2, item 8.

Every manager gets its own cgroup subtree (jobworkerd-test-<pid>) beneath this process's cgroups, and
every test checks afterwards that the subtree is gone from every hierarchy. Readiness is awaited
through the job's output, never by sleeping. The only timing bounds are the issue's correctness
bounds: a stop ends within grace + 1 s, and CPU use under a quota is within 30 % of the quota.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from faultkit import CGROUP_ROOT, V1_CONTROLLERS, own_cgroups, v1_usable

from jobworkerd.config import config_from_dict
from jobworkerd.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, StartFailed
from jobworkerd.sandbox.options import SandboxRequest
from jobworkerd.worker import JobManager, JobSpec, JobState, Limits, Reason
from jobworkerd.worker.output import aread_output, read_output

SUBTREE = f"jobworkerd-test-{os.getpid()}"
PYTHON = "/usr/bin/python3"  # the system interpreter, for job programs (not the test venv)
GRACE = 2.0
DEADLINE = 30.0  # for waits that only time out when something is broken


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: real cgroups, namespaces and run-as users"),
    pytest.mark.skipif(not v1_usable(), reason="needs cgroup v1 controllers mounted under /sys/fs/cgroup (hybrid host)"),
]


# -- helpers -------------------------------------------------------------------------------------------------


def subtree_dirs(subtree: str = SUBTREE) -> list[Path]:
    own = own_cgroups()
    return [CGROUP_ROOT / c / own.get(c, "/").lstrip("/") / subtree for c in V1_CONTROLLERS]


def leftover_cgroups(subtree: str = SUBTREE) -> list[str]:
    found = []
    for base in subtree_dirs(subtree):
        if base.exists():
            found += [str(base)] + [str(p) for p in base.rglob("*") if p.is_dir()]
    return found


def job_cgroup(controller: str, job_id: str, subtree: str = SUBTREE, group: str = "admin") -> Path:
    """jobs/<group>/<id>; JobManager.start puts jobs in the admin group unless told otherwise."""
    return CGROUP_ROOT / controller / own_cgroups().get(controller, "/").lstrip("/") / subtree / "jobs" / group / job_id


def make_config(tmp_path: Path, **overrides):
    data = {
        "state_dir": str(tmp_path / "state"),
        "run_dir": str(tmp_path / "run"),
        "cgroup": {"subtree": SUBTREE},
        "stop_grace": GRACE,
    }
    data.update(overrides)
    return config_from_dict(data)


def output_path(m: JobManager, job_id: str) -> Path:
    return Path(m.jobs_dir) / job_id / "output"


def output_of(m: JobManager, job_id: str) -> bytes:
    return output_path(m, job_id).read_bytes()


def wait_for_output(m: JobManager, job_id: str, marker: bytes, timeout: float = DEADLINE) -> bytes:
    """Poll the job's output file until it contains marker (readiness without sleeping blindly)."""
    deadline = time.monotonic() + timeout
    while True:
        data = output_of(m, job_id)
        if marker in data:
            return data
        record = m.status(job_id)
        if record.finished:
            pytest.fail(f"job ended before printing {marker!r}: {record}\noutput: {data!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"job did not print {marker!r} within {timeout}s; output: {data!r}")
        time.sleep(0.01)


def wait_finished(m: JobManager, job_id: str, timeout: float = DEADLINE):
    record = m.wait(job_id, timeout)
    assert record.finished, f"job {job_id} still {record.state.value} after {timeout}s"
    return record


def run(m: JobManager, *argv: str, **spec):
    record = m.start(JobSpec(argv[0], tuple(argv[1:]), **spec))
    return wait_finished(m, record.id)


def sh(m: JobManager, script: str, **spec):
    return run(m, "/bin/sh", "-c", script, **spec)


def unique_seconds() -> str:
    """A sleep duration nobody else uses, so its processes can be found on the host by command line."""
    return f"{100000 + secrets.randbelow(800000)}.{secrets.randbelow(1000):03d}"


def host_processes_with_arg(arg: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arg.encode() in argv:
            found.append(int(entry))
    return found


def wait_until(predicate, timeout: float = DEADLINE, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def make_manager(tmp_path):
    """Managers on this test's state and run directories; all closed at the end, and then no cgroup of
    the subtree may be left in any hierarchy."""
    made: list[JobManager] = []

    def make(store=None, **overrides) -> JobManager:
        m = JobManager(make_config(tmp_path, **overrides), store=store).open()
        made.append(m)
        return m

    yield make
    for m in made:
        if not m._closing:
            m.close()
    assert leftover_cgroups() == [], "job cgroups left behind"


@pytest.fixture
def manager(make_manager) -> JobManager:
    return make_manager()


@pytest.fixture
def shared_dir():
    """A directory every user can traverse (tmp_path's parents are 0700, so nobody could not reach it)."""
    path = Path(tempfile.mkdtemp(prefix="jobworkerd-test-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- namespaces ---------------------------------------------------------------------------------------------


def test_job_sees_only_its_own_processes(manager):
    # The glob is expanded by the shell itself, so no helper process shows up in it.
    record = sh(manager, 'echo "pid=$$ ppid=$PPID"; cd /proc && echo procs: [0-9]*; tr "\\0" " " < /proc/1/cmdline')
    assert record.reason is Reason.EXITED and record.exit_code == 0
    out = output_of(manager, record.id).decode()
    # PID 1 is the job's init; the program is its only child, PID 2, and nothing else is visible.
    assert "pid=2 ppid=1\n" in out
    assert "procs: 1 2\n" in out
    assert "launcher" in out  # /proc/1 is the job's init, not the host's
    assert record.pid and record.pid > 2  # the host sees the init under another PID


def test_proc_inside_is_the_jobs_own_while_it_runs(manager):
    arg = unique_seconds()
    record = manager.start(JobSpec("/bin/sh", ("-c", f"sleep {arg} & sleep {arg} & echo ready; wait")))
    wait_for_output(manager, record.id, b"ready")
    wait_until(lambda: len(host_processes_with_arg(arg)) == 2, what="both sleeps to run")  # forked, then exec'd
    inside = manager.start(JobSpec("/bin/sh", ("-c", "cd /proc && echo [0-9]*")))
    wait_finished(manager, inside.id)
    assert output_of(manager, inside.id) == b"1 2\n"  # the other job's sleeps are invisible here
    manager.stop(record.id, GRACE)


def test_only_loopback_exists_and_is_up(manager):
    script = (
        "ip -o link show; echo ---; cat /proc/net/dev; echo ---; "
        f"{PYTHON} -I -S -c \"import socket; s = socket.create_server(('127.0.0.1', 0)); "
        "c = socket.create_connection(s.getsockname()); a, _ = s.accept(); c.sendall(b'ping'); "
        "print('loopback', a.recv(4).decode())\""
    )
    if not shutil.which("ip"):
        pytest.skip("iproute2 (ip) is not installed")
    record = sh(manager, script)
    assert record.exit_code == 0, output_of(manager, record.id)
    links, netdev, rest = output_of(manager, record.id).decode().split("---\n")
    link_lines = links.strip().splitlines()
    assert len(link_lines) == 1, links
    assert re.match(r"^1: lo: <[^>]*\bUP\b[^>]*>", link_lines[0]), link_lines[0]
    interfaces = [line.split(":")[0].strip() for line in netdev.strip().splitlines()[2:]]
    assert interfaces == ["lo"]
    assert "loopback ping" in rest


def test_a_mount_made_inside_is_invisible_outside(manager, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    arg = unique_seconds()
    # A privileged job (the sandbox denies others mount): its mount namespace is still its own.
    record = manager.start(
        JobSpec("/bin/sh", ("-c", f"mount -t tmpfs jobworkerd-test {mnt} && touch {mnt}/inside && "
                                  f"grep -c ' {mnt} ' /proc/self/mountinfo && echo mounted && sleep {arg}"),
                sandbox=SandboxRequest(profile="privileged"))
    )
    out = wait_for_output(manager, record.id, b"mounted")
    assert out.startswith(b"1\n")  # mounted inside
    host_mounts = Path("/proc/self/mountinfo").read_text()
    assert str(mnt) not in host_mounts
    assert not (mnt / "inside").exists()
    assert list(mnt.iterdir()) == []
    manager.stop(record.id, GRACE)
    assert str(mnt) not in Path("/proc/self/mountinfo").read_text()


# -- limits -------------------------------------------------------------------------------------------------


def test_200mb_under_a_64mb_limit_is_oom_killed(manager):
    record = run(
        manager, PYTHON, "-I", "-S", "-c", "x = b'\\x01' * (200 << 20); print('survived')",
        limits=Limits(memory=64 << 20),
    )
    assert record.reason is Reason.OOM_KILLED, record
    assert record.signal == 9 and record.exit_code is None
    assert record.usage.oom_kills >= 1
    assert 0 < record.usage.memory_peak_bytes <= 64 << 20
    assert "OOM" in record.message and str(64 << 20) in record.message
    assert b"survived" not in output_of(manager, record.id)


def test_memory_limit_is_written_to_the_job_cgroup(manager):
    arg = unique_seconds()
    record = manager.start(JobSpec("/bin/sleep", (arg,), limits=Limits(memory=64 << 20, cpu=0.5, pids=20)))
    assert (job_cgroup("memory", record.id) / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
    memsw = job_cgroup("memory", record.id) / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        assert memsw.read_text().strip() == str(64 << 20)
    assert (job_cgroup("cpu", record.id) / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (job_cgroup("cpu", record.id) / "cpu.cfs_period_us").read_text().strip() == "100000"
    assert (job_cgroup("pids", record.id) / "pids.max").read_text().strip() == "20"
    # The program (the init's child) and all it starts are in the job's node of every hierarchy; the init,
    # which writes the output, is not (its tmpfs pages must not count against the job's memory limit).
    init = record.pid
    (program,) = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    for controller in V1_CONTROLLERS:
        members = (job_cgroup(controller, record.id) / "cgroup.procs").read_text().split()
        assert members == [program] and str(init) not in members, (controller, members)
    manager.stop(record.id, GRACE)


def host_idle_seconds() -> float:
    """Idle (and iowait) CPU time of the whole host so far, summed over all CPUs."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def test_without_limits_a_job_gets_the_configured_default_pids_limit_only(manager):
    arg = unique_seconds()
    record = manager.start(JobSpec("/bin/sleep", (arg,)))
    assert record.limits == Limits(pids=1024)
    assert (job_cgroup("pids", record.id) / "pids.max").read_text().strip() == "1024"
    assert (job_cgroup("cpu", record.id) / "cpu.cfs_quota_us").read_text().strip() == "-1"
    manager.stop(record.id, GRACE)


def test_a_busy_loop_under_cpu_0_2_for_3s_uses_about_0_6s(manager):
    loop = "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end: pass\n"
    idle_before = host_idle_seconds()
    record = run(manager, PYTHON, "-I", "-S", "-c", loop, limits=Limits(cpu=0.2))
    idle = host_idle_seconds() - idle_before
    assert record.reason is Reason.EXITED and record.exit_code == 0
    used = record.usage.cpu_seconds
    assert used <= 0.6 * 1.3, f"the quota was not enforced: {record.usage}"
    if used < 0.6 * 0.7 and idle < 1.0:
        # A busy loop always wants the CPU; if it got less than its quota while no CPU was idle, other
        # work on this host took it (the VM tier runs beside us on 2 cores): the quota is not at fault.
        pytest.skip(f"host CPU saturated by other work during the test ({idle:.2f} idle CPU-seconds); "
                    f"the job got {used:.2f}s of its 0.6s quota")
    assert used == pytest.approx(0.6, rel=0.30), f"{record.usage}; host idle {idle:.2f} CPU-seconds"


def test_a_fork_bomb_under_pids_50_is_contained(manager):
    bomb = (
        "import os, time\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        time.sleep(0.02)\n"
    )
    record = manager.start(JobSpec(PYTHON, ("-I", "-S", "-c", bomb), limits=Limits(pids=50)))
    wait_for_output(manager, record.id, b"ready")
    pids_dir = job_cgroup("pids", record.id)
    assert (pids_dir / "pids.max").read_text().strip() == "50"

    def fork_failures() -> int:
        return int((pids_dir / "pids.events").read_text().split()[1])

    # Sample the job's task count until the bomb has hit the limit for a while.
    most = 0
    deadline = time.monotonic() + DEADLINE
    samples = 0
    while samples < 50 or fork_failures() < 100:
        most = max(most, int((pids_dir / "pids.current").read_text()), len((pids_dir / "tasks").read_text().split()))
        samples += 1
        assert time.monotonic() < deadline, "the fork bomb never reached the limit"
        time.sleep(0.01)
    assert most <= 50
    assert fork_failures() > 0  # the kernel refused forks at the limit
    # The host is unharmed: it still forks and runs programs.
    assert subprocess.run(["/bin/true"], timeout=10).returncode == 0
    started = time.monotonic()
    final = manager.stop(record.id, GRACE)
    assert time.monotonic() - started <= GRACE + 1
    assert final.reason is Reason.STOPPED
    assert not pids_dir.exists()


def _dd_seconds(text: str) -> float:
    match = re.search(r"copied, ([0-9.]+) s", text)
    assert match, text
    return float(match.group(1))


def test_an_o_direct_write_under_io_write_bps_2m_is_throttled(manager, tmp_path):
    target = tmp_path / "ddfile"
    megabytes = 6
    limit = 2 << 20
    record = run(
        manager, "/bin/dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={megabytes}", "oflag=direct",
        directory=str(tmp_path), limits=Limits(io_write_bps=limit),
    )
    out = output_of(manager, record.id).decode()
    assert record.exit_code == 0, out
    assert target.stat().st_size == megabytes << 20
    # blkio accounted every byte to the job's cgroup on the throttled device ...
    assert record.usage.io_write_bytes >= megabytes << 20
    # ... and the elapsed rate is near the limit (a first bio may pass at once: allow one bio of burst).
    seconds = _dd_seconds(out)
    rate = (megabytes << 20) / seconds
    assert rate <= limit * 1.3, f"{rate / (1 << 20):.2f} MiB/s under a 2 MiB/s limit ({out.strip()})"
    assert seconds >= (megabytes - 1) * (1 << 20) / limit * 0.9


def test_the_blkio_throttle_is_written_for_the_disk_behind_the_directory(manager, tmp_path):
    arg = unique_seconds()
    record = manager.start(
        JobSpec("/bin/sleep", (arg,), directory=str(tmp_path), limits=Limits(io_write_bps=2 << 20, io_read_iops=500))
    )
    st = os.stat(tmp_path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    if Path(f"/sys/dev/block/{dev}/partition").exists():
        dev = Path(f"/sys/dev/block/{dev}/../dev").read_text().strip()
    blkio = job_cgroup("blkio", record.id)
    assert (blkio / "blkio.throttle.write_bps_device").read_text().strip() == f"{dev} {2 << 20}"
    assert (blkio / "blkio.throttle.read_iops_device").read_text().strip() == f"{dev} 500"
    manager.stop(record.id, GRACE)


# -- run-as ---------------------------------------------------------------------------------------------------


def test_nobody_cannot_write_a_root_owned_file(manager, shared_dir):
    target = shared_dir / "root-owned"
    target.write_text("original\n")
    target.chmod(0o644)
    record = sh(manager, f"id -u; id -G; echo pwned > {target}", user="nobody", directory=str(shared_dir))
    out = output_of(manager, record.id).decode()
    assert record.reason is Reason.EXITED
    assert record.exit_code != 0, out
    assert target.read_text() == "original\n"
    assert target.stat().st_uid == 0
    uid_line, groups_line = out.splitlines()[:2]
    assert uid_line == "65534"
    assert "0" not in groups_line.split()  # root's supplementary groups were dropped
    assert "Permission denied" in out


def test_nobody_can_write_where_nobody_may(manager, shared_dir):
    writable = shared_dir / "drop"
    writable.mkdir()
    writable.chmod(0o777)
    record = sh(manager, f"echo hello > {writable}/file", user="nobody", directory=str(writable))
    assert record.exit_code == 0, output_of(manager, record.id)
    assert (writable / "file").read_text() == "hello\n"
    assert (writable / "file").stat().st_uid == 65534


# -- start failures --------------------------------------------------------------------------------------------


def test_exec_of_a_non_executable_file_raises_start_failed_with_eacces(manager, tmp_path):
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(StartFailed) as info:
        manager.start(JobSpec(str(script), directory=str(tmp_path)))  # the job's directory: it sees the file
    error = info.value
    assert error.step == "exec" and error.errno == errno.EACCES
    assert str(script) in error.message and "EACCES" in error.message and "Permission denied" in error.message
    (failed,) = manager.list()
    assert failed.state is JobState.FINISHED and failed.reason is Reason.FAILED_TO_START
    assert str(script) in failed.message
    assert manager.backend.job_ids() == []  # its cgroup was removed at once


def test_exec_of_a_script_with_a_missing_interpreter_raises_start_failed_with_enoent(manager, tmp_path):
    script = tmp_path / "bad-interpreter.sh"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)
    with pytest.raises(StartFailed) as info:
        manager.start(JobSpec(str(script), directory=str(tmp_path)))  # the job's directory: it sees the file
    assert info.value.errno == errno.ENOENT and info.value.step == "exec"
    assert str(script) in info.value.message and "ENOENT" in info.value.message


def test_a_directory_the_user_cannot_enter_raises_start_failed(manager, shared_dir):
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(StartFailed) as info:
        manager.start(JobSpec("/bin/true", user="nobody", directory=str(private)))
    assert info.value.step == "chdir" and info.value.errno == errno.EACCES
    assert str(private) in info.value.message


def test_a_missing_program_is_refused_at_validation(manager, tmp_path):
    with pytest.raises(FailedPrecondition) as info:
        manager.start(JobSpec(str(tmp_path / "absent")))
    assert not isinstance(info.value, StartFailed)
    assert "does not exist" in info.value.message
    with pytest.raises(FailedPrecondition, match="not found in PATH"):
        manager.start(JobSpec("no-such-program-jobworkerd"))
    assert manager.list() == []  # nothing was created for it


def test_a_missing_directory_is_refused_at_validation(manager, tmp_path):
    with pytest.raises(InvalidArgument, match="does not exist or is not a directory"):
        manager.start(JobSpec("/bin/true", directory=str(tmp_path / "absent")))
    assert manager.list() == []


# -- stop -------------------------------------------------------------------------------------------------------


def _stop_and_check(manager: JobManager, record, arg: str, expect_signal: int | None = None):
    # "ready" may be printed before a forked child has exec'd its sleep: wait until one shows.
    wait_until(lambda: host_processes_with_arg(arg), what="the job's processes to run before the stop")
    started = time.monotonic()
    final = manager.stop(record.id, GRACE)
    elapsed = time.monotonic() - started
    assert elapsed <= GRACE + 1, f"stop took {elapsed:.2f}s with a grace of {GRACE}s"
    assert final.state is JobState.FINISHED and final.reason is Reason.STOPPED, final
    if expect_signal is not None:
        assert final.signal == expect_signal, final
    for controller in V1_CONTROLLERS:
        assert not job_cgroup(controller, record.id).exists()
    assert host_processes_with_arg(arg) == [], "processes of the job survived its stop"
    return final, elapsed


def test_stop_a_job_that_ignores_sigterm(manager):
    arg = unique_seconds()
    record = manager.start(JobSpec("/bin/sh", ("-c", f"trap '' TERM; echo ready; sleep {arg}; sleep {arg}")))
    wait_for_output(manager, record.id, b"ready")
    final, elapsed = _stop_and_check(manager, record, arg, expect_signal=9)
    assert elapsed >= GRACE * 0.9  # it waited out the grace period before killing


def test_stop_a_main_process_without_a_term_handler(manager):
    arg = unique_seconds()
    record = manager.start(JobSpec("/bin/sleep", (arg,)))
    wait_until(lambda: host_processes_with_arg(arg), what="sleep to run")
    _stop_and_check(manager, record, arg, expect_signal=15)


def test_stop_a_job_with_background_children(manager):
    arg = unique_seconds()
    record = manager.start(JobSpec("/bin/sh", ("-c", f"sleep {arg} & sleep {arg} & echo ready; wait")))
    wait_for_output(manager, record.id, b"ready")
    wait_until(lambda: len(host_processes_with_arg(arg)) == 2, what="both sleeps to run")  # forked, then exec'd
    _stop_and_check(manager, record, arg)


def test_stop_a_job_with_a_double_forked_daemon(manager):
    arg = unique_seconds()
    record = manager.start(
        JobSpec("/bin/sh", ("-c", f"setsid sh -c 'sleep {arg} &'; echo ready; sleep {arg}"))
    )
    wait_for_output(manager, record.id, b"ready")
    wait_until(lambda: len(host_processes_with_arg(arg)) == 2, what="the daemon and the main sleep")
    _stop_and_check(manager, record, arg)


def test_stop_a_job_with_a_double_forked_daemon_that_ignores_sigterm(manager):
    arg = unique_seconds()
    record = manager.start(
        JobSpec("/bin/sh", ("-c", f"setsid sh -c \"trap '' TERM; sleep {arg} &\"; echo ready; sleep {arg}"))
    )
    wait_for_output(manager, record.id, b"ready")
    wait_until(lambda: len(host_processes_with_arg(arg)) == 2, what="the daemon and the main sleep")
    _stop_and_check(manager, record, arg)


def test_when_the_program_exits_its_leftover_children_are_killed(manager, tmp_path):
    """The program is the init's only child; when it exits the init exits, and with it (PID 1 of the
    namespace) every process left in the job."""
    arg = unique_seconds()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    script = f"setsid sh -c 'sleep {arg} &'; sleep {arg} & echo ready; read go < {fifo}; exit 7"
    record = manager.start(JobSpec("/bin/sh", ("-c", script), directory=str(tmp_path)))  # where it sees the fifo
    wait_for_output(manager, record.id, b"ready")
    wait_until(lambda: len(host_processes_with_arg(arg)) == 2, what="the daemon and the background sleep")
    write_fifo(fifo, b"go\n")
    final = wait_finished(manager, record.id)
    assert (final.reason, final.exit_code) == (Reason.EXITED, 7)
    assert host_processes_with_arg(arg) == []
    assert not job_cgroup("pids", record.id).exists()


def test_stop_with_zero_grace_kills_at_once(manager):
    arg = unique_seconds()
    record = manager.start(JobSpec("/bin/sh", ("-c", f"trap '' TERM; echo ready; sleep {arg}")))
    wait_for_output(manager, record.id, b"ready")
    started = time.monotonic()
    final = manager.stop(record.id, 0)
    assert time.monotonic() - started <= 1
    assert final.reason is Reason.STOPPED and final.signal == 9


def test_stopping_a_finished_job_returns_its_record_unchanged(manager):
    record = sh(manager, "exit 4")
    assert manager.stop(record.id) == record


def test_stop_refuses_a_bad_grace(manager):
    record = sh(manager, "true")
    for grace in (-1, float("nan"), float("inf"), 1e9):
        with pytest.raises(InvalidArgument, match="grace"):
            manager.stop(record.id, grace)


def test_close_stops_running_jobs(make_manager):
    m = make_manager()
    arg = unique_seconds()
    record = m.start(JobSpec("/bin/sh", ("-c", f"sleep {arg} & echo ready; wait")))
    wait_for_output(m, record.id, b"ready")
    m.close()
    assert host_processes_with_arg(arg) == []
    assert leftover_cgroups() == []
    m2 = make_manager()
    final = m2.status(record.id)
    assert final.reason is Reason.STOPPED and "shutting down" in final.message


# -- output -----------------------------------------------------------------------------------------------------


LINES = 300
WRITER = (
    "import sys, time\n"
    f"for i in range({LINES}):\n"
    "    sys.stdout.write(f'line {i:05d} ' + 'x' * 100 + '\\n')\n"
    "    sys.stdout.flush()\n"
    "    time.sleep(0.002)\n"
)


def test_two_readers_of_a_running_job_get_identical_bytes_from_offset_0(manager):
    record = manager.start(JobSpec(PYTHON, ("-I", "-S", "-c", WRITER)))
    results: dict[str, bytes] = {}

    def follow(name):
        results[name] = b"".join(data for _, data in read_output(manager.output(record.id), 0))

    async def afollow():
        out = bytearray()
        async for _, data in aread_output(manager.output(record.id), 0):
            out += data
        return bytes(out)

    threads = [threading.Thread(target=follow, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    results["async"] = asyncio.run(asyncio.wait_for(afollow(), DEADLINE))
    for t in threads:
        t.join(DEADLINE)
        assert not t.is_alive()
    final = manager.status(record.id)
    assert final.finished and final.exit_code == 0
    assert results["a"] == results["b"] == results["async"] == output_of(manager, record.id)
    lines = results["a"].decode().splitlines()
    assert len(lines) == LINES and lines[-1].startswith(f"line {LINES - 1:05d} ")


def test_a_reader_from_a_middle_offset_and_after_the_end(manager):
    record = sh(manager, "printf 0123456789")
    assert b"".join(d for _, d in read_output(manager.output(record.id), 4)) == b"456789"
    assert list(read_output(manager.output(record.id), 10)) == []


def test_stderr_and_stdout_share_one_file_in_order(manager):
    record = sh(manager, "echo one; echo two >&2; echo three")
    assert output_of(manager, record.id) == b"one\ntwo\nthree\n"


def test_binary_output_is_unchanged(manager):
    record = run(manager, PYTHON, "-I", "-S", "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)) * 4)")
    assert output_of(manager, record.id) == bytes(range(256)) * 4
    assert record.usage.output_bytes == 1024


def test_output_over_the_cap_ends_the_job_as_output_capped(make_manager):
    m = make_manager(limits={"output_cap": "64K"})
    record = m.start(JobSpec("/usr/bin/yes", ("jobworkerd",)))
    final = wait_finished(m, record.id)
    assert final.reason is Reason.OUTPUT_CAPPED, final
    assert os.path.getsize(output_path(m, record.id)) == 64 << 10
    assert final.usage.output_bytes == 64 << 10
    assert "65536" in final.message
    data = b"".join(d for _, d in read_output(m.output(record.id)))
    assert len(data) == 64 << 10 and set(data.split(b"\n")[:-1]) == {b"jobworkerd"}


def test_output_of_exactly_the_cap_is_not_capped(make_manager):
    m = make_manager(limits={"output_cap": "64K"})
    record = run(m, "/usr/bin/head", "-c", "65536", "/dev/zero")
    assert record.reason is Reason.EXITED and record.exit_code == 0
    assert os.path.getsize(output_path(m, record.id)) == 64 << 10


def test_a_job_that_closes_its_stdout_still_finishes_normally(manager):
    record = sh(manager, "echo before; exec >&- 2>&-; sleep 0.2; exit 0")
    assert record.reason is Reason.EXITED and record.exit_code == 0
    assert output_of(manager, record.id) == b"before\n"


# -- exit status, usage, status and list --------------------------------------------------------------------------


def test_exit_code_is_reported(manager):
    record = sh(manager, "exit 3")
    assert (record.reason, record.exit_code, record.signal) == (Reason.EXITED, 3, None)
    assert record.started_at and record.finished_at and record.created_at <= record.started_at <= record.finished_at


def test_a_signal_is_reported(manager):
    record = sh(manager, "kill -KILL $$")
    assert (record.reason, record.exit_code, record.signal) == (Reason.EXITED, None, 9)
    record = sh(manager, "kill -TERM $$")
    assert (record.reason, record.exit_code, record.signal) == (Reason.EXITED, None, 15)


def test_usage_is_recorded(manager):
    work = "x = b'\\x01' * (32 << 20)\ny = sum(range(3_000_000))\nprint(y)\n"
    record = run(manager, PYTHON, "-I", "-S", "-c", work)
    assert record.exit_code == 0
    assert record.usage.memory_peak_bytes >= 32 << 20
    assert record.usage.cpu_seconds > 0
    assert record.usage.output_bytes == len(output_of(manager, record.id))


def test_status_and_list_of_a_running_job(manager):
    arg = unique_seconds()
    record = manager.start(JobSpec("/bin/sleep", (arg,), name="napping"), owner="alice")
    assert record.state is JobState.RUNNING and record.pid
    status = manager.status(record.id)
    assert status.state is JobState.RUNNING and status.name == "napping" and status.owner == "alice"
    assert status.usage.memory_peak_bytes > 0  # read live from the cgroup
    assert manager.wait(record.id, 0.05).state is JobState.RUNNING
    assert [r.id for r in manager.list("alice")] == [record.id]
    assert manager.list("bob") == []
    manager.stop(record.id, GRACE)
    assert manager.status(record.id).finished


def test_unknown_job(manager):
    with pytest.raises(NotFound):
        manager.status("0123456789ab")
    with pytest.raises(NotFound):
        manager.stop("0123456789ab")
    with pytest.raises(NotFound):
        manager.output("0123456789ab")


def test_many_threads_start_and_wait_at_once(manager):
    results: dict[int, object] = {}

    def one(n):
        try:
            record = manager.start(JobSpec("/bin/sh", ("-c", f"echo job {n}; exit {n}")))
            results[n] = wait_finished(manager, record.id)
        except Exception as exc:  # noqa: BLE001 - reported below
            results[n] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    for n in range(1, 9):
        record = results[n]
        assert not isinstance(record, Exception), record
        assert record.exit_code == n
        assert output_of(manager, record.id) == f"job {n}\n".encode()


# -- restart and reconciliation ----------------------------------------------------------------------------------


def test_a_new_manager_sees_the_old_records_and_output(make_manager):
    first = make_manager()
    record = sh(first, "echo hello from before")
    first.close()
    second = make_manager()
    assert second.status(record.id) == record
    assert [r.id for r in second.list()] == [record.id]
    assert b"".join(d for _, d in read_output(second.output(record.id))) == b"hello from before\n"


CRASHING_DAEMON = """
import json, sys, time
from jobworkerd.config import config_from_dict
from jobworkerd.worker import JobManager, JobSpec
m = JobManager(config_from_dict(json.loads(sys.argv[1]))).open()
lost = m.start(JobSpec("/bin/sh", ("-c", "sleep %(arg)s & sleep %(arg)s")))
ends = m.start(JobSpec("/bin/sh", ("-c", "read line < %(fifo)s; echo done; exit 5"), directory=%(dir)r))
print(lost.id, ends.id, flush=True)
time.sleep(3600)
"""


def write_fifo(path: Path, data: bytes) -> None:
    """Write to a FIFO once its reader (a job) has it open; never block forever."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_reconcile_after_a_crash_finishes_jobs_as_lost_and_removes_their_cgroups(tmp_path, make_manager):
    arg = unique_seconds()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    settings = {
        "state_dir": str(tmp_path / "state"),
        "run_dir": str(tmp_path / "run"),
        "cgroup": {"subtree": SUBTREE},
        "stop_grace": GRACE,
    }
    crashing = subprocess.Popen(
        [sys.executable, "-c", CRASHING_DAEMON % {"arg": arg, "fifo": fifo, "dir": str(tmp_path)}, json.dumps(settings)],
        stdout=subprocess.PIPE,
    )
    reconciled = False
    try:
        try:
            line = crashing.stdout.readline().decode()
            lost_id, ends_id = line.split()
            wait_until(lambda: len(host_processes_with_arg(arg)) == 2, what="the job's sleeps")
        finally:
            crashing.kill()  # SIGKILL: no clean shutdown
            crashing.wait()
        # The daemon is gone; its jobs are not. One of them now ends by itself while nobody watches.
        assert len(host_processes_with_arg(arg)) == 2
        write_fifo(fifo, b"go\n")
        exit_file = tmp_path / "run" / "jobs" / ends_id / "exit"
        wait_until(lambda: exit_file.exists() and exit_file.read_text().strip(), what="the second job to end")
        assert job_cgroup("pids", lost_id).exists() and job_cgroup("pids", ends_id).exists()

        reconciled = True
        m = make_manager()  # same state_dir, run_dir and subtree: reconciles at open
    finally:
        if not reconciled:
            make_manager()  # whatever failed, end the orphaned jobs and remove their cgroups
    lost = m.status(lost_id)
    assert lost.state is JobState.FINISHED and lost.reason is Reason.LOST, lost
    assert "daemon stopped" in lost.message
    assert host_processes_with_arg(arg) == []
    ended = m.status(ends_id)
    assert ended.state is JobState.FINISHED and ended.reason is Reason.EXITED and ended.exit_code == 5, ended
    assert "while the daemon was down" in ended.message
    assert b"".join(d for _, d in read_output(m.output(ends_id))) == b"done\n"
    for job_id in (lost_id, ends_id):
        for controller in V1_CONTROLLERS:
            assert not job_cgroup(controller, job_id).exists()
    assert m.backend.job_ids() == []


def test_reconcile_kills_an_unrecorded_job_cgroup(make_manager, tmp_path):
    """A job cgroup with live processes that no record knows (e.g. the state dir was lost)."""
    other = tmp_path / "other"
    first = JobManager(make_config(other)).open()
    arg = unique_seconds()
    record = first.start(JobSpec("/bin/sleep", (arg,)))
    # Abandon the first manager without closing it: its monitor thread is a daemon thread.
    first._closing = True
    os.write(first._wake_w, b"x")
    first._monitor.join()
    first.forkserver.close()
    first.store.close()
    first.hub.close()
    assert host_processes_with_arg(arg)
    m = make_manager()  # another state dir: no record of that job
    assert host_processes_with_arg(arg) == []
    assert not job_cgroup("pids", record.id).exists()
    with pytest.raises(NotFound):
        m.status(record.id)


# -- state listeners ---------------------------------------------------------------------------------------------


def test_listeners_see_each_state_change_in_order(manager):
    seen: list[tuple[str, str, str]] = []
    remove = manager.add_listener(lambda r: seen.append((r.id, r.state.value, r.reason.value)))
    stopped = manager.start(JobSpec("/bin/sleep", (unique_seconds(),)))
    manager.stop(stopped.id, GRACE)
    with pytest.raises(StartFailed):
        manager.start(JobSpec("/etc/passwd"))
    failed = seen[-1][0]
    remove()
    manager.wait(sh(manager, "true").id)
    assert seen == [
        (stopped.id, "starting", ""), (stopped.id, "running", ""), (stopped.id, "stopping", ""),
        (stopped.id, "finished", "stopped"),
        (failed, "starting", ""), (failed, "finished", "failed-to-start"),
    ]


# -- robustness (issue 12's review) ------------------------------------------------------------------------------


def test_a_failing_output_subscriber_does_not_stop_job_ends_being_recorded(manager):
    job = manager.start(JobSpec("sh", ("-c", "read x < /dev/null; sleep 0.3; echo written; sleep 0.3")))

    def broken() -> None:
        raise RuntimeError("a subscriber's bug")

    manager.hub.subscribe(str(output_path(manager, job.id)), broken)
    record = manager.wait(job.id, DEADLINE)
    assert record.state is JobState.FINISHED and record.exit_code == 0, record
    later = manager.wait(sh(manager, "echo later").id, DEADLINE)  # the monitor thread still records ends
    assert later.state is JobState.FINISHED


def test_no_job_starts_once_shutdown_has_begun(make_manager):
    m = make_manager(stop_grace="3s")
    stubborn = m.start(JobSpec("sh", ("-c", f"trap '' TERM; sleep {unique_seconds()}")))
    closing = threading.Thread(target=m.close)
    closing.start()
    try:
        wait_until(lambda: m.status(stubborn.id).state is JobState.STOPPING, what="the shutdown to stop the job")
        with pytest.raises(FailedPrecondition, match="shutting down"):
            m.start(JobSpec("/bin/true"))
    finally:
        closing.join()
    after = make_manager()  # the same state directory
    assert [(r.id, r.reason) for r in after.list()] == [(stubborn.id, Reason.STOPPED)]  # nothing else started


def test_a_newline_in_a_failure_detail_stays_in_its_message(manager, tmp_path):
    # A directory name the user chose, that its run-as user may not enter: the launcher's status line for
    # the failed chdir carries the name, and its newline must not end that line early.
    directory = tmp_path / "two\nlines"
    directory.mkdir(mode=0o700)
    with pytest.raises(StartFailed) as info:
        manager.start(JobSpec("/bin/true", directory=str(directory), user="nobody"))
    assert info.value.step == "chdir" and "two\\nlines" in info.value.message, info.value.message
    assert "Permission denied (EACCES)" in info.value.message


@pytest.fixture
def small_state(tmp_path):
    """A state directory on a 4 MiB tmpfs that the test can fill (a full disk for the job store)."""
    from faultkit import small_tmpfs

    with small_tmpfs(tmp_path / "state-fs", mode="0700") as mount_point:
        yield mount_point


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def test_a_job_end_the_store_cannot_take_is_kept_in_memory_and_stored_later(make_manager, small_state):
    m = make_manager(state_dir=str(small_state / "state"))
    go = small_state.parent / "go"
    job = m.start(JobSpec("sh", ("-c", f"while [ ! -e {go} ]; do sleep 0.05; done; exit 5"), directory=str(go.parent)))
    filler = fill(small_state)
    go.touch()
    ended = m.wait(job.id, DEADLINE)
    assert (ended.state, ended.exit_code) == (JobState.FINISHED, 5)  # from memory: the store refused it
    assert m.store.get(job.id).state is JobState.RUNNING
    assert [r.state for r in m.list() if r.id == job.id] == [JobState.FINISHED]
    filler.unlink()
    wait_until(lambda: m.store.get(job.id).state is JobState.FINISHED, what="the end to be stored on a retry")
    assert m.store.get(job.id).exit_code == 5


def test_a_start_the_store_cannot_record_leaves_nothing_behind(make_manager, small_state):
    m = make_manager(state_dir=str(small_state / "state"))
    fill(small_state)
    arg = unique_seconds()
    with pytest.raises(ResourceExhausted, match="state directory is full"):
        m.start(JobSpec("/bin/sleep", (arg,)))
    assert host_processes_with_arg(arg) == [] and m.backend.job_ids() == [] and os.listdir(m.jobs_dir) == []


def test_reconcile_goes_on_when_a_job_cannot_be_recorded_and_the_daemon_starts(make_manager, small_state):
    first = make_manager(state_dir=str(small_state / "state"))
    arg = unique_seconds()
    record = first.start(JobSpec("/bin/sleep", (arg,)))
    first._closing = True  # abandoned without closing, as a crash leaves it
    os.write(first._wake_w, b"x")
    first._monitor.join()
    first.forkserver.close()
    first.store.close()
    first.hub.close()
    from jobworkerd.worker.store import JobStore

    store = JobStore(str(small_state / "state"))  # the store opens; then the disk is full
    filler = fill(small_state)
    second = make_manager(state_dir=str(small_state / "state"), store=store)  # reconciles with a full state dir
    assert host_processes_with_arg(arg) == [] and second.backend.job_ids() == []
    assert second.status(record.id).reason is Reason.LOST  # recorded in memory meanwhile
    filler.unlink()
    wait_until(lambda: second.store.get(record.id).state is JobState.FINISHED, what="the reconciled end stored")
