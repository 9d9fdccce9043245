"""The output reader (read_output / aread_output) with a real OutputHub (inotify) on a temp file.

A dispatcher thread stands in for the manager's monitor thread: it waits on the hub's inotify fd and
dispatches. The job's end is modelled as the manager does it: flip is_finished, then hub.notify(path).
"""

import asyncio
import os
import select
import threading
import time

import pytest

from jobworkerd.worker.output import READ_CHUNK, OutputHub, OutputSource, aread_output, read_output

DEADLINE = 20.0  # generous: only hit when something hangs


class Job:
    """An output file, a hub with a dispatcher thread, and a finished flag."""

    def __init__(self, path):
        self.path = str(path)
        open(self.path, "wb").close()
        self.hub = OutputHub()
        self._finished = threading.Event()
        self._stop_r, self._stop_w = os.pipe()
        self._dispatcher = threading.Thread(target=self._dispatch, daemon=True)
        self._dispatcher.start()
        # The manager keeps a watch on every running job's output file; followers share it.
        self._own_watch = self.hub.subscribe(self.path, lambda: None)

    def _dispatch(self):
        while True:
            ready, _, _ = select.select([self.hub.fileno(), self._stop_r], [], [])
            if self._stop_r in ready:
                return
            self.hub.dispatch()

    def source(self):
        return OutputSource(self.path, self.hub, self._finished.is_set)

    def write(self, data: bytes):
        with open(self.path, "ab") as handle:
            handle.write(data)

    def finish(self):
        self._finished.set()
        self.hub.notify(self.path)

    def close(self):
        os.write(self._stop_w, b"x")
        self._dispatcher.join()
        self.hub.unsubscribe(self._own_watch)
        self.hub.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


@pytest.fixture
def job(tmp_path):
    j = Job(tmp_path / "output")
    yield j
    j.close()


def collect(source, offset=0, follow=True):
    chunks = list(read_output(source, offset, follow))
    expected = offset
    for at, data in chunks:  # offsets are contiguous
        assert at == expected
        expected += len(data)
    return b"".join(data for _, data in chunks)


class Reader(threading.Thread):
    def __init__(self, source, offset=0):
        super().__init__(daemon=True)
        self.source, self.offset = source, offset
        self.data, self.error = None, None

    def run(self):
        try:
            self.data = collect(self.source, self.offset)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def result(self):
        self.join(DEADLINE)
        assert not self.is_alive(), "reader did not end after the job finished"
        if self.error:
            raise self.error
        return self.data


def test_no_follow_reads_what_is_there_and_returns(job):
    job.write(b"hello\nworld\n")
    assert collect(job.source(), follow=False) == b"hello\nworld\n"  # job not finished: still returns


def test_from_offset_zero_of_a_finished_job(job):
    job.write(b"abc" * 1000)
    job.finish()
    assert collect(job.source()) == b"abc" * 1000


def test_from_a_middle_offset(job):
    job.write(b"0123456789")
    job.finish()
    assert collect(job.source(), offset=4) == b"456789"
    assert collect(job.source(), offset=10) == b""
    assert collect(job.source(), offset=100) == b""


def test_an_empty_finished_job(job):
    job.finish()
    assert collect(job.source()) == b""


def test_large_output_comes_in_chunks_of_at_most_read_chunk(job):
    data = os.urandom(READ_CHUNK * 3 + 123)
    job.write(data)
    job.finish()
    chunks = list(read_output(job.source()))
    assert all(len(c) <= READ_CHUNK for _, c in chunks)
    assert len(chunks) == 4
    assert b"".join(c for _, c in chunks) == data


def test_binary_data_is_unchanged(job):
    data = bytes(range(256)) * 64 + b"\r\n\x00\xff" + "é".encode("latin-1")
    job.write(data)
    job.finish()
    assert collect(job.source()) == data


