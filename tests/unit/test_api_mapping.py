"""The error->status table and the proto<->model conversion."""

import grpc
import pytest

from jobworkerd import errors
from jobworkerd.api.convert import REASONS, STATES, job_to_proto, limits_from_proto, spec_from_request
from jobworkerd.api.status import STATUS_CODES, status_code
from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb
from jobworkerd.worker.models import JobRecord, JobSpec, JobState, Limits, Reason, Usage


@pytest.mark.parametrize("cls", errors.ALL_ERRORS)
def test_every_error_class_has_a_status_code(cls):
    assert cls in STATUS_CODES
    assert status_code(cls("x")) is STATUS_CODES[cls]


def test_bad_input_is_never_internal():
    for cls in (errors.InvalidArgument, errors.NotFound, errors.PermissionDenied, errors.FailedPrecondition,
                errors.StartFailed, errors.ResourceExhausted, errors.Unauthenticated):
        assert status_code(cls("x")) is not grpc.StatusCode.INTERNAL


def test_every_state_and_reason_maps_to_a_distinct_enum_value():
    assert set(STATES) == set(JobState) and len(set(STATES.values())) == len(JobState)
    assert set(REASONS) == set(Reason) and len(set(REASONS.values())) == len(Reason)


def test_unset_limits_stay_unset_and_set_ones_keep_their_value():
    assert limits_from_proto(pb.Limits()) == Limits()
    message = pb.Limits(cpu=0.5, memory_bytes=256 << 20, pids=50, io_write_bps=2 << 20, io_device="/var")
    assert limits_from_proto(message) == Limits(cpu=0.5, memory=256 << 20, pids=50, io_write_bps=2 << 20, io_device="/var")
    assert limits_from_proto(pb.Limits(cpu=0.0)).cpu == 0.0  # present but zero: validation rejects it, not conversion


def test_start_request_to_spec():
    request = pb.StartJobRequest(
        name="n", command=pb.Command(command="sh", arguments=["-c", "x"], group="g", directory="/tmp", env={"A": "1"}),
        limits=pb.Limits(pids=5),
    )
    spec = spec_from_request(request, "nobody")
    assert spec == JobSpec(command="sh", args=("-c", "x"), name="n", user="nobody", group="g", directory="/tmp",
                           env={"A": "1"}, limits=Limits(pids=5))


def test_record_to_job():
    record = JobRecord(
        id="0123456789ab", owner="alice", spec=JobSpec(command="sleep", args=("1",), user="nobody"),
        limits=Limits(memory=64 << 20), state=JobState.FINISHED, reason=Reason.OOM_KILLED, signal=9,
        message="oom", created_at=1.5, started_at=2.0, finished_at=3.25, usage=Usage(cpu_seconds=0.5, oom_kills=1),
    )
    job = job_to_proto(record)
    assert (job.id, job.owner, job.run_as) == ("0123456789ab", "alice", "nobody")
    assert job.state == pb.JOB_STATE_FINISHED and job.reason == pb.TERMINATION_REASON_OOM_KILLED
    assert not job.HasField("exit_code") and job.signal == 9
    assert job.limits.memory_bytes == 64 << 20 and not job.limits.HasField("cpu")
    assert job.finished_at.ToNanoseconds() == 3_250_000_000
    assert job.usage.oom_kills == 1


def test_page_tokens_round_trip_exactly_and_bad_ones_are_refused():
    from jobworkerd.api.convert import page_after, page_size, page_token
    from jobworkerd.errors import InvalidArgument

    record = JobRecord(id="0123456789ab", owner="a", spec=JobSpec(command="true"), limits=Limits(),
                       created_at=1795900111.2964964)
    assert page_after(page_token(record)) == (1795900111.2964964, "0123456789ab")
    assert page_after("") is None
    for bad in ("x", "nan/0123456789ab", "1.5/short", "1.5"):
        with pytest.raises(InvalidArgument):
            page_after(bad)
    assert page_size(0) == 500 and page_size(7) == 7
    with pytest.raises(InvalidArgument):
        page_size(1001)
