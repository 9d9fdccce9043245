"""How jobs are shown (table, status, JSON) and what a finished job means for the exit status."""

from __future__ import annotations

import datetime
import json

import pytest

from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb
from jobctl import render

NOW = datetime.datetime(2025, 3, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


def finished_job(**overrides) -> pb.Job:
    job = pb.Job(
        id="j-1",
        name="build",
        owner="alice",
        state=pb.JOB_STATE_FINISHED,
        reason=pb.TERMINATION_REASON_EXITED,
        exit_code=3,
        command=pb.Command(command="sh", arguments=["-c", "echo hi; exit 3"], env={"A": "1"}),
        limits=pb.Limits(cpu=0.5, memory_bytes=256 << 20, pids=100),
        usage=pb.Usage(cpu_seconds=1.25, memory_peak_bytes=3 << 20, output_bytes=3),
        run_as="nobody",
    )
    job.created_at.FromDatetime(NOW - datetime.timedelta(minutes=5))
    job.started_at.FromDatetime(NOW - datetime.timedelta(minutes=5, seconds=-1))
    job.finished_at.FromDatetime(NOW - datetime.timedelta(minutes=1))
    for key, value in overrides.items():
        if value is None:
            job.ClearField(key)
        else:
            setattr(job, key, value)
    return job


def running_job() -> pb.Job:
    job = pb.Job(id="j-2", owner="bob", state=pb.JOB_STATE_RUNNING, command=pb.Command(command="sleep"))
    job.created_at.FromDatetime(NOW - datetime.timedelta(seconds=42))
    return job


@pytest.mark.parametrize(
    "reason, name",
    [
        (pb.TERMINATION_REASON_UNSPECIFIED, "unspecified"),
        (pb.TERMINATION_REASON_EXITED, "exited"),
        (pb.TERMINATION_REASON_STOPPED, "stopped"),
        (pb.TERMINATION_REASON_OOM_KILLED, "oom-killed"),
        (pb.TERMINATION_REASON_OUTPUT_CAPPED, "output-capped"),
        (pb.TERMINATION_REASON_FAILED_TO_START, "failed-to-start"),
        (pb.TERMINATION_REASON_LOST, "lost"),
    ],
)
def test_reason_names_are_lower_dash(reason, name):
    assert render.enum_name(pb.Job(reason=reason), "reason") == name


def test_state_names():
    assert [render.enum_name(pb.Job(state=s), "state") for s in (1, 2, 3, 4)] == ["starting", "running", "stopping", "finished"]


def test_table_has_the_columns_and_one_row_per_job():
    lines = render.table([finished_job(), running_job()], now=NOW).splitlines()
    assert lines[0].split() == ["ID", "NAME", "OWNER", "STATE", "REASON", "EXIT", "CPU", "MEM", "PEAK", "AGE"]
    assert lines[1].split() == ["j-1", "build", "alice", "finished", "exited", "3", "1.25s", "3M", "5m"]
    assert lines[2].split() == ["j-2", "-", "bob", "running", "-", "-", "0.00s", "0", "42s"]
    # columns line up: every row has STATE at the same position
    assert lines[1].index("finished") == lines[0].index("STATE") == lines[2].index("running")


def test_table_shows_a_killing_signal_by_name():
    job = finished_job(exit_code=None, signal=9, reason=pb.TERMINATION_REASON_OOM_KILLED)
    assert render.table([job], now=NOW).splitlines()[1].split()[4:6] == ["oom-killed", "SIGKILL"]


def test_json_has_every_field_with_enums_as_names_and_nulls_when_unset():
    data = json.loads(json.dumps(render.to_json_obj(finished_job(finished_at=None))))
    assert set(data) == {f.name for f in pb.Job.DESCRIPTOR.fields}
    assert data["state"] == "finished" and data["reason"] == "exited"
    assert data["exit_code"] == 3 and data["signal"] is None
    assert data["created_at"] == "2025-03-01T11:55:00.000Z"
    assert data["finished_at"] is None
    assert data["command"] == {
        "command": "sh", "arguments": ["-c", "echo hi; exit 3"], "user": "", "group": "",
        "directory": "", "env": {"A": "1"},
    }
    assert data["limits"]["cpu"] == 0.5 and data["limits"]["memory_bytes"] == 256 << 20
    assert data["limits"]["io_read_bps"] is None and data["limits"]["io_device"] == ""
    assert data["usage"]["memory_peak_bytes"] == 3 << 20
    assert data["run_as"] == "nobody"


def test_json_of_a_running_job():
    data = render.to_json_obj(running_job())
    assert data["state"] == "running" and data["reason"] == "unspecified"
    assert data["exit_code"] is None and data["signal"] is None
    assert data["started_at"] is None and data["finished_at"] is None


def test_status_text_and_line():
    text = render.status_text(finished_job(), now=NOW)
    assert "state:" in text and "finished (exited, exit code 3)" in text
    assert "sh -c 'echo hi; exit 3'" in text
    assert "cpu 0.5, memory 256M, pids 100" in text
    assert "A=1" in text
    stopped = finished_job(exit_code=None, signal=15, reason=pb.TERMINATION_REASON_STOPPED)
    assert render.status_line(stopped) == "j-1 finished (stopped, SIGTERM)"
    assert render.status_line(running_job()) == "j-2 running"


@pytest.mark.parametrize(
    "fields, status",
    [
        ({"exit_code": 0}, 0),
        ({"exit_code": 3}, 3),
        ({"exit_code": 255}, 255),
        ({"exit_code": None, "signal": 15, "reason": pb.TERMINATION_REASON_STOPPED}, 143),
        ({"exit_code": None, "signal": 9}, 137),
        ({"exit_code": None, "signal": 2}, 130),
        ({"exit_code": None, "reason": pb.TERMINATION_REASON_OOM_KILLED}, 137),
        ({"exit_code": None, "reason": pb.TERMINATION_REASON_FAILED_TO_START}, 1),
        ({"exit_code": None, "reason": pb.TERMINATION_REASON_LOST}, 1),
    ],
)
def test_exit_status(fields, status):
    assert render.exit_status(finished_job(**fields)) == status


def test_exit_status_when_exit_code_zero_is_set_explicitly():
    job = pb.Job(exit_code=0)
    assert job.HasField("exit_code") and render.exit_status(job) == 0


@pytest.mark.parametrize(
    "fields, note",
    [
        ({}, None),
        ({"exit_code": None, "signal": 9, "reason": pb.TERMINATION_REASON_OOM_KILLED},
         "job j-1 was killed by the OOM killer (memory limit 256M)"),
        ({"exit_code": None, "signal": 15, "reason": pb.TERMINATION_REASON_STOPPED}, "job j-1 was stopped (SIGTERM)"),
        ({"exit_code": None, "signal": 9, "reason": pb.TERMINATION_REASON_OUTPUT_CAPPED, "message": "cap 1G"},
         "job j-1 was killed: its output reached the cap: cap 1G"),
        ({"exit_code": None, "reason": pb.TERMINATION_REASON_LOST}, "job j-1 was lost: the daemon stopped while it ran"),
    ],
)
def test_ending_note(fields, note):
    assert render.ending_note(finished_job(**fields)) == note


@pytest.mark.parametrize("value, text", [(0, "0"), (1023, "1023"), (1536, "1.5K"), (256 << 20, "256M"), (15 << 30, "15G")])
def test_human_size(value, text):
    assert render.human_size(value) == text


def test_control_characters_a_job_owner_chose_are_escaped_in_text_views():
    hostile = "\x1b]0;pwned\x07\x1b[2J\r"
    job = running_job()
    job.name = hostile
    job.command.arguments.append(hostile)
    job.command.env["X"] = hostile
    for text in (render.status_text(job), render.table([job])):
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text
        assert "\\x1b]0;pwned\\x07" in text
    assert render.to_json_obj(job)["name"] == hostile  # JSON keeps the exact value (json.dumps escapes it)
