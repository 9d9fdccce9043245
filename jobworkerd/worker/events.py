"""Job events: every change of a job's state, numbered by a revision, kept in a bounded history so that a
watcher that reconnects can be given what it missed (Nomad's event stream, `docker events --since`).

Revisions grow by one per event, and across daemon restarts: each run starts counting at the time it
started, in microseconds since the epoch. The history lives in memory only; a watcher that asks for a
revision from before it (an older run, or more than `capacity` events ago) is told so and re-lists.

Events carry the job's record without its arguments and environment: a history of large records would
cost the daemon memory that a hostile user controls.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import OutOfRange
from .models import JobRecord, JobState


@dataclass(frozen=True)
class JobEvent:
    revision: int
    kind: str  # created | running | stopping | finished
    time: float  # seconds since the epoch
    record: JobRecord  # without args and env


KINDS = {JobState.STARTING: "created", JobState.RUNNING: "running", JobState.STOPPING: "stopping",
         JobState.FINISHED: "finished"}


class EventLog:
    def __init__(self, capacity: int, clock: Callable[[], float] = time.time):
        self.capacity = capacity
        self._clock = clock
        self._events: collections.deque[JobEvent] = collections.deque(maxlen=capacity)
        self._last = int(clock() * 1e6)  # the revision before this run's first event
        self._first = self._last
        self._lock = threading.Lock()
        # Held from numbering an event to handing it to the last subscriber: subscribers see events in
        # revision order (a watcher skips what it has seen by revision, and would drop one that came late).
        self._delivering = threading.Lock()
        self._subscribers: dict[int, Callable[[JobEvent], None]] = {}
        self._next_token = 0

    @property
    def last_revision(self) -> int:
        return self._last

    def record(self, record: JobRecord) -> JobEvent:
        """Called for each state change (a JobManager listener): numbers it, keeps it, hands it to every
        subscriber. Subscribers run in the caller's thread and must not block."""
        summary = replace(record, spec=replace(record.spec, args=(), env={}))
        with self._delivering:
            with self._lock:
                self._last += 1
                event = JobEvent(self._last, KINDS[record.state], self._clock(), summary)
                self._events.append(event)
                subscribers = list(self._subscribers.values())
            for callback in subscribers:
                callback(event)
        return event

    def subscribe(self, callback: Callable[[JobEvent], None]) -> int:
        with self._lock:
            self._next_token += 1
            self._subscribers[self._next_token] = callback
            return self._next_token

    def unsubscribe(self, token: int) -> None:
        with self._lock:
            self._subscribers.pop(token, None)

    def after(self, revision: int) -> list[JobEvent]:
        """The kept events after `revision`, oldest first. OutOfRange if events after it are gone, or if it
        was never given out."""
        with self._lock:
            oldest_kept = self._events[0].revision if self._events else self._last + 1
            if revision > self._last:
                raise OutOfRange(
                    f"revision {revision} has not been given out yet (the latest is {self._last})")
            if revision < self._first or revision < oldest_kept - 1:
                raise OutOfRange(
                    f"revision {revision} is older than the event history reaches (it holds revisions "
                    f"{oldest_kept} to {self._last}: the last {self.capacity} events of this daemon run, which "
                    f"began after revision {self._first}); list the jobs again and watch from revision {self._last}")
            return [e for e in self._events if e.revision > revision]
