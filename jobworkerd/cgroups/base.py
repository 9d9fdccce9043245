"""The one interface both cgroup backends implement, and the one helper every cgroup write goes through.

Layout (both versions): every job cgroup lives at <own cgroup>/<subtree>/jobs/<group>/<job id>, where
<own cgroup> is the cgroup this process was started in (read from /proc/self/cgroup) and <group> is the
job's group (groups.py: `admin`, or `user-<name>`), which carries the group's ceilings and holds no
processes of its own. Nothing is ever created elsewhere in the machine's tree.

Groups are made by the first create() of a group and removed by the remove() that empties them. Both
run under one lock, so a job being created in a group is never left without its parent by another job
of the same group ending at that moment. Callers name a job by its id alone: the backend remembers
each job's group (and rebuilds that map from the tree in setup() and job_ids()).
"""

from __future__ import annotations

import abc
import errno
import logging
import os
import signal
import threading
import time

from ..config import ConfigError
from ..errors import InternalError, InvalidArgument
from ..resources import ADMIN_GROUP, IOTarget, JobGroup, Limits, Usage
from .devices import block_device_for
from .groups import group_dir, is_job_id

log = logging.getLogger("jobworkerd.cgroups")

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


def _subdirs(path: str) -> list[str]:
    try:
        return [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


IO_CEILING_KEYS = ("io_read_bps", "io_write_bps", "io_read_iops", "io_write_iops")


def io_ceilings_set(ceilings: Limits) -> list[str]:
    """The io ceilings given (their config key names)."""
    return [name for name in IO_CEILING_KEYS if getattr(ceilings, name) is not None]


def ceiling_io_target(ceilings: Limits, key: str) -> IOTarget:
    """The disk a group's io ceilings apply to: the one holding their io_device. ConfigError naming `key`."""
    if not ceilings.io_device:
        raise ConfigError(f"{key}: io ceilings need a disk to apply to (io_device), and none was given")
    try:
        return block_device_for(ceilings.io_device, hint=f"set {key}.io_device to a path on a real disk")
    except InvalidArgument as exc:
        raise ConfigError(f"{key}.io_device (default: state_dir): {exc.message}") from None


def signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class CgroupBackend(abc.ABC):
    """One job = one cgroup (v2) or one node per controller (v1), inside its group's. All methods but
    create take the job id alone."""

    version: str

    def __init__(self) -> None:
        self._group_of: dict[str, str] = {}  # job id -> its group's directory name ("" for the old flat layout)
        self._ceilings: dict[str, Limits] = {}  # group directory name -> the ceilings last written to it
        self._layout = threading.RLock()  # makes and removes groups, and job directories inside them

    @abc.abstractmethod
    def setup(self) -> None:
        """Create <own>/<subtree>/jobs (and on v2 enable controllers), learn the jobs that exist and remove
        empty groups. Called once at start."""

    def create(
        self, job_id: str, limits: Limits, io_target: IOTarget | None, group: JobGroup = ADMIN_GROUP,
        group_limits: Limits | None = None,
    ) -> None:
        """Create the job's cgroup inside its group's with its limits applied, before anything runs in it.
        The group is made if it does not exist, and its ceilings (`group_limits`: cpu, memory, pids, io on
        the disk of its io_device; None = no ceiling) written when it is new or they differ from those last
        written. All or nothing."""
        self.check_limits(limits, io_target)
        name = group_dir(group)
        directories = self._dirs(os.path.join(name, job_id))
        with self._layout:
            for path in directories:
                if job_id in self._group_of or os.path.exists(path):
                    raise InternalError(f"cgroup {path} already exists: job ids must be unique")
            self._ensure_group(name, group_limits or Limits())
            self._group_of[job_id] = name
            try:
                for path in directories:
                    os.mkdir(path)
                self._apply(job_id, limits, io_target)
            except Exception:
                self.remove(job_id)
                raise

    def _ensure_group(self, name: str, ceilings: Limits) -> None:
        """Make the group's directories that are missing and bring its ceilings up to date."""
        directories = self._dirs(name)
        made = []
        try:
            for path in directories:
                if not os.path.isdir(path):
                    os.mkdir(path)
                    made.append(path)
            if made:
                self._init_group(name)
            # Fresh directories hold the kernel's defaults (no ceiling); after a restart, or when only some
            # hierarchies were made afresh, what they hold is unknown: everything is written.
            previous = Limits() if len(made) == len(directories) else None if made else self._ceilings.get(name)
            if previous != ceilings:
                self._ceilings.pop(name, None)
                self._write_ceilings(name, ceilings, previous)
            self._ceilings[name] = ceilings
        except Exception:
            if made and name not in self._group_of.values():
                self._remove_group(name)
            raise

    def _remove_group(self, name: str) -> bool:
        """rmdir the group in every hierarchy; False if it is in use (a job in it) or cannot go."""
        self._ceilings.pop(name, None)
        for path in self._dirs(name):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    log.warning("cannot remove the job group cgroup %s: %s", path, exc.strerror)
                return False  # EBUSY/ENOTEMPTY: a job is in it again
        return True

    def _sweep_groups(self) -> None:
        """Remove every group that holds no job (left by a crash, or at shutdown)."""
        with self._layout:
            self.job_ids()
            used = set(self._group_of.values())
            for name in self._group_names():
                if name not in used:
                    self._remove_group(name)

    def _rel(self, job_id: str) -> str:
        """A job's directory, relative to the jobs directory."""
        group = self._group_of.get(job_id, "")
        return os.path.join(group, job_id) if group else job_id

    def _scan(self) -> dict[str, str]:
        """Jobs in the tree now: job id -> group directory name ("" for the old layout, jobs/<id>)."""
        found: dict[str, str] = {}
        for jobs_dir in self._jobs_dirs():
            for entry in _subdirs(jobs_dir):
                if is_job_id(entry):
                    found.setdefault(entry, "")
                else:
                    for job_id in _subdirs(os.path.join(jobs_dir, entry)):
                        if is_job_id(job_id):
                            found[job_id] = entry
        return found

    def _group_names(self) -> set[str]:
        return {e for d in self._jobs_dirs() for e in _subdirs(d) if not is_job_id(e)}

    def job_ids(self) -> list[str]:
        """Job cgroups that exist now, in groups and in the old flat layout (for reconciliation)."""
        found = self._scan()
        with self._layout:
            self._group_of.update(found)
        return sorted(found)

    def remove(self, job_id: str) -> None:
        """Remove the job's (empty) cgroup, and its group once no job is left in it; missing is fine."""
        for path in self._job_dirs(job_id):
            remove_dir(path)
        with self._layout:
            name = self._group_of.pop(job_id, "")
            if name and name not in self._group_of.values():
                self._remove_group(name)

    def _job_dirs(self, job_id: str) -> list[str]:
        """The directories that make up one job's cgroup (one per hierarchy on v1)."""
        return self._dirs(self._rel(job_id))

    @abc.abstractmethod
    def _jobs_dirs(self) -> list[str]:
        """The jobs directory in each hierarchy."""

    @abc.abstractmethod
    def _dirs(self, rel: str) -> list[str]:
        """A path relative to the jobs directory, in each hierarchy."""

    @abc.abstractmethod
    def _init_group(self, name: str) -> None:
        """Prepare a freshly made group for jobs (v2: enable controllers; v1: hierarchical memory)."""

    @abc.abstractmethod
    def _write_ceilings(self, name: str, ceilings: Limits, previous: Limits | None) -> None:
        """Write the group's ceilings that differ from `previous` (all of them if None); None = no ceiling."""

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

    def bounds_swap(self, job_id: str) -> bool:
        """Whether the job's memory limit also bounds its swap (the kernel accounts swap per cgroup)."""
        return True

    @abc.abstractmethod
    def teardown(self) -> None:
        """Remove empty groups, then the jobs directory (and subtree) if they are empty; called at clean
        shutdown."""

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

    def check_ceilings(self, ceilings: Limits, key: str) -> None:
        """Refuse, before any job is started, group ceilings this backend cannot enforce: ConfigError naming
        the config key that sets them. Here: io ceilings on a device that is no disk."""
        if ceilings.has_io:
            ceiling_io_target(ceilings, key)

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
