"""Daemon configuration: frozen dataclasses loaded from YAML (config/config.yaml documents every key).

Each value goes through a small validating converter; an unknown key is an error that names it,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import yaml

from .units import parse_duration, parse_size
from .resources import JobGroup, Limits

DEFAULT_CONFIG_PATH = "/etc/jobworkerd/config.yaml"


class ConfigError(ValueError):
    """The configuration file is unusable; the message names the key and what is accepted."""


def _opt(convert: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda value, key: None if value is None else convert(value, key)


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _path(value: Any, key: str) -> str:
    text = _str(value, key)
    if not os.path.isabs(text):
        raise ConfigError(f"{key}: expected an absolute path, got {text!r}")
    return text


def _size(value: Any, key: str) -> int:
    try:
        return parse_size(value, key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _duration(value: Any, key: str) -> float:
    try:
        return parse_duration(value, key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _size_or_percent(value: Any, key: str) -> str:
    """A size (256M, 2G) or a share of RAM ("25%"), as tmpfs's size= option takes it."""
    if isinstance(value, str) and value.strip().endswith("%"):
        number = value.strip()[:-1]
        if not number.isdigit() or not 0 < int(number) <= 100:
            raise ConfigError(f"{key}: a share of RAM must be a whole percentage from 1% to 100%, got {value!r}")
        return f"{int(number)}%"
    size = _size(value, key)
    if size < 1 << 20:
        raise ConfigError(f"{key}: at least 1M, got {value!r}")
    return str(size)


def _ram_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _size_or_share_of_ram(value: Any, key: str) -> int:
    """A size (4G), or a share of this machine's RAM ("50%") resolved to bytes (whole pages) at load."""
    if isinstance(value, str) and value.strip().endswith("%"):
        number = value.strip()[:-1]
        if not number.isdigit() or not 0 < int(number) <= 100:
            raise ConfigError(f"{key}: a share of RAM must be a whole percentage from 1% to 100%, got {value!r}")
        page = os.sysconf("SC_PAGE_SIZE")
        return _ram_bytes() * int(number) // 100 // page * page
    return _size(value, key)


MAX_STOP_GRACE = 3600.0  # JobManager.stop refuses longer grace periods


def _stop_grace(value: Any, key: str) -> float:
    seconds = _duration(value, key)
    if seconds > MAX_STOP_GRACE:
        raise ConfigError(f"{key}: at most {MAX_STOP_GRACE:.0f}s (1h), got {value!r}")
    return seconds


