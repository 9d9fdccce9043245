"""cgroup v2 (unified hierarchy), hand-written.

Delegation: cgroup v2 forbids processes in a cgroup whose subtree_control enables controllers
("no internal processes"), so at setup this process moves itself from its own cgroup into
<own>/supervisor, then enables cpu, memory, io and pids for <own>/<subtree>/jobs and below. Each job
group (jobs/<group>) enables them again for its jobs, and holds no processes itself. io throttling is
hierarchical on v2, so a group's io.max bounds all its jobs' io together.
Under systemd that own cgroup is the unit's, handed over by Delegate=yes.
"""

from __future__ import annotations

import os
import time

from ..errors import InternalError
from ..resources import IOTarget, Limits, Usage
from .base import (
    CFS_PERIOD_US,
    JOBS_DIR,
    CgroupBackend,
    ceiling_io_target,
    cpu_quota_us,
    kill_until_empty,
    read_file,
    read_keyed,
    read_pids,
    write_file,
)

CONTROLLERS = ("cpu", "memory", "io", "pids")
SUPERVISOR_DIR = "supervisor"


class V2Backend(CgroupBackend):
    version = "v2"

    def __init__(self, mount: str, own: str, subtree: str = ""):
        super().__init__()
        self.own_dir = os.path.normpath(os.path.join(mount, own.lstrip("/")))
        self.jobs_dir = os.path.normpath(os.path.join(self.own_dir, subtree, JOBS_DIR))

    def _path(self, job_id: str) -> str:
        return os.path.join(self.jobs_dir, self._rel(job_id))

    def _jobs_dirs(self) -> list[str]:
        return [self.jobs_dir]

    def _dirs(self, rel: str) -> list[str]:
        return [os.path.join(self.jobs_dir, rel)]

    def _file(self, job_id: str, name: str) -> str:
        return os.path.join(self._path(job_id), name)

    def setup(self) -> None:
        available = read_file(os.path.join(self.own_dir, "cgroup.controllers"), "").split()
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            raise InternalError(
                f"cgroup v2: controllers {', '.join(missing)} are not delegated to {self.own_dir} "
                "(under systemd the unit needs Delegate=yes)"
            )
        self._leave_own_cgroup()
        enable = " ".join(f"+{c}" for c in CONTROLLERS)
        path = self.own_dir
        for part in os.path.relpath(self.jobs_dir, self.own_dir).split(os.sep):
            write_file(os.path.join(path, "cgroup.subtree_control"), enable)
            path = os.path.join(path, part)
            os.makedirs(path, exist_ok=True)
        write_file(os.path.join(self.jobs_dir, "cgroup.subtree_control"), enable)
        self._sweep_groups()

    def _leave_own_cgroup(self) -> None:
        """Move every process of our own cgroup (this daemon, any helper) into <own>/supervisor."""
        supervisor = os.path.join(self.own_dir, SUPERVISOR_DIR)
        os.makedirs(supervisor, exist_ok=True)
        for pid in read_pids(os.path.join(self.own_dir, "cgroup.procs")):
            try:
                write_file(os.path.join(supervisor, "cgroup.procs"), str(pid))
            except InternalError:
                if os.path.exists(f"/proc/{pid}"):
                    raise

    def _init_group(self, name: str) -> None:
        write_file(os.path.join(self.jobs_dir, name, "cgroup.subtree_control"), " ".join(f"+{c}" for c in CONTROLLERS))

    def _write_ceilings(self, name: str, ceilings: Limits, previous: Limits | None) -> None:
        group = os.path.join(self.jobs_dir, name)
        if previous is None or ceilings.cpu != previous.cpu:
            quota = "max" if ceilings.cpu is None else str(cpu_quota_us(ceilings.cpu))
            write_file(os.path.join(group, "cpu.max"), f"{quota} {CFS_PERIOD_US}")
        if previous is None or ceilings.memory != previous.memory:
            write_file(os.path.join(group, "memory.max"), "max" if ceilings.memory is None else str(ceilings.memory))
            if os.path.exists(os.path.join(group, "memory.swap.max")):  # the ceiling holds for swap too
                write_file(os.path.join(group, "memory.swap.max"), "max" if ceilings.memory is None else "0")
        if previous is None or ceilings.pids != previous.pids:
            write_file(os.path.join(group, "pids.max"), "max" if ceilings.pids is None else str(ceilings.pids))
        if previous is None or _io(ceilings) != _io(previous):
            self._write_io_ceiling(group, ceilings)

    def _write_io_ceiling(self, group: str, ceilings: Limits) -> None:
        """io.max: the ceiling's line for its disk (unset keys = max), and every other disk's line cleared
        (a ceiling moved to another disk, or one removed from the config)."""
        path = os.path.join(group, "io.max")
        device = ""
        if ceilings.has_io:
            try:
                target = ceiling_io_target(ceilings, f"job group {os.path.basename(group)}'s io ceiling")
            except Exception as exc:  # the disk was one at start (check_ceilings); it is gone now
                raise InternalError(str(exc)) from exc
            device = f"{target.major}:{target.minor}"
        for line in read_file(path, "").splitlines():
            other = line.split()[0] if line.split() else ""
            if other and other != device:
                write_file(path, f"{other} rbps=max wbps=max riops=max wiops=max")
        if device:
            keys = (("rbps", ceilings.io_read_bps), ("wbps", ceilings.io_write_bps),
                    ("riops", ceilings.io_read_iops), ("wiops", ceilings.io_write_iops))
            write_file(path, f"{device} " + " ".join(f"{k}={'max' if v is None else v}" for k, v in keys))

    def _apply(self, job_id: str, limits: Limits, io_target: IOTarget | None) -> None:
        if limits.cpu is not None:
            write_file(self._file(job_id, "cpu.max"), f"{cpu_quota_us(limits.cpu)} {CFS_PERIOD_US}")
        if limits.memory is not None:
            write_file(self._file(job_id, "memory.max"), str(limits.memory))
            if os.path.exists(self._file(job_id, "memory.swap.max")):
                write_file(self._file(job_id, "memory.swap.max"), "0")  # else the limit only moves pages to swap
        if limits.pids is not None:
            write_file(self._file(job_id, "pids.max"), str(limits.pids))
        if limits.has_io and io_target is not None:
            keys = (
                ("rbps", limits.io_read_bps),
                ("wbps", limits.io_write_bps),
                ("riops", limits.io_read_iops),
                ("wiops", limits.io_write_iops),
            )
            settings = " ".join(f"{key}={value}" for key, value in keys if value is not None)
            write_file(self._file(job_id, "io.max"), f"{io_target.major}:{io_target.minor} {settings}")

    def join_files(self, job_id: str) -> list[str]:
        return [self._file(job_id, "cgroup.procs")]

    def namespace_view(self) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
        """A job's cgroup namespace shows its own cgroup as the root of /sys/fs/cgroup."""
        return [(".", "cgroup2", "")], []

    def pids(self, job_id: str) -> list[int]:
        return read_pids(self._file(job_id, "cgroup.procs"))

    def is_empty(self, job_id: str) -> bool:
        events = read_keyed(self._file(job_id, "cgroup.events"))
        if "populated" in events:
            return events["populated"] == 0
        return not self.pids(job_id)

    def freeze(self, job_id: str, frozen: bool) -> bool:
        path = self._file(job_id, "cgroup.freeze")
        if not os.path.exists(self._path(job_id)):
            return False
        try:
            write_file(path, "1" if frozen else "0")
        except InternalError:
            if os.path.exists(self._path(job_id)):
                raise
            return False  # the job ended and its cgroup was removed meanwhile (a stop racing the job's end)
        # cgroup.events says 'frozen 1' once every task has stopped; thawing takes effect at once.
        if not frozen:
            return True
        for _ in range(500):
            if read_keyed(self._file(job_id, "cgroup.events")).get("frozen", 1) == 1:
                return True
            time.sleep(0.001)
        return False

    def kill(self, job_id: str) -> None:
        kill_file = self._file(job_id, "cgroup.kill")
        if os.path.exists(kill_file):
            try:
                write_file(kill_file, "1")
            except InternalError:
                if os.path.exists(self._path(job_id)):
                    raise
                return  # removed meanwhile: the job has ended
            if self.wait_empty(job_id, 2.0):
                return
        kill_until_empty(self, job_id)  # kernels before 5.14 have no cgroup.kill

    def usage(self, job_id: str) -> Usage:
        cpu = read_keyed(self._file(job_id, "cpu.stat"))
        events = read_keyed(self._file(job_id, "memory.events"))
        peak = read_file(self._file(job_id, "memory.peak"), "").strip()
        memory = read_file(self._file(job_id, "memory.current"), "").strip()
        pids = read_file(self._file(job_id, "pids.current"), "").strip()
        read_bytes = write_bytes = 0
        for line in read_file(self._file(job_id, "io.stat"), "").splitlines():
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "rbytes":
                    read_bytes += int(value)
                elif key == "wbytes":
                    write_bytes += int(value)
        return Usage(
            cpu_seconds=cpu.get("usage_usec", 0) / 1e6,
            memory_peak_bytes=int(peak) if peak.isdigit() else 0,
            io_read_bytes=read_bytes,
            io_write_bytes=write_bytes,
            oom_kills=events.get("oom_kill", 0),
            memory_bytes=int(memory) if memory.isdigit() else 0,
            pids=int(pids) if pids.isdigit() else 0,
        )

    def bounds_swap(self, job_id: str) -> bool:
        return os.path.exists(self._file(job_id, "memory.swap.max"))

    def teardown(self) -> None:
        self._sweep_groups()
        path = self.jobs_dir
        while path != self.own_dir and path.startswith(self.own_dir):
            try:
                os.rmdir(path)
            except OSError:
                return
            path = os.path.dirname(path)


def _io(limits: Limits) -> tuple:
    return (limits.io_device, limits.io_read_bps, limits.io_write_bps, limits.io_read_iops, limits.io_write_iops)
