"""Faults against the real daemon (issue 5): a daemon SIGKILL during a stream, a full run directory, the
output cap, OOM, a fork bomb, a job that closes its stdout, a job that double-forks a daemon, a client
that opens 500 streams and vanishes, and (issue 12) a start whose RUNNING record cannot be stored.

Leftover processes are looked for two ways: by a unique marker that every process of the job carries in
its command line (scanned in /proc; the scan is shown to find them while the job runs), and by the
identities (PID + start time) of the processes that were in the job's cgroup.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import grpc
import pytest

from daemon_harness import fd_count, rss_bytes
from faultkit import (
    CGROUP_ROOT,
    fill,
    forkserver_of,
    alive,
    free_port,
    job_cgroup_pids,
    job_cgroups,
    marked_processes,
    marked_nap,
    marked_sleep,
    new_marker,
    output_file,
    own_cgroups,
    read_all,
    rpc_error,
    sh,
    small_tmpfs,
    start,
    stop_job,
    v1_usable,
    wait_job,
    wait_until,
)
from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.root

FINISHED = pb.JOB_STATE_FINISHED
R = pb.TerminationReason


def assert_no_leftovers(daemon, job_id: str, marker: str, identities: list[tuple[int, int]]) -> None:
    wait_until(lambda: not marked_processes(marker), f"no process with marker {marker} left")
    assert not alive(identities), f"processes of job {job_id} survived: {alive(identities)}"
    assert not job_cgroups(daemon, job_id), f"job {job_id} left cgroups: {job_cgroups(daemon, job_id)}"


# -- (a) daemon SIGKILL during a stream ------------------------------------------------------------------------


def test_daemon_sigkill_during_stream_client_resumes_from_offset(daemon_factory):
    port = free_port()  # a fixed port, so the client's channel reconnects to the restarted daemon by itself
    d = daemon_factory({"listen": f"127.0.0.1:{port}"}).start()
    stub = d.stub()
    marker = new_marker()
    job = sh(stub, f"echo marker-{marker}; i=0; while :; do echo \"line $i {marker}\"; i=$((i+1)); "
                   f"{marked_nap(marker)}; done")
    wait_until(lambda: marked_processes(marker), "the job's processes to carry the marker")
    identities = job_cgroup_pids(d, job.id)
    assert identities

    received = bytearray()
    got_some = threading.Event()
    failure: list[grpc.RpcError] = []

    def follow() -> None:
        try:
            for chunk in stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id), timeout=120):
                assert chunk.offset == len(received)
                received.extend(chunk.data)
                if len(received) >= 500:
                    got_some.set()
        except grpc.RpcError as exc:
            failure.append(exc)
        finally:
            got_some.set()

    follower = threading.Thread(target=follow)
    follower.start()
    assert got_some.wait(60) and not failure, failure
    old_pid = d.proc.pid
    d.kill()
    follower.join(60)
    assert not follower.is_alive(), "the stream did not end when the daemon died"
    assert failure and failure[0].code() == grpc.StatusCode.UNAVAILABLE, failure
    assert failure[0].details()
    # The job outlives the daemon (it writes to its file directly) until the next start reconciles it.
    assert marked_processes(marker)

    d.start()
    assert d.proc.pid != old_pid
    # Resume on the same channel from the last offset we hold; wait_for_ready rides out the reconnect.
    resumed = read_all(stub, job.id, offset=len(received), wait_for_ready=True)
    final = bytes(received) + resumed
    assert final == output_file(d, job.id).read_bytes()
    assert final.startswith(f"marker-{marker}\nline 0 {marker}\n".encode())

    record = stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=30)
    assert record.state == FINISHED
    assert record.reason in (R.TERMINATION_REASON_LOST, R.TERMINATION_REASON_EXITED), record
    if record.reason == R.TERMINATION_REASON_LOST:
        assert "daemon" in record.message
    assert record.usage.output_bytes == len(final)
    assert_no_leftovers(d, job.id, marker, identities)
    assert d.stop() == 0
    assert not d.cgroup_dirs(), d.cgroup_dirs()


# -- (b) run directory full: see test_containment.py (the output budget) ------------------------------------------


# -- (c) output cap ----------------------------------------------------------------------------------------------

CAP = 64 << 10


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    from daemon_harness import Daemon

    d = Daemon(tmp_path_factory.mktemp("capped"), {"limits": {"output_cap": "64K"}}).start()
    yield d
    d.stop()


@pytest.mark.parametrize("script", [
    "yes marker-MARK",                       # writes forever: killed at the cap
    "head -c 1M /dev/zero; echo MARK",       # writes fast and would exit by itself
], ids=["endless", "burst-then-exit"])
def test_output_cap(capped, script):
    stub = capped.stub()
    marker = new_marker()
    job = sh(stub, script.replace("MARK", marker))
    streamed = read_all(stub, job.id)
    ended = wait_job(stub, job.id)
    assert ended.state == FINISHED
    assert ended.reason == R.TERMINATION_REASON_OUTPUT_CAPPED, ended
    assert f"cap of {CAP} bytes" in ended.message, ended.message
    assert len(streamed) == CAP
    assert output_file(capped, job.id).read_bytes() == streamed
    assert ended.usage.output_bytes == CAP
    assert not marked_processes(marker)
    assert not job_cgroups(capped, job.id)


def test_output_exactly_at_the_cap_is_not_capped(capped):
    stub = capped.stub()
    job = start(stub, "head", "-c", str(CAP), "/dev/zero")
    ended = wait_job(stub, job.id)
    assert (ended.reason, ended.exit_code) == (R.TERMINATION_REASON_EXITED, 0), ended
    assert read_all(stub, job.id) == b"\0" * CAP


# -- (d) OOM -------------------------------------------------------------------------------------------------------


def test_oom_is_reported_as_oom_killed(daemon):
    stub = daemon.stub()
    marker = new_marker()
    job = start(stub, "python3", "-c", "import sys; sys.stdout.write('allocating\\n'); sys.stdout.flush(); "
                "b = b'x' * (200 << 20); print('survived')", marker,
                limits=pb.Limits(memory_bytes=64 << 20))
    ended = wait_job(stub, job.id)
    assert ended.reason == R.TERMINATION_REASON_OOM_KILLED, ended
    assert "OOM" in ended.message and str(64 << 20) in ended.message, ended.message
    assert ended.usage.oom_kills >= 1
    assert ended.usage.memory_peak_bytes <= 64 << 20
    assert read_all(stub, job.id) == b"allocating\n"
    assert not marked_processes(marker)
    assert not job_cgroups(daemon, job.id)


# -- (e) fork bomb ---------------------------------------------------------------------------------------------------


FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


def test_fork_bomb_is_contained_by_pids_and_stopped_cleanly(daemon):
    stub = daemon.stub()
    marker = new_marker()
    # Every process of the bomb forks for ever and is a fork of the first, so every one carries the marker
    # in its command line. (A shell bomb fizzles out here: dash exits when a fork fails.)
    job = start(stub, "python3", "-c", FORK_BOMB, f"bomb-{marker}", limits=pb.Limits(pids=50, cpu=1.0))
    pids_dir = next(p for p in job_cgroups(daemon, job.id) if "/pids/" in p)
    # The bomb runs into its wall: the kernel refused forks at the limit.
    wait_until(lambda: int(Path(pids_dir, "pids.events").read_text().split()[1]) > 0, "pids.events max > 0")
    assert int(Path(pids_dir, "pids.current").read_text()) <= 50
    wait_until(lambda: 40 <= len(marked_processes(marker)) <= 50, "the bomb at its limit")
    # The daemon carries on meanwhile: it answers and starts other jobs.
    assert stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=30).state == pb.JOB_STATE_RUNNING
    other = start(stub, "echo", "fine")
    assert wait_job(stub, other.id).exit_code == 0
    identities = job_cgroup_pids(daemon, job.id)

    stopped = stop_job(stub, job.id, grace=1)
    assert (stopped.state, stopped.reason) == (FINISHED, R.TERMINATION_REASON_STOPPED), stopped
    assert_no_leftovers(daemon, job.id, marker, identities)


# -- (f) a job that closes its stdout ----------------------------------------------------------------------------


def test_job_that_closes_its_stdout_keeps_running_and_exits_0(daemon, tmp_path):
    stub = daemon.stub()
    marker = new_marker()
    go = tmp_path / "go"  # in the job's directory: the one host directory it sees written (its /tmp is its own)
    tmp_path.chmod(0o755)
    job = sh(stub, f"echo before-{marker}; exec >&- 2>&-; "
                   f"while [ ! -e {go} ]; do {marked_nap(marker)}; done; exit 0", directory=str(tmp_path))
    result: list[bytes] = []
    follower = threading.Thread(target=lambda: result.append(read_all(stub, job.id)))
    follower.start()
    wait_until(lambda: read_all(stub, job.id, follow=False), "the first line")
    wait_until(lambda: marked_processes(marker), "the job, stdout closed, still running")
    assert stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=30).state == pb.JOB_STATE_RUNNING
    assert follower.is_alive(), "the follower must wait for the job's end, not for its stdout's"
    go.touch()
    ended = wait_job(stub, job.id)
    assert (ended.reason, ended.exit_code) == (R.TERMINATION_REASON_EXITED, 0), ended
    follower.join(60)
    assert result == [f"before-{marker}\n".encode()]


# -- (g) a job that double-forks a daemon ----------------------------------------------------------------------------

DAEMONIZE = "setsid sh -c 'trap \"\" TERM; {sleep} & exit 0' "  # the grandchild ignores SIGTERM, in its own session


def test_stop_ends_a_double_forked_daemon(daemon):
    stub = daemon.stub()
    marker = new_marker()
    job = sh(stub, f"echo {marker}; {DAEMONIZE.format(sleep=marked_sleep(marker))}; {marked_sleep(marker)}")
    wait_until(lambda: len(marked_processes(marker)) >= 3, "the job, its daemon and its sleep")
    identities = job_cgroup_pids(daemon, job.id)
    stopped = stop_job(stub, job.id, grace=1)
    assert (stopped.state, stopped.reason) == (FINISHED, R.TERMINATION_REASON_STOPPED), stopped
    assert_no_leftovers(daemon, job.id, marker, identities)


def test_double_forked_daemon_dies_when_the_program_exits(daemon):
    stub = daemon.stub()
    marker = new_marker()
    job = sh(stub, f"{DAEMONIZE.format(sleep=marked_sleep(marker))}; "
                   f"while ! pgrep -f '^sleep 1000.{marker}' >/dev/null; do sleep 0.01; done; exit 0")
    ended = wait_job(stub, job.id)
    assert (ended.reason, ended.exit_code) == (R.TERMINATION_REASON_EXITED, 0), ended
    assert_no_leftovers(daemon, job.id, marker, [])


# -- a stop racing the job's own end ------------------------------------------------------------------------------


def test_stop_racing_the_jobs_own_end_is_never_an_internal_error(daemon):
    stub = daemon.stub()
    reasons = set()
    for _ in range(30):
        job = start(stub, "true")
        stopped = stop_job(stub, job.id, grace=0)  # the job is ending (or has ended) as the stop arrives
        assert stopped.state == FINISHED
        assert stopped.reason in (R.TERMINATION_REASON_STOPPED, R.TERMINATION_REASON_EXITED), stopped
        reasons.add(stopped.reason)
        assert not job_cgroups(daemon, job.id)
    assert reasons


# -- (h) a client opens 500 streams and vanishes ------------------------------------------------------------------

VANISHING_CLIENT = textwrap.dedent("""
    import sys, time, grpc
    from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb, jobworker_pb2_grpc as pb_grpc
    addr, ca, crt, key, job_id, channels, per_channel = sys.argv[1:8]
    creds = grpc.ssl_channel_credentials(open(ca, 'rb').read(), open(key, 'rb').read(), open(crt, 'rb').read())
    calls = []
    for i in range(int(channels)):
        # A channel of its own (own connection) for each group of streams.
        channel = grpc.secure_channel(addr, creds, options=[('grpc.use_local_subchannel_pool', 1)])
        stub = pb_grpc.JobWorkerStub(channel)
        for _ in range(int(per_channel)):
            call = stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id))
            calls.append(call)
    for call in calls:
        next(call)  # every stream is open on the server and has sent its first chunk
    print(len(calls), flush=True)
    sys.stdin.readline()  # the streams stay open until the test has counted them
    if sys.argv[8] == "nice":  # the polite way out: cancel every call, close every channel
        for call in calls:
            call.cancel()
        sys.exit(0)
    time.sleep(3600)
