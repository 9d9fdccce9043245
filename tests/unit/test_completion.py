"""The bash completion for jobctl, sourced into a real bash with COMP_WORDS set as bash sets them
(it splits words at '=' and ':'), and its commands and options checked against the parser. Job
ids from a real daemon: tests/integration/test_contexts.py."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobctl import cli

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "completion" / "bash" / "jobctl"
BIN = Path(sys.executable).parent  # the venv's bin: the real jobctl, for context names


@pytest.fixture
def env(tmp_path):
    """A home with contexts prod and lab (made by the real jobctl), and jobctl on PATH."""
    (tmp_path / "pem").mkdir()
    for name in ("ca.crt", "c.crt", "c.key"):
        (tmp_path / "pem" / name).write_text("stand-in\n")
    environment = {"HOME": str(tmp_path), "PATH": f"{BIN}:/usr/bin:/bin", "LC_ALL": "C"}
    for name in ("prod", "lab"):
        pem = tmp_path / "pem"
        subprocess.run([str(BIN / "jobctl"), "context", "add", name, "--addr", "127.0.0.1:1", "--ca", str(pem / "ca.crt"),
                        "--cert", str(pem / "c.crt"), "--key", str(pem / "c.key")], env=environment, check=True,
                       capture_output=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("")
    (tmp_path / "work" / "subdir").mkdir()
    (tmp_path / "work" / "my ca.crt").write_text("")
    return environment


def complete(env: dict, *words: str, cwd: str | None = None) -> list[str]:
    """COMPREPLY for the command line `words` (the last one being completed)."""
    script = (
        f"source {shlex.quote(str(SCRIPT))}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n"
        'COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}\n'
        "_jobctl jobctl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], env=env, capture_output=True, text=True,
                          timeout=60, cwd=cwd)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return sorted(line for line in done.stdout.splitlines() if line)


def test_commands(env):
    assert complete(env, "jobctl", "") == sorted(["run", "logs", "status", "ls", "stop", "wait", "events", "stats",
                                                  "context"])
    assert complete(env, "jobctl", "l") == ["logs", "ls"]
    assert complete(env, "jobctl", "context", "") == ["add", "ls", "rm", "use"]
    assert complete(env, "jobctl", "context", "u") == ["use"]


def test_commands_after_connection_options(env):
    # bash splits --addr=h:1 into --addr = h : 1
    assert complete(env, "jobctl", "--addr", "h", ":", "1", "st") == ["stats", "status", "stop"]
    assert complete(env, "jobctl", "--addr", "=", "h", ":", "1", "--ca", "x.crt", "w") == ["wait"]
    assert complete(env, "jobctl", "--context", "prod", "l") == ["logs", "ls"]


def test_flags(env):
    assert complete(env, "jobctl", "run", "--io-w") == ["--io-write-bps", "--io-write-iops"]
    assert complete(env, "jobctl", "logs", "-") == sorted(["-h", "--help", "--addr", "--ca", "--cert", "--key", "--context", "-f", "--follow"])
    assert complete(env, "jobctl", "context", "add", "prod", "--c") == ["--ca", "--cert"]
    assert complete(env, "jobctl", "--co") == ["--context"]


def test_values(env):
    assert complete(env, "jobctl", "status", "-o", "") == ["json", "text"]
    assert complete(env, "jobctl", "ls", "--output", "t") == ["table"]
    assert complete(env, "jobctl", "ls", "--output", "=", "j") == ["json"]
    assert complete(env, "jobctl", "--context", "") == ["default", "lab", "prod"]
    assert complete(env, "jobctl", "--context", "=", "p") == ["prod"]
    assert complete(env, "jobctl", "--context", "=") == ["default", "lab", "prod"]
    assert complete(env, "jobctl", "run", "--mem", "") == []  # a size: nothing to offer
    work = os.path.join(env["HOME"], "work")
    assert complete(env, "jobctl", "--ca", "no", cwd=work) == ["notes.txt"]
    assert complete(env, "jobctl", "--ca", "my", cwd=work) == ["my ca.crt"]  # one name, blank and all
    assert complete(env, "jobctl", "run", "--dir", "s", cwd=work) == ["subdir"]  # directories only
    assert complete(env, "jobctl", "run", "--dir", "n", cwd=work) == []


def test_context_names(env):
    assert complete(env, "jobctl", "context", "use", "") == ["default", "lab", "prod"]
    assert complete(env, "jobctl", "context", "rm", "") == ["lab", "prod"]  # default cannot be removed
    assert complete(env, "jobctl", "context", "rm", "prod", "") == []
    assert complete(env, "jobctl", "context", "add", "") == []  # a new name


def test_programs_and_their_arguments(env):
    assert "echo" in complete(env, "jobctl", "run", "--", "ech")
    assert "echo" in complete(env, "jobctl", "run", "--cpu", "1", "ech")
    work = os.path.join(env["HOME"], "work")
    assert complete(env, "jobctl", "run", "--", "cat", "not", cwd=work) == ["notes.txt"]
    # after --, the program's own options are not jobctl's
    assert complete(env, "jobctl", "run", "--", "ls", "--co", cwd=work) == []


def test_ids_without_a_daemon_are_nothing_and_quick(env):
    start = time.monotonic()
    assert complete(env, "jobctl", "--context", "prod", "status", "") == []  # 127.0.0.1:1: nothing listens
    assert complete(env, "jobctl", "logs", "-f", "") == []
    assert time.monotonic() - start < 20


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name in (c.dest for c in action._choices_actions):  # visible ones: hidden have no help=
                sub = action.choices[name]
                yield from parsers(sub, (*path, name))


def test_every_command_and_option_of_the_parser_completes(env):
    for path, parser in parsers(cli.build_parser()):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            assert complete(env, "jobctl", *path, "") == sorted(c.dest for c in subs[0]._choices_actions), path
        options = {s for a in parser._actions for s in a.option_strings}
        offered = set(complete(env, "jobctl", *path, "-"))
        assert offered - {"--"} == options, path
