import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_VIEW_FULL: _ClassVar[JobView]
    JOB_VIEW_SUMMARY: _ClassVar[JobView]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_STARTING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_STOPPING: _ClassVar[JobState]
    JOB_STATE_FINISHED: _ClassVar[JobState]

class TerminationReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TERMINATION_REASON_UNSPECIFIED: _ClassVar[TerminationReason]
    TERMINATION_REASON_EXITED: _ClassVar[TerminationReason]
    TERMINATION_REASON_STOPPED: _ClassVar[TerminationReason]
    TERMINATION_REASON_OOM_KILLED: _ClassVar[TerminationReason]
    TERMINATION_REASON_OUTPUT_CAPPED: _ClassVar[TerminationReason]
    TERMINATION_REASON_FAILED_TO_START: _ClassVar[TerminationReason]
    TERMINATION_REASON_LOST: _ClassVar[TerminationReason]
    TERMINATION_REASON_TIMED_OUT: _ClassVar[TerminationReason]

class JobEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_EVENT_TYPE_UNSPECIFIED: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_CREATED: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_RUNNING: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_STOPPING: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_FINISHED: _ClassVar[JobEventType]
JOB_VIEW_FULL: JobView
JOB_VIEW_SUMMARY: JobView
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_STARTING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_STOPPING: JobState
JOB_STATE_FINISHED: JobState
TERMINATION_REASON_UNSPECIFIED: TerminationReason
TERMINATION_REASON_EXITED: TerminationReason
TERMINATION_REASON_STOPPED: TerminationReason
TERMINATION_REASON_OOM_KILLED: TerminationReason
TERMINATION_REASON_OUTPUT_CAPPED: TerminationReason
TERMINATION_REASON_FAILED_TO_START: TerminationReason
TERMINATION_REASON_LOST: TerminationReason
TERMINATION_REASON_TIMED_OUT: TerminationReason
JOB_EVENT_TYPE_UNSPECIFIED: JobEventType
JOB_EVENT_TYPE_CREATED: JobEventType
JOB_EVENT_TYPE_RUNNING: JobEventType
JOB_EVENT_TYPE_STOPPING: JobEventType
JOB_EVENT_TYPE_FINISHED: JobEventType

