"""`jobctl`: the command line of jobworkerd. Parses arguments and dispatches to `commands`.

Imports only the standard library and `jobworkerd.units` at module level, so that `--help` and
usage errors are quick; grpc and the generated stubs are imported once a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Sequence

from jobworkerd.units import parse_duration, parse_size

from .console import say
from .errors import JobctlError, UsageError

# Hidden (not in the parser, --help or the man page): job ids for shell completion, see complete.py.
COMPLETE_IDS = "__complete-ids"

EPILOG = """\
connection settings, each from the first that gives it:
  --addr/--ca/--cert/--key, then JOBCTL_ADDR/JOBCTL_CA/JOBCTL_CERT/JOBCTL_KEY,
  then the selected context in ~/.config/jobctl/config.yaml (--context NAME,
  else JOBCTL_CONTEXT, else the file's current-context: see jobctl context
  --help), then that file's top-level keys addr, ca, cert, key (relative paths
  are relative to the file). The address defaults to localhost:7443.

exit status:
  0    success
  1    the daemon refused the request or could not be reached
       (message: "jobctl: <reason>" on stderr)
  2    usage error: bad option or value, missing setting; nothing was sent
  run, wait: the job's exit code; 128+N when signal N killed it (137: SIGKILL,
       also after an OOM kill; 143: SIGTERM, e.g. after jobctl stop); 124 when
       it ran past its --timeout and was stopped (as timeout(1))
  130  run: detached by a second Ctrl-C (the stop asked for by the first goes on)
  141  stdout was closed by its reader (jobctl run ... | head also stops the job)
"""

RUN_EPILOG = """\
Attached (the default), the job's output (stdout and stderr, in the order written) goes to
stdout as it comes, and jobctl exits with the job's exit code, or 128+N when signal N killed it;
a one-line note on stderr says when the job was stopped, OOM-killed or hit the output cap.

Ctrl-C while attached:
  once   asks the daemon to stop the job (SIGTERM to all its processes, SIGKILL after the
         default grace period) and keeps printing its output until it has ended; the exit
         status is then the job's: usually 143 (SIGTERM), or 137 if it had to be killed.
  twice  detaches at once and exits 130; the stop asked for by the first Ctrl-C goes on
         in the daemon, which still ends the job after the grace period (jobctl status ID).

If stdout is closed while attached (jobctl run ... | head), jobctl stops the job and exits 141.
With -d, jobctl prints only the job id and exits 0; see jobctl logs -f ID and jobctl wait ID.

Sizes and rates take K, M, G (powers of 1024): --mem 256M, --io-write-bps 10M.
examples:
  jobctl run --cpu 0.5 --mem 256M -- sh -c 'echo hello; sleep 1'
  jobctl run -d --name backup -e TARGET=/srv -- /usr/local/bin/backup --full
"""


class Parser(argparse.ArgumentParser):
    """argparse with jobctl's error format: one line, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message == "the following arguments are required: CMD":
            message = "no program given: jobctl run [options] -- CMD [ARG...]"
        raise UsageError(_tidy(message, self.prog))


def _tidy(message: str, prog: str) -> str:
    # "argument --mem: --mem '12X' is not..." -> "--mem '12X' is not..."
    if message.startswith("argument "):
        name, _, rest = message[len("argument ") :].partition(": ")
        first = name.split("/")[0]
        message = rest if rest.startswith(first) else f"{first}: {rest}"
    return f"{message} (see {prog} --help)"


# ---- value types: each raises ArgumentTypeError naming the option and what it accepts -----------


def _positive_number(option: str, what: str, example: str):
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{option} {text!r} is not allowed: give a positive number of {what}, e.g. {example}")
        return value

    return convert


