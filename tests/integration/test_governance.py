"""Governance (issue 12) against a real daemon: quotas per client, deadlines, retry-safe starts, bounded
history, and stops that hold no thread. Every refusal is RESOURCE_EXHAUSTED (or the code named) with a
message naming the quota, its value and the current use."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from faultkit import marked_processes, new_marker, read_all, rpc_error, sh, start, wait_job, wait_until

from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.root
R = pb.TerminationReason
UNBOUNDED = {"starts_per_second": None, "running_jobs": None}


def sleeper(stub, marker: str, **kwargs) -> pb.Job:
    return start(stub, "sleep", f"1000.{marker}", **kwargs)


def exhausted(call) -> str:
    error = rpc_error(call)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (error.code(), error.details())
    return error.details()


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


@pytest.fixture(scope="module")
def governed(tmp_path_factory):
    from daemon_harness import Daemon

    quotas = {"user": {"running_jobs": 2, "streams": 2, "waits": 2, "starts_per_second": None},
              "admin": UNBOUNDED, "users": {"carol": {"running_jobs": 4}}}
    d = Daemon(tmp_path_factory.mktemp("governed"), {"quotas": quotas, "stop_grace": "2s"}).start()
    yield d
    d.stop()


def test_running_jobs_quota_counts_per_user_and_names_quota_value_and_use(governed):
    alice, carol, admin = governed.stub("alice", "user"), governed.stub("carol", "user"), governed.stub()
    marker = new_marker()
    jobs = [sleeper(alice, marker) for _ in range(2)]
    try:
        message = exhausted(lambda: sleeper(alice, marker))
        assert "quota running_jobs is 2 for 'alice', who has 2 running" in message, message
        jobs += [sleeper(carol, marker) for _ in range(4)]  # carol's override: 4
        assert "quota running_jobs is 4 for 'carol'" in exhausted(lambda: sleeper(carol, marker))
        jobs.append(sleeper(admin, marker))  # admins have their own quota, and the users' do not touch it
        assert len(marked_processes(marker)) == 7  # nothing already running was touched
        admin.StopJob(pb.StopJobRequest(job_id=jobs[0].id, grace_seconds=0), timeout=30)
        jobs.append(sleeper(alice, marker))  # a finished job frees its place
    finally:
        for job in jobs:
            admin.StopJob(pb.StopJobRequest(job_id=job.id, grace_seconds=0), timeout=30)


def refusal(call) -> str | None:
    """The details of a RESOURCE_EXHAUSTED answer; None if the call ran into its (short) deadline instead."""
    try:
        call()
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return None
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
        return err.details()
    raise AssertionError("the call succeeded; a refusal was expected")


def test_streams_and_waits_quotas(governed):
    alice, admin = governed.stub("alice", "user"), governed.stub()
    marker = new_marker()
    job = sh(alice, f"echo hi; sleep 1000.{marker}")
    try:
        streams = [alice.StreamOutput(pb.StreamOutputRequest(job_id=job.id), timeout=60) for _ in range(2)]
        assert [next(s).data for s in streams] == [b"hi\n", b"hi\n"]  # both streams are being served
        third = lambda: next(alice.StreamOutput(pb.StreamOutputRequest(job_id=job.id), timeout=30))  # noqa: E731
        assert "quota streams is 2 for 'alice', who has 2 open" in refusal(third)
        # Five waits at once: whatever order they reach the daemon in, two are held and three refused.
        waits = [alice.WaitJob.future(pb.WaitJobRequest(job_id=job.id), timeout=60) for _ in range(5)]
        refused = wait_until(lambda: [w for w in waits if w.done()] if sum(w.done() for w in waits) == 3 else None,
                             "three of five waits to be refused")
        assert {w.code() for w in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "quota waits is 2 for 'alice', who has 2 open" in refused[0].details()
        held = [w for w in waits if not w.done()]
        another_wait = lambda: alice.WaitJob(pb.WaitJobRequest(job_id=job.id), timeout=0.5)  # noqa: E731
        streams[0].cancel()
        held[0].cancel()
        wait_until(lambda: refusal(another_wait) is None, "a wait's place to come back")
        assert next(alice.StreamOutput(pb.StreamOutputRequest(job_id=job.id), timeout=30)).data == b"hi\n"
    finally:
        admin.StopJob(pb.StopJobRequest(job_id=job.id, grace_seconds=0), timeout=30)
    assert held[1].result().reason == R.TERMINATION_REASON_STOPPED


def test_the_start_rate_is_a_token_bucket_per_user(daemon_factory):
    d = daemon_factory({"quotas": {"user": {"starts_per_second": 0.1, "start_burst": 3}}}).start()
    alice, bob = d.stub("alice", "user"), d.stub("bob", "user")
    for _ in range(3):
        wait_job(alice, start(alice, "true").id)
    message = exhausted(lambda: start(alice, "true"))
    assert "quota starts_per_second is 0.1 (bursts of 3) for 'alice'" in message and "next start is possible in" in message
    wait_job(bob, start(bob, "true").id)  # another user's bucket is full


def test_a_job_past_its_deadline_is_stopped_as_timed_out_and_jobctl_exits_124(governed):
    done = governed.jobctl("run", "--timeout", "1", "--", "sh", "-c", "echo started; exec sleep 30", name="alice",
                           role="user", timeout=30)
    assert done.returncode == 124, done
    assert done.stdout == b"started\n" and b"timed out after 1s" in done.stderr, done
    alice = governed.stub("alice", "user")
    job = max(alice.ListJobs(pb.ListJobsRequest(), timeout=30).jobs, key=lambda j: j.created_at.ToNanoseconds())
    assert (job.reason, job.signal, job.timeout_seconds) == (R.TERMINATION_REASON_TIMED_OUT, 15, 1.0), job
    assert "deadline of 1s" in job.message


def test_deadlines_have_a_maximum_and_a_default_per_role(daemon_factory):
    d = daemon_factory({"quotas": {"user": {"max_timeout": "20s", "timeout": "1h"}}}).start()
    alice, admin = d.stub("alice", "user"), d.stub()
    request = pb.StartJobRequest(command=pb.Command(command="true"), timeout_seconds=60)
    assert "over the maximum of 20s" in exhausted(lambda: alice.StartJob(request, timeout=30))
    assert admin.StartJob(request, timeout=30).timeout_seconds == 60  # admins: no maximum here
    job = start(alice, "true")
    assert job.timeout_seconds == 20  # the default (1h) capped by the maximum
    bad = pb.StartJobRequest(command=pb.Command(command="true"), timeout_seconds=-1)
    error = rpc_error(lambda: alice.StartJob(bad, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "positive number of seconds" in error.details()


def test_a_repeated_start_with_the_same_key_returns_the_same_job(governed):
    alice, bob = governed.stub("alice", "user"), governed.stub("bob", "user")
    marker = new_marker()
    request = pb.StartJobRequest(command=pb.Command(command="sh", arguments=["-c", f"echo once; sleep 0.{marker}"]),
                                 idempotency_key=f"key-{marker}")
    with ThreadPoolExecutor(8) as pool:  # concurrent retries of one start, as after a lost reply
        ids = set(pool.map(lambda _: alice.StartJob(request, timeout=30).id, range(8)))
    assert len(ids) == 1
    (job_id,) = ids
    assert wait_job(alice, job_id).exit_code == 0 and read_all(alice, job_id) == b"once\n"
    assert alice.StartJob(request, timeout=30).id == job_id  # also after the job has ended
    assert bob.StartJob(request, timeout=30).id != job_id  # keys are the caller's own
    mine = [j for j in alice.ListJobs(pb.ListJobsRequest(), timeout=30).jobs if marker in " ".join(j.command.arguments)]
    assert [j.id for j in mine] == [job_id]
    long_key = pb.StartJobRequest(command=pb.Command(command="true"), idempotency_key="k" * 129)
    error = rpc_error(lambda: alice.StartJob(long_key, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 128" in error.details()


def test_an_admins_ls_answers_under_large_records_and_pages_stay_bounded(daemon_factory):
    # Reproduced on the old main: 20 jobs with ~900 KB of arguments made every admin's `jobctl ls` fail with
    # "Sent message larger than max (18056564 vs. 16777216)".
    d = daemon_factory({"quotas": {"user": UNBOUNDED}}).start()
    alice = d.stub("alice", "user")
    big = ["x" * 1000] * 900
    for _ in range(20):
        wait_job(alice, start(alice, "true", *big).id)
    done = d.jobctl("ls")
    assert done.returncode == 0 and len(done.stdout.decode().splitlines()) == 21, done.stderr
    listed = json.loads(d.jobctl("ls", "-o", "json").stdout)  # the full view, page by page
    assert len(listed) == 20 and all(len(j["command"]["arguments"]) == 900 for j in listed)
    page = d.stub().ListJobs(pb.ListJobsRequest(), timeout=30)
    assert page.next_page_token and 0 < len(page.jobs) < 20 and page.ByteSize() < 4 << 20
    summary = d.stub().ListJobs(pb.ListJobsRequest(view=pb.JOB_VIEW_SUMMARY), timeout=30)
    assert len(summary.jobs) == 20 and not summary.next_page_token and not summary.jobs[0].command.arguments
    status = d.jobctl("status", "-o", "json", listed[0]["id"])
    assert len(json.loads(status.stdout)["command"]["arguments"]) == 900  # the full record


def test_history_is_pruned_by_count_with_the_output(daemon_factory):
    d = daemon_factory({"history": {"max_records": 5}, "quotas": {"admin": UNBOUNDED}})
    d.start()
    stub = d.stub()
    ids = [start(stub, "echo", str(n)).id for n in range(8)]
    for job_id in ids:
        wait_job(stub, job_id)
    d.stop()
    d.start()  # pruning runs at start (and every minute)
    stub = d.stub()
    wait_until(lambda: len(stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs) == 5, "pruning to 5 records")
    assert [j.id for j in stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs] == ids[3:]
    assert not (d.run_dir / "jobs" / ids[0]).exists() and (d.run_dir / "jobs" / ids[7]).exists()
    error = rpc_error(lambda: stub.GetJob(pb.GetJobRequest(job_id=ids[0]), timeout=30))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_many_stops_of_one_job_are_one_stop_and_hold_no_thread(governed):
    admin = governed.stub()
    job = sh(admin, "trap 'echo term' TERM; while :; do sleep 0.05; done")
    wait_until(lambda: admin.GetJob(pb.GetJobRequest(job_id=job.id), timeout=30).usage.pids >= 2, "the job's loop")
    threads_before = threads_of(governed.pid)
    stops = [admin.StopJob.future(pb.StopJobRequest(job_id=job.id, grace_seconds=4), timeout=60) for _ in range(100)]
    wait_until(lambda: admin.GetJob(pb.GetJobRequest(job_id=job.id), timeout=30).state == pb.JOB_STATE_STOPPING,
               "the stop to begin")
    # While 100 stops wait out their grace period, the daemon answers, and has not grown a thread per stop.
    assert admin.GetJob(pb.GetJobRequest(job_id=job.id), timeout=2).state == pb.JOB_STATE_STOPPING
    assert admin.ListJobs(pb.ListJobsRequest(), timeout=2).jobs
    wait_job(admin, start(admin, "true").id, timeout=5)
    # The pool grows a little while 100 stops are handed over; never to a thread per stop (its bound is 64).
    assert threads_of(governed.pid) < threads_before + 32
    ended = [future.result() for future in stops]
    assert {e.reason for e in ended} == {R.TERMINATION_REASON_STOPPED} and ended[0].signal == 9  # killed at grace end
    assert read_all(admin, job.id).count(b"term") == 1  # one SIGTERM, not one per stop
