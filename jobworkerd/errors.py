"""Errors the worker library raises, each naming what a caller can do about it.

    JobWorkerError                   base; never raised itself
    ├── InvalidArgument              the request is malformed (bad spec, bad limit value)
    ├── NotFound                     no such job (or not one the caller may see)
    ├── PermissionDenied             the caller may not do this (e.g. run as root)
    ├── FailedPrecondition           valid request, wrong state of the world
    │   └── StartFailed              the launcher could not start the program (exec errno)
    ├── ResourceExhausted            over a configured maximum, or the output budget is full
    ├── OutOfRange                   a position past what is kept (an event revision too old)
    ├── Unauthenticated              no usable client identity
    └── InternalError                a bug or an unexpected OS failure

The API maps each class to one gRPC status code in one table (jobworkerd.api.status);
a test checks that every class here has an entry.
"""

from __future__ import annotations


class JobWorkerError(Exception):
    """Base of every error the library raises on purpose."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(JobWorkerError):
    pass


class NotFound(JobWorkerError):
    pass


class PermissionDenied(JobWorkerError):
    pass


class FailedPrecondition(JobWorkerError):
    pass


class StartFailed(FailedPrecondition):
    """The launcher reported a failure before the program ran (step, errno, file)."""

    def __init__(self, message: str, *, step: str = "", errno: int = 0):
        super().__init__(message)
        self.step = step
        self.errno = errno


class ResourceExhausted(JobWorkerError):
    pass


class OutOfRange(JobWorkerError):
    pass


class Unauthenticated(JobWorkerError):
    pass


class InternalError(JobWorkerError):
    pass


ALL_ERRORS: tuple[type[JobWorkerError], ...] = (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    FailedPrecondition,
    StartFailed,
    ResourceExhausted,
    OutOfRange,
    Unauthenticated,
    InternalError,
)
