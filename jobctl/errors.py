"""What jobctl reports: one line on stderr, `jobctl: <message>`, and an exit status.

    JobctlError        exit 1: the daemon refused, failed, or could not be reached
    └── UsageError     exit 2: the command line or the configuration is wrong; nothing was sent
"""

from __future__ import annotations


class JobctlError(Exception):
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UsageError(JobctlError):
    exit_code = 2
