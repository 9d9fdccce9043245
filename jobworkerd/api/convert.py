"""Conversion between jobworker.v1 messages and the worker library's models. No logic beyond mapping."""

from __future__ import annotations

import math

from google.protobuf.timestamp_pb2 import Timestamp

from ..gen.jobworker.v1 import jobworker_pb2 as pb
from ..errors import InvalidArgument
from ..worker.events import JobEvent
from ..network.options import NetworkRequest, parse_allow, parse_publish
from ..sandbox.options import Mount, SandboxRequest
from ..worker.models import JobRecord, JobSpec, JobState, Limits, Reason

STATES = {
    JobState.STARTING: pb.JOB_STATE_STARTING,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.STOPPING: pb.JOB_STATE_STOPPING,
    JobState.FINISHED: pb.JOB_STATE_FINISHED,
}
REASONS = {
    Reason.NONE: pb.TERMINATION_REASON_UNSPECIFIED,
    Reason.EXITED: pb.TERMINATION_REASON_EXITED,
    Reason.STOPPED: pb.TERMINATION_REASON_STOPPED,
    Reason.OOM_KILLED: pb.TERMINATION_REASON_OOM_KILLED,
    Reason.OUTPUT_CAPPED: pb.TERMINATION_REASON_OUTPUT_CAPPED,
    Reason.FAILED_TO_START: pb.TERMINATION_REASON_FAILED_TO_START,
    Reason.LOST: pb.TERMINATION_REASON_LOST,
    Reason.TIMED_OUT: pb.TERMINATION_REASON_TIMED_OUT,
}
_LIMIT_FIELDS = {  # proto field -> Limits attribute
    "memory_bytes": "memory",
    "pids": "pids",
    "io_read_bps": "io_read_bps",
    "io_write_bps": "io_write_bps",
    "io_read_iops": "io_read_iops",
    "io_write_iops": "io_write_iops",
}


def limits_from_proto(message: pb.Limits) -> Limits:
    values: dict[str, object] = {a: getattr(message, f) for f, a in _LIMIT_FIELDS.items() if message.HasField(f)}
    if message.HasField("cpu"):
        values["cpu"] = message.cpu
    return Limits(io_device=message.io_device or None, **values)  # type: ignore[arg-type]


def spec_from_request(request: pb.StartJobRequest, user: str, timeout: float | None = None) -> JobSpec:
    command = request.command
    return JobSpec(
        command=command.command,
        args=tuple(command.arguments),
        name=request.name,
        user=user,
        group=command.group,
        directory=command.directory,
        env=dict(command.env),
        limits=limits_from_proto(request.limits),
        timeout=timeout,
        sandbox=sandbox_from_proto(request.sandbox),
        network=network_from_proto(request.network),
    )


def network_from_proto(message: pb.Network) -> NetworkRequest:
    return NetworkRequest(mode=message.mode, allow=tuple(parse_allow(a) for a in message.allow),
                          publish=tuple(parse_publish(p) for p in message.publish))


def network_to_proto(request: NetworkRequest) -> pb.Network:
    return pb.Network(mode=request.mode, allow=[str(a) for a in request.allow],
                      publish=[str(p) for p in request.publish], address=request.address)


def sandbox_from_proto(message: pb.Sandbox) -> SandboxRequest:
    return SandboxRequest(
        profile=message.profile,
        seccomp=message.seccomp,
        hostname=message.hostname,
        mounts=tuple(Mount(m.source, m.target, m.read_only) for m in message.mounts),
        devices=tuple(message.devices),
        rootfs=message.rootfs,
    )


def sandbox_to_proto(request: SandboxRequest) -> pb.Sandbox:
    return pb.Sandbox(
        profile=request.profile,
        seccomp=request.seccomp,
        hostname=request.hostname,
        mounts=[pb.Mount(source=m.source, target=m.target, read_only=m.read_only) for m in request.mounts],
        devices=request.devices,
        rootfs=request.rootfs,
    )


def limits_to_proto(limits: Limits) -> pb.Limits:
    message = pb.Limits(io_device=limits.io_device or "")
    if limits.cpu is not None:
        message.cpu = limits.cpu
    for field, attr in _LIMIT_FIELDS.items():
        value = getattr(limits, attr)
        if value is not None:
            setattr(message, field, value)
    return message


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def job_to_proto(record: JobRecord, summary: bool = False) -> pb.Job:
    """The job as the API shows it; `summary` leaves out the command's arguments and environment."""
    spec = record.spec
    job = pb.Job(
        id=record.id,
        name=spec.name,
        owner=record.owner,
        state=STATES[record.state],
        reason=REASONS[record.reason],
        message=record.message,
        command=pb.Command(
            command=spec.command, arguments=() if summary else spec.args, user=spec.user, group=spec.group,
            directory=spec.directory, env={} if summary else spec.env,
        ),
        limits=limits_to_proto(record.limits),
        usage=pb.Usage(
            cpu_seconds=record.usage.cpu_seconds,
            memory_peak_bytes=record.usage.memory_peak_bytes,
            io_read_bytes=record.usage.io_read_bytes,
            io_write_bytes=record.usage.io_write_bytes,
            oom_kills=record.usage.oom_kills,
            output_bytes=record.usage.output_bytes,
            memory_bytes=record.usage.memory_bytes,
            pids=record.usage.pids,
        ),
        run_as=spec.user,
        sandbox=sandbox_to_proto(spec.sandbox),
        network=network_to_proto(spec.network),
    )
    if record.exit_code is not None:
        job.exit_code = record.exit_code
    if record.signal is not None:
        job.signal = record.signal
    if spec.timeout is not None:
        job.timeout_seconds = spec.timeout
    for field, value in (("created_at", record.created_at), ("started_at", record.started_at), ("finished_at", record.finished_at)):
        stamp = _timestamp(value)
        if stamp is not None:
            getattr(job, field).CopyFrom(stamp)
    return job


DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size {requested} is too large; at most {MAX_PAGE_SIZE}")
    return requested or DEFAULT_PAGE_SIZE


def page_token(last: JobRecord) -> str:
    """Opaque to clients: where the next page starts. repr() of a float round-trips exactly, so no job
    at a page boundary is skipped or repeated."""
    return f"{last.created_at!r}/{last.id}"


def page_after(token: str) -> tuple[float, str] | None:
    if not token:
        return None
    created, _, job_id = token.partition("/")
    try:
        created_at = float(created)
    except ValueError:
        created_at = math.nan
    if not math.isfinite(created_at) or len(job_id) != 12:
        raise InvalidArgument("page_token is not one this server handed out; start again with an empty token")
    return created_at, job_id


EVENT_TYPES = {
    "created": pb.JOB_EVENT_TYPE_CREATED,
    "running": pb.JOB_EVENT_TYPE_RUNNING,
    "stopping": pb.JOB_EVENT_TYPE_STOPPING,
    "finished": pb.JOB_EVENT_TYPE_FINISHED,
}


def event_to_proto(event: JobEvent) -> pb.JobEvent:
    return pb.JobEvent(revision=event.revision, type=EVENT_TYPES[event.kind], time=_timestamp(event.time),
                       job=job_to_proto(event.record))
