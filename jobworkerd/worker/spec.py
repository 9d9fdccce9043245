"""Validation of a JobSpec into a ResolvedSpec: every check a person could fail, with a message saying
what was wrong and what is allowed. Pure apart from look-ups of users, groups, directories and programs."""

from __future__ import annotations

import grp
import math
import os
import pwd
import stat
import unicodedata
from dataclasses import replace

from ..config import DYNAMIC_USER, LimitsConfig
from ..errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from ..cgroups.devices import block_device_for
from .models import JobSpec, Limits, ResolvedSpec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_NAME = 256
MAX_ARGV_BYTES = 1 << 20  # the kernel's own limit is ~2 MiB for argv+env together
MAX_ENV_BYTES = 512 << 10
MAX_LIMIT_INT = (1 << 62)
MIN_MEMORY = 4 << 20  # the job's init (a small Python process) and the program need some room
MIN_PIDS = 1  # the program alone (the job's init is outside the job's cgroup)
MIN_CPU = 0.01  # cores: a CFS quota of 1 ms per 100 ms period
MAX_IOPS = (1 << 32) - 1
MIN_IO = 2  # the kernel's io.max refuses 0 (ERANGE) and 1 (EINVAL)
DYNAMIC_HOME = "/tmp"  # a dynamic uid has no home of its own: the job's /tmp (private in the sandbox)


def dynamic_run_as(uid: int) -> str:
    """How a record shows a job run as a dynamic uid (ResolvedSpec.user, JobSpec.user, the API's run_as): no
    account can have this name (a passwd name has no colon), so it is never mistaken for one."""
    return f"{DYNAMIC_USER}:{uid}"


def dynamic_login(uid: int) -> str:
    """USER and LOGNAME of a job run as a dynamic uid (no colon: some programs build paths and lists of it)."""
    return f"{DYNAMIC_USER}-{uid}"


def _text(value: str, what: str, *, allow_empty: bool = True, max_len: int | None = None) -> str:
    if not allow_empty and not value:
        raise InvalidArgument(f"{what} is empty")
    if "\0" in value:
        raise InvalidArgument(f"{what} contains a NUL byte, which no program can receive")
    if max_len is not None and len(value) > max_len:
        raise InvalidArgument(f"{what} is {len(value)} characters long; at most {max_len} are allowed")
    return value


def validate_name(name: str) -> str:
    _text(name, "job name", max_len=MAX_NAME)
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidArgument("job name contains control characters; use printable text")
    return name