""")


def fds_on(pid: int, path: str) -> int:
    """How many of a process's descriptors are open on `path`."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == path
        except OSError:
            pass  # closed meanwhile
    return count


def vanish_with_500_streams(d, job_id: str, pid: int, base_fds: int, how: str = "vanish") -> int:
    """Runs the 500-stream client once; returns the daemon's fd count while its streams were open."""
    crt, key = d.cert("admin", "admin")
    client = subprocess.Popen([sys.executable, "-c", VANISHING_CLIENT, d.addr, d.ca, crt, key, job_id, "10", "50",
                               how], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = client.stdout.readline()
        assert line.strip() == b"500", (line, client.stderr.read() if client.poll() is not None else "")
        # Each open stream holds the output file open in the daemon: proof that the streams are served and
        # that the fd count measures them (counted by what they point at: other fds of the daemon come and go).
        streams = fds_on(pid, str(output_file(d, job_id)))
        open_fds = fd_count(pid)
        assert streams >= 500 and open_fds >= base_fds + 500, (base_fds, open_fds, streams)
    finally:
        if how == "nice":
            client.communicate(b"go\n", timeout=60)  # it cancels every call and closes every channel
        else:
            client.send_signal(signal.SIGKILL)  # vanishes: no cancellation, no GOAWAY, just closed sockets
            client.wait()
    wait_until(lambda: fd_count(pid) <= base_fds, f"daemon fds back to {base_fds} (now {fd_count(pid)})", timeout=60)
    return open_fds


def test_client_with_500_streams_vanishes_and_daemon_returns_to_baseline(daemon_factory):
    # Not the streams quota (512 for an admin, test_governance.py): 500 at once, twice, while the previous
    # round's streams may still be ending.
    d = daemon_factory({"quotas": {"admin": {"streams": None}}}).start()
    stub = d.stub()
    marker = new_marker()
    job = sh(stub, f"echo {marker}; {marked_sleep(marker)}")
    # Warm up (first TLS connection, thread pools, the job's watch, and the allocator's first 500 streams,
    # closed politely) before taking the baseline.
    for _ in range(3):
        assert read_all(stub, job.id, follow=False) == f"{marker}\n".encode()
    pid = d.proc.pid
    vanish_with_500_streams(d, job.id, pid, fd_count(pid), how="nice")
    base_fds, base_rss = fd_count(pid), rss_bytes(pid)

    # Twice: memory that a vanished client leaves behind would add up.
    open_fds = vanish_with_500_streams(d, job.id, pid, base_fds)
    assert fd_count(pid) == base_fds
    rss_first = rss_bytes(pid)
    vanish_with_500_streams(d, job.id, pid, base_fds)
    assert fd_count(pid) == base_fds
    rss_second = rss_bytes(pid)
    assert max(rss_first, rss_second) <= base_rss + (20 << 20), (base_rss, rss_first, rss_second)

    # Still serving, and the job is untouched.
    assert stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=30).state == pb.JOB_STATE_RUNNING
    assert read_all(stub, job.id, follow=False) == f"{marker}\n".encode()
    print(f"500-stream client (twice): daemon fds {base_fds} -> {open_fds} -> {fd_count(pid)}, "
          f"RSS {base_rss / 1e6:.1f} MB -> {rss_first / 1e6:.1f} MB -> {rss_second / 1e6:.1f} MB")
    stop_job(stub, job.id, grace=0)
    assert not marked_processes(marker)


