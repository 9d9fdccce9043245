"""Resolve where io limits apply: the whole disk behind a path (partitions resolve to their disk)."""

from __future__ import annotations

import os
import stat

from ..errors import InvalidArgument
from ..resources import IOTarget


def block_device_for(path: str, sys_dev_block: str = "/sys/dev/block",
                     hint: str = "pass --io-device with a path on a real disk") -> IOTarget:
    """The disk (major:minor) holding `path`, or the disk of a block device node given directly. `hint` ends
    the message when `path` is on no block device: what the caller can do about it."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InvalidArgument(f"io device {path!r}: {exc.strerror}") from None
    dev = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
    major, minor = os.major(dev), os.minor(dev)
    entry = os.path.join(sys_dev_block, f"{major}:{minor}")
    if not os.path.exists(entry):
        raise InvalidArgument(
            f"io limits need a block device, but {path!r} is on device {major}:{minor}, which is not one "
            f"(tmpfs, overlay or a network filesystem?); {hint}"
        )
    if os.path.exists(os.path.join(entry, "partition")):
        # /sys/dev/block/MAJ:MIN is a link into .../<disk>/<partition>; the disk's dev file is one level up.
        with open(os.path.join(os.path.realpath(entry), "..", "dev"), encoding="ascii") as handle:
            major, minor = (int(x) for x in handle.read().strip().split(":"))
    return IOTarget(major, minor)
