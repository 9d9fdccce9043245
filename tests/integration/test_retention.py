"""Output retention: finished jobs' output is deleted after output_retention; records stay."""

import os
import time

import pytest

from jobworkerd.config import config_from_dict
from jobworkerd.errors import NotFound
from jobworkerd.worker.manager import JobManager
from jobworkerd.worker.models import JobSpec, JobState
from jobworkerd.worker.output import read_output

pytestmark = pytest.mark.root


def test_old_output_of_finished_jobs_is_removed_and_running_jobs_are_kept(tmp_path):
    config = config_from_dict({
        "state_dir": str(tmp_path / "state"), "run_dir": str(tmp_path / "run"), "output_retention": "1h",
        "cgroup": {"subtree": f"jobworkerd-test-retention-{os.getpid()}"},
    })
    with JobManager(config) as manager:
        old = manager.wait(manager.start(JobSpec(command="echo", args=("old",))).id, 30)
        recent = manager.wait(manager.start(JobSpec(command="echo", args=("recent",))).id, 30)
        running = manager.start(JobSpec(command="sleep", args=("60",)))
        two_hours_ago = time.time() - 7200
        for job_id in (old.id, running.id):
            os.utime(os.path.join(manager.jobs_dir, job_id, "output"), (two_hours_ago, two_hours_ago))

        assert manager.sweep_output() == [old.id]

        with pytest.raises(NotFound, match="kept for output_retention"):
            manager.output(old.id)
        assert manager.status(old.id).state is JobState.FINISHED  # the record stays
        assert b"".join(d for _, d in read_output(manager.output(recent.id))) == b"recent\n"
        assert os.path.exists(os.path.join(manager.jobs_dir, running.id, "output"))
        manager.stop(running.id, 0)
