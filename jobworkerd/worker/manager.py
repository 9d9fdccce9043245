"""JobManager: start, stop, query and follow jobs. The worker library's face; it knows nothing of gRPC.

Thread model: any thread may call the public methods. One monitor thread watches every running job's
status pipe (EOF = the job's init has exited) and the shared inotify instance (output growth: wakes
followers); a small pool records job ends and does the killing, so the monitor never waits. Slow waits
(stop's grace period) happen in the caller's thread. The output cap and the output budget are enforced
by each job's init, which alone writes the job's output (see the launcher).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import pwd
import selectors
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import ContextManager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from ..cgroups import CgroupBackend, detect
from ..config import DYNAMIC_USER, Config
from ..errors import FailedPrecondition, InternalError, InvalidArgument, NotFound, ResourceExhausted, StartFailed
from ..network.attach import Network
from ..network.attach import decide as decide_network
from ..sandbox.plan import decide, launcher_fields
from .models import ADMIN_GROUP, JobGroup, JobRecord, JobSpec, JobState, Reason
from .events import EventLog
from .output import OutputHub, OutputSource
from .process import ForkServer, ForkServerUnavailable, LaunchPlan, launch
from .rundir import RunDir
from .spec import resolve
from .store import JobStore
from .timers import Timers

log = logging.getLogger("jobworkerd.jobs")

MAX_GRACE = 3600.0
MAX_LISTED_IDS = 1000
MAX_KEY = 128
UNSTORED_RETRY = 5.0  # seconds between attempts to store what the store refused
KILL_SETTLE = 5.0  # after SIGKILL, how long the init may take to be reported gone
MONITOR_COALESCE = 0.002  # at most one inotify dispatch per 2 ms, however fast jobs write
SWEEP_INTERVAL = 60.0  # how often finished jobs' output is checked against output_retention


@dataclass
class _Running:
    record: JobRecord
    status_fd: int
    output_path: str
    exit_file: str
    finished: threading.Event = field(default_factory=threading.Event)
    end_reason: Reason | None = None  # set by us when we end the job (stop, output cap)
    end_message: str = ""
    on_finish: list[Callable[[], None]] = field(default_factory=list)
    kill_at: float | None = None  # monotonic time a stop's grace period ends
    kill_timer: int | None = None
    deadline_timer: int | None = None


class JobManager:
    def __init__(self, config: Config, backend: CgroupBackend | None = None, store: JobStore | None = None):
        self.config = config
        self.backend = backend or detect(config.cgroup.version, config.cgroup.subtree)
        self.store = store or JobStore(config.state_dir)
        self.hub = OutputHub()
        self.forkserver = ForkServer()
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._pending: list[_Running] = []
        self._listeners: list[Callable[[JobRecord], None]] = []
        self.events = EventLog(config.events.history)
        self._listeners.append(self.events.record)
        self._wake_r, self._wake_w = os.pipe()
        self._closing = False  # the monitor thread's end
        self._accepting = True  # False from the moment close() begins: no new job starts
        self._starts_in_flight = 0
        self._starts_done = threading.Condition(self._lock)
        self._keys_in_flight: set[tuple[str, str]] = set()
        self._unstored: dict[str, JobRecord] = {}  # state changes the store could not take yet
        self._unstored_keys: dict[tuple[str, str], tuple[str, float]] = {}  # (owner, key) -> (job id, time), likewise
        self._unstored_lock = threading.Lock()
        self._monitor = threading.Thread(target=self._monitor_loop, name="job-monitor", daemon=True)
        # Ending a job can wait (processes in uninterruptible I/O die slowly); never in the monitor thread,
        # which must keep waking followers and noticing other jobs' ends.
        self._enders = ThreadPoolExecutor(max_workers=4, thread_name_prefix="job-end")
        self.timers = Timers()  # stop grace periods and deadlines: no thread waits for one
        self.run_dir = RunDir(config.run_dir, config.limits.output_total)
        self.jobs_dir = self.run_dir.jobs_dir
        # Shown empty inside every job: other jobs' output, and every job's record (arguments, environment).
        self.hidden_paths = [self.jobs_dir, os.path.realpath(config.state_dir), *_key_directories(config)]
        self.network = Network(config.network, self.store, hold=self.forkserver.hold)

    # -- life cycle ------------------------------------------------------------------------------------------

    def open(self) -> "JobManager":
        for key, ceilings in self.config.limits.configured_ceilings(self.config.state_dir):
            self.backend.check_ceilings(ceilings, key)  # ConfigError: before anything is made
        self.run_dir.open()
        self.backend.setup()
        self.reconcile()
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._selector.register(self.hub.fileno(), selectors.EVENT_READ, "hub")
        self._monitor.start()
        return self

    def close(self, grace: float | None = None) -> None:
        """Refuse new starts, let those under way finish, stop every running job (SIGTERM, grace, kill),
        then release everything."""
        with self._lock:
            self._accepting = False
            self._starts_done.wait_for(lambda: self._starts_in_flight == 0)
            running = list(self._running.values())
        grace = self.config.stop_grace if grace is None else grace
        for job in running:
            try:
                self.begin_stop(job.record.id, grace, Reason.STOPPED, "the daemon is shutting down")
            except Exception:  # keep stopping the others
                log.exception("job %s: cannot stop it at shutdown", job.record.id)
        for job in running:
            job.finished.wait(grace + KILL_SETTLE)
        self._closing = True
        os.write(self._wake_w, b"x")
        if self._monitor.is_alive():
            self._monitor.join()
        self._enders.shutdown(wait=True)
        self.timers.close()
        self.network.close()  # the pool, the bridge and the daemon's nftables tables: no job holds them any more
        self.forkserver.close()  # after the pool, which makes its namespaces through it
        self.backend.teardown()
        self._retry_unstored()  # a last try: what the store still cannot take is reconciled at the next start
        if self._unstored or self._unstored_keys:
            log.error("shutting down with %d job state change(s) and %d start key(s) the store could not take: %s",
                      len(self._unstored), len(self._unstored_keys), " ".join(sorted(self._unstored)))
        self.store.close()
        self.hub.close()

    def __enter__(self) -> "JobManager":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ------------------------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[JobRecord], None]) -> Callable[[], None]:
        """Call `callback(record)` on every change of a job's state: created (STARTING), RUNNING, STOPPING and
        FINISHED, in the thread that made the change and, for one job, in that order; sometimes while the
        manager's lock is held, so it must neither block nor call back into the manager (hand the record to
        another thread or loop). Returns the function that removes it."""
        with self._lock:
            self._listeners.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return remove

    def start(self, spec: JobSpec, owner: str = "", default_user: str | None = None, idempotency_key: str = "",
              admit: Callable[[], ContextManager[object]] | None = None, *, group: JobGroup = ADMIN_GROUP) -> JobRecord:
        """Validate, create the cgroup (in `group`'s, under its configured ceilings), launch. Returns once the
        program runs; StartFailed if it could not. With an idempotency key that `owner` used within
        history.idempotency_window, returns that job instead (a concurrent start with the same key waits for
        the first). `admit` (the API's quotas) is entered around a start that really happens, not a repeat."""
        if idempotency_key:
            _check_key(idempotency_key)
        with self._lock:
            if not self._accepting:
                raise FailedPrecondition("the daemon is shutting down; no new jobs are started")
            self._starts_in_flight += 1
            if idempotency_key:
                self._starts_done.wait_for(lambda: (owner, idempotency_key) not in self._keys_in_flight)
                self._keys_in_flight.add((owner, idempotency_key))
        try:
            if idempotency_key:
                earlier = self.started_with(owner, idempotency_key)
                if earlier is not None:
                    return earlier
            with admit() if admit is not None else contextlib.nullcontext():
                record = self._start(spec, owner, default_user, group)
            if idempotency_key:
                self._remember_key(owner, idempotency_key, record.id)
            return record
        finally:
            with self._lock:
                self._starts_in_flight -= 1
                self._keys_in_flight.discard((owner, idempotency_key))
                self._starts_done.notify_all()

    def started_with(self, owner: str, idempotency_key: str) -> JobRecord | None:
        """The job `owner` started with this key within the idempotency window, if any."""
        _check_key(idempotency_key)
        since = time.time() - self.config.history.idempotency_window
        kept = self._unstored_keys.get((owner, idempotency_key))
        job_id = kept[0] if kept and kept[1] >= since else self.store.job_for_key(owner, idempotency_key, since)
        return self.status(job_id) if job_id else None

    def _start(self, spec: JobSpec, owner: str, default_user: str | None, group: JobGroup) -> JobRecord:
        sandbox = decide(spec.sandbox, group.admin, self.config.sandbox)  # the role's; PERMISSION_DENIED past it
        network = decide_network(spec.network, group.admin, self.config.network)
        spec = replace(spec, sandbox=replace(spec.sandbox, profile=sandbox.profile_name), network=network)
        resolved = resolve(spec, self.config.limits, default_user or pwd.getpwuid(os.geteuid()).pw_name,
                           self._dynamic_uid(spec.user or default_user or "", owner),
                           root=os.path.realpath(spec.sandbox.rootfs) if spec.sandbox.rootfs else "")
        self.run_dir.check_room()
        job_id = uuid.uuid4().hex[:12]
        view, links = self.backend.namespace_view()
        sandbox_fields = launcher_fields(sandbox, job_id=job_id, uid=resolved.uid, directory=resolved.directory,
                                         hidden=self.hidden_paths, cgroup_view=view, cgroup_links=links)
        record = JobRecord(
            id=job_id, owner=owner, spec=resolved.spec, limits=resolved.limits, created_at=time.time()
        )
        job_dir = os.path.join(self.jobs_dir, job_id)
        output_path, exit_file = os.path.join(job_dir, "output"), os.path.join(job_dir, "exit")
        try:
            os.mkdir(job_dir, 0o700)
            output_fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ResourceExhausted(f"cannot create the output file in {job_dir}: {exc.strerror}") from exc
        try:
            self.store.put(record)
        except Exception:  # nothing runs yet: leave nothing behind either
            os.close(output_fd)
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        self._changed(record)
        try:
            self.backend.create(job_id, resolved.limits, resolved.io_target, group,
                               self.config.limits.ceiling(group, self.config.state_dir))
        except Exception as exc:
            os.close(output_fd)
            self._store_and_announce(self._failed(record, f"cannot create the job's cgroup: {exc}"))
            if isinstance(exc, OSError) and exc.errno in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW):
                raise InvalidArgument(f"the kernel refused a limit of this job ({os.path.basename(exc.filename or '')}: "
                                      f"{exc.strerror}); ask for a value this kernel accepts") from exc
            raise
        if resolved.limits.memory is not None and not self.backend.bounds_swap(job_id):
            record = record.evolve(message="the memory limit does not bound swap: this kernel has no swap accounting "
                                           "for cgroups (memsw / memory.swap.max), so the job may swap beyond it")
        try:
            attach, netns_fd, net_field = None, -1, network.mode
            if network.mode == "bridge":  # its address, rules and resolv.conf; a pooled namespace, or a veth once
                network, netns_fd = self.network.prepare(job_id, network, job_dir, spec.sandbox.hostname)  # it exists
                record = record.evolve(spec=replace(record.spec, network=network))
                sandbox_fields = sandbox_fields + _network_binds(job_dir, resolved.spec.sandbox.rootfs)
                address = network.address
                if netns_fd >= 0:
                    net_field = "pooled"
                else:
                    attach = lambda pid: self.network.attach_line(job_id, address, pid)  # noqa: E731
            plan = LaunchPlan(self.backend.join_files(job_id), exit_file, self.config.limits.output_cap,
                              self.hidden_paths, sandbox_fields + [("net", net_field)], attach, netns_fd)
            try:
                launched = self._launch(resolved, plan, output_fd)
            finally:
                if netns_fd >= 0:
                    os.close(netns_fd)  # the job's own processes hold it now (or it goes with a failed start)
        except Exception as exc:
            self.backend.kill(job_id)
            self.backend.remove(job_id)
            if network.mode == "bridge":
                self.network.release(job_id, network.address, network.link)
            self._store_and_announce(self._failed(record, str(exc)))
            if isinstance(exc, StartFailed):
                raise
            raise InternalError(f"job {job_id}: {exc}") from exc
        finally:
            os.close(output_fd)
        record = record.evolve(state=JobState.RUNNING, started_at=time.time(), pid=launched.init_pid)
        running = _Running(record, launched.status_fd, output_path, exit_file)
        with self._lock:
            self._running[job_id] = running
            self._pending.append(running)
            if spec.timeout is not None:  # once the job is known, so that even a tiny deadline finds it
                running.deadline_timer = self.timers.call_later(spec.timeout,
                                                                lambda: self._enders.submit(self._deadline, running))
            # Stored under the lock: the monitor thread takes the lock before recording the job's end,
            # so the RUNNING record can never overwrite a FINISHED one (nor its event follow the end's).
            self._store_and_announce(record)
        os.write(self._wake_w, b"x")
        log.info("job %s started for %r as %s: %s (limits %s)", job_id, owner, resolved.user, resolved.program, resolved.limits,
                 extra={"JOB_ID": job_id, "OWNER": owner})
        return record

    def _dynamic_uid(self, user: str, owner: str) -> int | None:
        """The owner's own uid if its job runs as "dynamic" (allocated on its first such job, kept for good)."""
        if user != DYNAMIC_USER:
            return None
        return self.store.dynamic_uid(owner, *self.config.run_as.dynamic_uids)

    def stop(self, job_id: str, grace: float | None = None) -> JobRecord:
        """SIGTERM every process of the job, wait `grace` seconds, then kill what is left. Returns the final
        record. Stopping a finished job returns its record unchanged. Blocks this thread until the end:
        callers that must not (the API) use begin_stop() and when_finished()."""
        grace = self.config.stop_grace if grace is None else grace
        with self._lock:
            running = self._running.get(job_id)
        self.begin_stop(job_id, grace)
        if running is not None and not running.finished.wait(grace + KILL_SETTLE):
            raise InternalError(f"job {job_id} was killed but its end was not seen within {KILL_SETTLE:.0f}s")
        return self.status(job_id)

    def begin_stop(self, job_id: str, grace: float | None = None, reason: Reason = Reason.STOPPED,
                   message: str = "stopped on request") -> bool:
        """SIGTERM every process of the job now and SIGKILL what is left after `grace` seconds, by a timer:
        returns at once. Stops of one job are one stop: a later one can only bring the kill forward (its
        reason stays the first's). False if the job has already finished; NotFound if there is no such job."""
        grace = self.config.stop_grace if grace is None else grace
        if not math.isfinite(grace) or not 0 <= grace <= MAX_GRACE:
            raise InvalidArgument(f"grace must be between 0 and {MAX_GRACE:.0f} seconds, got {grace}")
        first = False
        with self._lock:
            running = self._running.get(job_id)
            if running is None or running.finished.is_set():
                running = None
            elif running.end_reason is None:
                first = True
                running.end_reason, running.end_message = reason, message
                running.record = running.record.evolve(state=JobState.STOPPING)
                self._store_and_announce(running.record)
        if running is None:
            self.status(job_id)  # NotFound, or already finished: nothing to do
            return False
        if first:
            self.backend.signal(job_id, signal.SIGTERM)  # before the kill can be due, even with no grace
        with self._lock:
            kill_at = time.monotonic() + grace
            if not running.finished.is_set() and (running.kill_at is None or kill_at < running.kill_at):
                if running.kill_timer is not None:
                    self.timers.cancel(running.kill_timer)
                running.kill_at = kill_at
                job = running
                running.kill_timer = self.timers.call_later(grace, lambda: self._enders.submit(self._kill, job))
        return True

    def status(self, job_id: str) -> JobRecord:
        check_job_id(job_id)
        with self._lock:
            running = self._running.get(job_id)
        if running is not None and not running.finished.is_set():
            return self._live(running)
        record = self._unstored.get(job_id) or self.store.get(job_id)
        if record is None:
            raise NotFound(f"no job with id {job_id!r}")
        return record

    def list(
        self, owner: str | None = None, after: tuple[float, str] | None = None, limit: int | None = None,
        running_only: bool = False, job_ids: Sequence[str] = (), summary: bool = False,
    ) -> list[JobRecord]:
        """Jobs oldest first (of one owner, or all); a page of `limit` after (created_at, id) if given. Only
        those not finished yet with `running_only`, only those named with `job_ids` (unknown ids and others'
        jobs are left out). Running jobs come with their usage read now."""
        if len(job_ids) > MAX_LISTED_IDS:
            raise InvalidArgument(f"at most {MAX_LISTED_IDS} job ids per listing, got {len(job_ids)}")
        for job_id in job_ids:
            check_job_id(job_id)
        with self._lock:
            running = dict(self._running)
        if not running_only and not job_ids:
            records = [self._unstored.get(r.id, r) for r in self.store.list(owner, after, limit, summary)]
            return [self._live(running[r.id]) if r.id in running else r for r in records]
        if job_ids:
            found = [running[i].record if i in running else self._unstored.get(i) or self.store.get(i)
                     for i in dict.fromkeys(job_ids)]
            records = [r for r in found if r is not None]
        else:
            records = [r.record for r in running.values()]
        records = sorted((r for r in records if (owner is None or r.owner == owner)
                          and not (running_only and r.finished)), key=lambda r: (r.created_at, r.id))
        if after is not None:
            records = [r for r in records if (r.created_at, r.id) > after]
        records = records[:limit] if limit is not None else records
        return [self._live(running[r.id]) if r.id in running else r for r in records]

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        with self._lock:
            running = self._running.get(job_id)
        if running is not None:
            running.finished.wait(timeout)
        return self.status(job_id)

    def when_finished(self, job_id: str, callback: Callable[[], None]) -> bool:
        """Call `callback` (in a job-end thread) once the job has finished. False if it already has:
        lets asyncio callers wait without holding a thread."""
        with self._lock:
            running = self._running.get(job_id)
            if running is None or running.finished.is_set():
                return False
            running.on_finish.append(callback)
            return True

    def forget_when_finished(self, job_id: str, callback: Callable[[], None]) -> None:
        """Drop a callback given to when_finished (its waiter went away)."""
        with self._lock:
            running = self._running.get(job_id)
            if running is not None and callback in running.on_finish:
                running.on_finish.remove(callback)

    def output(self, job_id: str) -> OutputSource:
        """Where a follower reads this job's output, and how it knows the job has ended."""
        self.status(job_id)  # NotFound for unknown ids
        path = os.path.join(self.jobs_dir, job_id, "output")
        if not os.path.exists(path):
            raise NotFound(
                f"the output of job {job_id} is gone: output is kept for output_retention "
                f"({self.config.output_retention:.0f}s) after the job's last write, and not across reboots"
            )
        with self._lock:
            running = self._running.get(job_id)
        if running is None:
            return OutputSource(path, self.hub, lambda: True)
        return OutputSource(path, self.hub, running.finished.is_set, limit=self.config.limits.output_cap)

    # -- stopping ----------------------------------------------------------------------------------------------

    def _kill(self, running: _Running) -> None:
        """A stop's grace period is over (in a job-end thread)."""
        if running.finished.is_set():
            return
        try:
            self.backend.kill(running.record.id)
        except Exception:
            log.exception("job %s: cannot kill it at the end of its grace period", running.record.id)

    def _deadline(self, running: _Running) -> None:
        timeout = running.record.spec.timeout
        try:
            self.begin_stop(running.record.id, self.config.stop_grace, Reason.TIMED_OUT,
                            f"the job ran past its deadline of {timeout:g}s (timeout) and was stopped")
        except Exception:
            log.exception("job %s: cannot stop it at its deadline", running.record.id)

    # -- the monitor thread ---------------------------------------------------------------------------------------

    def _monitor_loop(self) -> None:
        next_sweep = time.monotonic()
        while not self._closing:
            if time.monotonic() >= next_sweep:
                self._enders.submit(self.sweep_output)
                self._enders.submit(self.prune_history)
                next_sweep = time.monotonic() + SWEEP_INTERVAL
            for key, _ in self._selector.select(SWEEP_INTERVAL):
                try:
                    self._handle(key)
                except Exception:  # this thread notices every job's end: it must outlive any bug
                    log.exception("the job monitor hit an error; it carries on")

    def _handle(self, key: selectors.SelectorKey) -> None:
        if key.data == "wake":
            os.read(self._wake_r, 4096)
            self._register_pending()
        elif key.data == "hub":
            self.hub.dispatch()
            time.sleep(MONITOR_COALESCE)
        else:
            self._selector.unregister(key.fd)
            self._enders.submit(self._finish_logged, key.data)

    def _register_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for running in pending:
            self._selector.register(running.status_fd, selectors.EVENT_READ, running)

    def _finish_logged(self, running: _Running) -> None:
        try:
            self._finish(running)
        except Exception:
            log.exception("job %s: recording its end failed", running.record.id)

    def _finish(self, running: _Running) -> None:
        """The job's init has exited, after ending every process of the job. Record the end."""
        os.close(running.status_fd)
        for timer in (running.kill_timer, running.deadline_timer):
            if timer is not None:
                self.timers.cancel(timer)
        job_id = running.record.id
        try:
            if not self.backend.wait_empty(job_id, 2.0):
                self.backend.kill(job_id)
            usage = self.backend.usage(job_id)
            self.backend.remove(job_id)
            error = ""
        except Exception as exc:  # keep the record truthful even if the cgroup misbehaves
            usage, error = running.record.usage, f"; cgroup clean-up failed: {exc}"
        bridged = running.record.spec.network.mode == "bridge"
        if bridged:  # its rules and published ports before its end is told (then its veth and address)
            self.network.release_rules(job_id, running.record.spec.network.address)
        exit_code, sig, verdict = read_exit_file(running.exit_file)
        usage = replace(usage, output_bytes=_size(running.output_path), memory_bytes=0, pids=0)
        if exit_code is None and sig is None:
            sig = signal.SIGKILL  # no exit file: the init itself was killed
        reason, message = running.end_reason, running.end_message
        if verdict:  # the init ended the job at the output cap or budget: that is why it ended
            reason, message = Reason.OUTPUT_CAPPED, self._capped_message(verdict)
        elif reason is None:
            reason, message = classify_end(exit_code, sig, usage.oom_kills, running.record.limits.memory)
        with self._lock:
            running.record = running.record.evolve(
                state=JobState.FINISHED,
                reason=reason,
                exit_code=exit_code,
                signal=sig,
                message="; ".join(m for m in (message, running.record.message) if m) + error,  # + a start's note
                finished_at=time.time(),
                usage=usage,
            )
            self._store_and_announce(running.record)  # kept in memory if the store cannot take it
            running.finished.set()
            del self._running[job_id]
        log.info("job %s finished: %s (exit %s, signal %s) %s", job_id, reason.value, exit_code, sig, message,
                 extra={"JOB_ID": job_id, "OWNER": running.record.owner, "REASON": reason.value})
        self.hub.notify(running.output_path)
        for callback in running.on_finish:
            callback()
        if bridged:
            self.network.release_link(job_id, running.record.spec.network.link)

    def prune_history(self) -> list[str]:
        """Finished records beyond history.max_records or older than history.max_age go, with their output."""
        history = self.config.history
        now = time.time()
        gone = self.store.prune(history.max_records, now - history.max_age if history.max_age else None,
                                now - history.idempotency_window)
        for job_id in gone:
            shutil.rmtree(os.path.join(self.jobs_dir, job_id), ignore_errors=True)
        if gone:
            log.info("pruned %d finished job record(s) and their output (config history)", len(gone))
        return gone

    def sweep_output(self) -> list[str]:
        """Delete the output of finished jobs last written over output_retention ago. Returns their ids."""
        retention = self.config.output_retention
        if not retention:
            return []
        cutoff = time.time() - retention
        with self._lock:
            running = set(self._running)
        removed = []
        try:
            entries = list(os.scandir(self.jobs_dir))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name in running or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                last_write = os.stat(os.path.join(entry.path, "output")).st_mtime
            except FileNotFoundError:
                last_write = entry.stat().st_mtime  # a job being created right now has no output file yet
            if last_write >= cutoff:
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
        if removed:
            log.info("removed the output of %d finished job(s) older than %.0fs", len(removed), retention)
        return removed

    # -- helpers ---------------------------------------------------------------------------------------------

    def _live(self, running: _Running) -> JobRecord:
        """A running job's record with its usage read now."""
        try:
            usage = self.backend.usage(running.record.id)
        except OSError:
            return running.record
        return running.record.evolve(usage=replace(usage, output_bytes=_size(running.output_path)))

    def _launch(self, resolved, plan: LaunchPlan, output_fd: int):
        try:
            return self.forkserver.launch(resolved, plan, output_fd)
        except ForkServerUnavailable as exc:
            log.warning("%s; starting this job's launcher directly", exc)
            return launch(resolved, plan, output_fd)

    def _capped_message(self, verdict: str) -> str:
        if verdict == "full":
            return (f"the output budget (limits.output_total = {self.run_dir.budget}, shared by all jobs) is full; "
                    "the job was killed, its output kept up to that point")
        return (f"output reached the cap of {self.config.limits.output_cap} bytes; job killed, output kept up "
                "to the cap")

    def _store_and_announce(self, record: JobRecord) -> None:
        self._persist(record)
        self._changed(record)

    def _persist(self, record: JobRecord) -> None:
        """Store a state change; if the store cannot take it (state directory full, disk error), keep it in
        memory, answer from memory, and retry until it is stored: a job's end is never lost or misreported."""
        with self._unstored_lock:
            try:
                self.store.put(record)
                self._unstored.pop(record.id, None)  # a newer state is stored: an older one kept must not follow
                return
            except Exception as exc:
                first, error = not (self._unstored or self._unstored_keys), exc
                self._unstored[record.id] = record
        log.error("job %s: its %s state could not be stored (%s); kept in memory, retried every %.0fs",
                  record.id, record.state.value, error, UNSTORED_RETRY)
        if first:
            self.timers.call_later(UNSTORED_RETRY, self._retry_unstored)

    def _remember_key(self, owner: str, key: str, job_id: str) -> None:
        """The job a start's idempotency key started. The job runs, supervised, whatever the store says: a key
        the store cannot take is kept in memory, answered from there and retried like an unstored state, so a
        client retrying with it gets this job back, never a second one (and never an error for a job that runs)."""
        at = time.time()
        with self._unstored_lock:
            try:
                self.store.remember_key(owner, key, job_id, at)
                return
            except Exception as exc:
                first, error = not (self._unstored or self._unstored_keys), exc
                self._unstored_keys[(owner, key)] = (job_id, at)
        log.error("job %s: its idempotency key could not be stored (%s); kept in memory, retried every %.0fs",
                  job_id, error, UNSTORED_RETRY)
        if first:
            self.timers.call_later(UNSTORED_RETRY, self._retry_unstored)

    def _retry_unstored(self) -> None:
        with self._unstored_lock:
            for job_id, record in list(self._unstored.items()):
                try:
                    self.store.put(record)
                except Exception:
                    continue
                del self._unstored[job_id]
                log.info("job %s: its %s state is stored now", job_id, record.state.value)
            for (owner, key), (job_id, at) in list(self._unstored_keys.items()):
                try:
                    self.store.remember_key(owner, key, job_id, at)
                except Exception:
                    continue
                del self._unstored_keys[(owner, key)]
                log.info("job %s: its idempotency key is stored now", job_id)
            left = bool(self._unstored or self._unstored_keys)
        if left and not self._closing:
            self.timers.call_later(UNSTORED_RETRY, self._retry_unstored)

    def _changed(self, record: JobRecord) -> None:
        for callback in list(self._listeners):
            try:
                callback(record)
            except Exception:  # a listener's bug must not cost the job its supervision
                log.exception("job %s: a state listener failed", record.id)

    def _failed(self, record: JobRecord, message: str) -> JobRecord:
        return record.evolve(
            state=JobState.FINISHED, reason=Reason.FAILED_TO_START, message=message, finished_at=time.time()
        )

    def reconcile(self) -> list[str]:
        """After a crash: jobs recorded as unfinished are ended (killed if still running) and recorded
        truthfully; job cgroups nobody recorded are killed and removed. See README 'Restarts'. One job that
        cannot be reconciled (unkillable, its cgroup not removable) does not keep the daemon from starting:
        it is logged and returned, and the others are reconciled."""
        unfinished = {r.id: r for r in self.store.unfinished()}
        failed = []
        for job_id in sorted(set(self.backend.job_ids()) | set(unfinished)):
            try:
                self._reconcile_one(job_id, unfinished.get(job_id))
            except Exception as exc:
                failed.append(job_id)
                log.error("job %s: cannot reconcile it after the daemon's restart: %s", job_id, exc)
        try:  # no job runs yet: every veth, rule, published port and address left behind goes
            released = self.network.reconcile(set(self._running))
            if released:
                log.info("released the network of %d job(s) that ended while no daemon ran: %s", len(released),
                         " ".join(released))
        except Exception as exc:
            log.error("cannot release the network of jobs that ended while no daemon ran: %s", exc)
        if failed:
            log.error("%d job(s) could not be reconciled and may still hold processes or cgroups: %s",
                      len(failed), " ".join(failed))
        return failed

    def _reconcile_one(self, job_id: str, record: JobRecord | None) -> None:
        has_cgroup = job_id in self.backend.job_ids()
        was_running = bool(self.backend.pids(job_id)) if has_cgroup else False
        usage = None
        if has_cgroup:
            self.backend.kill(job_id)
            usage = self.backend.usage(job_id)
        if record is not None:
            exit_file = os.path.join(self.jobs_dir, job_id, "exit")
            exit_code, sig, verdict = read_exit_file(exit_file)
            reason, message = classify_recovered(record, was_running, exit_code, sig, usage.oom_kills if usage else 0)
            if verdict and not was_running:
                reason, message = Reason.OUTPUT_CAPPED, self._capped_message(verdict) + "; while the daemon was down"
            output_bytes = _size(os.path.join(self.jobs_dir, job_id, "output"))
            self._persist(record.evolve(
                state=JobState.FINISHED, reason=reason, message=message, exit_code=exit_code, signal=sig,
                finished_at=time.time(),
                usage=replace(usage or record.usage, output_bytes=output_bytes, memory_bytes=0, pids=0),
            ))
        if has_cgroup:
            self.backend.remove(job_id)


def _network_binds(job_dir: str, rootfs: str) -> list[tuple[str, str]]:
    """The job's resolv.conf and hosts over /etc's (where the job's / has them: a read-only / cannot grow files)."""
    root = os.path.realpath(rootfs) if rootfs else ""
    return [("runfile", f"{job_dir}/{name}\t/etc/{name}") for name in ("resolv.conf", "hosts")
            if os.path.isfile(f"{root}/etc/{name}")]


SHARED_DIRECTORIES = {"/", "/etc", "/root", "/usr", "/var", "/home", "/srv", "/opt", "/tmp", "/run"}


def _key_directories(config: Config) -> list[str]:
    """The directory of the daemon's TLS key (and the CA's, /etc/jobworkerd/tls by default), hidden in
    every job as the state directory is: a root job reads any file of the host's it can see, and the CA
    key would let it mint an admin's certificate. Left visible when the key sits in a directory shared
    with the rest of the host, which hiding would break for the job."""
    directory = os.path.dirname(os.path.realpath(config.tls.key))
    return [] if directory in SHARED_DIRECTORIES or not os.path.isdir(directory) else [directory]


def _check_key(key: str) -> None:
    if len(key) > MAX_KEY or not key.isprintable():
        raise InvalidArgument(f"idempotency key must be at most {MAX_KEY} printable characters, got {key[:40]!r}...")


def check_job_id(job_id: str) -> None:
    """Ids are 12 lower-case hex digits; anything else never reaches a path or a query."""
    if not job_id:
        raise InvalidArgument("job id is empty")
    if len(job_id) != 12 or any(ch not in "0123456789abcdef" for ch in job_id):
        raise InvalidArgument(f"job id {job_id[:64]!r} is malformed: ids are 12 hex digits, as printed by start")


def read_exit_file(path: str) -> tuple[int | None, int | None, str]:
    """The init writes "<raw wait status> [capped|full]" here: (exit code, signal, verdict). (None, None, "")
    without the file; (None, SIGKILL, "") when the init itself was killed before writing a status."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            words = handle.read().split()
    except FileNotFoundError:
        return None, None, ""
    if not words or not words[0].isdigit():
        return None, signal.SIGKILL, ""
    status, verdict = int(words[0]), " ".join(words[1:2])
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status), verdict
    return os.WEXITSTATUS(status), None, verdict


def classify_recovered(
    record: JobRecord, was_running: bool, exit_code: int | None, sig: int | None, oom_kills: int
) -> tuple[Reason, str]:
    """How a job recorded as unfinished ended, judged at the next start after the daemon died."""
    if record.state is JobState.STARTING:
        return Reason.FAILED_TO_START, "the daemon stopped while the job was starting"
    if was_running or (exit_code is None and sig is None):
        return Reason.LOST, "the daemon stopped while the job ran; the job was killed when the daemon restarted"
    reason, message = classify_end(exit_code, sig, oom_kills, record.limits.memory)
    if reason is Reason.EXITED and sig == signal.SIGKILL:
        # Most likely killed with the daemon's service (systemd empties the unit's cgroup when the daemon
        # dies): not an end of its own. Its exit status is kept beside the reason.
        return Reason.LOST, "the job was killed (SIGKILL) while the daemon was down, most likely with the daemon"
    return reason, (message + "; " if message else "") + "it ended while the daemon was down"


def classify_end(exit_code: int | None, sig: int | None, oom_kills: int, memory: int | None) -> tuple[Reason, str]:
    if oom_kills and (sig == signal.SIGKILL or (exit_code or 0) != 0):
        limit = f"its memory limit of {memory} bytes" if memory else "a memory limit"
        return Reason.OOM_KILLED, (f"killed by the kernel's OOM killer at {limit} or its group's memory ceiling "
                                   f"(limits.per_user) ({oom_kills} kill(s))")
    return Reason.EXITED, ""


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
