"""Ownership is by name and role (docs/SECURITY.md, section 1), through the real daemon: a user certificate
and an admin certificate with the same CN are two owners. The user cannot see, stop, wait for, stream or
watch the admin's job (NOT_FOUND, as for an id that does not exist); admins still see every job. Records
stored before owners were qualified (schema 0: the bare CN for both roles) stay readable: root jobs become
the admin's, the rest stay the user's."""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
from pathlib import Path

import grpc
import pytest

from faultkit import rpc_error, sh, start, stop_job, wait_job
from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.root

E = pb.JobEventType


def ids(stub) -> set[str]:
    return {j.id for j in stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs}


def take_until(events: queue.Queue, job_id: str, kind: int) -> list[pb.JobEvent]:
    taken = [events.get(timeout=30)]
    while not (taken[-1].job.id == job_id and taken[-1].type == kind):
        taken.append(events.get(timeout=30))
    return taken


def pump(call, events: queue.Queue) -> None:
    try:
        for event in call:
            events.put(event)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.CANCELLED:  # cancelled: the test is done with it
            raise


def test_a_user_cannot_reach_the_job_of_an_admin_with_the_same_cn(daemon):
    admin, user, other_admin = daemon.stub("dana", "admin"), daemon.stub("dana", "user"), daemon.stub()
    watch = user.WatchJobs(pb.WatchJobsRequest(), timeout=120)
    events: queue.Queue = queue.Queue()
    threading.Thread(target=pump, args=(watch, events), daemon=True).start()
    mark = start(user, "true")
    take_until(events, mark.id, E.JOB_EVENT_TYPE_FINISHED)  # from here on the user's watch is open
    job = sh(admin, "echo root-only; sleep 600")
    try:
        for call, request in [
            (user.GetJob, pb.GetJobRequest(job_id=job.id)),
            (user.StopJob, pb.StopJobRequest(job_id=job.id, grace_seconds=0)),
            (user.WaitJob, pb.WaitJobRequest(job_id=job.id)),
        ]:
            error = rpc_error(lambda: call(request, timeout=30))
            assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, f"no job with id {job.id!r}")
        error = rpc_error(lambda: list(user.StreamOutput(pb.StreamOutputRequest(job_id=job.id), timeout=30)))
        assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, f"no job with id {job.id!r}")
        assert not user.ListJobs(pb.ListJobsRequest(job_ids=[job.id]), timeout=30).jobs
        assert job.id not in ids(user)
        assert (job.owner, job.run_as) == ("admin:dana", "root")

        # The user's own jobs are the user's; admins, of either name, see both.
        own = start(user, "true")
        assert own.owner == "dana" and own.run_as.startswith("dynamic:")
        wait_job(user, own.id)
        assert own.id in ids(user)
        assert {job.id, own.id} <= ids(admin) and {job.id, own.id} <= ids(other_admin)
        # The user's watch carries its own job's events, none of the admin's (which came before them).
        seen = take_until(events, own.id, E.JOB_EVENT_TYPE_FINISHED)
        assert job.id not in {e.job.id for e in seen}, seen
        # Untouched by all of that: the admin's job runs on.
        assert admin.GetJob(pb.GetJobRequest(job_id=job.id), timeout=30).state == pb.JOB_STATE_RUNNING
    finally:
        watch.cancel()
        stopped = stop_job(other_admin, job.id, grace=0)
    assert stopped.reason == pb.TERMINATION_REASON_STOPPED
    output = admin.StreamOutput(pb.StreamOutputRequest(job_id=job.id), timeout=30)
    assert b"".join(chunk.data for chunk in output) == b"root-only\n"


def _make_schema0(state_dir: Path) -> None:
    """Turn a store into what a daemon before role-qualified owners left: bare CNs, user_version 0."""
    db = sqlite3.connect(state_dir / "jobs.sqlite3", isolation_level=None)
    for job_id, owner, text in db.execute("SELECT id, owner, record FROM jobs").fetchall():
        bare = owner.removeprefix("admin:")
        data = json.loads(text)
        data["owner"] = bare
        db.execute("UPDATE jobs SET owner = ?, record = ? WHERE id = ?", (bare, json.dumps(data), job_id))
    db.execute("PRAGMA user_version = 0")
    db.close()


def test_records_stored_before_owners_had_roles_keep_root_jobs_from_the_user(daemon_factory):
    d = daemon_factory().start()
    admin, user = d.stub("erin", "admin"), d.stub("erin", "user")
    as_root = start(admin, "true")
    as_nobody = start(admin, "true", user="nobody")  # an admin's, but its old record cannot tell
    users_own = start(user, "true")
    for job in (as_root, as_nobody, users_own):
        wait_job(admin, job.id)
    d.stop()
    _make_schema0(Path(d.dir) / "state")
    d.start()
    admin, user = d.stub("erin", "admin"), d.stub("erin", "user")
    assert admin.GetJob(pb.GetJobRequest(job_id=as_root.id), timeout=30).owner == "admin:erin"
    assert rpc_error(lambda: user.GetJob(pb.GetJobRequest(job_id=as_root.id), timeout=30)).code() == \
        grpc.StatusCode.NOT_FOUND
    assert ids(user) == {as_nobody.id, users_own.id}
    assert user.GetJob(pb.GetJobRequest(job_id=users_own.id), timeout=30).exit_code == 0
    assert ids(admin) == {as_root.id, as_nobody.id, users_own.id}
