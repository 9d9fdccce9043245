"""The server's keepalive policy (jobworkerd/api/keepalive.py) against the real daemon.

- A grpc-js client pinging every 10 s (the floor of grpc-go's and grpc-java's keepalive) waits a minute for
  a job, and keeps a second connection without calls open meanwhile: no GOAWAY, the job's end arrives. Under
  grpc's defaults (5 minutes between pings when the server sends nothing) the third strike sent it away
  ~50 s into the wait.
- The same client pinging every second is what grpc documents as abuse: GOAWAY ENHANCE_YOUR_CALM
  "too_many_pings" after the strikes allowed, and grpc-js backs off (gRFC A8).
- A client that silently stops answering (SIGSTOP: its kernel still acknowledges TCP) is reaped within
  keepalive time + timeout, with its stream and wait; a live client that is just as quiet is not.

The grpc-js client (tests/integration/grpcjs/) is installed with npm from its lock file into .cache/grpcjs/,
once per lock file; without node and npm (scripts/test.sh installs Debian's), or when npm cannot install,
the grpc-js tests are skipped and say why.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from daemon_harness import REPO, fd_count
from faultkit import marked_sleep, new_marker, sh, stop_job, wait_until
from jobworkerd.api import keepalive
from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.root

GRPCJS_SOURCE = Path(__file__).parent / "grpcjs"
GRPCJS_CACHE = REPO / ".cache" / "grpcjs"
PROTO_DIR = REPO / "proto"


# -- the grpc-js client -----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def grpcjs_modules() -> Path:
    """node_modules with @grpc/grpc-js and @grpc/proto-loader as locked in grpcjs/package-lock.json."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("the grpc-js client needs Node.js and npm: `apt-get install nodejs npm` "
                    "(scripts/test.sh installs them)")
    manifest = [(GRPCJS_SOURCE / name).read_bytes() for name in ("package.json", "package-lock.json")]
    target = GRPCJS_CACHE / hashlib.sha256(b"\0".join(manifest)).hexdigest()[:16]
    if (target / ".installed").exists():
        return target / "node_modules"
    GRPCJS_CACHE.mkdir(parents=True, exist_ok=True)
    with open(GRPCJS_CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time; the others use its result
        if not (target / ".installed").exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            for name in ("package.json", "package-lock.json"):
                shutil.copy(GRPCJS_SOURCE / name, target / name)
            try:
                result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=target,
                                        capture_output=True, text=True, timeout=600)
            except subprocess.TimeoutExpired:
                shutil.rmtree(target, ignore_errors=True)
                pytest.skip("npm could not install @grpc/grpc-js within 10 minutes (is the npm registry reachable?)")
            if result.returncode != 0:
                shutil.rmtree(target, ignore_errors=True)
                tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
                pytest.skip(f"npm could not install @grpc/grpc-js (is the npm registry reachable?):\n{tail}")
            (target / ".installed").touch()
    return target / "node_modules"


def run_grpcjs(daemon, modules: Path, keepalive_ms: int, argv: list[str], idle_channel: bool = False,
               timeout: float = 180) -> tuple[list[dict], str]:
    """Runs grpcjs/wait_client.js as user alice; returns its JSON steps and its grpc-js trace (stderr)."""
    crt, key = daemon.cert("alice", "user")
    config = {"addr": daemon.addr, "ca": daemon.ca, "cert": crt, "key": key,
              "proto": str(PROTO_DIR / "jobworker" / "v1" / "jobworker.proto"), "include_dirs": [str(PROTO_DIR)],
              "keepalive_time_ms": keepalive_ms, "argv": argv, "idle_channel": idle_channel}
    env = {**os.environ, "NODE_PATH": str(modules), "GRPC_TRACE": "keepalive,transport", "GRPC_VERBOSITY": "DEBUG"}
    result = subprocess.run(["node", str(GRPCJS_SOURCE / "wait_client.js"), json.dumps(config)], env=env,
                            capture_output=True, text=True, timeout=timeout)
    steps = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return steps, result.stderr


def acked_pings(trace: str) -> Counter:
    """Ping acks received, per connection (grpc-js's channelz socket id)."""
    return Counter(re.findall(r"\| keepalive \| \((\d+)\) \S+ Received ping response", trace))


def test_grpcjs_client_pinging_every_10s_waits_a_minute_without_goaway(daemon_factory, grpcjs_modules):
    d = daemon_factory().start()
    # 60 s: a ping every 10 s, each a strike under grpc's defaults, and the third strike a GOAWAY (at ~50 s).
    steps, trace = run_grpcjs(d, grpcjs_modules, 10_000, ["sleep", "60"], idle_channel=True)
    by_step = {s["step"]: s for s in steps}
    assert "error" not in by_step, (steps, trace[-3000:])
    assert by_step["finished"]["job"]["state"] == "JOB_STATE_FINISHED", steps
    assert by_step["finished"]["job"]["reason"] == "TERMINATION_REASON_EXITED", steps
    assert by_step["finished"]["job"]["exit_code"] == 0, steps
    # The connection without calls was there all along and still answers on its own.
    assert by_step["idle_channel"]["job"]["id"] == by_step["started"]["id"], steps
    assert "GOAWAY" not in trace and "excess pings" not in trace, trace[-3000:]
    # Several pings went out while idle, on both connections, and the server answered each.
    pings = acked_pings(trace)
    assert len(pings) == 2 and min(pings.values()) >= 5, (pings, trace[-3000:])