def _positive_int(option: str, example: str):
    def convert(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{option} {text!r} is not allowed: give a whole number above 0, e.g. {example}")
        return value

    return convert


def _size(option: str, example: str, rate: bool = False):
    def convert(text: str) -> int:
        value_text = text[:-2] if rate and text.lower().endswith("/s") else text
        try:
            value = parse_size(value_text, what=option)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{err}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{option} {text!r} is not allowed: give a size above 0, e.g. {example}")
        return value

    return convert


def _duration(option: str):
    def convert(text: str) -> float:
        try:
            return parse_duration(text, what=option)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return convert


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"-e {text!r} is not NAME=VALUE: give e.g. -e LANG=C.UTF-8")
    return name, value


def _absolute_dir(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"--dir {text!r} is not an absolute path: the job runs on the daemon's host")
    return text


def _mount(text: str) -> tuple[str, str, bool]:
    parts = text.split(":")
    read_only = len(parts) == 3 and parts[2] == "ro"
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")) or not all(parts[:2]):
        raise argparse.ArgumentTypeError(f"--mount {text!r}: expected SRC:DST or SRC:DST:ro (absolute paths)")
    if not parts[0].startswith("/") or not parts[1].startswith("/"):
        raise argparse.ArgumentTypeError(f"--mount {text!r}: both paths must be absolute")
    return parts[0], parts[1], read_only


# ---- the parser --------------------------------------------------------------------------------