def test_follow_while_another_thread_appends(job):
    reader = Reader(job.source())
    reader.start()
    expected = bytearray()
    for i in range(200):
        line = f"line {i}\n".encode()
        job.write(line)
        expected += line
        if i % 50 == 0:
            time.sleep(0.01)
    job.finish()
    assert reader.result() == bytes(expected)


def test_follow_from_a_middle_offset_while_appending(job):
    job.write(b"0123456789")
    reader = Reader(job.source(), offset=5)
    reader.start()
    job.write(b"abcdef")
    time.sleep(0.02)
    job.write(b"ghij")
    job.finish()
    assert reader.result() == b"56789abcdefghij"


def test_follower_waits_until_the_job_finishes(job):
    job.write(b"first\n")
    reader = Reader(job.source())
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()  # caught up, job still running: it waits
    job.write(b"second\n")
    reader.join(0.1)
    assert reader.is_alive()
    job.finish()
    assert reader.result() == b"first\nsecond\n"


def test_bytes_written_just_before_the_end_are_not_lost(job):
    """The job writes its last bytes and ends before the follower wakes: it still gets them all."""
    for _ in range(20):
        j = Job(job.path + f".{_}")
        try:
            reader = Reader(j.source())
            reader.start()
            j.write(b"x" * 1000)
            j.write(b"last\n")
            j.finish()
            assert reader.result() == b"x" * 1000 + b"last\n"
        finally:
            j.close()


def test_two_readers_get_identical_bytes(job):
    readers = [Reader(job.source()) for _ in range(2)]
    for r in readers:
        r.start()
    data = os.urandom(300_000)
    for i in range(0, len(data), 7_000):
        job.write(data[i : i + 7_000])
    job.finish()
    first, second = (r.result() for r in readers)
    assert first == second == data


def test_a_follower_does_not_busy_poll(job, monkeypatch):
    """While the job is idle, a follower sleeps on its wake-up: a handful of reads, not thousands."""
    import jobworkerd.worker.output as output_mod

    calls = {"n": 0}
    real_pread = os.pread

    def counting_pread(fd, n, offset):
        calls["n"] += 1
        return real_pread(fd, n, offset)

    monkeypatch.setattr(output_mod.os, "pread", counting_pread)
    job.write(b"start\n")
    reader = Reader(job.source())
    reader.start()
    time.sleep(0.3)
    idle_calls = calls["n"]
    job.finish()
    assert reader.result() == b"start\n"
    assert idle_calls <= 3, f"{idle_calls} reads while the job was idle"


def test_a_follower_that_stops_early_drops_its_watch(job):
    job.write(b"a" * 10)
    gen = read_output(job.source())
    assert next(gen) == (0, b"a" * 10)
    gen.close()
    # Only the manager's own watch is left: unsubscribing it removes the inotify watch entirely.
    job.hub.unsubscribe(job._own_watch)
    assert job.hub._wd_by_path == {} and job.hub._subscribers == {}
    job._own_watch = job.hub.subscribe(job.path, lambda: None)


def test_hub_shares_one_watch_per_file(job, tmp_path):
    woken = []
    a = job.hub.subscribe(job.path, lambda: woken.append("a"))
    b = job.hub.subscribe(job.path, lambda: woken.append("b"))
    assert len(job.hub._wd_by_path) == 1
    job.hub.notify(job.path)
    assert sorted(woken) == ["a", "b"]
    job.hub.unsubscribe(a)
    job.hub.unsubscribe(b)
    job.hub.unsubscribe(b)  # twice is harmless
    job.hub.notify(str(tmp_path / "unknown"))  # nothing subscribed: nothing happens


# -- asyncio ------------------------------------------------------------------------------------------------


async def acollect(source, offset=0, follow=True, coalesce=0.005):
    out = bytearray()
    expected = offset
    async for at, data in aread_output(source, offset, follow, coalesce):
        assert at == expected
        expected += len(data)
        out += data
    return bytes(out)