def check_limits(limits: Limits, config: LimitsConfig) -> Limits:
    """Apply defaults, check ranges and configured maxima. Returns the effective limits."""
    default = config.default
    cpu = limits.cpu if limits.cpu is not None else default.cpu
    memory = limits.memory if limits.memory is not None else default.memory
    pids = limits.pids if limits.pids is not None else default.pids
    if cpu is not None and (not math.isfinite(cpu) or cpu <= 0):
        raise InvalidArgument(f"cpu must be a positive number of cores (e.g. 0.5), got {cpu}")
    if cpu is not None and cpu > 1 << 20:
        raise InvalidArgument(f"cpu {cpu} cores is not a real number of cores")
    if cpu is not None and cpu < MIN_CPU:
        raise InvalidArgument(f"cpu must be at least {MIN_CPU} cores (the kernel's smallest CFS quota is 1 ms per "
                              f"100 ms period), got {cpu}")
    if memory is not None and not MIN_MEMORY <= memory <= MAX_LIMIT_INT:
        raise InvalidArgument(f"memory must be between {MIN_MEMORY >> 20}M and {MAX_LIMIT_INT} bytes, got {memory}")
    if pids is not None and not MIN_PIDS <= pids <= 1 << 22:
        raise InvalidArgument(f"pids must be between {MIN_PIDS} and {1 << 22}, got {pids}")
    for name in ("io_read_bps", "io_write_bps", "io_read_iops", "io_write_iops"):
        value = getattr(limits, name)
        if value is not None and not MIN_IO <= value <= MAX_LIMIT_INT:
            raise InvalidArgument(f"{name.replace('_', '-')} must be a number from {MIN_IO} (the kernel's io.max "
                                  f"refuses 0 and 1) to {MAX_LIMIT_INT}, got {value}")
        if value is not None and name.endswith("iops") and value > MAX_IOPS:
            raise InvalidArgument(f"{name.replace('_', '-')} must be at most {MAX_IOPS} (the kernel keeps iops in 32 "
                                  f"bits and would silently take more as no limit), got {value}")
    maximum = config.max
    for what, value, cap in (("cpu", cpu, maximum.cpu), ("memory", memory, maximum.memory), ("pids", pids, maximum.pids)):
        if cap is not None and (value is None or value > cap):
            asked = "no limit" if value is None else value
            raise ResourceExhausted(f"{what} {asked} is over the configured maximum of {cap}; ask for at most {cap}")
    return Limits(
        cpu=cpu,
        memory=memory,
        pids=pids,
        io_device=limits.io_device,
        io_read_bps=limits.io_read_bps,
        io_write_bps=limits.io_write_bps,
        io_read_iops=limits.io_read_iops,
        io_write_iops=limits.io_write_iops,
    )


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(name)) if name.isascii() and name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        if name.startswith(DYNAMIC_USER + ":"):
            raise InvalidArgument(f"run-as user {name!r} is how a job's record shows a dynamic uid, not a user to "
                                  f"ask for: ask for {DYNAMIC_USER!r} (the client's own uid)") from None
        raise InvalidArgument(f"run-as user {name!r} does not exist on this host") from None


def _dynamic(uid: int) -> None:
    """A dynamic uid was free when allocated; an account or group created since in the range would share it."""
    for kind, lookup in (("user", pwd.getpwuid), ("group", grp.getgrgid)):
        try:
            entry = lookup(uid)
        except KeyError:
            continue
        name = entry.pw_name if kind == "user" else entry.gr_name  # type: ignore[union-attr]
        raise FailedPrecondition(
            f"uid {uid}, this client's own (run_as.dynamic_uids), is now also the {kind} {name!r} of this host; "
            f"its jobs cannot run as {DYNAMIC_USER!r} until that {kind} moves out of the range"
        )


def _group(name: str) -> int:
    try:
        return grp.getgrgid(int(name)).gr_gid if name.isascii() and name.isdigit() else grp.getgrnam(name).gr_gid
    except (KeyError, OverflowError):
        raise InvalidArgument(f"run-as group {name!r} does not exist on this host") from None


def _directory(path: str, root: str = "") -> str:
    _text(path, "directory", max_len=4096)
    if not os.path.isabs(path):
        raise InvalidArgument(f"directory {path!r} must be an absolute path")
    path = os.path.normpath(path)
    if not os.path.isdir(root + path):
        inside = f" in the rootfs {root}" if root else ""
        raise InvalidArgument(f"directory {path!r} does not exist{inside} or is not a directory")
    return path


def find_program(command: str, path_var: str, directory: str, uid: int = 0, gids: tuple[int, ...] = (),
                 root: str = "") -> str:
    """The program as the job's execvp would find it: a name with a slash is taken relative to the job's
    directory, others are looked up in PATH, whose relative entries (and empty ones, meaning ".") are the
    job's directory's too, never the daemon's. A file the run-as user (uid, and gids of its groups) may not
    execute is passed over, as execvp goes on after EACCES. With a rootfs, paths are the image's (an
    absolute symlink inside it is followed on the host: the launcher's exec has the last word)."""
    if "/" in command:
        candidate = os.path.normpath(os.path.join(directory, command))
        if not os.path.lexists(root + candidate):
            raise FailedPrecondition(f"program {command!r} does not exist" + (f" in the rootfs {root}" if root else ""))
        return candidate
    refused = ""
    for entry in path_var.split(":"):
        candidate = os.path.normpath(os.path.join(directory, entry or ".", command))
        try:
            st = os.stat(root + candidate)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            continue
        if _may_execute(st, uid, gids):
            return candidate
        refused = refused or candidate
    if refused:
        raise FailedPrecondition(f"program {command!r} is {refused} in PATH, which user {uid} may not execute")
    raise FailedPrecondition(f"program {command!r} not found in PATH ({path_var})")


