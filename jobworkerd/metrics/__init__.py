"""Prometheus metrics (prometheus-client) at `metrics.listen`; README "Operating it" lists the series.

- jobs.py: the jobs' series, from JobManager.add_listener and from the running jobs at scrape time;
- endpoint.py: the HTTP server (plain on loopback, TLS with client certificates elsewhere);
- here: the two series the servicer updates itself (START_LATENCY, STREAM_CLIENTS: one daemon per
  process, so module-level, as prometheus-client's own idiom has it) and DaemonMetrics, which puts the
  registry together with the daemon's process metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import gc_collector, platform_collector, process_collector

from ..config import Config
from .endpoint import MetricsEndpoint
from .jobs import JobMetrics

if TYPE_CHECKING:
    from ..worker.manager import JobManager

START_LATENCY = Histogram(
    "jobworkerd_start_latency_seconds",
    "From a StartJob request received to the job's program running (successful starts).",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
    registry=None,
)
STREAM_CLIENTS = Gauge("jobworkerd_stream_clients", "Open StreamOutput streams.", registry=None)

__all__ = ["DaemonMetrics", "START_LATENCY", "STREAM_CLIENTS"]


class DaemonMetrics:
    """Everything the endpoint serves. Create it before `manager.open()` (so the jobs that opening finishes
    after a crash are counted), call `opened()` after, `serve()` to listen, `close()` at shutdown."""

    def __init__(self, config: Config, manager: "JobManager"):
        self.registry = CollectorRegistry()
        self.jobs = JobMetrics(config.metrics, manager)
        for collector in (self.jobs, START_LATENCY, STREAM_CLIENTS):
            self.registry.register(collector)
        process_collector.ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, _open_fds, ...
        gc_collector.GCCollector(registry=self.registry)
        platform_collector.PlatformCollector(registry=self.registry)
        self.endpoint = MetricsEndpoint(config.metrics, config.tls, self.registry)
        self.jobs.before_open()
        self._remove_listener = manager.add_listener(self.jobs.on_change)

    def opened(self) -> None:
        self.jobs.count_recovered()

    def serve(self) -> str:
        """Start the endpoint; returns its URL. ConfigError if it cannot listen."""
        return self.endpoint.start()

    def close(self) -> None:
        self.endpoint.close()
        self._remove_listener()
