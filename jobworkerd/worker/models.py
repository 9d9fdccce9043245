"""The worker library's data: what a job asks for and what became of it. No I/O here."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..network.options import NetworkRequest
from ..sandbox.options import SandboxRequest
from ..resources import ADMIN_GROUP, IOTarget, JobGroup, Limits, Usage  # noqa: F401 (re-exported)


# Who owns a job (JobRecord.owner): a user's jobs are owned by its certificate's CN ("alice"), an admin's by
# this prefix and its CN ("admin:alice"), so that an admin and a user with the same CN are two owners. No
# user's CN may begin with the prefix (authz refuses such certificates). Records of store schema 0 used the
# bare CN for both roles (store.py qualifies the admins' among them).
ADMIN_OWNER_PREFIX = "admin:"


class JobState(str, enum.Enum):
    """Where a job is in its life. Only FINISHED is final."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FINISHED = "finished"


class Reason(str, enum.Enum):
    """Why a finished job ended. NONE while it has not."""

    NONE = ""
    EXITED = "exited"  # the program ended by itself (exit code, or a signal it did not get from us)
    STOPPED = "stopped"  # a stop request ended it
    OOM_KILLED = "oom-killed"  # the kernel's OOM killer ended it under its memory limit
    OUTPUT_CAPPED = "output-capped"  # it wrote more output than the per-job cap; killed, output kept up to the cap
    FAILED_TO_START = "failed-to-start"  # the program never ran (exec failed, cgroup setup failed)
    LOST = "lost"  # the daemon died while it ran; it was ended at the next start
    TIMED_OUT = "timed-out"  # it ran past its deadline (timeout) and was stopped




@dataclass(frozen=True)
class JobSpec:
    """What to run. `command` is the program (a path, or a name looked up in PATH), `args` its arguments."""

    command: str
    args: tuple[str, ...] = ()
    name: str = ""
    user: str = ""
    group: str = ""
    directory: str = ""
    env: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    timeout: float | None = None  # seconds from the start; then it is stopped (reason timed-out)
    sandbox: SandboxRequest = field(default_factory=SandboxRequest)
    network: NetworkRequest = field(default_factory=NetworkRequest)



@dataclass(frozen=True)
class ResolvedSpec:
    """A spec after validation: user, group and program resolved, defaults applied."""

    spec: JobSpec  # as recorded: the asked-for spec, but for a job run as "dynamic", whose user is "dynamic:N"
    limits: Limits
    program: str  # absolute path to exec
    argv: tuple[str, ...]
    uid: int
    gid: int
    groups: tuple[int, ...]
    user: str  # the account's name, or "dynamic:N" for a dynamic uid N (spec.dynamic_run_as)
    directory: str
    env: dict[str, str]
    io_target: IOTarget | None


@dataclass(frozen=True)
class JobRecord:
    """Everything known about a job; what status() returns and the store keeps."""

    id: str
    owner: str  # the CN of a user, ADMIN_OWNER_PREFIX + the CN of an admin
    spec: JobSpec
    limits: Limits
    state: JobState = JobState.STARTING
    reason: Reason = Reason.NONE
    exit_code: int | None = None
    signal: int | None = None
    message: str = ""  # human-readable detail: start error, OOM, cap reached
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    usage: Usage = field(default_factory=Usage)
    pid: int | None = None  # host PID of the job's PID 1 (the init); informational only

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def finished(self) -> bool:
        return self.state is JobState.FINISHED

    def evolve(self, **changes: Any) -> "JobRecord":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["reason"] = self.reason.value
        data["spec"]["args"] = list(self.spec.args)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobRecord":
        spec_data = dict(data["spec"])
        spec_data["args"] = tuple(spec_data.get("args", ()))
        spec_data["limits"] = Limits(**spec_data.get("limits", {}))
        spec_data["sandbox"] = SandboxRequest.from_dict(spec_data.get("sandbox", {}))
        spec_data["network"] = NetworkRequest.from_dict(spec_data.get("network", {}))
        return cls(
            id=data["id"],
            owner=data["owner"],
            spec=JobSpec(**spec_data),
            limits=Limits(**data["limits"]),
            state=JobState(data["state"]),
            reason=Reason(data["reason"]),
            exit_code=data.get("exit_code"),
            signal=data.get("signal"),
            message=data.get("message", ""),
            created_at=data.get("created_at", 0.0),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            usage=Usage(**data.get("usage", {})),
            pid=data.get("pid"),
        )
