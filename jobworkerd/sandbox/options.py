"""What a client may ask of the sandbox for one job (StartJobRequest.sandbox), as the job's record keeps
it. Plain values: the worker library and the API both import this, and it imports neither."""

from __future__ import annotations

from dataclasses import dataclass

PRIVILEGED = "privileged"  # the built-in profile `jobctl run --privileged` asks for
SECCOMP_CHOICES = ("", "default", "unconfined")


@dataclass(frozen=True)
class Mount:
    """A bind mount into the job's view: `source` on the host at `target` in the job."""

    source: str
    target: str
    read_only: bool = False

    def __str__(self) -> str:
        return f"{self.source}:{self.target}{':ro' if self.read_only else ''}"


@dataclass(frozen=True)
class SandboxRequest:
    profile: str = ""  # a profile of the config's; "": the caller's role's default
    seccomp: str = ""  # "unconfined" (admins): no seccomp filter; "" or "default": the profile's
    hostname: str = ""  # "": the job's id
    mounts: tuple[Mount, ...] = ()
    devices: tuple[str, ...] = ()  # host device nodes the job gets in its /dev (admins)
    rootfs: str = ""  # a directory tree to run in (pivot_root) instead of the host's /

    @classmethod
    def from_dict(cls, data: dict) -> "SandboxRequest":
        return cls(
            profile=data.get("profile", ""),
            seccomp=data.get("seccomp", ""),
            hostname=data.get("hostname", ""),
            mounts=tuple(Mount(**m) for m in data.get("mounts", ())),
            devices=tuple(data.get("devices", ())),
            rootfs=data.get("rootfs", ""),
        )
