"""cgroup backends behind one interface (base.CgroupBackend), and the detection that picks one.

Detection reads /proc/self/mountinfo and /proc/self/cgroup: a pure unified hierarchy at the mount
point means v2; v1 controllers mounted (hybrid or legacy) mean v1. Config can force either.
"""

from __future__ import annotations

import os
import re

from ..errors import InternalError
from .base import CgroupBackend
from .v1 import REQUIRED as V1_REQUIRED
from .v1 import V1Backend
from .v2 import V2Backend

__all__ = ["CgroupBackend", "V1Backend", "V2Backend", "detect", "parse_mountinfo", "parse_proc_cgroup"]


def parse_mountinfo(text: str) -> tuple[dict[str, tuple[str, str]], tuple[str, str] | None]:
    """v1 controller -> (mount point, mount root), and the cgroup2 (mount point, root) if mounted."""
    v1: dict[str, tuple[str, str]] = {}
    v2: tuple[str, str] | None = None
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line:
            continue
        sep = fields.index("-")
        root, mount_point, fstype = _unescape(fields[3]), _unescape(fields[4]), fields[sep + 1]
        super_opts = fields[sep + 3].split(",") if len(fields) > sep + 3 else []
        if fstype == "cgroup2" and v2 is None:
            v2 = (mount_point, root)
        elif fstype == "cgroup":
            for opt in super_opts:
                if opt in ("cpu", "cpuacct", "memory", "blkio", "pids", "freezer", "cpuset", "devices"):
                    v1[opt] = (mount_point, root)
    return v1, v2


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_proc_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    """v1 controller -> our path in it, and our cgroup2 path ('0::/...')."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in text.splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":
            v2 = path
        else:
            for controller in controllers.split(","):
                v1[controller] = path
    return v1, v2


def _relative(path: str, mount_root: str) -> str:
    """Our cgroup path as seen below a mount whose root is mount_root (e.g. inside a container)."""
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        return path[len(mount_root):] or "/"
    return path


def _controller_dir(mount_point: str, controller: str) -> str:
    """cgroupspy types nodes by their hierarchy's directory name; prefer the per-controller link
    (/sys/fs/cgroup/cpu) over a joint mount name (/sys/fs/cgroup/cpu,cpuacct)."""
    link = os.path.join(os.path.dirname(mount_point), controller)
    return link if os.path.isdir(link) else mount_point


def detect(version: str = "auto", subtree: str = "", proc: str = "/proc/self") -> CgroupBackend:
    with open(os.path.join(proc, "mountinfo"), encoding="utf-8") as handle:
        v1_mounts, v2_mount = parse_mountinfo(handle.read())
    with open(os.path.join(proc, "cgroup"), encoding="utf-8") as handle:
        v1_own, v2_own = parse_proc_cgroup(handle.read())

    has_v1 = all(c in v1_mounts for c in V1_REQUIRED)
    pure_v2 = v2_mount is not None and not v1_mounts and os.path.exists(os.path.join(v2_mount[0], "cgroup.controllers"))
    if version == "auto":
        version = "v2" if pure_v2 else "v1" if has_v1 else ""
    if version == "v2" and v2_mount is not None and v2_own is not None:
        return V2Backend(v2_mount[0], _relative(v2_own, v2_mount[1]), subtree)
    if version == "v1" and has_v1:
        mounts = {c: _controller_dir(mp, c) for c, (mp, _) in v1_mounts.items()}
        own = {c: _relative(v1_own.get(c, "/"), root) for c, (_, root) in v1_mounts.items()}
        return V1Backend(mounts, own, subtree)
    raise InternalError(
        f"no usable cgroup hierarchy (asked for {version or 'auto'}): need cgroup v2 with delegated "
        f"controllers, or v1 controllers {', '.join(V1_REQUIRED)} mounted"
    )
