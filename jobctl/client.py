"""The gRPC side of jobctl: one mutual-TLS channel, the calls, and error translation.

Every failure leaves this module as a `JobctlError` whose message is the one line jobctl prints:
server errors as "<code in lower case>: <details>", connection failures as a diagnosis that
names the file or the setting to fix (see `diagnose`).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterator, Sequence, TypeVar

# grpc's C core logs handshake failures to stderr itself; jobctl reports them in one line instead.
# Set before grpc is imported; GRPC_VERBOSITY=DEBUG in the environment still turns them on.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc  # noqa: E402

from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb  # noqa: E402
from jobworkerd.gen.jobworker.v1 import jobworker_pb2_grpc as pb_grpc  # noqa: E402

from .errors import JobctlError  # noqa: E402
from .settings import Settings  # noqa: E402

T = TypeVar("T")

# Chunks are up to 256 KiB; the default 4 MiB limit would do, the margin costs nothing.
MAX_MESSAGE_BYTES = 16 << 20
# Waits before each reconnection attempt when a follow or a wait breaks with UNAVAILABLE
# (the daemon restarting). About 12 s in all.
RECONNECT_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0, 4.0)
START_TIMEOUT = 60.0  # one StartJob attempt: the daemon gives a launcher 30 s
_CONNECT_FAILED = "failed to connect to all addresses"


class Client:
    """Calls to one daemon. Each method returns the response or raises JobctlError."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._pem = {key: _read(settings, key) for key in ("ca", "cert", "key")}
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._pem["ca"],
            private_key=self._pem["key"],
            certificate_chain=self._pem["cert"],
        )
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # Reconnect soon after a daemon restart (the default backoff starts at 1 s, grows to 120 s).
            # Not grpc.min_reconnect_backoff_ms: despite its name it is the connect timeout (20 s),
            # and a short one makes handshakes on a busy machine fail.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self._channel = grpc.secure_channel(settings.addr, credentials, options=options)
        self._stub = pb_grpc.JobWorkerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- calls -------------------------------------------------------------------------------

    def start(self, request: pb.StartJobRequest) -> pb.Job:
        """StartJob; with an idempotency key, retried (with backoff) when the daemon was unreachable or the
        reply was lost: the key makes a repeated start return the job the first one started."""
        if not request.idempotency_key:
            return self._call(self._stub.StartJob, request)
        return self._retrying(lambda: self._stub.StartJob(request, timeout=START_TIMEOUT), connected=False)

    def stop(self, job_id: str, grace_seconds: float | None = None) -> pb.Job:
        request = pb.StopJobRequest(job_id=job_id)
        if grace_seconds is not None:
            request.grace_seconds = grace_seconds
        return self._call(self._stub.StopJob, request)

    def get(self, job_id: str) -> pb.Job:
        return self._call(self._stub.GetJob, pb.GetJobRequest(job_id=job_id))

    def list(self, timeout: float | None = None, limit: int | None = None, summary: bool = False) -> list[pb.Job]:
        """All jobs the caller may see, page by page; or, with `limit`, the first pages holding
        at least that many. `timeout` bounds the whole listing."""
        deadline = None if timeout is None else time.monotonic() + timeout
        jobs: list[pb.Job] = []
        token = ""
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            request = pb.ListJobsRequest(page_token=token, view=pb.JOB_VIEW_SUMMARY if summary else pb.JOB_VIEW_FULL)
            page = self._call(lambda r: self._stub.ListJobs(r, timeout=left), request)
            jobs += page.jobs
            token = page.next_page_token
            if not token or (limit is not None and len(jobs) >= limit):
                return jobs

    def running(self, job_ids: Sequence[str] = ()) -> list[pb.Job]:
        """The running jobs the caller may see (or those of job_ids, running or not), usage read now: one
        ListJobs call for up to 1000 jobs."""
        request = pb.ListJobsRequest(running_only=not job_ids, job_ids=job_ids, page_size=1000)
        jobs: list[pb.Job] = []
        while True:
            page = self._call(self._stub.ListJobs, request)
            jobs += page.jobs
            if not page.next_page_token:
                return jobs
            request.page_token = page.next_page_token

    def events(self, after_revision: int = 0) -> Iterator[pb.JobEvent]:
        """Job events as they happen, after `after_revision` if given. A stream broken by UNAVAILABLE
        (daemon restart) is resumed from the last revision received; the daemon says OUT_OF_RANGE if its
        history no longer reaches back that far."""
        attempt, connected = 0, False
        while True:
            call = self._stub.WatchJobs(pb.WatchJobsRequest(after_revision=after_revision))
            try:
                for event in call:
                    connected, attempt = True, 0
                    after_revision = event.revision
                    yield event
                return
            except grpc.RpcError as err:
                if not (_may_retry(err, connected) and attempt < len(RECONNECT_DELAYS)):
                    raise self.error(err) from None
            finally:
                call.cancel()
            time.sleep(RECONNECT_DELAYS[attempt])
            attempt += 1

    def wait(self, job_id: str, connected: bool = False) -> pb.Job:
        """WaitJob; reconnects if the daemon goes away while waiting (it may take a long time)."""
        return self._retrying(lambda: self._stub.WaitJob(pb.WaitJobRequest(job_id=job_id)), connected)

    def output(self, job_id: str, follow: bool, offset: int = 0, connected: bool = False) -> Iterator[bytes]:
        """The job's output from `offset`, as it comes.

        While following, a stream broken by UNAVAILABLE (daemon restart) is resumed from the last
        byte received, with backoff. `connected` says an earlier call already reached this
        daemon, so that even a first attempt that cannot connect is worth retrying.
        """
        attempt = 0
        while True:
            call = self._stub.StreamOutput(
                pb.StreamOutputRequest(job_id=job_id, offset=offset, no_follow=not follow)
            )
            try:
                for chunk in call:
                    connected, attempt = True, 0
                    data = chunk.data
                    if chunk.offset < offset:  # overlap after a resume: skip what was written already
                        data = data[offset - chunk.offset :]
                    offset = max(offset, chunk.offset + len(chunk.data))
                    if data:
                        yield data
                return
            except grpc.RpcError as err:
                if not (follow and _may_retry(err, connected) and attempt < len(RECONNECT_DELAYS)):
                    raise self.error(err) from None
                connected = True  # once it broke mid-stream, also retry failures to connect
            finally:
                call.cancel()  # no-op once finished; frees the call if the consumer stopped early
            time.sleep(RECONNECT_DELAYS[attempt])
            attempt += 1

    # ---- errors ------------------------------------------------------------------------------

    def error(self, err: grpc.RpcError) -> JobctlError:
        """The JobctlError to raise for a failed call."""
        code, details = err.code(), err.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and details.startswith(_CONNECT_FAILED):
            from .diagnose import diagnose_connect_failure

            return JobctlError(diagnose_connect_failure(self.settings, self._pem, details))
        if code == grpc.StatusCode.UNAVAILABLE:
            return JobctlError(f"lost the connection to {self.settings.addr}: {details or 'unavailable'}")
        if code == grpc.StatusCode.CANCELLED:
            return JobctlError("cancelled")
        return JobctlError(f"{status_name(code)}: {details or 'no details'}")

    def _call(self, method: Callable[[T], object], request: T):
        try:
            return method(request)
        except grpc.RpcError as err:
            raise self.error(err) from None

    def _retrying(self, call: Callable[[], T], connected: bool) -> T:
        for attempt in range(len(RECONNECT_DELAYS) + 1):
            try:
                return call()
            except grpc.RpcError as err:
                if not (_may_retry(err, connected) and attempt < len(RECONNECT_DELAYS)):
                    raise self.error(err) from None
            time.sleep(RECONNECT_DELAYS[attempt])
        raise AssertionError("unreachable")


def status_name(code: grpc.StatusCode) -> str:
    """StatusCode.NOT_FOUND -> 'not found'."""
    return code.name.lower().replace("_", " ")


def _may_retry(err: grpc.RpcError, connected: bool) -> bool:
    """UNAVAILABLE after the daemon was reached once: it is probably restarting."""
    if err.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return connected or not (err.details() or "").startswith(_CONNECT_FAILED)


def _read(settings: Settings, key: str) -> bytes:
    path = getattr(settings, key)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise JobctlError(f"cannot read {settings.describe(key)}: {err.strerror}") from None
