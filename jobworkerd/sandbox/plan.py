"""From a job's sandbox request to what the launcher carries out (jobworkerd/launcher/sandbox.py): the
profile the caller's role allows, every path checked, and the spec fields the launcher reads. The
daemon does everything here once per start (the seccomp program once per process), so the launcher
only makes system calls."""

from __future__ import annotations

import functools
import os
import re
import stat
from dataclasses import dataclass

from ..config import SandboxConfig, SandboxProfile
from ..errors import FailedPrecondition, InvalidArgument, PermissionDenied
from .options import PRIVILEGED, SECCOMP_CHOICES, Mount, SandboxRequest
from .seccomp import compile_program

# docker's default capability set (moby's oci/caps/defaults.go): what a root job that is not privileged
# keeps. Without CAP_SYS_ADMIN it cannot mount, without CAP_SYS_MODULE load modules; CAP_MKNOD is
# harmless because every writable mount in the job is nodev.
DOCKER_DEFAULT_CAPS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6,
    "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18,
    "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}
ROOT_CAPS_MASK = sum(1 << bit for bit in DOCKER_DEFAULT_CAPS.values())
ROOTFS_MOUNT_POINTS = ("/proc", "/dev", "/sys", "/run")  # must exist in an image: its root is read-only
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/run", "/dev/shm")  # the job's own tmpfs: the launcher makes mount points there
# Never made writable as a job's directory: the host's kernel interfaces (a root job in /sys/fs/cgroup or
# /proc/sys would write the cgroup tree or sysctls). The job works there in its own read-only views.
KERNEL_DIRS = ["/proc", "/sys", "/dev"]
HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$")
MAX_MOUNTS = 64
MAX_DEVICES = 16


@dataclass(frozen=True)
class Sandbox:
    """A start's sandbox, decided: the profile (and its name, for the record) and the checked request."""

    profile_name: str
    profile: SandboxProfile
    request: SandboxRequest
    seccomp: bool


def decide(request: SandboxRequest, is_admin: bool, config: SandboxConfig) -> Sandbox:
    """The caller's role decides what it may loosen: PERMISSION_DENIED naming the option otherwise."""
    role_name = "admin" if is_admin else "user"
    role = config.role(is_admin)
    name = request.profile or role.profile
    if name not in config.profiles:
        raise InvalidArgument(f"no sandbox profile {name!r}; the config has: {', '.join(config.profiles)}")
    if name not in role.allowed:
        hint = " (--privileged is for admins)" if name == PRIVILEGED else ""
        raise PermissionDenied(f"sandbox profile {name!r} is not allowed to {role_name} jobs{hint}; "
                               f"allowed: {', '.join(role.allowed)}")
    if request.seccomp not in SECCOMP_CHOICES:
        raise InvalidArgument(f"seccomp must be 'default' or 'unconfined', got {request.seccomp!r}")
    if request.seccomp == "unconfined" and not is_admin:
        raise PermissionDenied("--seccomp unconfined is for admins only")
    if request.devices and not is_admin:
        raise PermissionDenied("--device is for admins only")
    if len(request.mounts) > MAX_MOUNTS or len(request.devices) > MAX_DEVICES:
        raise InvalidArgument(f"at most {MAX_MOUNTS} mounts and {MAX_DEVICES} devices per job")
    if request.hostname and not HOSTNAME.match(request.hostname):
        raise InvalidArgument(f"hostname {request.hostname!r}: 1 to 64 letters, digits, '.' and '-', starting "
                              "with a letter or digit")
    if not is_admin:
        for mount in request.mounts:
            _check_user_mount(mount, config.user_mount_prefixes)
        if request.rootfs and _real(request.rootfs, "rootfs") not in config.user_rootfs:
            allowed = ", ".join(config.user_rootfs) or "(none are configured: sandbox.user_rootfs)"
            raise PermissionDenied(f"rootfs {request.rootfs!r} is not an image users may run in; allowed: {allowed}")
    profile = config.profiles[name]
    seccomp = profile.seccomp == "default" and request.seccomp != "unconfined" and not profile.privileged
    return Sandbox(name, profile, request, seccomp)


def _real(path: str, what: str) -> str:
    if not path or not os.path.isabs(path) or "\t" in path or "\n" in path or "\0" in path:
        raise InvalidArgument(f"{what} {path!r} must be an absolute path without tabs, newlines or NULs")
    return os.path.realpath(path)


def _check_user_mount(mount: Mount, prefixes: tuple[str, ...]) -> None:
    source = _real(mount.source, "mount source")
    if not any(source == p or source.startswith(p.rstrip("/") + "/") for p in prefixes):
        allowed = ", ".join(prefixes) or "(none are configured: sandbox.user_mount_prefixes)"
        raise PermissionDenied(f"mount source {mount.source!r} is not below a directory users may mount from; "
                               f"allowed: {allowed}")


