"""How jobs left unfinished by a dead daemon are recorded at the next start."""

import signal

import pytest

from jobworkerd.worker.manager import classify_recovered, read_exit_file
from jobworkerd.worker.models import JobRecord, JobSpec, JobState, Limits, Reason


def record(state=JobState.RUNNING, memory=None):
    return JobRecord(id="0123456789ab", owner="a", spec=JobSpec(command="x"), limits=Limits(memory=memory), state=state)


def test_starting_jobs_failed_to_start():
    assert classify_recovered(record(JobState.STARTING), False, None, None, 0)[0] is Reason.FAILED_TO_START


def test_still_running_or_no_status_is_lost():
    assert classify_recovered(record(), True, None, None, 0)[0] is Reason.LOST
    assert classify_recovered(record(), False, None, None, 0)[0] is Reason.LOST


def test_an_end_of_its_own_keeps_its_status():
    reason, message = classify_recovered(record(), False, 5, None, 0)
    assert reason is Reason.EXITED and "while the daemon was down" in message
    assert classify_recovered(record(), False, None, signal.SIGTERM, 0)[0] is Reason.EXITED


def test_sigkill_while_the_daemon_was_down_is_lost_not_exited():
    reason, message = classify_recovered(record(), False, None, signal.SIGKILL, 0)
    assert reason is Reason.LOST and "SIGKILL" in message


def test_oom_while_the_daemon_was_down_is_oom():
    assert classify_recovered(record(memory=64 << 20), False, None, signal.SIGKILL, 1)[0] is Reason.OOM_KILLED


@pytest.mark.parametrize("text,expected", [
    ("0" + " " * 31, (0, None, "")),
    ("768", (3, None, "")),  # the format before the init became the shim: a status alone
    ("9 capped" + " " * 24, (None, 9, "capped")),
    ("9 full", (None, 9, "full")),
    (" " * 32, (None, signal.SIGKILL, "")),  # preallocated, never written: the init itself was killed
])
def test_the_exit_file_gives_status_and_the_inits_verdict(tmp_path, text, expected):
    path = tmp_path / "exit"
    path.write_text(text)
    assert read_exit_file(str(path)) == expected


def test_no_exit_file_is_no_status(tmp_path):
    assert read_exit_file(str(tmp_path / "exit")) == (None, None, "")
