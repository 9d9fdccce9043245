"""The jobs' series: counted from the JobManager's state changes, and read from the running jobs at scrape time.

Two inputs, on purpose:
- `on_change` is a JobManager listener. It runs in the thread that changed the job, sometimes under the
  manager's lock, so it only updates a few numbers under a lock of its own: it never blocks and never
  calls the manager.
- `collect` runs in the scrape's thread. It reads the output size of each running job (one stat each) and,
  when per-job series are on, the running jobs' usage through `manager.status` (a few cgroup files each,
  for at most `per_job_max` jobs).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config import MetricsConfig
from ..errors import JobWorkerError
from ..worker.models import JobRecord, JobState, Reason

if TYPE_CHECKING:
    from ..worker.manager import JobManager

REASONS = tuple(r.value for r in Reason if r is not Reason.NONE)
OTHER_USERS = "other"  # the bucket of owners beyond max_users (a user called "other" shares it)


class JobMetrics(Collector):
    def __init__(self, config: MetricsConfig, manager: "JobManager"):
        self.config = config
        self.manager = manager
        self._lock = threading.Lock()
        self._running: dict[str, str] = {}  # id -> owner of jobs whose program runs, in the order they started
        self._started = 0
        self._finished = dict.fromkeys(REASONS, 0)
        self._finished_output = 0  # output bytes of the jobs that finished since the daemon started
        self._output_reported = 0  # the counter never goes back, whatever a file's size does
        self._users: list[str] = []  # owners with a `user` label of their own: the first max_users seen
        self._recovering: set[str] = set()

    # -- state changes (a JobManager listener) ---------------------------------------------------------------

    def on_change(self, record: JobRecord) -> None:
        with self._lock:
            if record.state is JobState.RUNNING and record.id not in self._running:
                self._running[record.id] = record.owner
                self._started += 1
                if (self.config.user_labels and record.owner not in self._users and record.owner != OTHER_USERS
                        and len(self._users) < self.config.max_users):
                    self._users.append(record.owner)
            elif record.state is JobState.FINISHED:
                self._running.pop(record.id, None)
                self._recovering.discard(record.id)
                if record.reason.value in self._finished:
                    self._finished[record.reason.value] += 1
                self._finished_output += record.usage.output_bytes

    def before_open(self) -> None:
        """Note the jobs a previous daemon left unfinished: opening the manager finishes them (lost, or
        their real end), and they count among the finished once (see count_recovered)."""
        self._recovering = {r.id for r in self.manager.store.unfinished()}

    def count_recovered(self) -> None:
        """After the manager has opened: count the jobs it finished at start that no listener call did."""
        with self._lock:
            pending, self._recovering = self._recovering, set()
        for job_id in sorted(pending):
            try:
                record = self.manager.status(job_id)
            except JobWorkerError:
                continue
            if record.finished and record.reason.value in self._finished:
                with self._lock:
                    self._finished[record.reason.value] += 1

    # -- scrape time ---------------------------------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        yield from self._families(running={}, started=0, finished={}, output=0)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            running = dict(self._running)
            started, finished, output = self._started, dict(self._finished), self._finished_output
        output += sum(self._output_size(job_id) for job_id in running)
        with self._lock:
            self._output_reported = output = max(output, self._output_reported)
        yield from self._families(running, started, finished, output)
        if self.config.per_job:
            yield from self._per_job(running)

    def _families(self, running: dict[str, str], started: int, finished: dict[str, int], output: int
                  ) -> Iterator[Metric]:
        yield CounterMetricFamily("jobworkerd_jobs_started", "Jobs whose program started running.", started)
        done = CounterMetricFamily("jobworkerd_jobs_finished", "Jobs that finished, by termination reason.",
                                   labels=["reason"])
        for reason in REASONS:
            done.add_metric([reason], finished.get(reason, 0))
        yield done
        yield self._running_family(running)
        yield CounterMetricFamily("jobworkerd_output_bytes", "Output bytes written by jobs.", output)

    def _running_family(self, running: dict[str, str]) -> Metric:
        text = "Jobs whose program is running (including those being stopped)."
        if not self.config.user_labels:
            return GaugeMetricFamily("jobworkerd_jobs_running", text, len(running))
        with self._lock:
            users = list(self._users)
        counts = dict.fromkeys(users, 0) | {OTHER_USERS: 0}
        for owner in running.values():
            counts[owner if owner in users else OTHER_USERS] += 1
        family = GaugeMetricFamily("jobworkerd_jobs_running", text + " By owner: the first "
                                   f"{self.config.max_users} owners seen, then '{OTHER_USERS}'.", labels=["user"])
        for user, count in counts.items():
            family.add_metric([user], count)
        return family

    def _per_job(self, running: dict[str, str]) -> Iterator[Metric]:
        cpu = CounterMetricFamily("jobworkerd_job_cpu_seconds", "CPU time of a running job.",
                                  labels=["job_id", "owner"])
        peak = GaugeMetricFamily("jobworkerd_job_memory_peak_bytes", "Peak memory of a running job.",
                                 labels=["job_id", "owner"])
        limit = GaugeMetricFamily("jobworkerd_job_memory_limit_bytes", "Memory limit of a running job (if it has one).",
                                  labels=["job_id", "owner"])
        shown = list(running.items())[: self.config.per_job_max]
        for job_id, owner in shown:
            try:
                record = self.manager.status(job_id)
            except JobWorkerError:
                continue
            if record.finished:
                continue
            cpu.add_metric([job_id, owner], record.usage.cpu_seconds)
            peak.add_metric([job_id, owner], record.usage.memory_peak_bytes)
            if record.limits.memory:
                limit.add_metric([job_id, owner], record.limits.memory)
        yield cpu
        yield peak
        yield limit
        yield GaugeMetricFamily(
            "jobworkerd_job_series_omitted",
            f"Running jobs without jobworkerd_job_* series (beyond metrics.per_job_max = {self.config.per_job_max}).",
            len(running) - len(shown),
        )

    def _output_size(self, job_id: str) -> int:
        try:
            return os.stat(os.path.join(self.manager.jobs_dir, job_id, "output")).st_size
        except OSError:
            return 0
