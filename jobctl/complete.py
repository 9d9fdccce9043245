"""`jobctl __complete-ids [connection options] [--active]`: job ids for the bash completion.

Hidden: not in the parser, --help or the man page. It prints the ids of the jobs the caller may
see, one per line (with --active, only those not finished), and nothing else: within a short
time limit, with stderr silenced and exit status 0 whatever happens, because it runs while the
user is typing. It takes the same connection options as other commands (the completion passes on
those already on the command line), and contexts and JOBCTL_* variables the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

TIMEOUT_SECONDS = 2.0  # the whole listing; a daemon that cannot be reached fails sooner
LIMIT = 2000  # ids; an admin of a busy daemon gets the first pages only


class _Quiet(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def complete_ids(argv: Sequence[str]) -> int:
    _silence_stderr()
    parser = _Quiet(add_help=False)
    for key in ("addr", "ca", "cert", "key", "context"):
        parser.add_argument(f"--{key}")
    parser.add_argument("--active", action="store_true")
    try:
        args, _ = parser.parse_known_args(argv)
        from .client import Client
        from .render import enum_name
        from .settings import resolve

        flags = {key: getattr(args, key) for key in ("addr", "ca", "cert", "key", "context")}
        with Client(resolve(flags)) as client:
            jobs = client.list(timeout=TIMEOUT_SECONDS, limit=LIMIT)
    except Exception:  # noqa: BLE001 - no daemon, no certificate, bad settings: no completions
        return 0
    ids = [job.id for job in jobs if not (args.active and enum_name(job, "state") == "finished")]
    sys.stdout.write("".join(f"{job_id}\n" for job_id in ids))
    sys.stdout.flush()
    return 0


def _silence_stderr() -> None:
    """grpc's C core may log on fd 2 (GRPC_VERBOSITY aside); the shell's prompt must stay clean."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
