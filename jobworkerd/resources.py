"""Resource value types shared by the cgroup backends and the worker library: what a job may use
(Limits, IOTarget), what it used (Usage) and which parent cgroup it lives in (JobGroup). No I/O, no
imports from either package, so both can import this."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Resource limits of one job. None means 'no limit' (or the configured default, applied at validation)."""

    cpu: float | None = None  # cores, fractional
    memory: int | None = None  # bytes
    pids: int | None = None
    io_device: str | None = None  # a path on the device, or the device node; default: the job's directory
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    io_read_iops: int | None = None
    io_write_iops: int | None = None

    @property
    def has_io(self) -> bool:
        return any(v is not None for v in (self.io_read_bps, self.io_write_bps, self.io_read_iops, self.io_write_iops))


@dataclass(frozen=True)
class JobGroup:
    """The parent cgroup a job lives in, beneath which the config's per-user ceilings apply: one per
    user-role client (`name` = its certificate CN), one shared by every admin's jobs (`admin`)."""

    name: str = ""
    admin: bool = False

    @classmethod
    def of(cls, name: str, is_admin: bool) -> "JobGroup":
        return cls("", True) if is_admin else cls(name, False)


@dataclass(frozen=True)
class Usage:
    """What a job consumed, read from its cgroup before the cgroup is removed."""

    cpu_seconds: float = 0.0
    memory_peak_bytes: int = 0
    io_read_bytes: int = 0
    io_write_bytes: int = 0
    oom_kills: int = 0
    output_bytes: int = 0
    memory_bytes: int = 0  # now, while the job runs (0 once it has finished)
    pids: int = 0  # now, while the job runs (0 once it has finished)


@dataclass(frozen=True)
class IOTarget:
    """A resolved block device for io limits: the whole disk's major:minor."""

    major: int
    minor: int


ADMIN_GROUP = JobGroup("", True)
