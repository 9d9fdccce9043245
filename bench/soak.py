"""Soak: many concurrent clients mixing every RPC against one daemon for a while; then the daemon must be
back where it started.

    python bench/soak.py [--clients 200] [--seconds 60] [--users 8] [--json]
    python bench/soak.py --addr HOST:PORT --ca CA --cert CRT --key KEY [--pid DAEMON_PID] ...

By default it starts its own daemon (a throwaway one, as the integration tests do: own CA, config, state
and run directories, cgroup subtree) and gives each client its own connection and one of `--users`
user identities. With --addr it uses a running daemon and one identity for all clients; the daemon's
RSS and fds are read only when --pid is given (and the daemon is local).

Each client loops until the time is up, choosing at random: start a short job (`true`, `seq`, a job that
writes for a moment), follow a job's output to its end (checked byte for byte), get a job's status,
list its jobs, wait for a job, or start a long job and stop it. At the end every client waits for its
jobs to end and closes its connection; then the daemon's RSS and open fds are read again (fds polled
until they are back at the baseline, for at most --settle seconds).

Prints: RPCs and errors (every error is one: the answer must be 0), p50/p99/max latency per RPC kind,
the daemon's RSS and open fds before and after. Exit status 1 if there were errors, jobs left running,
cgroups left behind, or fds not back at the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests" / "integration"))  # the daemon harness the tests use

import grpc  # noqa: E402

from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb  # noqa: E402
from jobworkerd.gen.jobworker.v1 import jobworker_pb2_grpc as pb_grpc  # noqa: E402
from daemon_harness import fd_count, rss_bytes  # noqa: E402

RPC_TIMEOUT = 120.0
SEQ_LINES = 300
EXPECTED_SEQ = "".join(f"{i}\n" for i in range(1, SEQ_LINES + 1)).encode()
WRITER = "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick $i; sleep 0.02; done"
EXPECTED_WRITER = "".join(f"tick {i}\n" for i in range(1, 11)).encode()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.errors: collections.Counter[str] = collections.Counter()
        self.examples: list[str] = []

    async def timed(self, kind: str, awaitable):
        start = time.perf_counter()
        try:
            result = await awaitable
        except grpc.RpcError as exc:
            self.error(kind, f"{exc.code().name}: {exc.details()}")
            return None
        self.latency[kind].append(time.perf_counter() - start)
        return result

    def error(self, kind: str, text: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {text}")


class Client:
    def __init__(self, index: int, channel: grpc.aio.Channel, stats: Stats, deadline: float):
        self.rng = random.Random(index)
        self.channel = channel
        self.stub = pb_grpc.JobWorkerStub(channel)
        self.stats = stats
        self.deadline = deadline
        self.jobs: dict[str, bytes | None] = {}  # id -> expected output (None: not checked)

    async def start(self, kind: str) -> str | None:
        if kind == "true":
            command, expected = pb.Command(command="true"), b""
        elif kind == "seq":
            command, expected = pb.Command(command="seq", arguments=["1", str(SEQ_LINES)]), EXPECTED_SEQ
        elif kind == "writer":
            command, expected = pb.Command(command="sh", arguments=["-c", WRITER]), EXPECTED_WRITER
        else:
            command, expected = pb.Command(command="sleep", arguments=["300"]), None
        job = await self.stats.timed("StartJob", self.stub.StartJob(
            pb.StartJobRequest(name=f"soak-{kind}", command=command), timeout=RPC_TIMEOUT))
        if job is None:
            return None
        self.jobs[job.id] = expected
        return job.id

    def pick(self) -> str | None:
        return self.rng.choice(list(self.jobs)) if self.jobs else None

    async def follow(self) -> None:
        job_id = await self.start(self.rng.choice(["seq", "writer"]))
        if job_id is None:
            return
        start = time.perf_counter()
        data = bytearray()
        try:
            async for chunk in self.stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id), timeout=RPC_TIMEOUT):
                if chunk.offset != len(data):
                    self.stats.error("StreamOutput", f"job {job_id}: chunk at {chunk.offset}, expected {len(data)}")
                    return
                data += chunk.data
        except grpc.RpcError as exc:
            self.stats.error("StreamOutput", f"{exc.code().name}: {exc.details()}")
            return
        self.stats.latency["StreamOutput (to the end)"].append(time.perf_counter() - start)
        if bytes(data) != self.jobs[job_id]:
            self.stats.error("StreamOutput", f"job {job_id}: output differs ({len(data)} bytes)")

    async def status(self) -> None:
        job_id = self.pick()
        if job_id is None:
            return
        job = await self.stats.timed("GetJob", self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=RPC_TIMEOUT))
        if job is not None and job.state == pb.JOB_STATE_FINISHED and self.jobs[job_id] is not None \
                and (job.reason, job.exit_code) != (pb.TERMINATION_REASON_EXITED, 0):
            self.stats.error("GetJob", f"job {job_id} ended {pb.TerminationReason.Name(job.reason)} {job.exit_code}")

    async def list(self) -> None:
        await self.stats.timed("ListJobs", self.stub.ListJobs(pb.ListJobsRequest(), timeout=RPC_TIMEOUT))

    async def wait(self) -> None:
        job_id = await self.start(self.rng.choice(["true", "seq"]))
        if job_id is not None:
            job = await self.stats.timed("WaitJob", self.stub.WaitJob(pb.WaitJobRequest(job_id=job_id),
                                                                      timeout=RPC_TIMEOUT))
            if job is not None and (job.reason, job.exit_code) != (pb.TERMINATION_REASON_EXITED, 0):
                self.stats.error("WaitJob", f"job {job_id} ended {pb.TerminationReason.Name(job.reason)}")

    async def stop(self) -> None:
        job_id = await self.start("sleep")
        if job_id is None:
            return
        job = await self.stats.timed("StopJob", self.stub.StopJob(
            pb.StopJobRequest(job_id=job_id, grace_seconds=2), timeout=RPC_TIMEOUT))
        if job is not None and job.reason != pb.TERMINATION_REASON_STOPPED:
            self.stats.error("StopJob", f"job {job_id} ended {pb.TerminationReason.Name(job.reason)}")

    async def run(self, mix: dict[str, int]) -> None:
        actions = {"follow": self.follow, "status": self.status, "list": self.list, "wait": self.wait,
                   "stop": self.stop, "start": lambda: self.start("true")}
        names = [name for name in actions if mix.get(name, 0) > 0]
        weights = [mix[name] for name in names]
        while time.monotonic() < self.deadline:
            await actions[self.rng.choices(names, weights)[0]]()
        # The end: every job of this client must end (all of them are short; the sleepers were stopped).
        for job_id in list(self.jobs):
            job = await self.stats.timed("WaitJob", self.stub.WaitJob(pb.WaitJobRequest(job_id=job_id),
                                                                      timeout=RPC_TIMEOUT))
            if job is not None and job.state != pb.JOB_STATE_FINISHED:
                self.stats.error("WaitJob", f"job {job_id} still {pb.JobState.Name(job.state)}")


def credentials(ca: str, cert: str, key: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(Path(ca).read_bytes(), Path(key).read_bytes(), Path(cert).read_bytes())


DEFAULT_MIX = "follow=20,status=25,list=10,wait=20,stop=10,start=15"


def parse_mix(text: str) -> dict[str, int]:
    mix = {}
    for item in text.split(","):
        name, _, weight = item.partition("=")
        if name not in DEFAULT_MIX or not weight.isdigit():
            raise ValueError(f"--mix: {item!r} is not NAME=WEIGHT with NAME one of follow status list wait stop start")
        mix[name] = int(weight)
    return mix


async def soak(addr: str, identities: list[tuple[str, str, str]], clients: int, seconds: float,
               mix: dict[str, int]) -> tuple[Stats, int]:
    stats = Stats()
    deadline = time.monotonic() + seconds
    channels = []
    workers = []
    for index in range(clients):
        ca, cert, key = identities[index % len(identities)]
        # A connection of its own per client (no subchannel sharing between channels).
        channel = grpc.aio.secure_channel(addr, credentials(ca, cert, key), options=[
            ("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)])
        channels.append(channel)
        workers.append(Client(index, channel, stats, deadline))
    await asyncio.gather(*(w.run(mix) for w in workers))
    for channel in channels:
        await channel.close()
    return stats, sum(len(w.jobs) for w in workers)


def report(stats: Stats, jobs: int, clients: int, seconds: float, daemon: dict) -> dict:
    rpcs = sum(len(v) for v in stats.latency.values()) + sum(stats.errors.values())
    print(f"soak: {clients} clients for {seconds:g} s: {rpcs} RPCs, {jobs} jobs started, "
          f"errors {sum(stats.errors.values())}")
    print(f"{'RPC':28} {'n':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    table = {}
    for kind in sorted(stats.latency):
        values = stats.latency[kind]
        row = {"n": len(values), "p50_ms": percentile(values, 50) * 1e3, "p99_ms": percentile(values, 99) * 1e3,
               "max_ms": max(values) * 1e3, "errors": stats.errors.get(kind, 0)}
        table[kind] = row
        print(f"{kind:28} {row['n']:7d} {row['p50_ms']:9.1f} {row['p99_ms']:9.1f} {row['max_ms']:9.1f}")
    for kind, count in sorted(stats.errors.items()):
        print(f"errors in {kind}: {count}")
    for example in stats.examples:
        print(f"  {example}")
    if daemon.get("rss_before") is not None:
        print(f"daemon RSS: {daemon['rss_before'] / 1e6:.1f} MB before, {daemon['rss_after'] / 1e6:.1f} MB after "
              f"(peak during the run {daemon['rss_peak'] / 1e6:.1f} MB)")
        print(f"daemon open fds: {daemon['fds_before']} before, {daemon['fds_after']} after "
              f"(peak during the run {daemon['fds_peak']})")
    if "job_cgroups_left" in daemon:
        print(f"job cgroups left after the run: {len(daemon['job_cgroups_left'])}")
    return {"clients": clients, "seconds": seconds, "rpcs": rpcs, "jobs": jobs,
            "errors": sum(stats.errors.values()), "error_examples": stats.examples, "latency": table, **daemon}


class Sampler:
    """Peak RSS and fds of the daemon during the run (sampled by a thread: the event loop is busy)."""

    def __init__(self, pid: int | None):
        import threading

        self.pid, self.rss_peak, self.fds_peak = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.rss_peak = max(self.rss_peak, rss_bytes(self.pid))
                self.fds_peak = max(self.fds_peak, fd_count(self.pid))
            except OSError:
                return

    def __enter__(self) -> "Sampler":
        if self.pid:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def measure(pid: int | None, settle: float, baseline: int | None = None) -> tuple[int | None, int | None]:
    """(fds, RSS) of the daemon; with a baseline, polls until the fds are back at it (or settle runs out)."""
    if not pid:
        return None, None
    deadline = time.monotonic() + settle
    while baseline is not None and fd_count(pid) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    return fd_count(pid), rss_bytes(pid)


def warm_up(addr: str, identity: tuple[str, str, str]) -> None:
    """One job end to end before the baseline, so that the forkserver, thread pools and store exist."""
    with grpc.secure_channel(addr, credentials(*identity)) as channel:
        stub = pb_grpc.JobWorkerStub(channel)
        for _ in range(3):
            job = stub.StartJob(pb.StartJobRequest(command=pb.Command(command="echo", arguments=["warm"])),
                                timeout=RPC_TIMEOUT)
            stub.WaitJob(pb.WaitJobRequest(job_id=job.id), timeout=RPC_TIMEOUT)
            list(stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id), timeout=RPC_TIMEOUT))


def run(args: argparse.Namespace) -> dict:
    own = None
    workdir = None
    if args.addr:
        addr, pid = args.addr, args.pid
        identities = [(args.ca, args.cert, args.key)]
    else:
        sys.path.insert(0, str(REPO / "tests" / "integration"))
        from daemon_harness import Daemon, unmount_output_tmpfs  # the tests' launcher: own CA, config, dirs, cgroups

        workdir = Path(tempfile.mkdtemp(prefix="jobworkerd-soak-"))
        # A load test of the daemon itself: quotas would turn the load into refusals (see test_governance.py).
        quotas = {"user": {"starts_per_second": None, "running_jobs": None}, "admin": {"starts_per_second": None, "running_jobs": None}}
        own = Daemon(workdir / "daemon", {"stop_grace": "2s", "quotas": quotas}).start()
        addr, pid = own.addr, own.proc.pid
        identities = [(own.ca, *own.cert(f"soak{i}", "user")) for i in range(args.users)]
    try:
        warm_up(addr, identities[0])
        fds_before, rss_before = measure(pid, 0)
        with Sampler(pid) as sampler:
            stats, jobs = asyncio.run(soak(addr, identities, args.clients, args.seconds, parse_mix(args.mix)))
        fds_after, rss_after = measure(pid, args.settle, fds_before)
        daemon: dict = {}
        if pid:
            daemon = {"rss_before": rss_before, "rss_after": rss_after, "rss_peak": max(sampler.rss_peak, rss_after),
                      "fds_before": fds_before, "fds_after": fds_after, "fds_peak": max(sampler.fds_peak, fds_after),
                      "fds_back_to_baseline": fds_after <= fds_before}
        if own is not None:
            daemon["job_cgroups_left"] = [d for d in own.cgroup_dirs() if len(os.path.basename(d)) == 12
                                          and os.path.basename(os.path.dirname(d)) == "jobs"]
            alive = own.proc.poll() is None
            daemon["daemon_alive"] = alive
        summary = report(stats, jobs, args.clients, args.seconds, daemon)
    finally:
        if own is not None:
            code = own.stop()
            unmount_output_tmpfs(workdir)
            left = own.cgroup_dirs()
            if code != 0 or left:
                print(f"daemon stop: exit {code}, cgroups left {left}; log: {own.log}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    summary["ok"] = (summary["errors"] == 0 and summary.get("fds_back_to_baseline", True)
                     and not summary.get("job_cgroups_left") and summary.get("daemon_alive", True))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--users", type=int, default=8, help="user identities shared by the clients (own daemon)")
    parser.add_argument("--mix", default=DEFAULT_MIX, help=f"weights of the actions (default {DEFAULT_MIX})")
    parser.add_argument("--settle", type=float, default=30.0, help="how long fds may take to return to baseline")
    parser.add_argument("--addr")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--pid", type=int, help="the daemon's PID, to read its RSS and fds (--addr only)")
    parser.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    args = parser.parse_args()
    if args.addr and not (args.ca and args.cert and args.key):
        parser.error("--addr needs --ca, --cert and --key")
    if not args.addr and os.geteuid() != 0:
        parser.error("starting a daemon needs root (cgroups, namespaces)")
    summary = run(args)
    if args.json:
        print("SOAK-JSON " + json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