def _positive_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}: expected a positive number, got {value!r}")
    return float(value)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}: expected a positive whole number, got {value!r}")
    return value


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    return tuple(value)


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _int_between(low: int, high: int) -> Callable[[Any, str], int]:
    def convert(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{key}: expected a whole number from {low} to {high}, got {value!r}")
        return value

    return convert


def split_host_port(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9464' -> ('127.0.0.1', 9464); '[::1]:9464' -> ('::1', 9464); ValueError otherwise.
    The host is an IP address or `localhost`: whether it is loopback must not depend on name resolution."""
    host, colon, port = listen.rpartition(":")
    if not colon or not port.isdigit() or not port.isascii() or int(port) > 65535:
        raise ValueError("expected host:port with a port from 0 to 65535, e.g. 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), int(port)
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
    if host == "localhost":
        return host, int(port)
    if not host:
        raise ValueError("the host is missing: name an address, e.g. 127.0.0.1 (or 0.0.0.0 for every "
                         "IPv4 interface, served with TLS)")
    if ":" in host:
        raise ValueError("write an IPv6 address in brackets, e.g. [::1]:9464")
    try:
        return str(ipaddress.IPv4Address(host)), int(port)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address; name an IP address (127.0.0.1, [::1], 0.0.0.0) or "
                         "localhost, so that whether it is loopback (plain HTTP) or not (TLS) does not depend on "
                         "name resolution") from None


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def _metrics_listen(value: Any, key: str) -> str:
    text = _str(value, key)
    if text:
        try:
            split_host_port(text)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}; got {text!r} (\"\" turns metrics off)") from None
    return text


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def convert(value: Any, key: str) -> str:
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
        return value

    return convert


@dataclass(frozen=True)
class TLSConfig:
    ca: str = "/etc/jobworkerd/tls/ca.crt"
    cert: str = "/etc/jobworkerd/tls/server.crt"
    key: str = "/etc/jobworkerd/tls/server.key"

    _convert = {"ca": _path, "cert": _path, "key": _path}


@dataclass(frozen=True)
class CgroupConfig:
    version: str = "auto"  # auto | v1 | v2
    # Jobs live in <own cgroup>/<subtree>/jobs/<group>/<id>. Empty under systemd (the unit's cgroup is ours).
    subtree: str = ""

    _convert = {"version": _choice("auto", "v1", "v2"), "subtree": _str}


@dataclass(frozen=True)
class LimitValues:
    cpu: float | None = None
    memory: int | None = None
    pids: int | None = None

    _convert = {"cpu": _opt(_positive_float), "memory": _opt(_size), "pids": _opt(_positive_int)}


# What the kernel takes for an io ceiling: io.max refuses 0 and 1 (ERANGE, EINVAL), and keeps iops in 32
# bits, silently taking more as no limit. Bytes per second are bounded like a job's io limits.
MIN_IO_CEILING = 2
MAX_IO_BPS = 1 << 62
MAX_IO_IOPS = (1 << 32) - 1


def _io_bps(value: Any, key: str) -> int:
    rate = _size(value, key)
    if not MIN_IO_CEILING <= rate <= MAX_IO_BPS:
        raise ConfigError(f"{key}: bytes per second from {MIN_IO_CEILING} (the kernel's io.max refuses 0 and 1) "
                          f"to {MAX_IO_BPS}, got {value!r}")
    return rate


def _io_iops(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_IO_CEILING <= value <= MAX_IO_IOPS:
        raise ConfigError(f"{key}: a whole number of operations per second from {MIN_IO_CEILING} (the kernel's "
                          f"io.max refuses 0 and 1) to {MAX_IO_IOPS} (the kernel keeps iops in 32 bits and would "
                          f"silently take more as no limit), got {value!r}")
    return value


@dataclass(frozen=True)
class CeilingValues:
    """What all the jobs of one group (a user's, or the admins') may use together; None = no ceiling.
    The io ceilings apply to one disk: the one holding io_device (None: the state directory)."""

    cpu: float | None = None
    memory: int | None = None
    pids: int | None = None
    io_device: str | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    io_read_iops: int | None = None
    io_write_iops: int | None = None

    _convert = {
        "cpu": _opt(_positive_float), "memory": _opt(_size_or_share_of_ram), "pids": _opt(_positive_int),
        "io_device": _opt(_path), "io_read_bps": _opt(_io_bps), "io_write_bps": _opt(_io_bps),
        "io_read_iops": _opt(_io_iops), "io_write_iops": _opt(_io_iops),
    }

    def limits(self, default_io_device: str | None = None) -> Limits:
        """As the Limits a group's cgroup is given; io_device only with an io ceiling (default_io_device if unset)."""
        io = {"io_read_bps": self.io_read_bps, "io_write_bps": self.io_write_bps,
              "io_read_iops": self.io_read_iops, "io_write_iops": self.io_write_iops}
        device = (self.io_device or default_io_device) if any(v is not None for v in io.values()) else None
        return Limits(cpu=self.cpu, memory=self.memory, pids=self.pids, io_device=device, **io)


def _user_ceilings(value: Any, key: str) -> dict[str, dict[str, Any]]:
    """limits.users: {NAME: {cpu, memory, pids, io_...}}; each key given replaces limits.per_user's (null = none)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping of user names to ceilings, got {value!r}")
    users: dict[str, dict[str, Any]] = {}
    for name, ceilings in value.items():
        path = f"{key}.{name}"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{key}: user names are certificate CNs (non-empty strings), got {name!r}")
        if not isinstance(ceilings, dict):
            raise ConfigError(f"{path}: expected a mapping with cpu, memory, pids or io ceilings, got {ceilings!r}")
        for field_name in ceilings:
            if field_name not in CeilingValues._convert:
                raise ConfigError(f"unknown config key '{path}.{field_name}' (known here: "
                                  f"{', '.join(CeilingValues._convert)})")
        users[name] = {k: CeilingValues._convert[k](v, f"{path}.{k}") for k, v in ceilings.items()}
    return users


@dataclass(frozen=True)
class LimitsConfig:
    # A job that names no pids limit gets this one, so a fork bomb is contained by default.
    default: LimitValues = field(default_factory=lambda: LimitValues(pids=1024))
    max: LimitValues = field(default_factory=LimitValues)
    output_cap: int = 256 << 20  # bytes of output kept per job; the job is killed when it writes more
    # All jobs' output together: the size of the run directory's own tmpfs (bytes, or "N%" of RAM).
    output_total: str = "25%"
    # Ceilings of each user's jobs together (the group jobs/user-<name>), of all admins' jobs together
    # (jobs/admin), and per-user overrides of per_user.
    per_user: CeilingValues = field(default_factory=lambda: CeilingValues(memory=_size_or_share_of_ram("50%", ""), pids=4096))
    admins: CeilingValues = field(default_factory=lambda: CeilingValues(memory=_size_or_share_of_ram("90%", "")))
    users: dict[str, dict[str, Any]] = field(default_factory=dict)

    _convert = {
        "default": lambda v, k: _section(LimitValues, v, k),
        "max": lambda v, k: _section(LimitValues, v, k),
        "output_cap": _size,
        "output_total": lambda v, k: _size_or_percent(v, k),
        "per_user": lambda v, k: _section(CeilingValues, v, k),
        "admins": lambda v, k: _section(CeilingValues, v, k),
        "users": _user_ceilings,
    }

    def ceiling(self, group: JobGroup, default_io_device: str | None = None) -> Limits:
        """The ceilings of a job group: limits.admins, or limits.per_user with the user's overrides. An io
        ceiling applies to the disk of its io_device, or else of default_io_device (the state directory)."""
        values = self.admins if group.admin else dataclasses.replace(self.per_user, **self.users.get(group.name, {}))
        return values.limits(default_io_device)

    def configured_ceilings(self, default_io_device: str | None = None) -> list[tuple[str, Limits]]:
        """Every set of ceilings the config can give a group, by the key that sets it (checked at start)."""
        found = [("limits.per_user", self.per_user.limits(default_io_device)),
                 ("limits.admins", self.admins.limits(default_io_device))]
        for name, overrides in self.users.items():
            found.append((f"limits.users.{name}", dataclasses.replace(self.per_user, **overrides).limits(default_io_device)))
        return found


# run_as: not an account but "the calling client's own uid", allocated from run_as.dynamic_uids (README
# "What a job gets", user). A real account of this name can only be named by its number.
DYNAMIC_USER = "dynamic"
MAX_DYNAMIC_UID = (1 << 31) - 2  # as systemd: no uid_t that reads as negative, nor (uid_t)-1


class UidRange(NamedTuple):
    low: int
    high: int

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


def _uid_range(value: Any, key: str) -> UidRange:
    """"LOW-HIGH", both included: uids (and gids: gid = uid) the daemon may allocate to clients."""
    text = value.strip() if isinstance(value, str) else ""
    low, dash, high = text.partition("-")
    if not dash or not all(part.strip().isascii() and part.strip().isdigit() for part in (low, high)):
        raise ConfigError(f"{key}: expected a range of uids LOW-HIGH, e.g. \"61184-65519\", got {value!r}")
    uids = UidRange(int(low), int(high))
    if uids.low == 0:
        raise ConfigError(f"{key}: the range must not include uid 0 (root), got {value!r}")
    if uids.low > uids.high:
        raise ConfigError(f"{key}: the low end must not be above the high end, got {value!r}")
    if uids.high > MAX_DYNAMIC_UID:
        raise ConfigError(f"{key}: uids go up to {MAX_DYNAMIC_UID}, got {value!r}")
    return uids


@dataclass(frozen=True)
class RunAsConfig:
    # Non-admin jobs that name no user. "dynamic": the client's own uid (DYNAMIC_USER).
    default_user: str = DYNAMIC_USER
    # Accounts a non-admin may name, besides "dynamic" (always allowed); root is never allowed to them.
    allowed_users: tuple[str, ...] = ("nobody",)
    admin_default_user: str = "root"
    # Where clients' own uids come from (systemd's DynamicUser range); one per client, kept for good.
    dynamic_uids: UidRange = UidRange(61184, 65519)

    _convert = {"default_user": _str, "allowed_users": _str_list, "admin_default_user": _str,
                "dynamic_uids": _uid_range}


def _opt_duration(value: Any, key: str) -> float | None:
    if value is None:
        return None
    seconds = _duration(value, key)
    if seconds <= 0:
        raise ConfigError(f"{key}: expected a positive duration (or null for none), got {value!r}")
    return seconds


@dataclass(frozen=True)
class RoleQuotas:
    """What one client of a role may hold at once (null: no bound), and its jobs' deadlines."""

    running_jobs: int | None = 32  # jobs not finished yet (a start over it is refused)
    streams: int | None = 64  # open StreamOutput calls
    waits: int | None = 64  # open WaitJob calls
    starts_per_second: float | None = 5.0  # a token bucket: this rate...
    start_burst: int = 20  # ...with this many starts at once
    timeout: float | None = None  # deadline of a job that asks for none
    max_timeout: float | None = None  # the longest deadline a job may ask for (and the default's cap)

    _convert = {
        "running_jobs": _opt(_positive_int), "streams": _opt(_positive_int), "waits": _opt(_positive_int),
        "starts_per_second": _opt(_positive_float), "start_burst": _positive_int,
        "timeout": _opt_duration, "max_timeout": _opt_duration,
    }


@dataclass(frozen=True)
class AdminQuotas(RoleQuotas):
    running_jobs: int | None = 256
    streams: int | None = 512
    waits: int | None = 512
    starts_per_second: float | None = 50.0
    start_burst: int = 100


def _user_overrides(value: Any, key: str) -> dict[str, dict[str, Any]]:
    """users: {NAME: {quota: value}}: only the quotas given differ from the user's role."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping of user names to quotas, got {value!r}")
    overrides = {}
    for name, quotas in value.items():
        path = f"{key}.{name}"
        if not isinstance(quotas, dict):
            raise ConfigError(f"{path}: expected a mapping of quotas, got {quotas!r}")
        known = {f.name for f in dataclasses.fields(RoleQuotas)}
        for field_name in quotas:
            if field_name not in known:
                raise ConfigError(f"unknown config key {path}.{field_name!r} (known here: {', '.join(sorted(known))})")
        overrides[str(name)] = {k: RoleQuotas._convert[k](v, f"{path}.{k}") for k, v in quotas.items()}
    return overrides


@dataclass(frozen=True)
class QuotasConfig:
    # Defaults for a 2-core host: a user's 32 running jobs already oversubscribe the cores 16 times, and
    # each holds a cgroup, an init (~0.8 MB) and a watch; 64 streams or waits cost the daemon 64 fds and
    # HTTP/2 streams; 5 starts/s (20 at once) is a busy CI runner's pace and keeps one user's loop of
    # starts from taking the daemon's start path from everyone else (a start costs ~5 ms of it).
    user: RoleQuotas = field(default_factory=RoleQuotas)
    admin: RoleQuotas = field(default_factory=AdminQuotas)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-user overrides, by certificate CN

    _convert = {
        "user": lambda v, k: _section(RoleQuotas, v, k),
        "admin": lambda v, k: _section(AdminQuotas, v, k),
        "users": _user_overrides,
    }

    def for_client(self, name: str, is_admin: bool) -> RoleQuotas:
        base = self.admin if is_admin else self.user
        return dataclasses.replace(base, **self.users[name]) if name in self.users else base


@dataclass(frozen=True)
class HistoryConfig:
    # A busy host (a job a second) keeps about 3 hours of records at 10000; a quiet one 30 days.
    max_records: int | None = 10000  # finished records kept in all (the oldest go first)
    max_age: float | None = 30 * 86400.0  # finished records older than this go
    idempotency_window: float = 86400.0  # how long a StartJob idempotency key keeps returning its job

    _convert = {"max_records": _opt(_positive_int), "max_age": _opt_duration, "idempotency_window": _duration}


@dataclass(frozen=True)
class EventsConfig:
    history: int = 10000  # job state changes kept for WatchJobs clients that resume from a revision

    _convert = {"history": _positive_int}


@dataclass(frozen=True)
class MetricsConfig:
    # host:port of the Prometheus endpoint; "" turns it off. Plain HTTP on a loopback address; any other
    # address is served with TLS (tls.cert/tls.key) and requires client certificates from tls.ca.
    listen: str = "127.0.0.1:9464"
    # jobworkerd_jobs_running{user=...}: the first max_users owners get a label each, later ones user="other".
    user_labels: bool = False
    max_users: int = 20
    # jobworkerd_job_*{job_id=...} for at most per_job_max running jobs (the longest running).
    per_job: bool = False
    per_job_max: int = 50

    _convert = {
        "listen": _metrics_listen,
        "user_labels": _bool,
        "max_users": _int_between(1, 1000),
        "per_job": _bool,
        "per_job_max": _int_between(1, 10000),
    }

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]

    @property
    def tls(self) -> bool:
        """Served with TLS and client certificates: every address but loopback."""
        return bool(self.listen) and not is_loopback(self.host)


@dataclass(frozen=True)
class SandboxProfile:
    """What a job of this profile gets (docs/SECURITY.md, "The sandbox"). A confined profile is every
    hardening at once; privileged (admins) drops all of it but the PID, mount, network, UTS and IPC
    namespaces and the cgroup limits."""

    privileged: bool = False  # every capability, no seccomp, the host's /dev /run /tmp /sys, a writable /
    seccomp: str = "default"  # default: the built-in filter (jobworkerd/sandbox/seccomp.py); unconfined: none
    read_only_root: bool = True  # the host's / read-only but for the job's directory and writable_paths
    tmp_size: int = 256 << 20  # each private tmpfs (/tmp, /var/tmp, /dev/shm, /run); charged to the job's memory
    writable_paths: tuple[str, ...] = ()  # host directories writable in every job of this profile

    _convert = {
        "privileged": _bool, "seccomp": _choice("default", "unconfined"), "read_only_root": _bool,
        "tmp_size": lambda v, k: _size_at_least(v, k, 1 << 20), "writable_paths": lambda v, k: _path_list(v, k),
    }

    @property
    def confined(self) -> bool:
        return not self.privileged and self.seccomp == "default" and self.read_only_root


@dataclass(frozen=True)
class SandboxRole:
    profile: str = "default"  # what a job of this role gets when it names none
    allowed: tuple[str, ...] = ("default",)  # the profiles it may name

    _convert = {"profile": _str, "allowed": _str_list}


BUILTIN_PROFILES = {
    "default": SandboxProfile(),
    "privileged": SandboxProfile(privileged=True, seccomp="unconfined", read_only_root=False),
}


@dataclass(frozen=True)
class SandboxConfig:
    profiles: dict[str, SandboxProfile] = field(default_factory=lambda: dict(BUILTIN_PROFILES))
    user: SandboxRole = field(default_factory=SandboxRole)
    admin: SandboxRole = field(default_factory=lambda: SandboxRole("default", ("default", "privileged")))
    user_mount_prefixes: tuple[str, ...] = ()  # a user's --mount sources must be below one of these
    user_rootfs: tuple[str, ...] = ()  # the image directories a user may name with --rootfs

    _convert = {
        "profiles": lambda v, k: _profiles(v, k),
        "user": lambda v, k: _section(SandboxRole, v, k),
        "admin": lambda v, k: _section(SandboxRole, v, k),
        "user_mount_prefixes": lambda v, k: _path_list(v, k),
        "user_rootfs": lambda v, k: _path_list(v, k),
    }

    def role(self, is_admin: bool) -> SandboxRole:
        return self.admin if is_admin else self.user


def _size_at_least(value: Any, key: str, least: int) -> int:
    size = _size(value, key)
    if size < least:
        raise ConfigError(f"{key}: at least {least >> 20}M, got {value!r}")
    return size


def _path_list(value: Any, key: str) -> tuple[str, ...]:
    return tuple(os.path.normpath(_path(v, key)) for v in _str_list(value, key))


def _profiles(value: Any, key: str) -> dict[str, SandboxProfile]:
    """The built-in profiles, and those the config adds or redefines."""
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping of profile names to profiles, got {value!r}")
    profiles = dict(BUILTIN_PROFILES)
    for name, profile in value.items():
        profiles[str(name)] = _section(SandboxProfile, profile, f"{key}.{name}")
    return profiles


def _sandbox(value: Any, key: str) -> SandboxConfig:
    """The section, with its cross-checks: roles name profiles that exist, and a user-role job can never
    be given a loosened profile, whatever the config says."""
    sandbox = _section(SandboxConfig, value, key)
    for role_name in ("user", "admin"):
        role = getattr(sandbox, role_name)
        for name in (role.profile, *role.allowed):
            if name not in sandbox.profiles:
                raise ConfigError(f"{key}.{role_name}: no profile {name!r} (profiles: {', '.join(sandbox.profiles)})")
        if role.profile not in role.allowed:
            raise ConfigError(f"{key}.{role_name}.profile: {role.profile!r} must be one of {role_name}.allowed")
    for name in sandbox.user.allowed:
        if not sandbox.profiles[name].confined:
            raise ConfigError(f"{key}.user.allowed: profile {name!r} is loosened (privileged, seccomp unconfined or a "
                              "writable host /); user-role jobs get only confined profiles")
    return sandbox


NETWORK_MODES = ("none", "bridge", "host")


def _modes(value: Any, key: str) -> tuple[str, ...]:
    modes = _str_list(value, key)
    for mode in modes:
        if mode not in NETWORK_MODES:
            raise ConfigError(f"{key}: {mode!r} is not a network mode ({', '.join(NETWORK_MODES)})")
    return modes


def _ipv4_networks(value: Any, key: str) -> tuple[str, ...]:
    networks = []
    for text in _str_list(value, key):
        try:
            networks.append(str(ipaddress.IPv4Network(text, strict=False)))
        except ValueError:
            raise ConfigError(f"{key}: {text!r} is not an IPv4 network (CIDR)") from None
    return tuple(networks)


def _ipv4_addresses(value: Any, key: str) -> tuple[str, ...]:
    try:
        return tuple(str(ipaddress.IPv4Address(text)) for text in _str_list(value, key))
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _subnet(value: Any, key: str) -> str:
    (network,) = _ipv4_networks([value], key)
    if not 8 <= ipaddress.IPv4Network(network).prefixlen <= 28:
        raise ConfigError(f"{key}: a prefix from /8 to /28, got {value!r}")
    return network


def _interface_name(value: Any, key: str) -> str:
    text = _str(value, key)
    if not 1 <= len(text) <= 15 or not all(c.isascii() and (c.isalnum() or c in "_-.") for c in text):
        raise ConfigError(f"{key}: an interface name of 1 to 15 letters, digits, '_', '-', '.', got {value!r}")
    if text.startswith("jw"):
        raise ConfigError(f"{key}: names beginning with 'jw' are the jobs' veths' (jw<job id>); choose another")
    return text


def _publish_address(value: Any, key: str) -> str:
    (address,) = _ipv4_addresses([value], key)
    if ipaddress.IPv4Address(address).is_unspecified:
        raise ConfigError(f"{key}: one host address (e.g. 127.0.0.1), not 0.0.0.0")
    return address


def _port_range(value: Any, key: str) -> tuple[int, int]:
    text = _str(value, key)
    low, dash, high = text.partition("-")
    if not dash or not low.strip().isdigit() or not high.strip().isdigit() or \
            not 1 <= int(low) <= int(high) <= 65535:
        raise ConfigError(f"{key}: a port range LOW-HIGH within 1-65535, got {value!r}")
    return int(low), int(high)


@dataclass(frozen=True)
class NetworkRole:
    default: str = "none"  # the mode of a job that asks for none
    allowed: tuple[str, ...] = ("none", "bridge")  # the modes it may ask for

    _convert = {"default": _choice(*NETWORK_MODES), "allowed": _modes}


@dataclass(frozen=True)
class NetworkConfig:
    bridge: str = "jobworkerd0"  # the daemon's bridge (made at the first bridge-mode job, removed at a clean stop)
    subnet: str = "10.88.0.0/16"  # jobs' addresses; the first is the bridge's (the jobs' gateway)
    dns: tuple[str, ...] = ()  # servers in the jobs' resolv.conf; empty: the host's (resolved's upstream)
    user: NetworkRole = field(default_factory=NetworkRole)
    admin: NetworkRole = field(default_factory=lambda: NetworkRole("none", NETWORK_MODES))
    allow_job_to_job: bool = False  # bridge-mode jobs may reach one another
    allow_host: bool = False  # bridge-mode jobs may reach the host's own addresses (the API port too)
    egress: tuple[str, ...] = ()  # a job that names no --allow may reach these networks; empty: anywhere
    user_allow: tuple[str, ...] = ("0.0.0.0/0",)  # a user's --allow must lie within these networks
    publish_address: str = "127.0.0.1"  # the host address of a --publish that names none
    user_publish_ports: tuple[int, int] = (20000, 29999)  # the host ports users may publish (admins: any)
    # Network namespaces kept ready (veth on the bridge, address set up), refilled in the background once
    # bridge mode has been used: a bridge-mode start then joins one instead of waiting for a veth. 0: none.
    pool: int = 2

    _convert = {
        "bridge": _interface_name, "subnet": _subnet, "dns": _ipv4_addresses,
        "user": lambda v, k: _section(NetworkRole, v, k), "admin": lambda v, k: _section(NetworkRole, v, k),
        "allow_job_to_job": _bool, "allow_host": _bool, "egress": _ipv4_networks, "user_allow": _ipv4_networks,
        "publish_address": lambda v, k: _publish_address(v, k), "user_publish_ports": _port_range,
        "pool": _int_between(0, 64),
    }

    def role(self, is_admin: bool) -> NetworkRole:
        return self.admin if is_admin else self.user


def _network(value: Any, key: str) -> NetworkConfig:
    network = _section(NetworkConfig, value, key)
    for role_name in ("user", "admin"):
        role = getattr(network, role_name)
        if role.default not in role.allowed:
            raise ConfigError(f"{key}.{role_name}.default: {role.default!r} must be one of {role_name}.allowed")
    if "host" in network.user.allowed:
        raise ConfigError(f"{key}.user.allowed: the host's network is for admins only")
    return network


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:7443"
    tls: TLSConfig = field(default_factory=TLSConfig)
    state_dir: str = "/var/lib/jobworkerd"
    run_dir: str = "/run/jobworkerd"
    cgroup: CgroupConfig = field(default_factory=CgroupConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    run_as: RunAsConfig = field(default_factory=RunAsConfig)
    stop_grace: float = 10.0
    max_message_bytes: int = 4 << 20  # gRPC receive limit; a request larger than this is refused
    # Output of a finished job is deleted this long after its last write (0: kept until reboot).
    # Records stay; only the output goes.
    output_retention: float = 7 * 86400.0
    events: EventsConfig = field(default_factory=EventsConfig)
    quotas: QuotasConfig = field(default_factory=QuotasConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)

    _convert = {
        "listen": _str,
        "tls": lambda v, k: _section(TLSConfig, v, k),
        "state_dir": _path,
        "run_dir": _path,
        "cgroup": lambda v, k: _section(CgroupConfig, v, k),
        "limits": lambda v, k: _section(LimitsConfig, v, k),
        "run_as": lambda v, k: _section(RunAsConfig, v, k),
        "stop_grace": _stop_grace,
        "max_message_bytes": _size,
        "output_retention": _duration,
        "events": lambda v, k: _section(EventsConfig, v, k),
        "quotas": lambda v, k: _section(QuotasConfig, v, k),
        "history": lambda v, k: _section(HistoryConfig, v, k),
        "metrics": lambda v, k: _section(MetricsConfig, v, k),
        "sandbox": _sandbox,
        "network": _network,
    }


def _section(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            raise ConfigError(f"unknown config key {path!r} (known here: {', '.join(sorted(known))})")
        values[key] = cls._convert[key](value, path)
    return cls(**values)


def config_from_dict(data: dict[str, Any] | None) -> Config:
    return _section(Config, data or {}, "")


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
