"""The run directory: job output lives in <run_dir>/jobs/<id>/, on a tmpfs of its own whose size is the
output budget (limits.output_total), mounted by the daemon. A full budget is then the daemon's problem
only: the host's /run (10% of RAM on Debian) cannot fill, and logind, udev and resolved never notice.

The mount is made in the host's mount namespace and outlives the daemon, so output survives daemon
restarts (not reboots); a restarted daemon finds its tmpfs and resizes it if the budget changed. The
tree is root's alone (0700 directories, 0600 files), and each job's mount namespace detaches the mount,
so no job, root included, can reach another job's output through the filesystem.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil

from ..errors import InternalError, ResourceExhausted

log = logging.getLogger("jobworkerd.rundir")

MIN_FREE = 1 << 20  # a start is refused when the budget has less than this left
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 2, 4, 8, 32
FS_TYPE = b"tmpfs"
FS_SOURCE = b"jobworkerd-output"

_libc = ctypes.CDLL(None, use_errno=True)


def mount_point_type(path: str) -> str | None:
    """The filesystem type mounted at `path` (the topmost mount there), or None if it is no mount point."""
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            fields = line.split()
            mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040: blank
            if mount_point == path:
                found = fields[fields.index("-") + 1]
    return found


class RunDir:
    def __init__(self, run_dir: str, budget: str):
        self.path = os.path.realpath(run_dir)
        self.jobs_dir = os.path.join(self.path, "jobs")
        self.budget = budget  # tmpfs size: bytes, or "N%" of RAM

    def open(self) -> None:
        if os.path.ismount(self.path):  # /run, /tmp, /: made root-only below, the host would break
            raise InternalError(f"run_dir {self.path} is a mount point of the host; give jobworkerd a directory "
                                f"of its own there, e.g. {os.path.join(self.path, 'jobworkerd')}")
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        os.chmod(self.path, 0o700)  # older versions (and the unit's RuntimeDirectoryMode) made it 0755
        os.makedirs(self.jobs_dir, mode=0o700, exist_ok=True)
        fstype = mount_point_type(self.jobs_dir)
        if fstype == "tmpfs":
            self._resize()
        elif fstype is None:
            self._mount_fresh()
        else:
            raise InternalError(f"{self.jobs_dir} is a {fstype} mount; it must be jobworkerd's own tmpfs")
        os.chmod(self.jobs_dir, 0o700)

    def _options(self) -> bytes:
        return f"size={self.budget},mode=0700".encode()

    def _mount_fresh(self) -> None:
        aside = None
        if os.listdir(self.jobs_dir):  # output of a version without the budget: carried over below
            aside = f"{self.jobs_dir}.before-budget"
            os.rename(self.jobs_dir, aside)
            os.mkdir(self.jobs_dir, 0o700)
        flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        if _libc.mount(FS_SOURCE, self.jobs_dir.encode(), FS_TYPE, flags, self._options()) != 0:
            err = ctypes.get_errno()
            raise InternalError(f"cannot mount the output tmpfs (size {self.budget}) on {self.jobs_dir}: "
                                f"{os.strerror(err)}")
        log.info("output budget: a tmpfs of %s mounted on %s", self.budget, self.jobs_dir)
        if aside is not None:
            self._carry_over(aside)

    def _carry_over(self, aside: str) -> None:
        kept = []
        for entry in sorted(os.scandir(aside), key=lambda e: e.stat().st_mtime, reverse=True):
            try:
                shutil.copytree(entry.path, os.path.join(self.jobs_dir, entry.name))
            except (OSError, shutil.Error):
                shutil.rmtree(os.path.join(self.jobs_dir, entry.name), ignore_errors=True)
                kept.append(entry.name)
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
        if kept:
            log.warning("%d job(s)' older output did not fit the output budget and stays in %s", len(kept), aside)
        else:
            os.rmdir(aside)

    def _resize(self) -> None:
        flags = MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC
        if _libc.mount(FS_SOURCE, self.jobs_dir.encode(), FS_TYPE, flags, self._options()) != 0:
            err = ctypes.get_errno()  # EINVAL: it holds more than the new size; keep the old one
            log.warning("cannot resize the output tmpfs on %s to %s (%s); keeping its size %d bytes",
                        self.jobs_dir, self.budget, os.strerror(err), self.size())
        log.info("output budget: reusing the tmpfs on %s (%d bytes)", self.jobs_dir, self.size())

    def size(self) -> int:
        st = os.statvfs(self.jobs_dir)
        return st.f_blocks * st.f_frsize

    def free(self) -> int:
        st = os.statvfs(self.jobs_dir)
        return st.f_bavail * st.f_frsize

    def check_room(self) -> None:
        free = self.free()
        if free < MIN_FREE:
            raise ResourceExhausted(
                f"the output budget (limits.output_total = {self.budget}, {self.size()} bytes) is full: "
                f"{free} bytes are left in {self.jobs_dir}; no new job starts until finished jobs' output is "
                "removed (output_retention) or the budget is raised"
            )