def test_async_reader_follows_while_another_thread_appends(job):
    data = os.urandom(200_000)

    def writer():
        for i in range(0, len(data), 5_000):
            job.write(data[i : i + 5_000])
            if i % 50_000 == 0:
                time.sleep(0.01)
        job.finish()

    async def main():
        thread = threading.Thread(target=writer)
        reader = asyncio.create_task(acollect(job.source()))
        thread.start()
        result = await asyncio.wait_for(reader, DEADLINE)
        thread.join()
        return result

    assert asyncio.run(main()) == data


def test_async_readers_and_a_thread_reader_agree(job):
    thread_reader = Reader(job.source())
    thread_reader.start()

    async def main():
        tasks = [asyncio.create_task(acollect(job.source())) for _ in range(3)]
        tasks.append(asyncio.create_task(acollect(job.source(), offset=3)))
        for i in range(50):
            job.write(f"{i:04d}\n".encode())
            await asyncio.sleep(0.001)
        job.finish()
        return await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)

    results = asyncio.run(main())
    expected = b"".join(f"{i:04d}\n".encode() for i in range(50))
    assert results[:3] == [expected] * 3
    assert results[3] == expected[3:]
    assert thread_reader.result() == expected


def test_async_no_follow_and_middle_offset(job):
    job.write(b"0123456789")
    assert asyncio.run(acollect(job.source(), offset=6, follow=False)) == b"6789"


def test_async_binary_data_unchanged(job):
    data = bytes(range(256)) * 1000
    job.write(data)
    job.finish()
    assert asyncio.run(acollect(job.source(), coalesce=0)) == data


def test_a_limit_hides_bytes_past_the_output_cap(job):
    """A running job's file can briefly grow past its output cap before the job is stopped and the file
    cut back: followers must never see those bytes."""
    job.write(b"a" * 100)
    source = OutputSource(job.path, job.hub, job._finished.is_set, limit=64)
    assert collect(source, follow=False) == b"a" * 64
    assert collect(source, offset=60, follow=False) == b"a" * 4
    assert collect(source, offset=70, follow=False) == b""
    job.finish()
    assert collect(source) == b"a" * 64


def test_a_huge_offset_reads_nothing(job):
    job.write(b"abc")
    job.finish()
    assert collect(job.source(), offset=(1 << 63) - 1) == b""



def test_parse_events_reports_changed_watches_and_queue_overflow():
    from jobworkerd.worker.output import _EVENT, IN_IGNORED, IN_MODIFY, IN_Q_OVERFLOW, parse_events

    events = _EVENT.pack(3, IN_MODIFY, 0, 0) + _EVENT.pack(5, IN_MODIFY, 0, 16) + b"name".ljust(16, b"\0")
    assert parse_events(events) == ({3, 5}, False)
    assert parse_events(_EVENT.pack(7, IN_IGNORED, 0, 0)) == (set(), False)
    assert parse_events(events + _EVENT.pack(-1, IN_Q_OVERFLOW, 0, 0)) == ({3, 5}, True)


def test_asyncio_followers_of_one_file_share_one_subscription(tmp_path):
    import asyncio

    from jobworkerd.worker.output import OutputHub, OutputSource, aread_output

    path = tmp_path / "output"
    path.write_bytes(b"")
    hub = OutputHub()
    finished = False
    source = OutputSource(str(path), hub, lambda: finished)

    async def follower() -> bytes:
        return b"".join([data async for _, data in aread_output(source, coalesce=0)])

    async def main() -> list[bytes]:
        nonlocal finished
        tasks = [asyncio.create_task(follower()) for _ in range(10)]
        await asyncio.sleep(0.05)
        assert sum(len(subs) for subs in hub._subscribers.values()) == 1  # one watch, one subscriber
        with open(path, "ab") as handle:
            handle.write(b"hello\n")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _dispatch_until_woken, hub)
        finished = True
        hub.notify(str(path))
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert results == [b"hello\n"] * 10
    assert not hub._subscribers  # the last follower to leave dropped the shared subscription
    hub.close()


def _dispatch_until_woken(hub) -> None:
    import select

    select.select([hub.fileno()], [], [], 5)
    hub.dispatch()
