"""Job groups: the level between the jobs directory and each job, where per-user ceilings apply.

    <own cgroup>/<subtree>/jobs/
        admin/<job id>            every admin's jobs (limits.admins)
        user-<name>/<job id>      one user-role client's jobs (limits.per_user, limits.users.<name>)
        <job id>                  the layout before groups: only found (and reconciled) after an upgrade

A group's directory name comes from the client certificate's CN. A CN of 1 to 64 characters from
[A-Za-z0-9._-] is used as it is: `user-alice`. Any other CN (other characters, empty, longer) is
made safe and kept apart: `user-<its first 32 characters, others replaced by _>~<16 hex digits of
the SHA-256 of the whole CN>`, e.g. `user-al_ce~6f3c...`. A plain name never contains `~`, so the
two forms never meet, and two hashed names meet only if their SHA-256 prefixes do. Group names are
never 12 hex digits, so a group is never mistaken for an old-layout job.
"""

from __future__ import annotations

import hashlib
import re

from ..resources import JobGroup

ADMIN_DIR = "admin"
USER_PREFIX = "user-"
MAX_PLAIN = 64
HASHED_PREFIX = 32
HASH_DIGITS = 16
_PLAIN = re.compile(r"[A-Za-z0-9._-]{1,%d}" % MAX_PLAIN)
_JOB_ID = re.compile(r"[0-9a-f]{12}")


def group_dir(group: JobGroup) -> str:
    """The directory name of a group (see the module's docstring)."""
    if group.admin:
        return ADMIN_DIR
    name = group.name
    if _PLAIN.fullmatch(name):
        return USER_PREFIX + name
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name[:HASHED_PREFIX])
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_DIGITS]
    return f"{USER_PREFIX}{safe}~{digest}"


def is_job_id(name: str) -> bool:
    return bool(_JOB_ID.fullmatch(name))
