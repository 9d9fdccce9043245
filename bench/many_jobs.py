"""1,000 concurrent `sleep 600` jobs: sustained starts per second (8 concurrent starting clients, each on its
own mTLS connection), the daemon's RSS once all are running (and the forkserver's), then StopJob (grace 0)
for all and a check that no job cgroup is left. Baselines in the same run, spawned the same way (8 threads,
each start complete once the program runs, all left running together, then killed):

  - `unshare --pid --mount --net --fork --mount-proc --kill-child sh -c 'echo; exec sleep 600'`
    (a start counts once the echo has come through a pipe, i.e. the program runs in its namespaces);
  - the same `sh -c 'echo; exec sleep 600'` without unshare (subprocess, no isolation).

    python bench/many_jobs.py [JOBS] [STARTERS]     (as root; default 1000 8)

Targets (issue 6): daemon RSS <= 150 MB with 1,000 running, >= 100 starts/s.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    RssPoller, cgroup_dirs, cpu_seconds, daemon, header, jobs_cpu_seconds, list_all_jobs, percentile, profile_daemon, start_job,
    status_kb, verdict, wait_job,
)

PROGRAM = ["sh", "-c", "echo; exec sleep 600"]
UNSHARE = ["unshare", "--pid", "--mount", "--net", "--fork", "--mount-proc", "--kill-child"]
TARGET_STARTS = 100.0
DEADLINE_S = 300.0  # starting or stopping all of them gives up after this long


def parallel(n: int, workers: int, fn, latencies: list[float] | None = None) -> tuple[list[float], list[str]]:
    """Call fn(i, worker) for i in range(n) from `workers` threads; returns completion times and errors (and
    appends each call's duration to `latencies`)."""
    counter = itertools.count()
    lock = threading.Lock()
    done: list[float] = []
    errors: list[str] = []
    latencies = [] if latencies is None else latencies
    deadline = time.monotonic() + DEADLINE_S

    def work(worker: int) -> None:
        while time.monotonic() < deadline:
            with lock:
                i = next(counter)
            if i >= n:
                return
            try:
                t = time.monotonic()
                fn(i, worker)
                with lock:
                    done.append(time.monotonic())
                    latencies.append(done[-1] - t)
            except Exception as exc:  # noqa: BLE001 - counted and shown
                with lock:
                    errors.append(repr(exc)[:300])

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(done), errors


def rate(times: list[float], start: float) -> float:
    return len(times) / (times[-1] - start) if times else 0.0


def window_rate(times: list[float], first: int, last: int) -> float:
    part = times[first:last]
    return (len(part) - 1) / (part[-1] - part[0]) if len(part) > 1 and part[-1] > part[0] else 0.0


def spawn_baseline(n: int, workers: int, isolated: bool) -> tuple[float, list[str]]:
    """starts/s of n `sh -c 'echo; exec sleep 600'` (in unshare's namespaces or not), all left running, then killed."""
    procs: list[subprocess.Popen] = []
    lock = threading.Lock()

    def one(_i: int, _worker: int) -> None:
        proc = subprocess.Popen((UNSHARE if isolated else []) + PROGRAM, stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        with lock:
            procs.append(proc)
        line = proc.stdout.readline()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]
        if line != b"\n":
            raise RuntimeError(f"{proc.args} did not start: {line!r}")

    try:
        start = time.monotonic()
        done, errors = parallel(n, workers, one)
        return rate(done, start), errors
    finally:
        for proc in procs:  # unshare --kill-child: its child (the sleep, PID 1 of the namespace) dies with it
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in procs:
            proc.wait()


def jobs_memory_mb(subtree: str) -> float:
    """The jobs' memory as the memory cgroup counts it (all jobs together, hierarchical)."""
    for path in cgroup_dirs(subtree):
        if "/memory/" in path and path.endswith("/jobs"):
            try:
                return int(Path(path, "memory.usage_in_bytes").read_text()) / 2**20
            except OSError:
                return 0.0
    for path in cgroup_dirs(subtree):
        if path.endswith("/jobs") and Path(path, "memory.current").exists():
            return int(Path(path, "memory.current").read_text()) / 2**20
    return 0.0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    header(f"{n} concurrent sleep jobs, {workers} concurrent starting clients")
    from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

    # Baselines first (each killed before the next), so that they do not weigh on the daemon's jobs or back.
    unshare_rate, unshare_errors = spawn_baseline(n, workers, isolated=True)
    plain_rate, plain_errors = spawn_baseline(n, workers, isolated=False)

    with daemon({"limits": {"default": {"pids": 16}}}) as d:
        stubs = [d.stub() for _ in range(workers)]
        for _ in range(5):  # warm up: the forkserver starts with the first job
            wait_job(stubs[0], start_job(stubs[0], ["true"]).id)
        rss_idle = status_kb(d.pid, "VmRSS")
        ids: list[str] = [""] * n

        def start(i: int, worker: int) -> None:
            ids[i] = start_job(stubs[worker], PROGRAM).id

        def stop(job_id: str, worker: int) -> None:
            stubs[worker].StopJob(pb.StopJobRequest(job_id=job_id, grace_seconds=0), timeout=60)

        forkserver = d.forkserver_pid()
        latencies: list[float] = []
        cpu0 = (cpu_seconds(d.pid), cpu_seconds(forkserver) if forkserver else 0.0, jobs_cpu_seconds(d.subtree))
        with RssPoller(d.pid, 0.05) as poller:
            start_t = time.monotonic()
            done, errors = parallel(n, workers, start, latencies)
        starts_per_s = rate(done, start_t)
        cpu1 = (cpu_seconds(d.pid), cpu_seconds(forkserver) if forkserver else 0.0, jobs_cpu_seconds(d.subtree))
        per_start_ms = [(b - a) * 1e3 / max(len(done), 1) for a, b in zip(cpu0, cpu1)]
        started = [job_id for job_id in ids if job_id]
        time.sleep(1.0)
        running = [j for j in list_all_jobs(stubs[0]) if j.state == pb.JOB_STATE_RUNNING]
        rss_running = status_kb(d.pid, "VmRSS")
        fs_rss = status_kb(forkserver, "VmRSS") if forkserver else 0
        jobs_mb = jobs_memory_mb(d.subtree)

        stop_t = time.monotonic()
        stopped, stop_errors = parallel(len(started), workers, lambda i, w: stop(started[i], w))
        stops_per_s = rate(stopped, stop_t)
        left = d.job_cgroups()
        deadline = time.monotonic() + 30
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = d.job_cgroups()
        rss_after = status_kb(d.pid, "VmRSS")
        hwm = status_kb(d.pid, "VmHWM")

        print(f"{'':64} {'starts/s':>9} {'ratio':>7} {'started':>8}")
        base = unshare_rate
        for name, value, count in [
            (f"subprocess sh -c 'echo; exec sleep 600' ({workers} threads)", plain_rate, n - len(plain_errors)),
            (f"unshare --pid --mount --net --fork --mount-proc ... ({workers} threads)", unshare_rate,
             n - len(unshare_errors)),
            (f"StartJob through gRPC ({workers} clients)", starts_per_s, len(started)),
        ]:
            print(f"{name:64} {value:9.1f} {value / base if base else float('nan'):6.2f}x {count:8d}")
        print(f"(ratios against: unshare)  StartJob starts/s over jobs 1-100: {window_rate(done, 0, 100):.1f}, "
              f"over the last 100: {window_rate(done, len(done) - 100, len(done)):.1f}")
        print(f"StartJob latency with {workers} in flight: p50 {percentile(latencies, 50) * 1e3:.1f} ms, p90 "
              f"{percentile(latencies, 90) * 1e3:.1f} ms; CPU per start: daemon {per_start_ms[0]:.2f} ms, forkserver "
              f"{per_start_ms[1]:.2f} ms, in the job's cgroup (launcher after joining, init, exec) {per_start_ms[2]:.2f} ms"
              f" = {sum(per_start_ms):.2f} ms, i.e. {sum(per_start_ms) * starts_per_s / 1e3:.2f} cores at this rate")
        print(f"running after the starts: {len(running)} of {n} (start errors: {len(errors)}"
              + (f", e.g. {errors[0]}" if errors else "") + ")")
        print(f"daemon RSS: idle (5 jobs run) {rss_idle / 1024:.1f} MB, peak while starting {poller.peak_kb / 1024:.1f} MB, with "
              f"{len(running)} running {rss_running / 1024:.1f} MB, after stopping them {rss_after / 1024:.1f} MB "
              f"(VmHWM {hwm / 1024:.1f} MB); forkserver RSS {fs_rss / 1024:.1f} MB; the jobs' memory (cgroup) "
              f"{jobs_mb:.0f} MB ({jobs_mb * 1024 / max(len(running), 1):.0f} KB per job)")
        print(f"StopJob (grace 0): {stops_per_s:.1f} stops/s ({len(stopped)} stopped, {len(stop_errors)} errors"
              + (f", e.g. {stop_errors[0]}" if stop_errors else "") + f"); job cgroups left after stopping: {len(left)}")
        if unshare_errors or plain_errors:
            print(f"baseline errors: {(unshare_errors + plain_errors)[:2]}")
        line = verdict(f"daemon RSS with {len(running)} jobs running", rss_running / 1024, 150, "MB", False)
        line += verdict("sustained starts/s", starts_per_s, TARGET_STARTS, "starts/s", True)
        if left:
            print(f"FAILED: {len(left)} job cgroups were left after StopJob (removed when the daemon stopped)")

        if "MISSED" in line or os.environ.get("BENCH_PROFILE") == "1":
            batch = min(n, 300)
            extra = [""] * batch

            def start_extra(i: int, worker: int) -> None:
                extra[i] = start_job(stubs[worker], PROGRAM).id

            with profile_daemon(d.pid, f"the daemon during {batch} more (unmeasured) starts"):
                parallel(batch, workers, start_extra)
            parallel(batch, workers, lambda i, w: stop(extra[i], w) if extra[i] else None)


if __name__ == "__main__":
    main()
