"""Helpers for the fault, hostile-input and soak tests (test_faults.py, test_hostile_input.py, test_soak.py).

Nothing here waits on wall-clock thresholds: every wait is "poll until true, fail after a generous deadline".
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc

from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

T = TypeVar("T")
DEADLINE = 60.0  # only reached when something hangs


def new_marker() -> str:
    """A unique token that a job puts into the command line of every process it wants found later.
    Digits only, so `sleep 1000.<marker>` is both a valid sleep and a carrier of the marker."""
    return "".join(secrets.choice("123456789") for _ in range(14))


def marked_sleep(marker: str) -> str:
    return f"sleep 1000.{marker}"


def marked_nap(marker: str) -> str:
    """A short sleep (10-100 ms) that carries the marker."""
    return f"sleep 0.0{marker}"


def marked_processes(marker: str) -> dict[int, str]:
    """Every process on the host whose command line contains the marker (our own process excluded)."""
    found = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if marker.encode() in cmdline:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def process_identity(pid: int) -> tuple[int, int] | None:
    """(pid, start time in clock ticks): survives PID reuse checks. None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie has ended; only its parent's wait is missing
    return pid, int(fields[19])


def alive(identities: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [ident for ident in identities if process_identity(ident[0]) == ident]


def wait_until(predicate: Callable[[], T], what: str, timeout: float = DEADLINE, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for: {what}")
        time.sleep(interval)


def job_cgroups(daemon, job_id: str) -> list[str]:
    return [d for d in daemon.cgroup_dirs() if os.path.basename(d) == job_id]


def job_cgroup_pids(daemon, job_id: str) -> list[tuple[int, int]]:
    """Identities of every process in the job's cgroup now (read from the pids hierarchy)."""
    for directory in job_cgroups(daemon, job_id):
        procs = Path(directory, "cgroup.procs")
        if "/pids/" in directory and procs.exists():
            return [i for i in (process_identity(int(p)) for p in procs.read_text().split()) if i]
    raise AssertionError(f"no pids cgroup for job {job_id}: {daemon.cgroup_dirs()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(stub, *argv: str, limits: pb.Limits | None = None, name: str = "", **command) -> pb.Job:
    request = pb.StartJobRequest(name=name, command=pb.Command(command=argv[0], arguments=argv[1:], **command))
    if limits is not None:
        request.limits.CopyFrom(limits)
    return stub.StartJob(request, timeout=30)


def sh(stub, script: str, **kwargs) -> pb.Job:
    return start(stub, "sh", "-c", script, **kwargs)


def wait_job(stub, job_id: str, timeout: float = DEADLINE) -> pb.Job:
    return stub.WaitJob(pb.WaitJobRequest(job_id=job_id), timeout=timeout)


def stop_job(stub, job_id: str, grace: float = 1.0) -> pb.Job:
    return stub.StopJob(pb.StopJobRequest(job_id=job_id, grace_seconds=grace), timeout=DEADLINE)


def read_all(stub, job_id: str, offset: int = 0, follow: bool = True, **kwargs) -> bytes:
    request = pb.StreamOutputRequest(job_id=job_id, offset=offset, no_follow=not follow)
    data = b""
    for chunk in stub.StreamOutput(request, timeout=DEADLINE, **kwargs):
        assert chunk.offset == offset + len(data), "chunks must be contiguous"
        data += chunk.data
    return data


def output_file(daemon, job_id: str) -> Path:
    import yaml

    run_dir = yaml.safe_load(daemon.config_path.read_text())["run_dir"]
    return Path(run_dir, "jobs", job_id, "output")


def rpc_error(fn: Callable[[], object]) -> grpc.RpcError:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded; an error was expected")


def report(config, line: str) -> None:
    """A line on the terminal even under output capture (figures for the closing note)."""
    print(line)
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if capture is None or reporter is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


def forkserver_of(daemon) -> int:
    """The PID of a running daemon's launcher forkserver (its child started with --forkserver)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == daemon.pid and b"--forkserver" in Path(f"/proc/{entry}/cmdline").read_bytes():
                    return int(entry)
            except OSError:
                continue
    raise AssertionError("no forkserver among the daemon's children")


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size: str = "4M", mode: str = "0755") -> Iterator[Path]:
    """A tmpfs of its own that a test can fill (a full disk), unmounted (with any daemon output tmpfs
    inside it) even when the test fails."""
    from daemon_harness import unmount_output_tmpfs

    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        unmount_output_tmpfs(mount_point)
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(directory: Path) -> Path:
    """Fill the filesystem holding `directory` (a small tmpfs) to the last byte: a full disk. Returns the
    file doing it; unlink it to free the room."""
    import errno

    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


# -- this host's cgroup v1 hierarchies (the library tests create job cgroups beneath their own) --------------------

V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "blkio", "pids", "freezer")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def v1_usable() -> bool:
    return all((CGROUP_ROOT / c / "tasks").exists() for c in V1_CONTROLLERS if c != "blkio")


def own_cgroups() -> dict[str, str]:
    """This process's cgroup in each v1 hierarchy, by controller."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            own[controller] = path
    return own