def build_parser() -> Parser:
    parser = Parser(
        prog="jobctl",
        description="Run and control jobs on a jobworkerd daemon (gRPC over mutual TLS).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The connection options are accepted before the command and, for convenience, after it.
    connection = Parser(add_help=False)
    for option, default in ((parser, None), (connection, argparse.SUPPRESS)):
        group = option.add_argument_group("connection")
        group.add_argument("--addr", metavar="HOST:PORT", default=default, help="daemon address (default localhost:7443)")
        group.add_argument("--ca", metavar="FILE", default=default, help="CA certificate that issued the daemon's certificate")
        group.add_argument("--cert", metavar="FILE", default=default, help="client certificate")
        group.add_argument("--key", metavar="FILE", default=default, help="client certificate's private key")
        group.add_argument("--context", metavar="NAME", default=default,
                           help="take the settings not given otherwise from this context (see jobctl context)")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)

    def command(name: str, help: str, **kwargs) -> Parser:
        return sub.add_parser(name, help=help, description=help, parents=[connection], **kwargs)

    run = command("run", "start a job and, unless -d, print its output and exit with its status",
                  usage="jobctl run [options] -- CMD [ARG...]",
                  epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    limits = run.add_argument_group("limits (default: the daemon's configured defaults)")
    limits.add_argument("--cpu", metavar="N", type=_positive_number("--cpu", "CPU cores", "0.5 or 2"), help="CPU cores, fractional (0.5 = half a core)")
    limits.add_argument("--mem", metavar="SIZE", type=_size("--mem", "256M"), help="memory limit, e.g. 256M, 2G")
    limits.add_argument("--io-read-bps", metavar="RATE", type=_size("--io-read-bps", "10M", rate=True), help="read bytes per second, e.g. 10M")
    limits.add_argument("--io-write-bps", metavar="RATE", type=_size("--io-write-bps", "10M", rate=True), help="write bytes per second, e.g. 10M")
    limits.add_argument("--io-read-iops", metavar="N", type=_positive_int("--io-read-iops", "1000"), help="read operations per second")
    limits.add_argument("--io-write-iops", metavar="N", type=_positive_int("--io-write-iops", "1000"), help="write operations per second")
    limits.add_argument("--io-device", metavar="PATH", help="a path on the disk the io limits apply to (default: the job's directory)")
    limits.add_argument("--pids", metavar="N", type=_positive_int("--pids", "100"), help="maximum number of processes")
    how = run.add_argument_group("how to run")
    how.add_argument("--user", metavar="USER", default="", help="run as this user (default: the daemon's policy)")
    how.add_argument("--group", metavar="GROUP", default="", help="run with this group (default: the user's primary group)")
    how.add_argument("--dir", metavar="DIR", type=_absolute_dir, help="working directory, absolute (default: /)")
    how.add_argument("-e", "--env", metavar="NAME=VALUE", action="append", type=_env_pair, default=[], help="environment variable (repeatable)")
    how.add_argument("--name", metavar="NAME", default="", help="a name for the job, shown by ls")
    how.add_argument("--timeout", metavar="DURATION", type=_duration("--timeout"),
                     help="stop the job this long after it started (reason timed-out, exit status 124); "
                          "e.g. 90, 30m, 2h (default: the daemon's for your role)")
    box = run.add_argument_group("sandbox (default: the daemon's profile for your role; see jobworkerd(8))")
    box.add_argument("--privileged", action="store_const", const="privileged", dest="profile",
                     help="admins: every capability, no seccomp, the host's /dev /run /tmp and a writable /")
    box.add_argument("--profile", metavar="NAME", default="", help="a sandbox profile of the daemon's config")
    box.add_argument("--seccomp", metavar="MODE", choices=("default", "unconfined"), default="",
                     help="'unconfined' (admins): no seccomp filter")
    box.add_argument("--hostname", metavar="NAME", default="", help="the job's hostname (default: its id)")
    box.add_argument("--mount", metavar="SRC:DST[:ro]", action="append", type=_mount, default=[],
                     help="bind mount a host path into the job (repeatable; users: below allowed directories)")
    box.add_argument("--device", metavar="PATH", action="append", default=[], help="admins: add a host device node (repeatable)")
    box.add_argument("--rootfs", metavar="DIR", default="", help="run in this directory tree instead of the host's /")
    net = run.add_argument_group("network (default: the daemon's mode for your role, usually none: only lo)")
    net.add_argument("--net", metavar="MODE", choices=("none", "bridge", "host"), default="",
                     help="none, bridge (egress through NAT), host (admins)")
    net.add_argument("--allow", metavar="CIDR[:PORT[/tcp|udp]]", action="append", default=[],
                     help="bridge: the job may reach only these (and its DNS servers); repeatable")
    net.add_argument("--publish", metavar="[ADDR:]HOSTPORT:JOBPORT[/tcp|udp]", action="append", default=[],
                     help="bridge: forward a host port to the job (default address 127.0.0.1); repeatable")
    how.add_argument("-d", "--detach", action="store_true", help="print the job id and exit at once")
    run.add_argument("program", metavar="CMD", nargs="+", help="the program (a path, or a name in PATH) and its arguments, after --")
    run.set_defaults(handler="run")

    logs = command("logs", "print a job's output (binary safe)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job has ended")
    logs.add_argument("job_id", metavar="ID")
    logs.set_defaults(handler="logs")

    status = command("status", "show one job")
    status.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format")
    status.add_argument("job_id", metavar="ID")
    status.set_defaults(handler="status")

    ls = command("ls", "list jobs (yours; an admin sees all)")
    ls.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
    ls.set_defaults(handler="ls")

    stop = command("stop", "stop a job: SIGTERM, then SIGKILL after the grace period; prints its final status")
    stop.add_argument("--grace", metavar="SECONDS", type=_duration("--grace"), help="grace period (default: the daemon's, 10s); 10, 2.5, 500ms, 1m")
    stop.add_argument("job_id", metavar="ID")
    stop.set_defaults(handler="stop")

    wait = command("wait", "wait for a job to end and exit with its status (as run does)")
    wait.add_argument("job_id", metavar="ID")
    wait.set_defaults(handler="wait")

    events = command("events", "follow job state changes (created, running, stopping, finished) as they happen")
    events.add_argument("--since", metavar="REVISION", type=_positive_int("--since", "1764624000000001"),
                        help="first print the kept events after this revision (the first column of a line)")
    events.add_argument("-o", "--output", choices=("text", "json"), default="text",
                        help="output format: a line per event, or one JSON object per line")
    events.set_defaults(handler="events")

    stats = command("stats", "a live table of running jobs' CPU, memory, io, pids and output (like docker stats)")
    stats.add_argument("--no-stream", action="store_true", help="print the table once and exit")
    stats.add_argument("--interval", metavar="SECONDS", type=_duration("--interval"), default=2.0,
                       help="time between refreshes (default 2s); also what CPU %% is measured over")
    stats.add_argument("job_ids", metavar="ID", nargs="*", help="only these jobs (default: every running job)")
    stats.set_defaults(handler="stats")

    add_context_parser(sub)
    return parser


CONTEXT_EPILOG = """\
A context names the settings for one daemon; they live in ~/.config/jobctl/config.yaml
(mode 0600) under contexts:, the one in use under current-context:. The top-level keys
addr, ca, cert, key of that file form the context called default. --context NAME or
JOBCTL_CONTEXT=NAME select a context for one command; --addr/--ca/--cert/--key and the
JOBCTL_ADDR/CA/CERT/KEY variables still win over it.

examples:
  jobctl context add prod --addr jobs1.example.org:7443 --ca prod-ca.crt --cert me.crt --key me.key
  jobctl context use prod
  jobctl --context default ls
"""


def add_context_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    # No connection options here: `context add` has --addr/--ca/--cert/--key of its own.
    context = sub.add_parser("context", help="manage named connection settings for many daemons (add, use, ls, rm)",
                             description="Manage contexts: named connection settings for many daemons.",
                             epilog=CONTEXT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    context_sub = context.add_subparsers(dest="context_cmd", metavar="SUBCOMMAND", parser_class=Parser)
    add = context_sub.add_parser("add", help="add a context (the files are checked and stored as absolute paths)",
                                 description="Add a context: the settings for one daemon, stored under a name.")
    add.add_argument("name", metavar="NAME", help="letters, digits, '.', '_', '-' (not 'default')")
    fields = add.add_argument_group("settings (all required)")
    fields.add_argument("--addr", dest="ctx_addr", metavar="HOST:PORT", required=True, help="daemon address")
    fields.add_argument("--ca", dest="ctx_ca", metavar="FILE", required=True, help="CA certificate that issued the daemon's certificate")
    fields.add_argument("--cert", dest="ctx_cert", metavar="FILE", required=True, help="client certificate")
    fields.add_argument("--key", dest="ctx_key", metavar="FILE", required=True, help="client certificate's private key")
    add.set_defaults(handler="contexts.add")
    use = context_sub.add_parser("use", help="make a context the current one ('default': the top-level keys)",
                                 description="Make a context the current one; 'default' means the top-level keys.")
    use.add_argument("name", metavar="NAME")
    use.set_defaults(handler="contexts.use")
    ls = context_sub.add_parser("ls", help="list the contexts; * marks the one in effect",
                                description="List the contexts; * marks the one in effect.")
    ls.add_argument("-q", "--quiet", action="store_true", help="print the names only")
    ls.set_defaults(handler="contexts.ls")
    rm = context_sub.add_parser("rm", help="remove a context (if current, default becomes current)",
                                description="Remove a context; if it was the current one, default becomes current.")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(handler="contexts.rm")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        hint = " (put the program and its arguments after --)" if args.cmd == "run" else ""
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}{hint} (see jobctl --help)")
    if args.cmd is None:
        raise UsageError("no command given (see jobctl --help)")
    if args.cmd == "context" and args.context_cmd is None:
        raise UsageError("no context command given: jobctl context add|use|ls|rm (see jobctl context --help)")
    if args.cmd == "run" and not args.program[0]:
        raise UsageError("the program name is empty (see jobctl run --help)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        if argv[:1] == [COMPLETE_IDS]:
            from .complete import complete_ids

            return complete_ids(argv[1:])
        args = parse(argv)
        # "contexts.add": the config file only, no grpc; "run": commands, where grpc is imported
        module, _, handler = args.handler.rpartition(".")
        return getattr(importlib.import_module(f".{module or 'commands'}", __package__), handler)(args)
    except JobctlError as err:
        say(err.message)
        return err.exit_code
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except BrokenPipeError:
        # stdout's reader went away (jobctl logs ID | head): quietly, as a SIGPIPE'd tool would.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
