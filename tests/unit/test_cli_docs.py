"""The man pages against the parsers (drift), and the generated files against their generator.

The drift check reads the committed roff source on its own terms, not through the generator: each
command of the parser has its own `.SS "prog command ..."` heading and every one of its options
appears in that section; the page names no command and no option that the parsers lack.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobctl import cli as jobctl_cli
from jobworkerd import cli as daemon_cli

ROOT = Path(__file__).resolve().parents[2]
PAGES = {"jobctl": ROOT / "docs" / "man" / "jobctl.1", "jobworkerd": ROOT / "docs" / "man" / "jobworkerd.8"}
PARSERS = {"jobctl": jobctl_cli.build_parser, "jobworkerd": daemon_cli.build_parser}
INHERITED = {"jobctl": {"--addr", "--ca", "--cert", "--key", "--context"}}  # described once, at the top

LONG = re.compile(r"\\-\\-([a-z][a-z0-9]*(?:\\-[a-z0-9]+)*)")  # \-\-io\-device
SHORT = re.compile(r"(?<![\w\\])\\-([a-zA-Z])(?![\w\\])")
PROGRAM_ARGS = re.compile(r"(^|\s)\\-\\-(\s.*|$)")  # `-- CMD ARGS`: what follows belongs to the program


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """{command path: its parser} for every command and subcommand."""
    found = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name in (c.dest for c in action._choices_actions):  # visible ones: hidden have no help=
                sub = action.choices[name]
                found.update(commands(sub, (*path, name)))
    return found


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def options_named(roff: str) -> set[str]:
    found = set()
    for line in roff.splitlines():
        if line.startswith('.\\"'):
            continue
        text = re.sub(r"\\f[BIRP]", " ", line)  # font changes: \fB\-d\fR is -d in bold
        text = PROGRAM_ARGS.sub(r"\1", text) if not line.startswith(".SS") else text
        found |= {"--" + m.replace("\\-", "-") for m in LONG.findall(text)} | {"-" + m for m in SHORT.findall(text)}
    return found


def sections(roff: str) -> dict[str, str]:
    """{.SS heading (roff escapes removed): the text up to the next heading}."""
    result, heading, lines = {}, None, []
    for line in roff.splitlines() + [".SH END"]:
        if line.startswith((".SS", ".SH")):
            if heading is not None:
                result[heading] = "\n".join(lines)
            heading = line[3:].strip().strip('"').replace("\\-", "-") if line.startswith(".SS") else None
            lines = []
        elif heading is not None:
            lines.append(line)
    return result


def drift(prog: str, roff: str) -> list[str]:
    """What the page and the parser disagree on, in words."""
    parser = PARSERS[prog]()
    problems = []
    known_commands = {" ".join(path) for path in commands(parser) if path}
    by_heading = {}
    for heading, body in sections(roff).items():
        words = heading.split()
        if words[0] != prog:
            problems.append(f"heading {heading!r} is not a {prog} command")
            continue
        path = " ".join(w for w in words[1:] if re.fullmatch(r"[a-z][a-z-]*", w))
        if path not in known_commands:
            problems.append(f"the page describes {prog} {path!r}, which the parser lacks")
        by_heading[path] = body
    for path, sub in commands(parser).items():
        if not path:
            continue
        name = " ".join(path)
        if name not in by_heading:
            problems.append(f"{prog} {name} has no section in the page")
            continue
        own = option_strings(sub) - {"-h", "--help"} - INHERITED.get(prog, set())
        for missing in sorted(own - options_named(by_heading[name])):
            problems.append(f"{prog} {name}: option {missing} is not in its section")
    everywhere = set().union(*(option_strings(p) for p in commands(parser).values()))
    for extra in sorted(options_named(roff) - everywhere):
        problems.append(f"the page names option {extra}, which no {prog} parser has")
    for option in sorted(option_strings(parser) - options_named(roff)):
        problems.append(f"{prog}'s own option {option} is not in the page")
    return problems


@pytest.mark.parametrize("prog", sorted(PAGES))
def test_man_page_matches_the_parser(prog):
    assert drift(prog, PAGES[prog].read_text()) == []


def test_jobctl_page_names_only_real_environment_variables():
    named = set(re.findall(r"\bJOBCTL_[A-Z_]+\b", PAGES["jobctl"].read_text()))
    assert named == {"JOBCTL_ADDR", "JOBCTL_CA", "JOBCTL_CERT", "JOBCTL_KEY", "JOBCTL_CONTEXT"}


def test_the_drift_check_sees_drift():
    page = PAGES["jobctl"].read_text()
    assert "the page names option --bogus" in " ".join(drift("jobctl", page + ".TP\n\\fB\\-\\-bogus\\fR\nnothing\n"))
    without_grace = page.replace("\\fB\\-\\-grace\\fR", "\\fBgrace\\fR")
    assert "jobctl stop: option --grace is not in its section" in drift("jobctl", without_grace)
    renamed = page.replace('.SS "jobctl wait', '.SS "jobctl await')
    problems = drift("jobctl", renamed)
    assert "jobctl wait has no section in the page" in problems
    assert "the page describes jobctl 'await', which the parser lacks" in problems
    # an option moved to another command's section is missing from its own
    moved = page.replace("\\fB\\-\\-quiet\\fR", "\\fBquiet\\fR") + '.SS "jobctl ls"\n\\-\\-quiet\n'
    assert "jobctl context ls: option --quiet is not in its section" in drift("jobctl", moved)


def test_program_arguments_after_double_dash_are_not_options():
    assert options_named("jobctl run \\-\\-cpu 1 \\-\\- sh \\-c 'echo'") == {"--cpu"}
    assert options_named("\\fB\\-d\\fR, \\fB\\-\\-detach\\fR top\\-level") == {"-d", "--detach"}


def test_generated_files_are_fresh():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("page", sorted(PAGES.values()), ids=lambda p: p.name)
def test_man_renders_without_warnings(page):
    """What lintian runs on a page (groff warnings become its manpage-has-errors-from-man)."""
    done = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page)], capture_output=True,
                          text=True, timeout=60, env={"LC_ALL": "C.UTF-8", "MANROFFSEQ": "", "MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