def _may_execute(st: os.stat_result, uid: int, gids: tuple[int, ...]) -> bool:
    if uid == 0:
        return True  # any x bit will do for root
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)  # the owner's bits alone count for the owner
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _environment(env: dict[str, str], home: str, login: str) -> dict[str, str]:
    result = {"PATH": DEFAULT_PATH, "HOME": home, "USER": login, "LOGNAME": login}
    size = 0
    for key, value in env.items():
        _text(key, "environment variable name", allow_empty=False)
        _text(value, f"environment variable {key!r}")
        if "=" in key:
            raise InvalidArgument(f"environment variable name {key!r} contains '='")
        size += len(key.encode()) + len(value.encode()) + 2
        result[key] = value
    if size > MAX_ENV_BYTES:
        raise InvalidArgument(f"environment is {size} bytes; at most {MAX_ENV_BYTES} are allowed")
    return result


def resolve(spec: JobSpec, limits_config: LimitsConfig, default_user: str, dynamic_uid: int | None = None,
            root: str = "") -> ResolvedSpec:
    """Check everything about a spec before any resource is created for it. A job run as DYNAMIC_USER runs as
    `dynamic_uid` (the owner's, JobStore.dynamic_uid): gid and only group the same number, HOME=/tmp,
    USER=LOGNAME=dynamic-N; its spec (as recorded) names it dynamic:N. `root`: the job's rootfs, in which
    its directory and program are looked up (users and groups are the host's: ids are ids)."""
    validate_name(spec.name)
    _text(spec.command, "command", allow_empty=False, max_len=4096)
    size = len(spec.command.encode())
    for index, arg in enumerate(spec.args):
        _text(arg, f"argument {index + 1}")
        size += len(arg.encode()) + 1
    if size > MAX_ARGV_BYTES:
        raise InvalidArgument(f"command and arguments are {size} bytes; at most {MAX_ARGV_BYTES} are allowed")
    name = _text(spec.user or default_user, "user", allow_empty=False, max_len=256)
    group = _text(spec.group, "group", max_len=256)
    if name == DYNAMIC_USER:
        if dynamic_uid is None:
            raise InvalidArgument(f"run-as user {DYNAMIC_USER!r} needs the uid allocated to the job's owner")
        _dynamic(dynamic_uid)
        uid, shown, home, login = dynamic_uid, dynamic_run_as(dynamic_uid), DYNAMIC_HOME, dynamic_login(dynamic_uid)
        gid = _group(group) if group else uid  # only admins may name a group (authz)
        groups = tuple(sorted({uid, gid}))
        spec = replace(spec, user=shown)
    else:
        user = _user(name)
        uid, shown, home, login = user.pw_uid, user.pw_name, user.pw_dir, user.pw_name
        gid = _group(group) if group else user.pw_gid
        groups = tuple(sorted(set(os.getgrouplist(user.pw_name, gid))))
    directory = _directory(spec.directory or "/", root)
    env = _environment(spec.env, home, login)
    limits = check_limits(spec.limits, limits_config)
    io_target = None
    if limits.has_io:
        io_target = block_device_for(_text(limits.io_device or root + directory, "io device", max_len=4096))
    elif limits.io_device:
        raise InvalidArgument("io device given without any io limit (io read/write bps or iops)")
    program = find_program(spec.command, env["PATH"], directory, uid, (gid, *groups), root)
    return ResolvedSpec(
        spec=spec,
        limits=limits,
        program=program,
        argv=(spec.command, *spec.args),
        uid=uid,
        gid=gid,
        groups=groups,
        user=shown,
        directory=directory,
        env=env,
        io_target=io_target,
    )
