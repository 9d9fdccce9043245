"""The real `jobctl` as a subprocess against the real daemon (fixture `daemon`, conftest.py).

Every command's happy path, exit statuses, binary output, concurrent followers, bad input, TLS
failures as jobctl reports them, and Ctrl-C on an attached run. Waits are polls with a deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.root

DEADLINE = 60.0
JOB_ID = re.compile(rb"^\S+\n$")

# Writes 1 MB of random bytes plus every byte value, then a newline and the SHA-256 of those bytes.
BINARY_JOB = (
    "import hashlib, os, sys\n"
    "data = os.urandom(1000000) + bytes(range(256)) * 4\n"
    "sys.stdout.buffer.write(data + b'\\n' + hashlib.sha256(data).hexdigest().encode())\n"
)


def start(daemon, *command: str, name: str = "admin", role: str = "admin") -> str:
    done = daemon.jobctl("run", "-d", "--", *command, name=name, role=role)
    assert done.returncode == 0, done.stderr
    assert JOB_ID.match(done.stdout), done.stdout
    return done.stdout.decode().strip()


def status(daemon, job_id: str, name: str = "admin", role: str = "admin") -> dict:
    done = daemon.jobctl("status", "-o", "json", job_id, name=name, role=role)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def expected_status(record: dict) -> int:
    """What run/wait exit with for a finished job, from its JSON record."""
    if record["exit_code"] is not None:
        return record["exit_code"]
    if record["signal"] is not None:
        return 128 + record["signal"]
    return 1


def poll(predicate, what: str):
    end = time.monotonic() + DEADLINE
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


class Reader:
    """Collects a subprocess pipe in a thread so a test can await bytes with a deadline."""

    def __init__(self, pipe):
        self.data, self._cond = b"", threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe):
        while chunk := os.read(pipe.fileno(), 65536):
            with self._cond:
                self.data += chunk
                self._cond.notify_all()

    def wait_for(self, marker: bytes) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: marker in self.data, DEADLINE), (marker, self.data[-500:])

    def finish(self) -> bytes:
        self._thread.join(DEADLINE)
        return self.data


def popen_jobctl(daemon, *args: str) -> tuple[subprocess.Popen, Reader, Reader]:
    proc = subprocess.Popen([sys.executable, "-m", "jobctl", *args], env=daemon.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, Reader(proc.stdout), Reader(proc.stderr)


def check_binary(out: bytes) -> None:
    data, _, digest = out.rpartition(b"\n")
    assert len(data) == 1000000 + 1024
    assert set(data[-1024:]) == set(range(256))
    assert hashlib.sha256(data).hexdigest().encode() == digest


# ---- happy paths -------------------------------------------------------------------------------


def test_run_attached_prints_output_and_exits_with_the_code(daemon):
    done = daemon.jobctl("run", "--", "sh", "-c", "echo hi; exit 3")
    assert (done.stdout, done.returncode, done.stderr) == (b"hi\n", 3, b"")


def test_run_with_limits_and_env(daemon):
    done = daemon.jobctl("run", "--cpu", "0.5", "--mem", "256M", "--pids", "64", "--name", "lim",
                         "-e", "GREETING=hello there", "--dir", "/tmp", "--", "sh", "-c", 'echo "$GREETING"; pwd')
    assert (done.returncode, done.stdout) == (0, b"hello there\n/tmp\n"), done.stderr


def test_run_killed_by_a_signal_exits_128_plus_n(daemon):
    done = daemon.jobctl("run", "--", "sh", "-c", "kill -KILL $$")
    assert done.returncode == 137, done.stderr


def test_detached_run_then_status_ls_logs_wait(daemon):
    job_id = start(daemon, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert daemon.jobctl("wait", job_id).returncode == 7
    logs = daemon.jobctl("logs", job_id)
    assert (logs.returncode, logs.stdout) == (0, b"out\nerr\n")
    record = status(daemon, job_id)
    assert record["id"] == job_id and record["state"] == "finished" and record["reason"] == "exited"
    assert record["exit_code"] == 7 and record["signal"] is None
    assert record["owner"] == "admin:admin" and record["command"]["command"] == "sh"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", record["finished_at"])
    text = daemon.jobctl("status", job_id)
    assert text.returncode == 0 and b"finished (exited, exit code 7)" in text.stdout
    table = daemon.jobctl("ls")
    assert table.returncode == 0 and table.stdout.startswith(b"ID ")
    row = next(line for line in table.stdout.decode().splitlines() if line.startswith(job_id))
    assert row.split()[3:6] == ["finished", "exited", "7"]
    listed = json.loads(daemon.jobctl("ls", "-o", "json").stdout)
    assert job_id in [job["id"] for job in listed]


def test_stop_prints_the_final_status_line(daemon):
    job_id = start(daemon, "sleep", "100")
    done = daemon.jobctl("stop", "--grace", "2s", job_id)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rf"{re.escape(job_id)} finished \(stopped, SIG(TERM|KILL)\)\n", done.stdout.decode())
    assert status(daemon, job_id)["reason"] == "stopped"


def test_logs_without_follow_returns_what_exists_now(daemon):
    job_id = start(daemon, "sh", "-c", "echo first; exec sleep 100")
    try:
        poll(lambda: daemon.jobctl("logs", job_id).stdout == b"first\n", "the first line")
        assert status(daemon, job_id)["state"] == "running"
    finally:
        daemon.jobctl("stop", "--grace", "0", job_id)


def test_two_concurrent_followers_print_identical_bytes(daemon):
    job_id = start(daemon, "sh", "-c", "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.01; done")
    followers = [popen_jobctl(daemon, "logs", "-f", job_id) for _ in range(2)]
    try:
        for _, out, _ in followers:
            out.wait_for(b"line 20\n")
        assert status(daemon, job_id)["state"] == "running"  # both followed a live job
        assert daemon.jobctl("stop", job_id).returncode == 0
        results = []
        for proc, out, err in followers:
            assert proc.wait(DEADLINE) == 0, err.finish()
            results.append(out.finish())
        assert results[0] == results[1]
        assert results[0].startswith(b"line 1\nline 2\n")
        assert results[0] == daemon.jobctl("logs", job_id).stdout
    finally:
        for proc, _, _ in followers:
            proc.kill()
            proc.wait()


def test_binary_output_survives_attached_and_in_logs(daemon):
    done = daemon.jobctl("run", "--", "python3", "-c", BINARY_JOB)
    assert done.returncode == 0, done.stderr
    check_binary(done.stdout)
    job_id = start(daemon, "python3", "-c", BINARY_JOB)
    follow = daemon.jobctl("logs", "-f", job_id)
    assert follow.returncode == 0
    check_binary(follow.stdout)
    assert daemon.jobctl("logs", job_id).stdout == follow.stdout


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--mem", "12X", "--", "true"], b"jobctl: --mem '12X' is not a size"),
        (["run", "--cpu", "-1", "--", "true"], b"jobctl: --cpu '-1' is not allowed: give a positive number of CPU cores"),
        (["run", "--", ""], b"jobctl: the program name is empty"),
    ],
)
def test_usage_errors_exit_2(daemon, args, message):
    done = daemon.jobctl(*args)
    assert done.returncode == 2
    assert done.stderr.startswith(message) and done.stderr.count(b"\n") == 1, done.stderr


def test_unknown_job_id_is_not_found(daemon):
    for command in (["status"], ["logs"], ["wait"], ["stop"], ["logs", "-f"]):
        done = daemon.jobctl(*command, "000000000000")  # well formed, but no such job
        assert done.returncode == 1, command
        assert done.stderr.startswith(b"jobctl: not found: ") and done.stderr.count(b"\n") == 1, done.stderr
    done = daemon.jobctl("status", "no-such-job")
    assert done.returncode == 1 and done.stderr.startswith(b"jobctl: invalid argument: "), done.stderr


def test_program_not_found(daemon):
    done = daemon.jobctl("run", "--", "/no/such/program-xyz")
    assert done.returncode == 1
    assert done.stderr.startswith(b"jobctl: ") and b"program-xyz" in done.stderr
    assert done.stderr.count(b"\n") == 1, done.stderr


def test_unknown_run_as_user(daemon):
    done = daemon.jobctl("run", "--user", "no-such-user-xyz", "--", "true")
    assert done.returncode == 1
    assert b"no-such-user-xyz" in done.stderr and done.stderr.count(b"\n") == 1, done.stderr


def test_another_users_job_is_not_found(daemon):
    job_id = start(daemon, "sleep", "100", name="alice", role="user")
    try:
        done = daemon.jobctl("status", job_id, name="bob", role="user")
        assert done.returncode == 1 and done.stderr.startswith(b"jobctl: not found: ")
        assert job_id.encode() not in daemon.jobctl("ls", name="bob", role="user").stdout
        assert status(daemon, job_id)["owner"] == "alice"  # the admin sees it
    finally:
        daemon.jobctl("stop", "--grace", "0", job_id)


# ---- TLS failures as jobctl reports them -------------------------------------------------------


def test_certificate_from_another_ca(daemon, tmp_path):
    other = tmp_path / "other-ca"
    subprocess.run([sys.executable, "-m", "jobworkerd", "ca", "init", "--dir", str(other)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "jobworkerd", "ca", "issue", "--dir", str(other), "--name", "mallory",
                    "--role", "admin", "--out", str(tmp_path / "mallory")], check=True, capture_output=True)
    env = dict(daemon.env(), JOBCTL_CERT=str(tmp_path / "mallory.crt"), JOBCTL_KEY=str(tmp_path / "mallory.key"))
    done = subprocess.run([sys.executable, "-m", "jobctl", "ls"], env=env, capture_output=True, timeout=DEADLINE)
    assert done.returncode == 1
    # both CAs have the default name, so only the signature tells them apart
    assert done.stderr.startswith(f"jobctl: client certificate {tmp_path / 'mallory.crt'} (from JOBCTL_CERT) ".encode())
    assert f"signature does not verify with the CA in CA certificate {daemon.ca} (from JOBCTL_CA)".encode() in done.stderr
    assert done.stderr.count(b"\n") == 1, done.stderr
    # trusting the other CA for the server instead: jobctl says the server's certificate does not verify
    env = dict(daemon.env(), JOBCTL_CA=str(other / "ca.crt"))
    done = subprocess.run([sys.executable, "-m", "jobctl", "ls"], env=env, capture_output=True, timeout=DEADLINE)
    assert done.returncode == 1
    assert b"the server's certificate does not verify with CA certificate" in done.stderr, done.stderr


def test_nothing_listening(daemon):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "jobctl", "--addr", f"127.0.0.1:{port}", "ls"],
                          env=daemon.env(), capture_output=True, timeout=DEADLINE)
    assert done.returncode == 1
    assert done.stderr == f"jobctl: cannot connect to 127.0.0.1:{port}: connection refused (is jobworkerd running and listening there?)\n".encode()


# ---- Ctrl-C on an attached run -------------------------------------------------------------------


def _attached_sleep(daemon) -> tuple[subprocess.Popen, Reader, Reader]:
    proc, out, err = popen_jobctl(daemon, "run", "--name", "ctrl-c", "--", "sh", "-c", "echo ready; exec sleep 100")
    out.wait_for(b"ready\n")  # output is streaming, so jobctl's Ctrl-C handler is in place
    return proc, out, err


def _job_id_of(daemon, proc_name: str = "ctrl-c") -> str:
    jobs = json.loads(daemon.jobctl("ls", "-o", "json").stdout)
    live = [j for j in jobs if j["name"] == proc_name and j["state"] in ("running", "stopping")]
    assert len(live) == 1, live
    return live[0]["id"]


def test_ctrl_c_once_stops_the_job_and_exits_with_its_status(daemon):
    proc, out, err = _attached_sleep(daemon)
    try:
        job_id = _job_id_of(daemon)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(DEADLINE)
        record = status(daemon, job_id)
        assert record["state"] == "finished" and record["reason"] == "stopped"
        assert code == 128 + record["signal"] and code in (143, 137)
        stderr = err.finish()
        assert f"jobctl: stopping job {job_id} (Ctrl-C again to detach)\n".encode() in stderr
        assert f"jobctl: job {job_id} was stopped (".encode() in stderr
        assert out.finish() == b"ready\n"
    finally:
        proc.kill()
        proc.wait()


def test_ctrl_c_twice_detaches_with_130_and_the_daemon_finishes_the_stop(daemon):
    # The job ignores SIGTERM, so the stop asked for by the first Ctrl-C is still in its grace period
    # (5 s in the fixture's config) when the second Ctrl-C detaches.
    proc, out, err = popen_jobctl(daemon, "run", "--name", "ctrl-c", "--", "sh", "-c",
                                  "trap '' TERM; echo ready; exec sleep 100")
    out.wait_for(b"ready\n")
    job_id = _job_id_of(daemon)
    try:
        proc.send_signal(signal.SIGINT)
        err.wait_for(b"Ctrl-C again to detach")
        deadline = time.monotonic() + DEADLINE
        while status(daemon, job_id)["state"] != "stopping":  # the daemon has begun the stop
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(DEADLINE) == 130
        assert f"jobctl: detached; the daemon goes on stopping job {job_id} (jobctl status {job_id})\n".encode() \
            in err.finish()
        deadline = time.monotonic() + DEADLINE
        while (record := status(daemon, job_id))["state"] != "finished":
            assert time.monotonic() < deadline, record
            time.sleep(0.1)
        assert record["reason"] == "stopped" and record["signal"] == 9  # killed after the grace period
    finally:
        proc.kill()
        proc.wait()


# ---- daemon restarts -----------------------------------------------------------------------------


def test_followers_resume_after_the_daemon_restarts(daemon_factory):
    import socket

    with socket.socket() as probe:  # a fixed port, so that the restarted daemon listens where jobctl connects
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    d = daemon_factory({"listen": f"127.0.0.1:{port}"}).start()
    counter = "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.01; done"
    job_id = start(d, "sh", "-c", counter)
    follower = popen_jobctl(d, "logs", "-f", job_id)
    attached = popen_jobctl(d, "run", "--name", "attached", "--", "sh", "-c", counter)
    try:
        follower[1].wait_for(b"line 5\n")
        attached[1].wait_for(b"line 5\n")
        d.kill()  # a crash: streams break with UNAVAILABLE; the jobs run on until the next start
        d.start()  # reconciles: both jobs are killed and recorded as lost
        assert follower[0].wait(DEADLINE) == 0, follower[2].finish()
        followed = follower[1].finish()
        assert followed == d.jobctl("logs", job_id).stdout  # nothing lost, nothing repeated
        assert status(d, job_id)["reason"] == "lost"
        attached_id = next(j["id"] for j in json.loads(d.jobctl("ls", "-o", "json").stdout) if j["name"] == "attached")
        record = status(d, attached_id)
        assert record["reason"] == "lost"
        assert attached[0].wait(DEADLINE) == expected_status(record)
        assert attached[1].finish() == d.jobctl("logs", attached_id).stdout
        assert f"jobctl: job {attached_id} was lost: ".encode() in attached[2].finish()
    finally:
        for proc, _, _ in (follower, attached):
            proc.kill()
            proc.wait()
