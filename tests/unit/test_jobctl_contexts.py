"""`jobctl context add|use|ls|rm`: the config file they write, and their usage errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import yaml

from jobctl import cli
from jobctl.settings import resolve

NO_FLAGS = {"addr": None, "ca": None, "cert": None, "key": None}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home of its own; the config file at ~/.config/jobctl/config.yaml; PEM stand-ins in ./pem."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for name in list(os.environ):
        if name.startswith("JOBCTL_"):
            monkeypatch.delenv(name)
    pem = tmp_path / "pem"
    pem.mkdir()
    for name in ("ca.crt", "a.crt", "a.key", "b.crt", "b.key"):
        (pem / name).write_text("stand-in\n")
    monkeypatch.chdir(pem)
    return tmp_path


def config_path(home) -> str:
    return str(home / ".config" / "jobctl" / "config.yaml")


def jobctl(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def add(capsys, name: str, addr: str = "h1:7443", who: str = "a") -> tuple[int, str, str]:
    return jobctl(capsys, "context", "add", name, "--addr", addr, "--ca", "ca.crt", "--cert", f"{who}.crt", "--key", f"{who}.key")


def load(home) -> dict:
    with open(config_path(home)) as handle:
        return yaml.safe_load(handle)


def test_add_stores_absolute_paths_in_a_0600_file(home, capsys):
    code, out, err = add(capsys, "one")
    assert (code, err) == (0, "")
    assert "added context one (h1:7443)" in out
    assert load(home) == {"contexts": {"one": {"addr": "h1:7443", "ca": str(home / "pem" / "ca.crt"),
                                               "cert": str(home / "pem" / "a.crt"), "key": str(home / "pem" / "a.key")}}}
    assert stat.S_IMODE(os.stat(config_path(home)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(config_path(home))).st_mode) == 0o700
    assert os.listdir(os.path.dirname(config_path(home))) == ["config.yaml"]  # no temporary file left


def test_rewrites_keep_the_top_level_keys_and_unknown_keys(home, capsys):
    os.makedirs(os.path.dirname(config_path(home)))
    with open(config_path(home), "w") as handle:
        handle.write("addr: old:1\nca: /t/ca.crt\ncert: /t/c.crt\nkey: /t/c.key\nfuture-option: {x: [1, 2]}\n")
    os.chmod(config_path(home), 0o644)
    assert add(capsys, "one")[0] == 0
    assert jobctl(capsys, "context", "use", "one")[0] == 0
    data = load(home)
    assert {k: data[k] for k in ("addr", "ca", "cert", "key", "future-option")} == {
        "addr": "old:1", "ca": "/t/ca.crt", "cert": "/t/c.crt", "key": "/t/c.key", "future-option": {"x": [1, 2]}}
    assert data["current-context"] == "one" and list(data["contexts"]) == ["one"]
    assert stat.S_IMODE(os.stat(config_path(home)).st_mode) == 0o600


def test_a_symlinked_config_file_stays_a_link(home, capsys):
    real = home / "dotfiles" / "jobctl.yaml"
    real.parent.mkdir()
    real.write_text("addr: old:1\n")
    os.makedirs(os.path.dirname(config_path(home)))
    os.symlink(real, config_path(home))
    assert add(capsys, "one")[0] == 0
    assert os.path.islink(config_path(home))
    assert "one" in yaml.safe_load(real.read_text())["contexts"]


def test_use_then_commands_take_the_context(home, capsys):
    add(capsys, "one", "h1:7443", "a")
    add(capsys, "two", "h2:7443", "b")
    code, out, _ = jobctl(capsys, "context", "use", "two")
    assert (code, out) == (0, "current context: two\n")
    settings = resolve(NO_FLAGS, os.environ)
    assert (settings.addr, settings.cert, settings.context) == ("h2:7443", str(home / "pem" / "b.crt"), "two")
    assert jobctl(capsys, "context", "use", "default")[0] == 0
    assert "current-context" not in load(home)
    assert resolve(dict(NO_FLAGS, ca="/c", cert="/c", key="/k")).addr == "localhost:7443"


def test_use_warns_when_the_environment_overrides_it(home, capsys, monkeypatch):
    add(capsys, "one")
    monkeypatch.setenv("JOBCTL_CONTEXT", "default")
    code, _, err = jobctl(capsys, "context", "use", "one")
    assert code == 0 and "JOBCTL_CONTEXT=default is set and takes precedence" in err


def test_ls_marks_the_context_in_effect(home, capsys, monkeypatch):
    add(capsys, "one", "h1:7443")
    add(capsys, "two", "h2:7443")

    def marked(*argv: str) -> list[str]:
        code, out, _ = jobctl(capsys, *argv, "context", "ls")
        assert code == 0
        return [line.split()[1] for line in out.splitlines()[1:] if line.startswith("*")]

    rows = jobctl(capsys, "context", "ls")[1].splitlines()
    assert rows[0].split() == ["NAME", "ADDR"]
    assert [r.lstrip("* ").split()[:2] for r in rows[1:]] == [["default", "localhost:7443"], ["one", "h1:7443"], ["two", "h2:7443"]]
    assert marked() == ["default"]
    jobctl(capsys, "context", "use", "one")
    assert marked() == ["one"]
    monkeypatch.setenv("JOBCTL_CONTEXT", "two")
    assert marked() == ["two"]
    assert marked("--context", "one") == ["one"]
    assert jobctl(capsys, "context", "ls", "-q")[1] == "default\none\ntwo\n"


def test_rm_of_the_current_context_returns_to_default(home, capsys):
    add(capsys, "one")
    add(capsys, "two")
    jobctl(capsys, "context", "use", "one")
    code, out, _ = jobctl(capsys, "context", "rm", "one")
    assert code == 0 and "the current context is now default" in out
    data = load(home)
    assert list(data["contexts"]) == ["two"] and "current-context" not in data
    assert jobctl(capsys, "context", "rm", "two")[0] == 0
    assert "contexts" not in (load(home) or {})


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["context", "add", "one", "--addr", "h:1", "--ca", "ca.crt", "--cert", "a.crt"], "the following arguments are required: --key"),
        (["context", "add", "one", "--addr", "h:1", "--ca", "missing.crt", "--cert", "a.crt", "--key", "a.key"], "--ca 'missing.crt': no such file"),
        (["context", "add", "one", "--addr", "", "--ca", "ca.crt", "--cert", "a.crt", "--key", "a.key"], "--addr '' is not an address"),
        (["context", "add", "default", "--addr", "h:1", "--ca", "ca.crt", "--cert", "a.crt", "--key", "a.key"], "'default' is reserved"),
        (["context", "add", "a b", "--addr", "h:1", "--ca", "ca.crt", "--cert", "a.crt", "--key", "a.key"], "context name 'a b' is not allowed"),
        (["context", "add", "exists", "--addr", "h:1", "--ca", "ca.crt", "--cert", "a.crt", "--key", "a.key"], "context 'exists' exists already"),
        (["context", "use", "nope"], "unknown context 'nope': known are exists (see jobctl context ls)"),
        (["context", "rm", "nope"], "unknown context 'nope'"),
        (["context", "rm", "default"], "cannot be removed"),
        (["context"], "no context command given: jobctl context add|use|ls|rm"),
        (["context", "frob"], "invalid choice: 'frob'"),
        (["--context", "nope", "ls"], "unknown context 'nope' (from --context)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(home, capsys, argv, expected):
    add(capsys, "exists")
    before = open(config_path(home)).read()
    code, out, err = jobctl(capsys, *argv)
    assert code == 2, err
    assert out == "" and err.startswith("jobctl: ") and err.count("\n") == 1, err
    assert expected in err
    assert open(config_path(home)).read() == before  # nothing written


def test_context_commands_import_no_grpc(home, capsys):
    add(capsys, "one")
    code = (
        "import sys\n"
        "from jobctl.cli import main\n"
        "assert main(['context', 'ls']) == 0\n"
        "assert main(['context', 'use', 'one']) == 0\n"
        "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google', 'cryptography')), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stderr


def test_concurrent_adds_lose_nothing(home, capsys):
    """Each command reads and rewrites the file under a lock: none overwrites another's context."""
    add(capsys, "first")
    names = [f"c{i}" for i in range(8)]
    procs = [subprocess.Popen([sys.executable, "-m", "jobctl", "context", "add", name, "--addr", "h:1", "--ca", "ca.crt",
                               "--cert", "a.crt", "--key", "a.key"], env=os.environ.copy(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for name in names]
    for proc in procs:
        assert proc.wait(60) == 0, proc.stderr.read()
        proc.stderr.close()
    assert sorted(load(home)["contexts"]) == sorted(["first", *names])
