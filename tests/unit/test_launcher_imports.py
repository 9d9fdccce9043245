"""The launcher is on the hot path of every start: it may import only low-level modules, never
jobworkerd, pyroute2 (~90 ms), json (~5 ms) or subprocess. Checked statically (ast) and at run time
(the real file under `python -I -S -X importtime`, made to fail at its first step so no root is needed)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jobworkerd.launcher
from jobworkerd.worker import process

LAUNCHER = Path(jobworkerd.launcher.__file__).with_name("__main__.py")
MODULES = sorted(p for p in LAUNCHER.parent.glob("*.py") if p.name != "__init__.py")
SIBLINGS = {p.stem for p in MODULES} - {"__main__"}  # imported by plain name: the launcher runs as a file
ALLOWED = {"ctypes", "fcntl", "os", "select", "struct", "sys", "_socket", "_signal"}  # _signal: builtin
FORBIDDEN = {"json", "subprocess", "pyroute2", "jobworkerd", "socket", "selectors", "threading", "asyncio", "re", "site"}


def imported_modules(tree):
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import in the launcher: line {node.lineno}"
            names.add(node.module)
    return names


def test_the_daemon_runs_this_very_file():
    assert Path(process.LAUNCHER) == LAUNCHER


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_launcher_imports_only_the_allow_list(module):
    tree = ast.parse(module.read_text(), str(module))
    names = imported_modules(tree)
    assert names <= ALLOWED | SIBLINGS, f"{module.name} imports {sorted(names - ALLOWED - SIBLINGS)}"
    assert not any(n.split(".")[0] == "jobworkerd" for n in names)


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_launcher_has_no_dynamic_imports(module):
    tree = ast.parse(module.read_text(), str(module))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            assert name not in ("__import__", "import_module"), f"dynamic import at line {node.lineno}"


def top_level(name):
    return name.split(".")[0]


def test_executing_the_launcher_source_loads_no_heavy_module():
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"source = open({str(LAUNCHER)!r}).read()\n"
        f"exec(compile(source, {str(LAUNCHER)!r}, 'exec'), {{'__name__': 'launcher_probe', '__file__': {str(LAUNCHER)!r}}})\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(result.stdout.split())
    assert "ctypes" in loaded  # the probe did run the launcher's imports
    assert not {top_level(m) for m in loaded} & FORBIDDEN, sorted(loaded)


def test_a_real_launcher_run_imports_nothing_heavy_and_refuses_a_truncated_spec(tmp_path):
    """Run the launcher as the daemon does (-I -S, spec on stdin, status and output fds) with a spec that
    lacks its terminator, as when the daemon dies while writing it: it must report 'fail read-spec' on
    the status pipe and exit without running anything (and without needing root)."""
    status_r, status_w = os.pipe()
    output = os.open(tmp_path / "output", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        result = subprocess.run(
            [sys.executable, "-I", "-S", "-X", "importtime", str(LAUNCHER), str(status_w), str(output)],
            input=f"uid=0\0gid=0\0cwd=/\0program=/bin/touch\0arg=touch\0arg={tmp_path}/ran\0".encode(),
            capture_output=True,
            pass_fds=(status_w, output),
            env={},
            cwd="/",
            timeout=30,
        )
        os.close(status_w)
        status_w = -1
        with os.fdopen(status_r, "rb") as handle:
            status_r = -1
            status = handle.read().decode()
    finally:
        os.close(output)
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
    assert result.returncode == 1
    assert status == "fail read-spec 0 the job spec arrived incomplete\n"
    assert not (tmp_path / "ran").exists()
    imported = set()
    for line in result.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line and "imported package" not in line:
            imported.add(line.rsplit("|", 1)[1].strip())
    assert {"os", "ctypes", "fcntl", "_socket", "shim", "syscalls"} <= imported, "importtime output not understood"
    assert not {top_level(m) for m in imported} & FORBIDDEN, sorted(imported)


def test_the_parent_turns_the_status_line_into_a_start_failed():
    error = process.describe_failure("fail exec 13 /srv/job.sh")
    assert error.step == "exec" and error.errno == 13
    assert error.message == "cannot execute program '/srv/job.sh': Permission denied (EACCES)"
    error = process.describe_failure("fail join-cgroup 2 /sys/fs/cgroup/pids/x/tasks")
    assert "cannot join the job's cgroup" in error.message and "ENOENT" in error.message
    error = process.describe_failure("fail")
    assert error.step == "unknown"


def test_a_status_line_with_newlines_and_backslashes_in_its_detail_comes_back_whole(tmp_path):
    """report() (launcher side) and describe_failure() (daemon side) agree on the escapes."""
    sys.path.insert(0, str(LAUNCHER.parent))
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("launcher_main", LAUNCHER)
        launcher = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(launcher)
    finally:
        sys.path.remove(str(LAUNCHER.parent))
    r, w = os.pipe()
    detail = "/srv/a\\nb\nc\rd\\"
    launcher.report(w, f"fail chdir 13 {detail}")
    os.close(w)
    with os.fdopen(r, "rb") as handle:
        lines = handle.read().split(b"\n")
    assert len(lines) == 2 and lines[1] == b""  # one line
    assert process.describe_failure(lines[0].decode()).message == f"cannot enter directory {detail!r}: Permission denied (EACCES)"
