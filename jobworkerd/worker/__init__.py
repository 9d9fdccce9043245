"""The worker library: start, stop, query and follow jobs. Usable without gRPC."""

from .models import ADMIN_GROUP, JobGroup, JobRecord, JobSpec, JobState, Limits, Reason, Usage

__all__ = ["ADMIN_GROUP", "JobGroup", "JobManager", "JobRecord", "JobSpec", "JobState", "Limits", "Reason", "Usage"]


def __getattr__(name: str):
    # JobManager is imported on first use, not here: the cgroup backends import worker.models, and an
    # eager `from .manager import JobManager` (which imports the backends) made `import jobworkerd.cgroups`
    # fail with a circular import when it came first.
    if name == "JobManager":
        from .manager import JobManager

        return JobManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
