"""cgroup v1 (and hybrid hosts): one node per job in each of cpu, cpuacct, memory, blkio, pids, freezer.

cgroupspy manages the nodes in cpu, cpuacct, memory and blkio and sets the values it types well
(cfs quota/period, memory limits, cpuacct usage). Written directly, because cgroupspy lacks or
breaks them: the pids and freezer controllers, the blkio throttle files (its write-throttle names
carry a trailing space), the launcher's join through `tasks`, and reading memory.oom_control.

Job groups (jobs/<group>) exist in every hierarchy, like jobs, so a job's path is the same in each. A
group's memory ceiling bounds its jobs only with memory.use_hierarchy = 1: set on each new group (kernels
since 5.11 have it always on). There are no io ceilings on v1: blkio throttling is not hierarchical here
(a limit on a parent bounds only io issued by the parent's own tasks, never its children's; measured on
6.18: a parent at 2 MiB/s, an O_DIRECT write or read of 8 MiB in its child ran at over 1 GB/s), so a group
limit would bound nothing. check_ceilings refuses one at start, with a config error.
"""

from __future__ import annotations

import os
import time

from cgroupspy.nodes import Node

from ..config import ConfigError
from ..errors import InternalError
from ..resources import IOTarget, Limits, Usage
from .base import (
    CFS_PERIOD_US,
    JOBS_DIR,
    CgroupBackend,
    cpu_quota_us,
    io_ceilings_set,
    kill_until_empty,
    read_file,
    read_keyed,
    read_pids,
    write_file,
)

CGROUPSPY_CONTROLLERS = ("cpu", "cpuacct", "memory", "blkio")
# cpuset is joined only so that the job's cgroup namespace shows its own cpuset (the JVM's cgroup v1
# detection requires the hierarchy); jobworkerd sets no cpuset limits.
PLAIN_CONTROLLERS = ("pids", "freezer", "cpuset")
REQUIRED = ("cpu", "cpuacct", "memory", "pids", "freezer")


