"""The JobWorker servicer: authenticate, authorize, convert, forward to JobManager. Nothing else.

Blocking library calls (start: ~15 ms of launch; stop: up to the grace period) run in a thread pool
so the event loop keeps streaming; waiting for a job's end holds no thread at all.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import grpc

from ..authz import Identity, check_access, check_run_as_group, identity_from_auth_context, list_owner, run_as_user
from ..config import Config
from ..gen.jobworker.v1 import jobworker_pb2 as pb
from ..gen.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from ..errors import ResourceExhausted
from ..metrics import START_LATENCY, STREAM_CLIENTS
from ..worker import JobGroup, JobManager, JobRecord
from ..worker.events import JobEvent
from ..worker.output import aread_output
from .quotas import Quotas
from .convert import event_to_proto, job_to_proto, page_after, page_size, page_token, spec_from_request

T = TypeVar("T")
log = logging.getLogger("jobworkerd.api")
MAX_PAGE_BYTES = 2 << 20  # a ListJobs page: well under any client's default receive limit (4 MiB)


class JobWorkerService(pb_grpc.JobWorkerServicer):
    def __init__(self, manager: JobManager, config: Config, executor: ThreadPoolExecutor):
        self.manager = manager
        self.config = config
        self._executor = executor
        self.quotas = Quotas(config.quotas)
        manager.add_listener(self.quotas.on_job_change)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    @staticmethod
    def _identity(context: grpc.aio.ServicerContext) -> Identity:
        return identity_from_auth_context(context.auth_context())

    async def _job(self, identity: Identity, job_id: str) -> JobRecord:
        return check_access(identity, await self._run(self.manager.status, job_id))

    async def StartJob(self, request: pb.StartJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        received = time.monotonic()
        identity = self._identity(context)
        user = run_as_user(identity, request.command.user, self.config.run_as)
        check_run_as_group(identity, user, request.command.group)
        timeout = self.quotas.timeout_for(identity, request.timeout_seconds if request.HasField("timeout_seconds")
                                          else None)
        spec = spec_from_request(request, user, timeout)
        if request.idempotency_key:
            repeated = await self._run(self.manager.started_with, identity.owner, request.idempotency_key)
            if repeated is not None:
                return job_to_proto(repeated)
        start = functools.partial(self.manager.start, group=JobGroup.of(identity.name, identity.is_admin))
        record = await self._run(start, spec, identity.owner, None, request.idempotency_key,
                                 lambda: self.quotas.starting(identity))
        START_LATENCY.observe(time.monotonic() - received)  # start() returns once the program runs
        return job_to_proto(record)

    async def StopJob(self, request: pb.StopJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        identity = self._identity(context)
        await self._job(identity, request.job_id)
        grace = request.grace_seconds if request.HasField("grace_seconds") else None
        # The stop runs on the manager's timers: it goes on to its end if this caller goes away (e.g. jobctl
        # detaching), and no thread waits out its grace period. Many stops of one job are one stop.
        begun = asyncio.ensure_future(self._run(self.manager.begin_stop, request.job_id, grace))
        begun.add_done_callback(_log_orphaned_failure)
        await asyncio.shield(begun)
        await self._until_finished(request.job_id)
        return job_to_proto(await self._run(self.manager.status, request.job_id))

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        return job_to_proto(await self._job(self._identity(context), request.job_id))

    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        owner = list_owner(self._identity(context))
        size = page_size(request.page_size)
        summary = request.view == pb.JOB_VIEW_SUMMARY
        records = await self._run(self.manager.list, owner, page_after(request.page_token), size + 1,
                                  request.running_only, tuple(request.job_ids), summary)
        jobs, used = [], 0
        for record in records[:size]:  # a page ends early rather than grow past MAX_PAGE_BYTES
            job = job_to_proto(record, summary)
            used += job.ByteSize()
            if jobs and used > MAX_PAGE_BYTES:
                break
            jobs.append(job)
        more = len(records) > len(jobs)
        return pb.ListJobsResponse(jobs=jobs, next_page_token=page_token(records[len(jobs) - 1]) if more else "")

    async def StreamOutput(
        self, request: pb.StreamOutputRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.OutputChunk]:
        identity = self._identity(context)
        await self._job(identity, request.job_id)
        with self.quotas.holding(identity, "streams"), STREAM_CLIENTS.track_inprogress():
            source = self.manager.output(request.job_id)
            async for offset, data in aread_output(source, request.offset, follow=not request.no_follow):
                yield pb.OutputChunk(data=data, offset=offset)

    async def WaitJob(self, request: pb.WaitJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        identity = self._identity(context)
        await self._job(identity, request.job_id)
        with self.quotas.holding(identity, "waits"):
            await self._until_finished(request.job_id)
        return job_to_proto(await self._run(self.manager.status, request.job_id))

    async def _until_finished(self, job_id: str) -> None:
        """Returns once the job has finished, holding no thread; a waiter that goes away (cancelled)
        takes its callback with it."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def finished() -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        if self.manager.when_finished(job_id, finished):
            try:
                await done
            finally:
                self.manager.forget_when_finished(job_id, finished)

    async def WatchJobs(self, request: pb.WatchJobsRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.JobEvent]:
        owner = list_owner(self._identity(context))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[JobEvent | None] = asyncio.Queue()
        behind = False
        backlog = self.manager.events.capacity  # further behind, it could not resume from the history either

        def take(event: JobEvent) -> None:  # on the loop; the thread that changed the job only hands over
            nonlocal behind
            if queue.qsize() >= backlog and not behind:
                behind = True
                queue.put_nowait(None)  # the client cannot keep up: end its stream at this point
            elif not behind:
                queue.put_nowait(event)

        token = self.manager.events.subscribe(lambda event: loop.call_soon_threadsafe(take, event))
        try:
            last = request.after_revision or self.manager.events.last_revision
            for event in self.manager.events.after(last) if request.after_revision else ():
                if owner is None or event.record.owner == owner:
                    yield event_to_proto(event)
                last = event.revision
            while True:
                event = await queue.get()
                if event is None:
                    raise ResourceExhausted(
                        f"this client fell more than {backlog} events behind; watch again with "
                        f"after_revision={last} to resume")
                if event.revision <= last:
                    continue  # already sent from the history
                last = event.revision
                if owner is None or event.record.owner == owner:
                    yield event_to_proto(event)
        finally:
            self.manager.events.unsubscribe(token)


def _log_orphaned_failure(task: "asyncio.Future[Any]") -> None:
    """A shielded call whose caller went away: nobody else will see its error."""
    if not task.cancelled() and task.exception() is not None:
        log.error("stop finished with an error after its caller left: %s", task.exception())
