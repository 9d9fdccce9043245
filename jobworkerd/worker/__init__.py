"""The worker library: start, stop, query and follow jobs. Usable without gRPC."""

from .manager import JobManager
from .models import JobRecord, JobSpec, JobState, Limits, Reason, Usage

__all__ = ["JobManager", "JobRecord", "JobSpec", "JobState", "Limits", "Reason", "Usage"]
