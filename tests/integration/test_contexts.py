"""Contexts against two real daemons (each with its own CA): switching context reaches the other
daemon, the precedence of option, variable and context holds end to end, and the hidden
`jobctl __complete-ids` lists the ids of the daemon in effect (and nothing when there is none)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import grpc
import pytest

from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.root


@pytest.fixture
def two(daemon_factory, tmp_path):
    """Daemons a and b, and `jobctl(...)` with a home of its own holding contexts a and b."""
    daemons = {"a": daemon_factory().start(), "b": daemon_factory().start()}
    home = tmp_path / "home"
    home.mkdir()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCTL_") and k != "XDG_CONFIG_HOME"}
    base_env["HOME"] = str(home)

    def jobctl(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "jobctl", *args], env={**base_env, **(env or {})},
                              capture_output=True, text=True, timeout=60)
        if check:
            assert done.returncode == 0, f"jobctl {' '.join(args)}: {done.returncode} {done.stderr}"
        return done

    for name, d in daemons.items():
        crt, key = d.cert("ops", "admin")
        jobctl("context", "add", name, "--addr", d.addr, "--ca", d.ca, "--cert", crt, "--key", key)
    return daemons, jobctl


def ids(jobctl, *args: str, env: dict | None = None) -> set[str]:
    import json

    return {job["id"] for job in json.loads(jobctl(*args, "ls", "-o", "json", env=env).stdout)}


def exists(daemon, job_id: str) -> bool:
    try:
        daemon.stub("ops", "admin").GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)
        return True
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
        return False


def test_switching_context_reaches_the_other_daemon(two):
    daemons, jobctl = two
    jobctl("context", "use", "a")
    job_a = jobctl("run", "-d", "--name", "on-a", "--", "true").stdout.strip()
    jobctl("context", "use", "b")
    job_b = jobctl("run", "-d", "--name", "on-b", "--", "true").stdout.strip()
    # each job is on the daemon whose context was current, seen through that daemon's own API
    assert exists(daemons["a"], job_a) and not exists(daemons["a"], job_b)
    assert exists(daemons["b"], job_b) and not exists(daemons["b"], job_a)

    assert ids(jobctl) == {job_b}  # current-context: b
    assert ids(jobctl, "--context", "a") == {job_a}
    assert ids(jobctl, env={"JOBCTL_CONTEXT": "a"}) == {job_a}
    assert ids(jobctl, "--context", "b", env={"JOBCTL_CONTEXT": "a"}) == {job_b}
    assert jobctl("status", job_a, "--context", "a").stdout.startswith(f"id")  # after the command, too

    ls = jobctl("context", "ls").stdout
    assert [line.split()[1] for line in ls.splitlines() if line.startswith("*")] == ["b"]


def test_explicit_settings_win_over_the_context(two):
    daemons, jobctl = two
    jobctl("context", "use", "a")
    job_b = jobctl("--context", "b", "run", "-d", "--", "true").stdout.strip()
    b = daemons["b"]
    crt, key = b.cert("ops", "admin")
    # options for every setting: the context (a) gives nothing
    assert ids(jobctl, "--addr", b.addr, "--ca", b.ca, "--cert", crt, "--key", key) == {job_b}
    # variables for every setting beat the context as well
    env = {"JOBCTL_ADDR": b.addr, "JOBCTL_CA": b.ca, "JOBCTL_CERT": crt, "JOBCTL_KEY": key}
    assert ids(jobctl, env=env) == {job_b}
    # only the address from the option: a's certificates meet b's CA, and the message says so
    done = jobctl("--addr", b.addr, "ls", check=False)
    assert done.returncode == 1
    assert "context a" in done.stderr, done.stderr


def test_unknown_context_is_a_usage_error(two):
    _, jobctl = two
    done = jobctl("--context", "c", "ls", check=False)
    assert done.returncode == 2
    assert done.stderr == "jobctl: unknown context 'c' (from --context): known are a, b (see jobctl context ls)\n"


def test_complete_ids_lists_the_jobs_of_the_daemon_in_effect(two):
    daemons, jobctl = two
    job_a = jobctl("--context", "a", "run", "-d", "--", "true").stdout.strip()
    sleeper = jobctl("--context", "a", "run", "-d", "--", "sleep", "60").stdout.strip()
    job_b = jobctl("--context", "b", "run", "-d", "--", "true").stdout.strip()
    jobctl("--context", "a", "wait", job_a)

    def complete(*args: str, env: dict | None = None) -> set[str]:
        done = jobctl("__complete-ids", *args, env=env)
        assert done.stderr == ""
        return set(done.stdout.split())

    assert complete("--context", "a") == {job_a, sleeper}
    assert complete("--context", "a", "--active") == {sleeper}
    assert complete(env={"JOBCTL_CONTEXT": "b"}) == {job_b}
    jobctl("--context", "a", "stop", "--grace", "0", sleeper)

    # nothing to reach: no output, no message, exit 0, and soon
    daemons["b"].stop()
    start = time.monotonic()
    done = jobctl("__complete-ids", "--context", "b")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert time.monotonic() - start < 10
    done = jobctl("__complete-ids", "--context", "nope")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_bash_completion_offers_the_ids_of_the_daemon_in_effect(two, tmp_path):
    """The shipped completion script, in a real bash, asking a real daemon through jobctl __complete-ids."""
    import shlex
    from pathlib import Path

    _, jobctl = two
    job_a = jobctl("--context", "a", "run", "-d", "--", "true").stdout.strip()
    job_b = jobctl("--context", "b", "run", "-d", "--", "sleep", "60").stdout.strip()
    jobctl("--context", "a", "wait", job_a)
    script = Path(__file__).resolve().parents[2] / "completion" / "bash" / "jobctl"
    env = {"HOME": str(tmp_path / "home"), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}

    def complete(*words: str) -> set[str]:
        code = (f"source {shlex.quote(str(script))}\nCOMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
                "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n_jobctl jobctl\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
        done = subprocess.run(["bash", "--norc", "--noprofile", "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        return {line for line in done.stdout.splitlines() if line}

    assert complete("jobctl", "--context", "a", "status", "") == {job_a}
    assert complete("jobctl", "logs", "--context", "=", "b", "-f", "") == {job_b}
    assert complete("jobctl", "--context", "b", "stop", "") == {job_b}  # stop: jobs not yet finished
    assert complete("jobctl", "--context", "a", "stop", "") == set()
    assert complete("jobctl", "--context", "b", "status", job_b[:3]) == {job_b}
    jobctl("--context", "b", "stop", "--grace", "0", job_b)
