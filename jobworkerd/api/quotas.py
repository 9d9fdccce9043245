"""Per-client quotas (config `quotas`): what one certificate name may hold at once, so that no
authenticated user can overload the daemon for the others. Everything a client holds costs the daemon
something (DESIGN.md section 13): a running job (a cgroup, an init, a watch), a stream (an HTTP/2 stream
and a file descriptor), a wait (a callback); starts cost the start path, bounded by a token bucket.

Over a quota the answer is RESOURCE_EXHAUSTED naming the quota, its value and the current use; nothing
already running is touched. Also here: a job's deadline from its role's default and maximum.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator

from ..authz import Identity
from ..config import QuotasConfig, RoleQuotas
from ..errors import InvalidArgument, ResourceExhausted
from ..worker.models import JobRecord, JobState


class Quotas:
    def __init__(self, config: QuotasConfig):
        self.config = config
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], int] = {}  # (owner, what) -> count; what: streams | waits | starting
        self._running: dict[str, int] = {}  # owner -> jobs created and not finished (fed by on_job_change)
        self._buckets: dict[str, tuple[float, float]] = {}  # owner -> (tokens, at)

    def of(self, identity: Identity) -> RoleQuotas:
        return self.config.for_client(identity.name, identity.is_admin)

    # -- holding streams and waits --------------------------------------------------------------------------

    @contextlib.contextmanager
    def holding(self, identity: Identity, what: str) -> Iterator[None]:
        """One stream or wait for the time of the `with`; RESOURCE_EXHAUSTED if the client holds its quota."""
        limit = getattr(self.of(identity), what)
        key = (identity.owner, what)
        with self._lock:
            used = self._held.get(key, 0)
            if limit is not None and used >= limit:
                raise ResourceExhausted(f"quota {what} is {limit} for {identity.owner!r}, who has {used} open; "
                                        f"close one first (config quotas)")
            self._held[key] = used + 1
        try:
            yield
        finally:
            with self._lock:
                self._held[key] -= 1
                if not self._held[key]:
                    del self._held[key]

    # -- starts ---------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def starting(self, identity: Identity) -> Iterator[None]:
        """Admit one start: within the start rate and the running-jobs quota (counting starts under way)."""
        quotas = self.of(identity)
        name = identity.owner  # as jobs are owned: an admin and a user of one CN are two clients
        with self._lock:
            self._take_token(name, quotas)
            starting = self._held.get((name, "starting"), 0)
            running = self._running.get(name, 0)
            if quotas.running_jobs is not None and running + starting >= quotas.running_jobs:
                raise ResourceExhausted(
                    f"quota running_jobs is {quotas.running_jobs} for {name!r}, who has {running} running"
                    + (f" and {starting} starting" if starting else "") + "; wait for one to end (config quotas)")
            self._held[(name, "starting")] = starting + 1
        try:
            yield
        finally:
            with self._lock:
                self._held[(name, "starting")] -= 1
                if not self._held[(name, "starting")]:
                    del self._held[(name, "starting")]

    def _take_token(self, name: str, quotas: RoleQuotas) -> None:
        rate = quotas.starts_per_second
        if rate is None:
            return
        now = time.monotonic()
        tokens, at = self._buckets.get(name, (float(quotas.start_burst), now))
        tokens = min(float(quotas.start_burst), tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[name] = (tokens, now)
            raise ResourceExhausted(
                f"quota starts_per_second is {rate:g} (bursts of {quotas.start_burst}) for {name!r}, who has used "
                f"it up: the next start is possible in {(1.0 - tokens) / rate:.2f}s (config quotas)")
        self._buckets[name] = (tokens - 1.0, now)

    def on_job_change(self, record: JobRecord) -> None:
        """A JobManager listener: counts each owner's jobs from created to finished."""
        with self._lock:
            if record.state is JobState.STARTING:
                self._running[record.owner] = self._running.get(record.owner, 0) + 1
            elif record.state is JobState.FINISHED and record.owner in self._running:
                self._running[record.owner] -= 1
                if not self._running[record.owner]:
                    del self._running[record.owner]

    # -- deadlines --------------------------------------------------------------------------------------------

    def timeout_for(self, identity: Identity, requested: float | None) -> float | None:
        """The job's deadline: the one asked for, within the role's maximum, else the role's default (capped
        by the maximum, which also applies when there is no default)."""
        quotas = self.of(identity)
        if requested is None:
            if quotas.timeout is None:
                return quotas.max_timeout
            return min(quotas.timeout, quotas.max_timeout) if quotas.max_timeout else quotas.timeout
        if not math.isfinite(requested) or requested <= 0:
            raise InvalidArgument(f"timeout must be a positive number of seconds, got {requested}")
        if quotas.max_timeout is not None and requested > quotas.max_timeout:
            raise ResourceExhausted(f"timeout {requested:g}s is over the maximum of {quotas.max_timeout:g}s for "
                                    f"{identity.name!r} (config quotas max_timeout)")
        return requested
