"""Job output: one append-only file per job, followed through one inotify watch per file.

OutputHub owns a single inotify instance. Every running job's output file has one watch (the manager
uses it to enforce the output cap); every follower of that file subscribes to the same watch, and is
woken when the file grows or the job ends. Followers never poll.

A follower reads from any offset in large chunks until it has caught up, waits for a wake-up, and stops
once the job has finished and every byte has been read.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import struct
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from ..errors import InternalError

IN_MODIFY = 0x00000002
IN_IGNORED = 0x00008000
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")

READ_CHUNK = 256 << 10  # catching up: up to 256 KiB per read (and per gRPC message)
MAX_OFFSET = 1 << 62  # pread needs offset + count to fit in off_t; no output file is this large

_libc = ctypes.CDLL(None, use_errno=True)
log = logging.getLogger("jobworkerd.output")


def parse_events(data: bytes) -> tuple[set[int], bool]:
    """inotify events -> (watch descriptors that saw a change, whether the kernel's queue overflowed)."""
    woken: set[int] = set()
    overflow = False
    offset = 0
    while offset < len(data):
        wd, mask, _cookie, name_len = _EVENT.unpack_from(data, offset)
        offset += _EVENT.size + name_len
        if mask & IN_Q_OVERFLOW:
            overflow = True
        elif not mask & IN_IGNORED:
            woken.add(wd)
    return woken, overflow


class _LoopFanout:
    """The asyncio followers of one file in one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.events: set[asyncio.Event] = set()
        self.handle: tuple[str, int] | None = None

    def wake_from_any_thread(self) -> None:
        self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        for event in self.events:
            event.set()


class OutputHub:
    """Shares one inotify watch per output file between the manager and all followers."""

    def __init__(self) -> None:
        self._fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise InternalError(f"inotify_init1 failed: {os.strerror(ctypes.get_errno())}")
        self._lock = threading.Lock()
        self._wd_by_path: dict[str, int] = {}
        self._subscribers: dict[int, dict[int, Callable[[], None]]] = {}
        self._next_token = 0
        self._fanouts: dict[tuple[int, str], _LoopFanout] = {}

    def fileno(self) -> int:
        return self._fd

    def subscribe(self, path: str, callback: Callable[[], None]) -> tuple[str, int]:
        with self._lock:
            wd = self._wd_by_path.get(path)
            if wd is None:
                wd = _libc.inotify_add_watch(self._fd, path.encode(), IN_MODIFY)
                if wd < 0:
                    raise InternalError(f"cannot watch {path}: {os.strerror(ctypes.get_errno())}")
                self._wd_by_path[path] = wd
                self._subscribers[wd] = {}
            self._next_token += 1
            self._subscribers[wd][self._next_token] = callback
            return path, self._next_token

    def unsubscribe(self, handle: tuple[str, int]) -> None:
        path, token = handle
        with self._lock:
            wd = self._wd_by_path.get(path)
            if wd is None:
                return
            subscribers = self._subscribers[wd]
            subscribers.pop(token, None)
            if not subscribers:
                del self._wd_by_path[path], self._subscribers[wd]
                _libc.inotify_rm_watch(self._fd, wd)

    def subscribe_async(self, path: str, event: asyncio.Event) -> tuple[int, str, asyncio.Event]:
        """Set `event` when `path` changes. All asyncio followers of one file in one event loop share a
        single subscription: one cross-thread wake-up per change, however many followers there are."""
        loop = asyncio.get_running_loop()
        key = (id(loop), path)
        with self._lock:
            fanout = self._fanouts.get(key)
            if fanout is None:
                fanout = self._fanouts[key] = _LoopFanout(loop)
        if fanout.handle is None:  # the loop thread is the only one that creates or drops a fanout
            fanout.handle = self.subscribe(path, fanout.wake_from_any_thread)
        fanout.events.add(event)
        return key[0], path, event

    def unsubscribe_async(self, handle: tuple[int, str, asyncio.Event]) -> None:
        loop_id, path, event = handle
        with self._lock:
            fanout = self._fanouts.get((loop_id, path))
            if fanout is None:
                return
            fanout.events.discard(event)
            if fanout.events:
                return
            del self._fanouts[(loop_id, path)]
        if fanout.handle is not None:
            self.unsubscribe(fanout.handle)

    def notify(self, path: str) -> None:
        """Wake every subscriber of path (used when a job ends: followers must re-check)."""
        with self._lock:
            wd = self._wd_by_path.get(path)
            callbacks = list(self._subscribers.get(wd, {}).values()) if wd is not None else []
        _call_each(callbacks)

    def dispatch(self) -> None:
        """Read pending inotify events and wake the subscribers of each file that changed."""
        try:
            data = os.read(self._fd, 64 << 10)
        except BlockingIOError:
            return
        woken, overflow = parse_events(data)
        with self._lock:
            if overflow:  # events were lost: we cannot tell whose file grew, so wake everyone
                woken = set(self._subscribers)
            callbacks = [cb for wd in woken for cb in self._subscribers.get(wd, {}).values()]
        _call_each(callbacks)

    def close(self) -> None:
        os.close(self._fd)


def _call_each(callbacks: list[Callable[[], None]]) -> None:
    """One subscriber's failure must not keep the others asleep."""
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("an output subscriber failed")


class OutputSource:
    """What a follower needs from the manager: the file, whether the job has finished, and where its
    output ends at most (a running job's output cap: the file can briefly grow past it before the job is
    stopped and the file cut back, and followers must never send those bytes)."""

    def __init__(self, path: str, hub: OutputHub, is_finished: Callable[[], bool], limit: int | None = None):
        self.path = path
        self.hub = hub
        self.is_finished = is_finished
        self.limit = limit


def _read_chunk(fd: int, offset: int, limit: int | None) -> bytes:
    end = MAX_OFFSET if limit is None else min(limit, MAX_OFFSET)
    if offset >= end:
        return b""
    return os.pread(fd, min(READ_CHUNK, end - offset), offset)


def read_output(source: OutputSource, offset: int = 0, follow: bool = True) -> Iterator[tuple[int, bytes]]:
    """Blocking follower: yields (offset, data) from `offset` until the job has finished and all is read."""
    wake = threading.Event()
    handle = source.hub.subscribe(source.path, wake.set) if follow else None
    try:
        with open(source.path, "rb", buffering=0) as handle_file:
            fd = handle_file.fileno()
            while True:
                wake.clear()
                finished = source.is_finished()  # before the read: a job ending after it still gets a last read
                data = _read_chunk(fd, offset, source.limit)
                if data:
                    yield offset, data
                    offset += len(data)
                    continue
                if finished or not follow:
                    return
                wake.wait()
    finally:
        if handle is not None:
            source.hub.unsubscribe(handle)


async def aread_output(
    source: OutputSource, offset: int = 0, follow: bool = True, coalesce: float = 0.005
) -> AsyncIterator[tuple[int, bytes]]:
    """asyncio follower. While following, waits `coalesce` seconds after a wake-up so that a job writing
    many small lines costs one message per few ms, not one per line."""
    wake = asyncio.Event()
    handle = source.hub.subscribe_async(source.path, wake) if follow else None
    try:
        with open(source.path, "rb", buffering=0) as handle_file:
            fd = handle_file.fileno()
            while True:
                wake.clear()
                finished = source.is_finished()
                data = _read_chunk(fd, offset, source.limit)
                if data:
                    yield offset, data
                    offset += len(data)
                    continue
                if finished or not follow:
                    return
                await wake.wait()
                if coalesce and not source.is_finished():
                    await asyncio.sleep(coalesce)
    finally:
        if handle is not None:
            source.hub.unsubscribe_async(handle)
