"""Issue 12's proof, short run: one authenticated user does everything at once that the quotas exist for
(a burst of starts, hundreds of streams and waits, a hundred long stops of a job that ignores SIGTERM,
many records with large arguments) while an admin keeps working. The daemon keeps answering the admin,
its RSS and descriptors stay bounded, the quotas hold, and nothing already stored is lost.

The latency side (the admin's GetJob/ListJobs p99 against an idle daemon, same run) is a figure, not a
test: `bench/hostile_user.py` prints it against its target.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from daemon_harness import fd_count, rss_bytes
from faultkit import read_all, sh, start, wait_job, wait_until

from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.root
QUOTAS = {"user": {"running_jobs": 8, "streams": 16, "waits": 16, "starts_per_second": 50, "start_burst": 50}}


def codes(calls) -> dict:
    counted: dict = {}
    for call in calls:
        try:
            call()
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
        counted[code] = counted.get(code, 0) + 1
    return counted


def test_one_hostile_user_cannot_take_the_daemon_from_the_others(daemon_factory):
    d = daemon_factory({"quotas": QUOTAS, "history": {"max_records": 2000}}).start()
    admin, mallory = d.stub(), d.stub("mallory", "user")
    kept = sh(admin, "echo kept before the attack")
    wait_job(admin, kept.id)
    fds_before = fd_count(d.pid)
    attack(d, admin, mallory, kept)
    rss_after_one = rss_bytes(d.pid)
    attack(d, admin, mallory, kept)
    # Bounded: the descriptors come back, and a second attack as large costs no more memory than the first
    # left held (what the quotas let in is all the daemon ever holds for it).
    wait_until(lambda: fd_count(d.pid) <= fds_before + 4, "the daemon's descriptors to come back")
    assert rss_bytes(d.pid) < rss_after_one + (16 << 20), (rss_after_one, rss_bytes(d.pid))
    # Nothing already stored is lost.
    assert read_all(admin, kept.id) == b"kept before the attack\n"
    assert admin.GetJob(pb.GetJobRequest(job_id=kept.id), timeout=10).exit_code == 0


def attack(d, admin, mallory, kept) -> None:
    stubborn = sh(mallory, "trap '' TERM; echo ready; while :; do sleep 1; done")
    wait_until(lambda: read_all(mallory, stubborn.id, follow=False) == b"ready\n", "the stubborn job")
    big = ["y" * 1000] * 100  # 100 KB of arguments per record
    stop = threading.Event()
    results: dict = {}

    def starts():
        results["starts"] = codes([lambda: start(mallory, "true", *big) for _ in range(300)])

    def streams():
        calls = [mallory.StreamOutput(pb.StreamOutputRequest(job_id=stubborn.id), timeout=120) for _ in range(200)]
        opened = {}
        for call in calls:
            try:
                next(call)
                opened["ok"] = opened.get("ok", 0) + 1
            except grpc.RpcError as err:
                opened[err.code()] = opened.get(err.code(), 0) + 1
        results["streams"] = opened
        stop.wait(120)
        for call in calls:
            call.cancel()

    def waits():
        futures = [mallory.WaitJob.future(pb.WaitJobRequest(job_id=stubborn.id), timeout=120) for _ in range(200)]
        stop.wait(120)
        refused = sum(1 for f in futures if f.done() and f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
        results["waits_refused"] = refused
        for future in futures:
            future.cancel()

    def stops():
        futures = [mallory.StopJob.future(pb.StopJobRequest(job_id=stubborn.id, grace_seconds=60), timeout=120)
                   for _ in range(100)]
        results["stops"] = futures

    with ThreadPoolExecutor(4) as pool:
        parts = [pool.submit(fn) for fn in (starts, streams, waits, stops)]
        # Meanwhile the admin works as usual, and every call is answered.
        answered = 0
        while not parts[0].done():
            assert admin.GetJob(pb.GetJobRequest(job_id=kept.id), timeout=10).id == kept.id
            assert admin.ListJobs(pb.ListJobsRequest(page_size=50, view=pb.JOB_VIEW_SUMMARY), timeout=10).jobs
            answered += 1
        wait_job(admin, start(admin, "true").id, timeout=30)  # and starts its own jobs
        stop.set()
        for part in parts:
            part.result(timeout=180)
    assert answered > 0
    # The quotas held: starts past the running-jobs quota and rate were refused, not queued; streams and waits
    # past theirs too.
    assert results["starts"].get(grpc.StatusCode.OK, 0) > 0
    assert set(results["starts"]) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, results["starts"]
    assert results["streams"] == {"ok": 16, grpc.StatusCode.RESOURCE_EXHAUSTED: 184}, results["streams"]
    assert results["waits_refused"] == 200 - 16
    # The hundred stops are one: still in their grace period, and the job still runs.
    assert admin.GetJob(pb.GetJobRequest(job_id=stubborn.id), timeout=10).state == pb.JOB_STATE_STOPPING
    admin.StopJob(pb.StopJobRequest(job_id=stubborn.id, grace_seconds=0), timeout=30)  # an admin's stop: sooner
    assert {f.result().reason for f in results["stops"]} == {pb.TERMINATION_REASON_STOPPED}
