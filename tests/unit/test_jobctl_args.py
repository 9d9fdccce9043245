"""jobctl's command line: parsing, value checks, usage errors, the request it builds, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jobctl import cli
from jobctl.errors import UsageError


def parse(*argv: str):
    return cli.parse(list(argv))


def test_run_sizes_are_powers_of_1024():
    args = parse("run", "--mem", "256M", "--io-read-bps", "1.5G", "--io-write-bps", "10M/s", "--", "true")
    assert args.mem == 256 << 20
    assert args.io_read_bps == 3 << 29
    assert args.io_write_bps == 10 << 20


def test_run_numbers():
    args = parse("run", "--cpu", "0.5", "--pids", "64", "--io-read-iops", "100", "--io-write-iops", "7", "--", "x")
    assert (args.cpu, args.pids, args.io_read_iops, args.io_write_iops) == (0.5, 64, 100, 7)


def test_env_pairs_split_at_the_first_equals_sign():
    args = parse("run", "-e", "A=1", "--env", "B=x=y", "-e", "EMPTY=", "--", "env")
    assert dict(args.env) == {"A": "1", "B": "x=y", "EMPTY": ""}


def test_everything_after_double_dash_belongs_to_the_program():
    args = parse("run", "--cpu", "1", "--", "sh", "-c", "echo hi", "--cpu", "--", "-d")
    assert args.program == ["sh", "-c", "echo hi", "--cpu", "--", "-d"]
    assert args.detach is False
    assert args.cpu == 1.0


def test_program_without_options_needs_no_double_dash():
    assert parse("run", "echo", "hi").program == ["echo", "hi"]


def test_connection_options_before_or_after_the_command():
    before = parse("--addr", "h:1", "--ca", "ca.crt", "ls")
    after = parse("ls", "--cert", "c.crt", "--key", "c.key")
    assert (before.addr, before.ca, before.cert) == ("h:1", "ca.crt", None)
    assert (after.addr, after.cert, after.key) == (None, "c.crt", "c.key")


def test_other_commands():
    assert parse("logs", "-f", "J1").follow is True
    assert parse("logs", "J1").follow is False
    assert parse("status", "-o", "json", "J1").output == "json"
    assert parse("ls").output == "table"
    assert parse("stop", "--grace", "500ms", "J1").grace == 0.5
    assert parse("stop", "J1").grace is None
    assert parse("wait", "J1").job_id == "J1"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["run", "--mem", "12X", "--", "true"], "--mem '12X' is not a size: use a whole number of bytes or a number with K, M, G"),
        (["run", "--mem", "0", "--", "true"], "--mem '0' is not allowed: give a size above 0"),
        (["run", "--cpu", "-1", "--", "true"], "--cpu '-1' is not allowed: give a positive number of CPU cores, e.g. 0.5"),
        (["run", "--cpu", "0", "--", "true"], "--cpu '0' is not allowed"),
        (["run", "--cpu", "inf", "--", "true"], "--cpu 'inf' is not allowed"),
        (["run", "--pids", "1.5", "--", "true"], "--pids '1.5' is not allowed: give a whole number above 0"),
        (["run", "--io-read-iops", "-5", "--", "true"], "--io-read-iops '-5' is not allowed"),
        (["run", "--io-write-bps", "fast", "--", "true"], "--io-write-bps 'fast' is not a size"),
        (["run", "-e", "NOEQUALS", "--", "true"], "-e 'NOEQUALS' is not NAME=VALUE"),
        (["run", "-e", "=v", "--", "true"], "-e '=v' is not NAME=VALUE"),
        (["run", "--dir", "relative/dir", "--", "true"], "--dir 'relative/dir' is not an absolute path"),
        (["run"], "no program given: jobctl run [options] -- CMD [ARG...]"),
        (["run", "--", ""], "the program name is empty"),
        (["run", "sh", "-c", "echo"], "unrecognized arguments: -c echo (put the program and its arguments after --)"),
        (["stop", "--grace", "5x", "J1"], "--grace '5x' is not a duration"),
        (["status", "-o", "yaml", "J1"], "invalid choice: 'yaml'"),
        (["logs"], "the following arguments are required: ID"),
        ([], "no command given"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_usage_exits_2_with_one_line_naming_the_problem(argv, expected, capsys):
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("jobctl: ") and err.count("\n") == 1, err
    assert expected in err


def test_usage_error_is_exit_2():
    with pytest.raises(UsageError) as caught:
        parse("run", "--mem", "12X", "--", "true")
    assert caught.value.exit_code == 2


def test_help_documents_exit_codes_and_ctrl_c(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    top = capsys.readouterr().out
    for text in ("exit status", "128+N", "130", "usage error", "JOBCTL_ADDR", "config.yaml"):
        assert text in top
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    run_help = capsys.readouterr().out
    assert "Ctrl-C" in run_help and "detaches" in run_help and "143" in run_help


def test_start_request_sets_only_the_limits_given():
    from jobctl.commands import start_request

    args = parse("run", "--mem", "1G", "--pids", "10", "--user", "nobody", "--dir", "/tmp",
                 "-e", "A=1", "--name", "n", "--io-device", "/dev/sda", "--", "sleep", "5")
    request = start_request(args)
    assert request.name == "n"
    assert request.command.command == "sleep" and list(request.command.arguments) == ["5"]
    assert (request.command.user, request.command.group, request.command.directory) == ("nobody", "", "/tmp")
    assert dict(request.command.env) == {"A": "1"}
    limits = request.limits
    assert limits.memory_bytes == 1 << 30 and limits.pids == 10 and limits.io_device == "/dev/sda"
    for unset in ("cpu", "io_read_bps", "io_write_bps", "io_read_iops", "io_write_iops"):
        assert not limits.HasField(unset), unset


def test_help_and_usage_errors_import_neither_grpc_nor_yaml():
    code = (
        "import sys\n"
        "from jobctl.cli import main\n"
        "assert main(['run', '--mem', '12X', '--', 'x']) == 2\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'yaml', 'google', 'cryptography', 'pkg_resources'))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stderr


def test_jobctl_imports_only_stubs_and_units_from_the_daemon_package():
    code = (
        "import sys, jobctl.cli, jobctl.commands, jobctl.client, jobctl.render, jobctl.settings, jobctl.diagnose\n"
        "print(sorted(m for m in sys.modules if m.startswith('jobworkerd')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    allowed = {
        "jobworkerd", "jobworkerd.units", "jobworkerd.gen", "jobworkerd.gen.jobworker",
        "jobworkerd.gen.jobworker.v1", "jobworkerd.gen.jobworker.v1.jobworker_pb2",
        "jobworkerd.gen.jobworker.v1.jobworker_pb2_grpc",
    }
    assert set(eval(done.stdout)) <= allowed


def test_complete_ids_is_hidden_and_silent(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "__complete" not in capsys.readouterr().out
    assert cli.COMPLETE_IDS not in cli.build_parser()._subparsers._group_actions[0].choices
    # no settings at all: nothing on stdout or stderr, exit 0
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "jobctl", "__complete-ids", "--addr", "127.0.0.1:1"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
