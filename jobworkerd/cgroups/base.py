"""The one interface both cgroup backends implement, and the one helper every cgroup write goes through.

Layout (both versions): every job cgroup lives at <own cgroup>/<subtree>/jobs/<job id>, where <own cgroup>
is the cgroup this process was started in (read from /proc/self/cgroup). Nothing is ever created
elsewhere in the machine's tree.
"""

from __future__ import annotations

import abc
import errno
import os
import signal
import time

from ..errors import InternalError, InvalidArgument
from ..worker.models import IOTarget, Limits, Usage

JOBS_DIR = "jobs"
CFS_PERIOD_US = 100_000
MIN_CFS_QUOTA_US = 1_000  # the kernel's floor


def write_file(path: str, value: str) -> None:
    """Write one value to one cgroup file; errors name the file and the value."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_CREAT, 0o644)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise InternalError(f"cgroup write {value!r} to {path} failed: {exc.strerror}") from exc


def read_file(path: str, default: str | None = None) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except OSError:
        if default is None:
            raise
        return default


def read_keyed(path: str) -> dict[str, int]:
    """'key value' lines (cpu.stat, memory.events, memory.oom_control) as a dict; missing file: {}."""
    values: dict[str, int] = {}
    for line in read_file(path, "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            values[parts[0]] = int(parts[1])
    return values


def read_pids(path: str) -> list[int]:
    return [int(line) for line in read_file(path, "").split()]


def cpu_quota_us(cores: float) -> int:
    return max(MIN_CFS_QUOTA_US, round(cores * CFS_PERIOD_US))


def remove_dir(path: str) -> None:
    """rmdir a cgroup; EBUSY right after the last task exits is retried briefly."""
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise InternalError(f"cannot remove cgroup {path}: {exc.strerror}") from exc
            time.sleep(0.01)
    raise InternalError(f"cannot remove cgroup {path}: still busy")


def signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class CgroupBackend(abc.ABC):
    """One job = one cgroup (v2) or one node per controller (v1). All methods take the job id."""

    version: str

    @abc.abstractmethod
    def setup(self) -> None:
        """Create <own>/<subtree>/jobs (and on v2 enable controllers). Called once at start."""

    def create(self, job_id: str, limits: Limits, io_target: IOTarget | None) -> None:
        """Create the job's cgroup with its limits applied, before anything runs in it. All or nothing."""
        self.check_limits(limits, io_target)
        directories = self._job_dirs(job_id)
        for path in directories:
            if os.path.exists(path):
                raise InternalError(f"cgroup {path} already exists: job ids must be unique")
        try:
            for path in directories:
                os.mkdir(path)
            self._apply(job_id, limits, io_target)
        except Exception:
            self.remove(job_id)
            raise

    @abc.abstractmethod
    def _job_dirs(self, job_id: str) -> list[str]:
        """The directories that make up one job's cgroup (one per hierarchy on v1)."""

    @abc.abstractmethod
    def _apply(self, job_id: str, limits: Limits, io_target: IOTarget | None) -> None:
        """Write the limits into the freshly made cgroup."""

    @abc.abstractmethod
    def join_files(self, job_id: str) -> list[str]:
        """Files the launcher writes '0' to in order to move itself into the job's cgroup."""

    @abc.abstractmethod
    def pids(self, job_id: str) -> list[int]:
        """PIDs of every process in the job's cgroup (empty when the job is gone)."""

    @abc.abstractmethod
    def freeze(self, job_id: str, frozen: bool) -> bool:
        """Freeze or thaw every process of the job. True once the kernel says it is done; False if a
        task did not freeze in time (e.g. stuck in uninterruptible I/O): callers signal anyway."""

    @abc.abstractmethod
    def kill(self, job_id: str) -> None:
        """SIGKILL every process of the job, including ones forking as we go."""

    @abc.abstractmethod
    def usage(self, job_id: str) -> Usage:
        """CPU, peak memory, io bytes and OOM kills so far."""

    @abc.abstractmethod
    def remove(self, job_id: str) -> None:
        """Remove the job's (empty) cgroup; missing is fine."""

    @abc.abstractmethod
    def job_ids(self) -> list[str]:
        """Job cgroups that exist now (for reconciliation after a crash)."""

    def bounds_swap(self, job_id: str) -> bool:
        """Whether the job's memory limit also bounds its swap (the kernel accounts swap per cgroup)."""
        return True

    @abc.abstractmethod
    def teardown(self) -> None:
        """Remove the jobs directory (and subtree) if they are empty; called at clean shutdown."""

    def signal(self, job_id: str, sig: int) -> None:
        """Send sig to every process of the job. Frozen while reading the list so no PID is reused under us."""
        self.freeze(job_id, True)  # best effort: a task stuck in D state still gets the signal, on wake-up
        try:
            signal_pids(self.pids(job_id), sig)
        finally:
            self.freeze(job_id, False)

    def is_empty(self, job_id: str) -> bool:
        return not self.pids(job_id)

    def wait_empty(self, job_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.is_empty(job_id):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    @staticmethod
    def check_limits(limits: Limits, io_target: IOTarget | None) -> None:
        if limits.has_io and io_target is None:
            raise InvalidArgument("io limits need a block device, and none was resolved for this job")


def kill_until_empty(backend: CgroupBackend, job_id: str, attempts: int = 100) -> None:
    """Shared v1 fallback and v2 safety net: freeze, SIGKILL all, thaw, until nothing is left."""
    for _ in range(attempts):
        pids = backend.pids(job_id)
        if not pids:
            return
        backend.freeze(job_id, True)
        try:
            signal_pids(backend.pids(job_id), signal.SIGKILL)
        finally:
            backend.freeze(job_id, False)
        if backend.wait_empty(job_id, 0.2):
            return
    raise InternalError(f"job {job_id}: processes survive SIGKILL: {backend.pids(job_id)}")
