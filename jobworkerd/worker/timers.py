"""One thread that runs callbacks at given times: stop grace periods and job deadlines hold no thread of
their own while they wait. Callbacks must be quick (hand slow work to a pool)."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("jobworkerd.timers")


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._pending: set[int] = set()  # handles not yet run nor cancelled
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="job-timers", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, callback: Callable[[], None]) -> int:
        """Run callback after `delay` seconds (monotonic clock). Returns a handle for cancel()."""
        with self._cond:
            handle = next(self._ids)
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), handle, callback))
            self._pending.add(handle)
            self._cond.notify()
            return handle

    def cancel(self, handle: int) -> None:
        with self._cond:
            self._pending.discard(handle)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._closed:
                    return
                _, handle, callback = heapq.heappop(self._heap)
                if handle not in self._pending:
                    continue  # cancelled
                self._pending.discard(handle)
            try:
                callback()
            except Exception:
                log.exception("a timer callback failed")