def launcher_fields(
    sandbox: Sandbox,
    *,
    job_id: str,
    uid: int,
    directory: str,
    hidden: list[str],
    cgroup_view: list[tuple[str, str, str]],
    cgroup_links: list[tuple[str, str]],
) -> list[tuple[str, str]]:
    """The spec fields of jobworkerd/launcher/sandbox.py's Sandbox. Raises InvalidArgument or
    FailedPrecondition for a path that cannot be used, before anything is created for the job."""
    request, profile = sandbox.request, sandbox.profile
    fields = [("hostname", request.hostname or job_id)]
    root = _rootfs(request.rootfs) if request.rootfs else ""
    binds = _binds(sandbox, root, directory, hidden)
    fields += [("bind", f"{source}\t{target}\t{'ro' if ro else 'rw'}") for source, target, ro in binds]
    fields.append(("rootfs", root))
    if profile.privileged:
        return fields + [("privileged", "1")]
    fields.append(("root_ro", "1" if profile.read_only_root else "0"))
    fields += [("tmp_size", f"size={profile.tmp_size}")]
    fields += [("caps", f"{ROOT_CAPS_MASK if uid == 0 else 0:x}")]
    fields += [("device", _device(path)) for path in request.devices]
    fields += [("cgview", "\t".join(view)) for view in cgroup_view]
    fields += [("cglink", "\t".join(link)) for link in cgroup_links]
    if sandbox.seccomp:
        fields.append(("seccomp", _seccomp_field()))
    return fields


@functools.lru_cache(maxsize=None)
def _seccomp_field() -> str:
    """The compiled filter as the spec carries it (hex: the spec's fields are NUL-separated), once."""
    return compile_program().hex()


def _rootfs(path: str) -> str:
    root = _real(path, "rootfs")
    if not os.path.isdir(root) or root == "/":
        raise FailedPrecondition(f"rootfs {path!r} is not a directory tree other than /")
    missing = [p for p in ROOTFS_MOUNT_POINTS if not os.path.isdir(root + p)]
    if missing:
        raise FailedPrecondition(f"rootfs {path!r} lacks the directories {', '.join(missing)}, which the job's "
                                 "/proc, /dev, /sys and /run are mounted on (its root is read-only)")
    return root


def _binds(sandbox: Sandbox, root: str, directory: str, hidden: list[str]) -> list[tuple[str, str, bool]]:
    """The job's own directory and the profile's writable paths (read-write, when they exist on the host
    and the job runs on the host's /), then the request's mounts: (host source, target in the job, ro)."""
    binds: list[tuple[str, str, bool]] = []
    if not root and not sandbox.profile.privileged:
        for path in (directory, *sandbox.profile.writable_paths):
            real = os.path.realpath(path)
            if real != "/" and os.path.isdir(real) and not _under(real, hidden) and not _under(real, KERNEL_DIRS):
                binds.append((real, real, False))
    for mount in sandbox.request.mounts:
        source = _real(mount.source, "mount source")
        target = os.path.normpath(mount.target)
        if not os.path.isabs(target) or "\t" in target or "\n" in target or target == "/":
            raise InvalidArgument(f"mount target {mount.target!r} must be an absolute path other than /, "
                                  "without tabs or newlines")
        if not os.path.exists(source):
            raise FailedPrecondition(f"mount source {mount.source!r} does not exist")
        if _under(source, hidden):
            raise PermissionDenied(f"mount source {mount.source!r} is inside the daemon's own directories")
        in_job = (root or "") + target
        if _under(target, list(PRIVATE_DIRS)) and not sandbox.profile.privileged:
            pass  # made by the launcher in the job's own tmpfs
        elif not os.path.exists(in_job) or os.path.isdir(in_job) != os.path.isdir(source):
            kind = "directory" if os.path.isdir(source) else "file"
            raise FailedPrecondition(f"mount target {mount.target!r} must already exist in the job's filesystem as "
                                     f"a {kind}, like its source (the job's / is read-only)")
        binds.append((source, target, mount.read_only))
    return binds


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _device(path: str) -> str:
    real = _real(path, "device")
    try:
        st = os.stat(real)
    except OSError as exc:
        raise FailedPrecondition(f"device {path!r}: {exc.strerror}") from None
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) or not real.startswith("/dev/"):
        raise InvalidArgument(f"device {path!r} is not a character or block device under /dev")
    kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
    mode = stat.S_IMODE(st.st_mode)
    return f"{real}\t{kind}\t{os.major(st.st_rdev)}\t{os.minor(st.st_rdev)}\t{mode:o}\t{st.st_uid}\t{st.st_gid}"
