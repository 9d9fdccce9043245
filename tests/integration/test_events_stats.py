"""Operations (issue 13): the WatchJobs event stream (`jobctl events`) and live stats (`jobctl stats`), against a
real daemon: two users and an admin, resuming from a revision, a revision too old, and one ListJobs call per
stats refresh."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading

import grpc
import pytest
from faultkit import marked_processes, new_marker, rpc_error, sh, start, stop_job, wait_job, wait_until

from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.root
E = pb.JobEventType


class Watcher:
    """A WatchJobs stream read in a thread into a queue."""

    def __init__(self, stub, after_revision: int = 0):
        self.call = stub.WatchJobs(pb.WatchJobsRequest(after_revision=after_revision), timeout=120)
        self.events: queue.Queue = queue.Queue()
        self.error: grpc.RpcError | None = None
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for event in self.call:
                self.events.put(event)
        except grpc.RpcError as err:
            self.error = err
            self.events.put(None)

    def take_until(self, job_id: str, kind: int, timeout: float = 30) -> list[pb.JobEvent]:
        taken = []
        while True:
            event = self.events.get(timeout=timeout)
            assert event is not None, self.error
            taken.append(event)
            if event.job.id == job_id and event.type == kind:
                return taken

    def ready(self, stub) -> "Watcher":
        """Returns once the stream is being served: the events of a job started now have come through (a
        stream opened a moment before a job starts could otherwise miss its first events)."""
        probe = start(stub, "true")
        self.take_until(probe.id, E.JOB_EVENT_TYPE_FINISHED)
        return self

    def close(self) -> None:
        self.call.cancel()


def kinds(events, job_id: str) -> list[int]:
    return [e.type for e in events if e.job.id == job_id]


def test_each_watcher_sees_its_own_jobs_changes_and_an_admin_sees_all(daemon):
    admin, alice, bob = daemon.stub("admin", "admin"), daemon.stub("alice", "user"), daemon.stub("bob", "user")
    watchers = {name: Watcher(stub).ready(stub) for name, stub in (("admin", admin), ("alice", alice), ("bob", bob))}
    try:
        a = sh(alice, "echo secret-args-are-not-in-events")
        b = start(bob, "sleep", "600")
        wait_job(alice, a.id)
        stop_job(bob, b.id, grace=0)
        seen_admin = watchers["admin"].take_until(b.id, E.JOB_EVENT_TYPE_FINISHED)
        seen_alice = watchers["alice"].take_until(a.id, E.JOB_EVENT_TYPE_FINISHED)
        seen_bob = watchers["bob"].take_until(b.id, E.JOB_EVENT_TYPE_FINISHED)
    finally:
        for watcher in watchers.values():
            watcher.close()
    life = [E.JOB_EVENT_TYPE_CREATED, E.JOB_EVENT_TYPE_RUNNING, E.JOB_EVENT_TYPE_FINISHED]
    assert kinds(seen_admin, a.id) == life
    assert kinds(seen_admin, b.id) == life[:2] + [E.JOB_EVENT_TYPE_STOPPING, E.JOB_EVENT_TYPE_FINISHED]
    assert kinds(seen_alice, a.id) == life and not kinds(seen_alice, b.id)
    assert not kinds(seen_bob, a.id) and kinds(seen_bob, b.id) == kinds(seen_admin, b.id)
    revisions = [e.revision for e in seen_admin]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
    finished = seen_admin[-1]
    assert finished.job.reason == pb.TERMINATION_REASON_STOPPED and finished.job.signal == 15
    assert all(not e.job.command.arguments and not e.job.command.env for e in seen_admin)  # summaries only


def test_a_watcher_resumes_after_its_last_revision_and_too_old_a_revision_is_out_of_range(daemon_factory):
    d = daemon_factory({"events": {"history": 8}}).start()
    alice = d.stub("alice", "user")
    watcher = Watcher(alice).ready(alice)
    try:
        first = sh(alice, "exit 0")
        wait_job(alice, first.id)
        created = watcher.take_until(first.id, E.JOB_EVENT_TYPE_CREATED)[-1]
        watcher.take_until(first.id, E.JOB_EVENT_TYPE_FINISHED)
    finally:
        watcher.close()
    second = sh(alice, "exit 3")  # while no one watches
    wait_job(alice, second.id)

    resumed = Watcher(alice, after_revision=created.revision)
    try:
        missed = resumed.take_until(second.id, E.JOB_EVENT_TYPE_FINISHED)
    finally:
        resumed.close()
    assert [(e.job.id, e.type) for e in missed] == [
        (first.id, E.JOB_EVENT_TYPE_RUNNING), (first.id, E.JOB_EVENT_TYPE_FINISHED),
        (second.id, E.JOB_EVENT_TYPE_CREATED), (second.id, E.JOB_EVENT_TYPE_RUNNING),
        (second.id, E.JOB_EVENT_TYPE_FINISHED)]
    assert missed[-1].job.exit_code == 3

    for _ in range(3):  # 9 more events: the first job's are gone from a history of 8
        wait_job(alice, start(alice, "true").id)
    error = rpc_error(lambda: next(iter(alice.WatchJobs(pb.WatchJobsRequest(after_revision=created.revision),
                                                         timeout=30))))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "older than the event history reaches" in error.details() and "list the jobs again" in error.details()

    d.stop()
    d.start()  # a new run: its revisions start above the old ones, its history is empty
    alice = d.stub("alice", "user")
    error = rpc_error(lambda: next(iter(alice.WatchJobs(pb.WatchJobsRequest(after_revision=missed[-1].revision),
                                                         timeout=30))))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    watcher = Watcher(alice).ready(alice)
    try:
        job = start(alice, "true")
        after_restart = watcher.take_until(job.id, E.JOB_EVENT_TYPE_FINISHED)
    finally:
        watcher.close()
    assert after_restart[0].revision > missed[-1].revision


def test_a_watcher_that_does_not_read_is_told_where_to_resume(daemon_factory):
    from pathlib import Path

    from jobworkerd.gen.jobworker.v1 import jobworker_pb2_grpc

    d = daemon_factory({"events": {"history": 8}, "quotas": {"admin": {"starts_per_second": None}}}).start()
    stub = d.stub()
    crt, key = d.cert("admin", "admin")
    credentials = grpc.ssl_channel_credentials(Path(d.ca).read_bytes(), Path(key).read_bytes(), Path(crt).read_bytes())
    # A client that reads nothing: with BDP probing off, its flow-control window stays at 64 KiB.
    with grpc.secure_channel(d.addr, credentials, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        slow_reader(jobworker_pb2_grpc.JobWorkerStub(channel), stub)


def slow_reader(watching, stub) -> None:
    call = watching.WatchJobs(pb.WatchJobsRequest(), timeout=120)
    first = start(stub, "true")  # the stream is open once its events arrive; then it is not read
    wait_job(stub, first.id)
    events = iter(call)
    assert next(events).job.id == first.id
    for _ in range(300):  # 900 events, ~250 KB: more than the transport buffers and the 8 the daemon queues
        wait_job(stub, start(stub, "true").id)
    with pytest.raises(grpc.RpcError) as info:
        for _ in events:
            pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "fell more than 8 events behind; watch again with after_revision=" in info.value.details()


def test_jobctl_events_prints_a_line_or_a_json_object_per_event(daemon):
    admin = daemon.stub()
    watcher = Watcher(admin).ready(admin)
    try:
        job = sh(admin, "exit 7", name="evented")
        wait_job(admin, job.id)
        created = watcher.take_until(job.id, E.JOB_EVENT_TYPE_CREATED)[-1]
    finally:
        watcher.close()
    lines = {}
    for output in ("text", "json"):
        proc = subprocess.Popen([sys.executable, "-m", "jobctl", "events", "--since", str(created.revision - 1),
                                 "-o", output], env=daemon.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            got = []
            while len(got) < 3:
                line = proc.stdout.readline()
                assert line, proc.stderr.read()
                got.append(line.decode())
        finally:
            proc.kill()
            proc.wait()
        lines[output] = got
    text = lines["text"]
    assert text[0].split()[:5] == [str(created.revision), text[0].split()[1], "created", job.id, "evented"]
    assert text[2].split()[2:] == ["finished", job.id, "evented", "admin:admin", "exited", "(exit", "code", "7)"], text
    objects = [json.loads(line) for line in lines["json"]]
    assert [o["type"] for o in objects] == ["created", "running", "finished"]
    assert objects[2]["job"]["exit_code"] == 7 and objects[2]["revision"] == created.revision + 2


def test_stats_shows_running_jobs_usage_from_one_listing(daemon):
    admin, alice = daemon.stub(), daemon.stub("alice", "user")
    marker = new_marker()
    busy = sh(alice, f"python3 -c 'b = bytearray(20 << 20); import time; time.sleep(1000.{marker})' & "
                     f"while :; do :; done", limits=pb.Limits(memory_bytes=64 << 20))
    finished = start(alice, "true")
    wait_job(alice, finished.id)
    other = start(admin, "sleep", f"1000.{marker}")
    try:
        wait_until(lambda: len(marked_processes(marker)) == 3, "the shell and python3 of one job, sleep of the other")
        running = alice.ListJobs(pb.ListJobsRequest(running_only=True), timeout=30).jobs
        assert [j.id for j in running] == [busy.id]  # not the finished one, not the admin's
        named = alice.ListJobs(pb.ListJobsRequest(job_ids=[finished.id, other.id, busy.id]), timeout=30).jobs
        assert [j.id for j in named] == [busy.id, finished.id]  # the admin's job is left out for alice
        wait_until(lambda: alice.GetJob(pb.GetJobRequest(job_id=busy.id), timeout=30).usage.memory_bytes >= 20 << 20,
                   "the bytearray to be charged")
        assert named[0].usage.pids == 2  # the shell running the loop, and python3
        assert (named[1].usage.pids, named[1].usage.memory_bytes) == (0, 0)  # finished: nothing held now
        done = daemon.jobctl("stats", "--no-stream", "--interval", "1", name="alice", role="user")
        assert done.returncode == 0, done.stderr
        header, row = done.stdout.decode().splitlines()
        assert header.split()[:3] == ["ID", "NAME", "CPU"]
        cells = row.split()
        assert cells[0] == busy.id and cells[4:6] == ["/", "64M"] and cells[-2] == "2", row
        assert 30 < float(cells[2].rstrip("%")) < 250, row  # a busy loop: about one core
    finally:
        stop_job(alice, busy.id, grace=0)
        stop_job(admin, other.id, grace=0)


def test_too_many_job_ids_or_a_malformed_one_is_invalid(daemon):
    stub = daemon.stub()
    error = rpc_error(lambda: stub.ListJobs(pb.ListJobsRequest(job_ids=["0" * 12] * 1001), timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 1000" in error.details()
    error = rpc_error(lambda: stub.ListJobs(pb.ListJobsRequest(job_ids=["../etc"]), timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in error.details()
