"""What jobctl writes to the terminal besides a job's output: a line on stdout, a note on stderr."""

from __future__ import annotations

import sys


def line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    """jobctl's own messages (errors, notes): on stderr, prefixed so they are never taken for output."""
    sys.stderr.write(f"jobctl: {message}\n")
    sys.stderr.flush()