class V1Backend(CgroupBackend):
    version = "v1"

    def __init__(self, mounts: dict[str, str], own: dict[str, str], subtree: str = ""):
        """mounts: controller -> directory of its hierarchy root; own: controller -> our cgroup path in it."""
        super().__init__()
        missing = [c for c in REQUIRED if c not in mounts]
        if missing:
            raise InternalError(f"cgroup v1: controllers not mounted: {', '.join(missing)}")
        self.controllers = [c for c in CGROUPSPY_CONTROLLERS + PLAIN_CONTROLLERS if c in mounts]
        self._own_dir = {c: os.path.normpath(os.path.join(mounts[c], own.get(c, "/").lstrip("/"))) for c in self.controllers}
        self._jobs_dir = {c: os.path.normpath(os.path.join(self._own_dir[c], subtree, JOBS_DIR)) for c in self.controllers}
        self._subtree_dirs = {c: os.path.dirname(self._jobs_dir[c]) for c in self.controllers} if subtree else {}
        self._mounts = mounts

    # -- node management -----------------------------------------------------------------------------------

    def _node(self, controller: str, job_id: str) -> Node:
        return self._node_at(controller, self._path(controller, job_id))

    def _node_at(self, controller: str, path: str) -> Node:
        """A cgroupspy node for an existing cgroup (no tree walk: built from its path)."""
        mount = self._mounts[controller]
        node = Node(os.path.dirname(mount))
        node = Node(os.path.basename(mount), parent=node)
        rel = os.path.relpath(path, mount)
        for part in rel.split(os.sep):
            node = Node(part, parent=node)
        return node

    def _path(self, controller: str, job_id: str) -> str:
        return os.path.join(self._jobs_dir[controller], self._rel(job_id))

    def _jobs_dirs(self) -> list[str]:
        return [self._jobs_dir[c] for c in self.controllers]

    def _dirs(self, rel: str) -> list[str]:
        return [os.path.join(self._jobs_dir[c], rel) for c in self.controllers]

    def setup(self) -> None:
        for path in self._jobs_dir.values():
            os.makedirs(path, exist_ok=True)
        if "cpuset" in self.controllers:
            self._inherit_cpusets()
        self._sweep_groups()

    def _inherit_cpusets(self) -> None:
        """A v1 cpuset cgroup takes no task until it has cpus and mems: each new directory between our
        cgroup and jobs/ gets its parent's, and jobs/ hands them on to every group and job made below it
        (cgroup.clone_children, which new children inherit)."""
        jobs_dir = self._jobs_dir["cpuset"]
        path = self._own_dir["cpuset"]
        for part in os.path.relpath(jobs_dir, path).split(os.sep):
            parent, path = path, os.path.join(path, part)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not read_file(os.path.join(path, name)).strip():
                    write_file(os.path.join(path, name), read_file(os.path.join(parent, name)).strip())
        write_file(os.path.join(jobs_dir, "cgroup.clone_children"), "1")

    def _init_group(self, name: str) -> None:
        path = os.path.join(self._jobs_dir["memory"], name)
        if os.path.exists(os.path.join(path, "memory.use_hierarchy")):
            memory = self._node_at("memory", path).controller
            if not memory.use_hierarchy:  # inherited from a parent without it (kernels before 5.11)
                memory.use_hierarchy = True

    def check_ceilings(self, ceilings: Limits, key: str) -> None:
        if ceilings.has_io:
            raise ConfigError(_no_io_ceilings(key, ceilings))

    def _write_ceilings(self, name: str, ceilings: Limits, previous: Limits | None) -> None:
        if ceilings.has_io:  # refused at start (check_ceilings); never written as if it bounded anything
            raise InternalError(_no_io_ceilings(f"the ceilings of job group {name}", ceilings))
        if previous is None or ceilings.cpu != previous.cpu:
            cpu = self._node_at("cpu", os.path.join(self._jobs_dir["cpu"], name)).controller
            cpu.cfs_period_us = CFS_PERIOD_US
            cpu.cfs_quota_us = None if ceilings.cpu is None else cpu_quota_us(ceilings.cpu)  # None: -1, no ceiling
        if previous is None or ceilings.memory != previous.memory:
            path = os.path.join(self._jobs_dir["memory"], name)
            memory = self._node_at("memory", path).controller
            if os.path.exists(os.path.join(path, "memory.memsw.limit_in_bytes")):
                # memsw must stay >= limit_in_bytes at every step: lift it, set the limit, then hold swap to it.
                memory.memsw_limit_in_bytes = None
                memory.limit_in_bytes = ceilings.memory
                memory.memsw_limit_in_bytes = ceilings.memory
            else:
                memory.limit_in_bytes = ceilings.memory
        if previous is None or ceilings.pids != previous.pids:
            pids = "max" if ceilings.pids is None else str(ceilings.pids)
            write_file(os.path.join(self._jobs_dir["pids"], name, "pids.max"), pids)

    def _apply(self, job_id: str, limits: Limits, io_target: IOTarget | None) -> None:
        if limits.cpu is not None:
            cpu = self._node("cpu", job_id).controller
            cpu.cfs_period_us = CFS_PERIOD_US
            # v1 refuses (EINVAL) a child's quota above its parent's; v2 takes it and bounds it. The same here:
            ceiling = self._ceilings.get(self._group_of.get(job_id, ""), Limits()).cpu
            cpu.cfs_quota_us = cpu_quota_us(limits.cpu if ceiling is None else min(limits.cpu, ceiling))
        if limits.memory is not None:
            memory = self._node("memory", job_id).controller
            memory.limit_in_bytes = limits.memory
            # memsw (memory+swap) must be >= limit_in_bytes; equal means: no swap for this job.
            if os.path.exists(self._file("memory", job_id, "memory.memsw.limit_in_bytes")):
                memory.memsw_limit_in_bytes = limits.memory
        if limits.pids is not None:
            write_file(self._file("pids", job_id, "pids.max"), str(limits.pids))
        if limits.has_io and io_target is not None:
            if "blkio" not in self.controllers:
                raise InternalError("io limits requested, but the blkio controller is not mounted")
            device = f"{io_target.major}:{io_target.minor}"
            for name, value in (
                ("read_bps_device", limits.io_read_bps),
                ("write_bps_device", limits.io_write_bps),
                ("read_iops_device", limits.io_read_iops),
                ("write_iops_device", limits.io_write_iops),
            ):
                if value is not None:
                    write_file(self._file("blkio", job_id, f"blkio.throttle.{name}"), f"{device} {value}")

    def _file(self, controller: str, job_id: str, name: str) -> str:
        return os.path.join(self._path(controller, job_id), name)

    def join_files(self, job_id: str) -> list[str]:
        # A single-threaded process writing 0 to `tasks` joins in ~0.08 ms; cgroup.procs waits ~9 ms
        # per hierarchy for an RCU grace period.
        return [self._file(c, job_id, "tasks") for c in self.controllers]

    def namespace_view(self) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
        """What a job's cgroup namespace shows at /sys/fs/cgroup, in docker's v1 layout: a directory per
        hierarchy the job is in, named as on the host ("cpu,cpuacct" with links "cpu" and "cpuacct"
        where they are mounted together), as (directory, fstype, mount options), and the links."""
        hierarchies: dict[str, list[str]] = {}
        for controller, mount_point in self._mounts.items():
            hierarchies.setdefault(mount_point, []).append(controller)
        views, links = [], []
        for mount_point in sorted({self._mounts[c] for c in self.controllers}):
            name = os.path.basename(mount_point)
            views.append((name, "cgroup", ",".join(sorted(hierarchies[mount_point]))))
            links += [(c, name) for c in sorted(hierarchies[mount_point]) if c != name]
        return views, links

    def pids(self, job_id: str) -> list[int]:
        # pids is the controller every process of the job is in; it never misses a fork.
        return read_pids(self._file("pids", job_id, "cgroup.procs"))

    def freeze(self, job_id: str, frozen: bool) -> bool:
        state = "FROZEN" if frozen else "THAWED"
        path = self._file("freezer", job_id, "freezer.state")
        if not os.path.exists(os.path.dirname(path)):
            return False
        try:
            write_file(path, state)
            for _ in range(500):
                if read_file(path, state).strip() == state:
                    return True
                time.sleep(0.001)
                write_file(path, state)  # FREEZING can stall on a task in a fork; asking again moves it on
        except InternalError:
            if os.path.exists(os.path.dirname(path)):
                raise
            return False  # the job ended and its cgroup was removed meanwhile (a stop racing the job's end)
        return False

    def kill(self, job_id: str) -> None:
        kill_until_empty(self, job_id)

    def usage(self, job_id: str) -> Usage:
        cpu_ns = int(read_file(self._file("cpuacct", job_id, "cpuacct.usage"), "0") or 0)
        peak = int(read_file(self._file("memory", job_id, "memory.max_usage_in_bytes"), "0") or 0)
        memory = int(read_file(self._file("memory", job_id, "memory.usage_in_bytes"), "0") or 0)
        pids = int(read_file(self._file("pids", job_id, "pids.current"), "0") or 0)
        oom = read_keyed(self._file("memory", job_id, "memory.oom_control")).get("oom_kill", 0)
        read_bytes = write_bytes = 0
        if "blkio" in self.controllers:
            for line in read_file(self._file("blkio", job_id, "blkio.throttle.io_service_bytes"), "").splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1] == "Read":
                    read_bytes += int(parts[2])
                elif len(parts) == 3 and parts[1] == "Write":
                    write_bytes += int(parts[2])
        return Usage(
            cpu_seconds=cpu_ns / 1e9,
            memory_peak_bytes=peak,
            io_read_bytes=read_bytes,
            io_write_bytes=write_bytes,
            oom_kills=oom,
            memory_bytes=memory,
            pids=pids,
        )

    def bounds_swap(self, job_id: str) -> bool:
        return os.path.exists(self._file("memory", job_id, "memory.memsw.limit_in_bytes"))

    def teardown(self) -> None:
        self._sweep_groups()
        for controller in self.controllers:
            for path in (self._jobs_dir[controller], self._subtree_dirs.get(controller)):
                if path:
                    try:
                        os.rmdir(path)
                    except OSError:
                        pass  # not empty (jobs left for reconciliation) or already gone


def _no_io_ceilings(key: str, ceilings: Limits) -> str:
    given = ", ".join(f"{key}.{name}" for name in io_ceilings_set(ceilings))
    return (f"{given}: io ceilings need cgroup v2, and jobs run on cgroup v1 here, whose blkio throttling is not "
            "hierarchical: a limit on a job group's blkio.throttle files bounds only io issued by processes in the "
            "group itself, which holds none, never its jobs' io, so it would bound nothing. Remove the io ceilings "
            "(a job's own io limits do work on v1), or run the daemon on cgroup v2")
