"""Who may do what. Pure functions of the caller's identity, the job and the config.

- A user sees and controls only the jobs it started; another user's job behaves as not found,
  so its existence is not revealed. An admin sees and controls all jobs. Ownership is by name and role
  (Identity.owner): a user never sees the jobs of an admin with the same CN.
- Run-as: an admin may name any user (default: run_as.admin_default_user). Anyone else may name
  "dynamic" (a uid of its own, allocated from run_as.dynamic_uids by the job store) or a user in
  run_as.allowed_users (default: run_as.default_user, "dynamic"), and never one with UID 0. An admin
  naming "dynamic" gets its own allocation too (owner "admin:NAME"), not a user's.
"""

from __future__ import annotations

import grp
import os
import pwd

from ..config import DYNAMIC_USER, RunAsConfig
from ..errors import NotFound, PermissionDenied
from ..worker.models import JobRecord
from .identity import Identity


def may_access(identity: Identity, record: JobRecord) -> bool:
    return identity.is_admin or record.owner == identity.owner


def check_access(identity: Identity, record: JobRecord) -> JobRecord:
    if not may_access(identity, record):
        raise NotFound(f"no job with id {record.id!r}")  # same answer as for an id that does not exist
    return record


def list_owner(identity: Identity) -> str | None:
    """Whose jobs a listing (or an event stream) shows: None (all) for admins."""
    return None if identity.is_admin else identity.owner


def run_as_user(identity: Identity, requested: str, policy: RunAsConfig) -> str:
    if identity.is_admin:
        return requested or policy.admin_default_user
    user = requested or policy.default_user
    if user == DYNAMIC_USER:
        return user
    if user not in policy.allowed_users:
        allowed = ", ".join([f"{DYNAMIC_USER} (a uid of its own)", *(u for u in policy.allowed_users if u != DYNAMIC_USER)])
        raise PermissionDenied(f"{identity.name} may run jobs only as: {allowed}; not as {user!r}")
    if _uid(user) == 0:
        raise PermissionDenied(f"{identity.name} may not run jobs as {user!r}: it is root (UID 0)")
    return user


def check_run_as_group(identity: Identity, user: str, group: str) -> None:
    """Anyone but an admin may name only a group the run-as user is a member of (its primary group or
    a supplementary one): otherwise `nobody` in group `disk` (raw disks) or `root` would be one request away.
    A dynamic uid's only group is its own (gid = uid): it names none."""
    if identity.is_admin or not group:
        return
    if user == DYNAMIC_USER:
        raise PermissionDenied(
            f"{identity.name} may not name a group for a job run as {DYNAMIC_USER!r}: such a job runs only in its "
            f"own group (gid = uid); name no group, or run as an account in run_as.allowed_users"
        )
    try:
        entry = pwd.getpwuid(int(user)) if user.isascii() and user.isdigit() else pwd.getpwnam(user)
        gid = grp.getgrgid(int(group)).gr_gid if group.isascii() and group.isdigit() else grp.getgrnam(group).gr_gid
    except (KeyError, OverflowError, ValueError):
        return  # unknown users and groups are reported by validation, with the job's other errors
    if gid not in os.getgrouplist(entry.pw_name, entry.pw_gid):
        raise PermissionDenied(
            f"{identity.name} may run jobs as {user!r} only in that user's own groups; not in group {group!r}"
        )


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwuid(int(user)).pw_uid if user.isascii() and user.isdigit() else pwd.getpwnam(user).pw_uid
    except (KeyError, OverflowError):
        return None  # unknown users are reported by validation, with the job's other errors
