"""Who may do what. Pure functions of the caller's identity, the job and the config.

- A user sees and controls only the jobs it started; another user's job behaves as not found,
  so its existence is not revealed. An admin sees and controls all jobs.
- Run-as: an admin may name any user (default: run_as.admin_default_user). Anyone else may name
  only a user in run_as.allowed_users (default: run_as.default_user), and never one with UID 0.
"""

from __future__ import annotations

import pwd

from ..config import RunAsConfig
from ..errors import NotFound, PermissionDenied
from ..worker.models import JobRecord
from .identity import Identity


def may_access(identity: Identity, record: JobRecord) -> bool:
    return identity.is_admin or record.owner == identity.name


def check_access(identity: Identity, record: JobRecord) -> JobRecord:
    if not may_access(identity, record):
        raise NotFound(f"no job with id {record.id!r}")  # same answer as for an id that does not exist
    return record


def list_owner(identity: Identity) -> str | None:
    """Whose jobs a listing shows: None (all) for admins."""
    return None if identity.is_admin else identity.name


def run_as_user(identity: Identity, requested: str, policy: RunAsConfig) -> str:
    if identity.is_admin:
        return requested or policy.admin_default_user
    user = requested or policy.default_user
    if user not in policy.allowed_users:
        allowed = ", ".join(policy.allowed_users) or "(none)"
        raise PermissionDenied(f"{identity.name} may run jobs only as: {allowed}; not as {user!r}")
    if _uid(user) == 0:
        raise PermissionDenied(f"{identity.name} may not run jobs as {user!r}: it is root (UID 0)")
    return user


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwuid(int(user)).pw_uid if user.isdigit() else pwd.getpwnam(user).pw_uid
    except (KeyError, OverflowError):
        return None  # unknown users are reported by validation, with the job's other errors