def test_grpcjs_client_pinging_every_second_is_sent_away_with_too_many_pings(daemon_factory, grpcjs_modules):
    d = daemon_factory().start()
    steps, trace = run_grpcjs(d, grpcjs_modules, 1_000, ["sleep", "60"])
    by_step = {s["step"]: s for s in steps}
    try:
        # As grpc documents: after max_ping_strikes pings too soon, GOAWAY ENHANCE_YOUR_CALM (11)
        # "too_many_pings", the calls on the connection fail, and the client doubles its interval (gRFC A8).
        assert re.search(r"connection closed by GOAWAY with code 11 and data too_many_pings", trace), trace[-3000:]
        assert "rejected by server because of excess pings. Increasing ping interval to 2000 ms" in trace
        assert by_step["error"]["call"] == "WaitJob", steps
        assert by_step["error"]["code"] in ("RESOURCE_EXHAUSTED", "UNAVAILABLE"), steps
        assert "finished" not in by_step, steps
        # Not at the first ping too soon: the strikes allowed came first.
        assert sum(acked_pings(trace).values()) > keepalive.MAX_PING_STRIKES, trace[-3000:]
    finally:
        if "started" in by_step:  # the job itself is untouched: it is still running
            job = stop_job(d.stub(), by_step["started"]["id"], grace=0)
            assert job.reason == pb.TERMINATION_REASON_STOPPED


# -- a client that stops answering ------------------------------------------------------------------------------

QUIET_CLIENT = textwrap.dedent("""
    import sys, time, grpc
    from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb, jobworker_pb2_grpc as pb_grpc
    addr, ca, crt, key, job_id = sys.argv[1:6]
    creds = grpc.ssl_channel_credentials(open(ca, 'rb').read(), open(key, 'rb').read(), open(crt, 'rb').read())
    # No keepalive of its own (grpc's client default): it only answers the server's pings.
    channel = grpc.secure_channel(addr, creds, options=[('grpc.use_local_subchannel_pool', 1)])
    stub = pb_grpc.JobWorkerStub(channel)
    stream = stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id))
    next(stream)  # the stream is open on the server and has sent its first chunk
    wait = stub.WaitJob.future(pb.WaitJobRequest(job_id=job_id))
    time.sleep(3)  # settled: the server's pings of the set-up (its bandwidth probes) are answered
    print("ready", flush=True)
    print(pb.JobState.Name(wait.result().state), flush=True)
""")


def tcp_ports(pid: int) -> set[tuple[int, int]]:
    """(local port, remote port) of the process's established TCP connections (IPv4 and IPv6)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
            if match:
                inodes.add(match.group(1))
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and fields[9] in inodes:  # ESTABLISHED
                found.add((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)))
    return found


def daemon_connections_to(daemon_pid: int, client_pid: int) -> set[tuple[int, int]]:
    client_ports = {local for local, _ in tcp_ports(client_pid)}
    return {c for c in tcp_ports(daemon_pid) if c[1] in client_ports}


def test_a_client_that_stops_answering_is_reaped_and_a_quiet_live_one_is_not(daemon_factory):
    d = daemon_factory().start()
    stub = d.stub()
    marker = new_marker()
    job = sh(stub, f"echo {marker}; {marked_sleep(marker)}")
    stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=30)  # our own connection is part of the baseline
    pid = d.pid
    base_fds = fd_count(pid)
    crt, key = d.cert("admin", "admin")
    clients = {}
    try:
        for name in ("stopped", "live"):
            clients[name] = subprocess.Popen([sys.executable, "-c", QUIET_CLIENT, d.addr, d.ca, crt, key, job.id],
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, client in clients.items():
            assert client.stdout.readline().strip() == "ready", (name, client.poll())
        connections = {name: daemon_connections_to(pid, c.pid) for name, c in clients.items()}
        assert all(len(found) == 1 for found in connections.values()), connections
        assert fd_count(pid) >= base_fds + 4  # per client: a connection, and the stream's output file

        os.kill(clients["stopped"].pid, signal.SIGSTOP)  # silent: no FIN, no RST; its kernel still ACKs
        stopped_at = time.monotonic()
        bound = (keepalive.KEEPALIVE_TIME_MS + keepalive.KEEPALIVE_TIMEOUT_MS) / 1000
        wait_until(lambda: not (connections["stopped"] & tcp_ports(pid)),
                   f"the stopped client's connection reaped within {bound:.0f} s (+30 s margin)", timeout=bound + 30)
        reaped_after = time.monotonic() - stopped_at

        # The live client was exactly as quiet, for as long: pinged, it answered, and it is still here.
        time.sleep(max(0.0, bound + 1 - reaped_after))
        assert connections["live"] <= tcp_ports(pid), "the live, quiet client was disconnected"
        assert clients["live"].poll() is None
        stop_job(stub, job.id, grace=0)
        assert clients["live"].stdout.readline().strip() == "JOB_STATE_FINISHED"
        assert clients["live"].wait(30) == 0
        # Everything the stopped client held (its connection, its stream's file) is released.
        wait_until(lambda: fd_count(pid) <= base_fds, f"daemon fds back to {base_fds} (now {fd_count(pid)})")
        print(f"stopped client reaped {reaped_after:.1f} s after SIGSTOP (bound {bound:.0f} s)")
    finally:
        for client in clients.values():
            if client.poll() is None:
                client.kill()  # SIGKILL ends a stopped process too
            client.wait()
