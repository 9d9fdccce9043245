"""The job event log's delivery order: subscribers get events in revision order even when two threads record
at once (WatchJobs skips events by revision, so one handed over late would be lost to its watcher)."""

from __future__ import annotations

import threading
import time

from jobworkerd.worker.events import EventLog
from jobworkerd.worker.models import JobRecord, JobSpec, JobState


def record(job_id: str) -> JobRecord:
    return JobRecord(id=job_id, owner="alice", spec=JobSpec("true"), limits=JobSpec("true").limits,
                     state=JobState.STARTING)


def test_concurrent_events_reach_subscribers_in_revision_order():
    log = EventLog(100)
    delivered: list[int] = []
    first_in = threading.Event()

    def slow_subscriber(event) -> None:
        if not first_in.is_set():
            first_in.set()
            time.sleep(0.2)  # the first event's delivery is slow: the second must not overtake it
        delivered.append(event.revision)

    log.subscribe(slow_subscriber)
    first = threading.Thread(target=log.record, args=(record("a"),))
    first.start()
    first_in.wait(5)
    second = threading.Thread(target=log.record, args=(record("b"),))
    second.start()
    first.join(5)
    second.join(5)
    assert len(delivered) == 2 and delivered == sorted(delivered), delivered
    assert [e.revision for e in log.after(log.last_revision - 2)] == delivered