# -- (h) a stopped forkserver ------------------------------------------------------------------------------------


def test_a_stopped_forkserver_is_replaced(daemon_factory):
    d = daemon_factory().start()
    stub = d.stub()
    assert wait_job(stub, start(stub, "true").id).exit_code == 0
    stopped = forkserver_of(d)
    os.kill(stopped, signal.SIGSTOP)
    try:
        # Well within the 30 s a start would otherwise wait for a launcher that never comes.
        job = stub.StartJob(pb.StartJobRequest(command=pb.Command(command="echo", arguments=["after"])), timeout=10)
        assert wait_job(stub, job.id).exit_code == 0
        assert read_all(stub, job.id) == b"after\n"
        assert forkserver_of(d) != stopped
    finally:
        if Path(f"/proc/{stopped}").exists():
            os.kill(stopped, signal.SIGCONT)


# -- (i) a start whose RUNNING record cannot be stored (issue 12, item 7) ------------------------------------


@pytest.mark.skipif(not v1_usable(), reason="freezes a job group through the cgroup v1 freezer")
def test_a_start_whose_running_record_cannot_be_stored_hands_back_a_supervised_job_or_leaves_nothing(
        daemon_factory, tmp_path):
    """The state disk fills between the job's STARTING record (stored) and its RUNNING one, for real: the
    admins' job group is frozen (v1 freezer) before the start, so the job's launcher stops as it joins its
    new cgroup, after the STARTING record; the test sees that cgroup, fills the state tmpfs, and thaws.
    Then either StartJob fails and nothing of the job is left, or it hands back the job and the daemon
    supervises it: its end is recorded once the store works again, wait returns, the output is there, and
    a retry with the same idempotency key (as jobctl sends) returns the same job, never a second one."""
    with small_tmpfs(tmp_path / "state-fs", mode="0700") as state_fs:
        d = daemon_factory({"state_dir": str(state_fs / "state")}).start()
        stub = d.stub()
        holder_marker, marker = new_marker(), new_marker()
        holder = sh(stub, marked_sleep(holder_marker))  # keeps jobs/admin in place, to be frozen beforehand
        group = CGROUP_ROOT / "freezer" / own_cgroups()["freezer"].lstrip("/") / d.subtree / "jobs" / "admin"
        assert (group / holder.id).is_dir()
        go = tmp_path / "go"
        request = pb.StartJobRequest(
            command=pb.Command(command="sh", directory=str(tmp_path), arguments=[  # its directory: it sees `go`
                "-c", f"echo started-{marker}; while [ ! -e {go} ]; do {marked_nap(marker)}; done; echo done; exit 7"]),
            idempotency_key=f"retry-safe-{marker}")
        filler = None
        (group / "freezer.state").write_text("FROZEN")
        try:
            reply = stub.StartJob.future(request, timeout=60)
            job_dir = wait_until(lambda: [p for p in group.iterdir() if p.is_dir() and p.name != holder.id],
                                 "the job's cgroup (made after its STARTING record)")[0]
            job_id = job_dir.name
            assert not reply.done()  # its launcher waits, frozen, in the job's cgroup
            filler = fill(state_fs)
        finally:
            (group / "freezer.state").write_text("THAWED")
        try:
            job = reply.result()
        except grpc.RpcError as exc:
            # Told it failed: then nothing of the job may be running, and nothing of it left.
            assert exc.code() != grpc.StatusCode.OK
            wait_until(lambda: not marked_processes(marker), f"no process of job {job_id} after a failed start")
            assert not job_cgroups(d, job_id), job_cgroups(d, job_id)
            filler.unlink()
            assert [j.id for j in stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs
                    if j.state != FINISHED] == [holder.id]
            stop_job(stub, holder.id, grace=0)
            d.stop()
            return
        # Handed back: the job is the one whose cgroup we saw, it runs, and the daemon knows it.
        assert (job.id, job.state) == (job_id, pb.JOB_STATE_RUNNING), job
        log = d.log.read_text()
        assert f"job {job.id}: its running state could not be stored" in log, log[-3000:]  # the fault was real
        wait_until(lambda: marked_processes(marker), "the job's processes")
        assert stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=30).state == pb.JOB_STATE_RUNNING
        assert read_all(stub, job.id, follow=False) == f"started-{marker}\n".encode()
        # The client's retry (it may have lost the reply) gets the same job: nothing runs twice.
        again = stub.StartJob(request, timeout=30)
        assert again.id == job.id
        assert sorted(j.id for j in stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs) == sorted([holder.id, job.id])
        # It ends while the disk is still full: the end is seen and answered from memory.
        go.touch()
        ended = wait_job(stub, job.id)
        assert (ended.state, ended.reason, ended.exit_code) == (FINISHED, R.TERMINATION_REASON_EXITED, 7), ended
        assert read_all(stub, job.id) == f"started-{marker}\ndone\n".encode()
        assert not marked_processes(marker) and not job_cgroups(d, job.id)
        # Room again: the end (and the key) reach the store, and survive a restart.
        filler.unlink()
        wait_until(lambda: f"job {job.id}: its finished state is stored now" in d.log.read_text(),
                   "the job's end to be stored on a retry")
        stop_job(stub, holder.id, grace=0)
        assert d.stop() == 0
        stub = d.start().stub()
        stored = stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=30)
        assert (stored.state, stored.reason, stored.exit_code) == (FINISHED, R.TERMINATION_REASON_EXITED, 7), stored
        assert stub.StartJob(request, timeout=30).id == job.id
        assert read_all(stub, job.id) == f"started-{marker}\ndone\n".encode()
        assert d.stop() == 0
        assert not d.cgroup_dirs(), d.cgroup_dirs()