class Command(_message.Message):
    __slots__ = ("command", "arguments", "user", "group", "directory", "env")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    command: str
    arguments: _containers.RepeatedScalarFieldContainer[str]
    user: str
    group: str
    directory: str
    env: _containers.ScalarMap[str, str]
    def __init__(self, command: _Optional[str] = ..., arguments: _Optional[_Iterable[str]] = ..., user: _Optional[str] = ..., group: _Optional[str] = ..., directory: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("cpu", "memory_bytes", "pids", "io_device", "io_read_bps", "io_write_bps", "io_read_iops", "io_write_iops")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    IO_DEVICE_FIELD_NUMBER: _ClassVar[int]
    IO_READ_BPS_FIELD_NUMBER: _ClassVar[int]
    IO_WRITE_BPS_FIELD_NUMBER: _ClassVar[int]
    IO_READ_IOPS_FIELD_NUMBER: _ClassVar[int]
    IO_WRITE_IOPS_FIELD_NUMBER: _ClassVar[int]
    cpu: float
    memory_bytes: int
    pids: int
    io_device: str
    io_read_bps: int
    io_write_bps: int
    io_read_iops: int
    io_write_iops: int
    def __init__(self, cpu: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., pids: _Optional[int] = ..., io_device: _Optional[str] = ..., io_read_bps: _Optional[int] = ..., io_write_bps: _Optional[int] = ..., io_read_iops: _Optional[int] = ..., io_write_iops: _Optional[int] = ...) -> None: ...

class StartJobRequest(_message.Message):
    __slots__ = ("name", "command", "limits", "timeout_seconds", "idempotency_key", "sandbox", "network")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    name: str
    command: Command
    limits: Limits
    timeout_seconds: float
    idempotency_key: str
    sandbox: Sandbox
    network: Network
    def __init__(self, name: _Optional[str] = ..., command: _Optional[_Union[Command, _Mapping]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., timeout_seconds: _Optional[float] = ..., idempotency_key: _Optional[str] = ..., sandbox: _Optional[_Union[Sandbox, _Mapping]] = ..., network: _Optional[_Union[Network, _Mapping]] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("mode", "allow", "publish", "address")
    MODE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    mode: str
    allow: _containers.RepeatedScalarFieldContainer[str]
    publish: _containers.RepeatedScalarFieldContainer[str]
    address: str
    def __init__(self, mode: _Optional[str] = ..., allow: _Optional[_Iterable[str]] = ..., publish: _Optional[_Iterable[str]] = ..., address: _Optional[str] = ...) -> None: ...

class Sandbox(_message.Message):
    __slots__ = ("profile", "seccomp", "hostname", "mounts", "devices", "rootfs")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    MOUNTS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    ROOTFS_FIELD_NUMBER: _ClassVar[int]
    profile: str
    seccomp: str
    hostname: str
    mounts: _containers.RepeatedCompositeFieldContainer[Mount]
    devices: _containers.RepeatedScalarFieldContainer[str]
    rootfs: str
    def __init__(self, profile: _Optional[str] = ..., seccomp: _Optional[str] = ..., hostname: _Optional[str] = ..., mounts: _Optional[_Iterable[_Union[Mount, _Mapping]]] = ..., devices: _Optional[_Iterable[str]] = ..., rootfs: _Optional[str] = ...) -> None: ...

class Mount(_message.Message):
    __slots__ = ("source", "target", "read_only")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    read_only: bool
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ..., read_only: _Optional[bool] = ...) -> None: ...

class StopJobRequest(_message.Message):
    __slots__ = ("job_id", "grace_seconds")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    grace_seconds: float
    def __init__(self, job_id: _Optional[str] = ..., grace_seconds: _Optional[float] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "running_only", "job_ids", "view")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RUNNING_ONLY_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    running_only: bool
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    view: JobView
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., running_only: _Optional[bool] = ..., job_ids: _Optional[_Iterable[str]] = ..., view: _Optional[_Union[JobView, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StreamOutputRequest(_message.Message):
    __slots__ = ("job_id", "offset", "no_follow")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NO_FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    offset: int
    no_follow: bool
    def __init__(self, job_id: _Optional[str] = ..., offset: _Optional[int] = ..., no_follow: _Optional[bool] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("data", "offset")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class WaitJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("cpu_seconds", "memory_peak_bytes", "io_read_bytes", "io_write_bytes", "oom_kills", "output_bytes", "memory_bytes", "pids")
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    IO_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    IO_WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    cpu_seconds: float
    memory_peak_bytes: int
    io_read_bytes: int
    io_write_bytes: int
    oom_kills: int
    output_bytes: int
    memory_bytes: int
    pids: int
    def __init__(self, cpu_seconds: _Optional[float] = ..., memory_peak_bytes: _Optional[int] = ..., io_read_bytes: _Optional[int] = ..., io_write_bytes: _Optional[int] = ..., oom_kills: _Optional[int] = ..., output_bytes: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., pids: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "name", "owner", "state", "exit_code", "signal", "reason", "message", "created_at", "started_at", "finished_at", "command", "limits", "usage", "run_as", "timeout_seconds", "sandbox", "network")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    RUN_AS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    owner: str
    state: JobState
    exit_code: int
    signal: int
    reason: TerminationReason
    message: str
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    command: Command
    limits: Limits
    usage: Usage
    run_as: str
    timeout_seconds: float
    sandbox: Sandbox
    network: Network
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., owner: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., reason: _Optional[_Union[TerminationReason, str]] = ..., message: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., run_as: _Optional[str] = ..., timeout_seconds: _Optional[float] = ..., sandbox: _Optional[_Union[Sandbox, _Mapping]] = ..., network: _Optional[_Union[Network, _Mapping]] = ...) -> None: ...

class WatchJobsRequest(_message.Message):
    __slots__ = ("after_revision",)
    AFTER_REVISION_FIELD_NUMBER: _ClassVar[int]
    after_revision: int
    def __init__(self, after_revision: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("revision", "type", "time", "job")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    revision: int
    type: JobEventType
    time: _timestamp_pb2.Timestamp
    job: Job
    def __init__(self, revision: _Optional[int] = ..., type: _Optional[_Union[JobEventType, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...
