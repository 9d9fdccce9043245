"""Followers of a job writing 1,000 lines/s: write-to-client latency (the client's receive time minus the
time.time_ns() stamp that the job wrote in the line) and the daemon's CPU (utime+stime from /proc/PID/stat
over the writing window, as cores), beside baselines in the same run:

  - the same with 1 follower (and the daemon's CPU then);
  - a local `tail -f`-like reader of the output file (one inotify watch, a read on every IN_MODIFY), run
    alongside the 1-follower run: the floor of any follower.

The job (python3, in its namespaces; CLOCK_REALTIME is shared with the host) waits until every follower
is streaming, writes warm-up lines for 0.3 s, then one stamped line every 1/RATE s (absolute schedule,
flushed per line) for DURATION seconds. Followers: gRPC StreamOutput from byte 0, each on its own mTLS
connection, spread over several client processes (grpc.aio).

    python bench/follow_latency.py [FOLLOWERS] [DURATION_S] [RATE] [CLIENT_PROCS]   (default 100 10 1000 4)

Targets (issue 6): 100 followers p99 <= 10 ms at <= 0.4 core.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    cpu_seconds, daemon, header, percentile, profile_daemon, run_clients, start_job, status_kb, verdict, wait_job,
)

WRITER = """
import os, sys, time
go_file, rate, duration, warmup = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), 0.3
end = time.monotonic() + 120
while not os.path.exists(go_file) and time.monotonic() < end:
    time.sleep(0.01)
start = time.monotonic()
n_warm, n = int(rate * warmup), int(rate * duration)
for i in range(n_warm + n):
    delay = start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    os.write(1, b"%s%d\\n" % (b"w" if i < n_warm else b"", time.time_ns()))
"""
WARMUP_S = 0.3
_runs = itertools.count()


def run_once(d, followers: int, duration: float, rate: int, procs: int, with_local: bool, profile: bool = False) -> dict:
    stub = d.stub()
    go_file = str(d.dir / f"go-{next(_runs)}")  # the job sees the host's files: it waits for this one
    job = start_job(stub, ["python3", "-c", WRITER, go_file, str(rate), str(duration)])
    addr, ca, cert, key = d.client_args()
    args = {"addr": addr, "ca": ca, "cert": cert, "key": key, "job_id": job.id, "deadline_s": duration + 120}
    total_lines = int(rate * WARMUP_S) + int(rate * duration)
    local: list[dict] = []
    local_thread = None
    if with_local:
        local_ready = threading.Event()
        local_args = {"path": d.output_path(job.id), "lines": total_lines, "deadline_s": duration + 120}
        local_thread = threading.Thread(
            target=lambda: local.append(run_clients("inotify-lines", local_args, 1, 1, before_go=local_ready.set)))
        local_thread.start()
        local_ready.wait(60)

    def window() -> dict:
        """Let the followers subscribe, release the writer, measure the daemon over the writing window."""
        time.sleep(1.0)
        open(go_file, "w").close()
        time.sleep(WARMUP_S)
        cpu0, t0 = cpu_seconds(d.pid), time.monotonic()
        if profile:
            with profile_daemon(d.pid, f"the daemon with {followers} followers (an unmeasured run)"):
                time.sleep(duration * 0.8)
        else:
            time.sleep(duration * 0.9)
        return {"cores": (cpu_seconds(d.pid) - cpu0) / (time.monotonic() - t0), "rss_kb": status_kb(d.pid, "VmRSS")}

    try:
        result = run_clients("grpc-lines", args, followers, min(procs, followers), after_go=window,
                             timeout=duration + 180)
    finally:
        if local_thread is not None:
            local_thread.join(duration + 180)
        if not os.path.exists(go_file):
            open(go_file, "w").close()  # release the writer if the followers failed: the job ends
        wait_job(stub, job.id)
    expected = followers * int(rate * duration)
    if result["errors"] or len(result["lat_ms"]) != expected:
        raise RuntimeError(f"{len(result['lat_ms'])} stamped lines received of {expected}: {result['errors'][:3]}")
    result["local"] = local[0] if local else None
    return result


def row(name: str, lat: list[float], cores: str, clients: str) -> None:
    print(f"{name:44} {percentile(lat, 50):8.2f} {percentile(lat, 99):8.2f} {max(lat):8.1f} {cores:>12} {clients:>12}"
          f" {len(lat):9d}")


def main() -> None:
    followers = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    duration = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    rate = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    procs = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    header(f"{followers} followers of a job writing {rate} lines/s for {duration:.0f} s ({procs} client processes)")
    with daemon() as d:
        one = run_once(d, 1, duration, rate, 1, with_local=True)
        many = run_once(d, followers, duration, rate, procs, with_local=False)
        print(f"{'':44} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'daemon cores':>12} {'client cores':>12} {'lines':>9}")
        local = one["local"]
        row("local inotify reader (tail -f)", local["lat_ms"], "-", f"{local['cpu'] / local['seconds']:.2f}")
        row("1 follower (gRPC StreamOutput)", one["lat_ms"], f"{one['after']['cores']:.3f}",
            f"{one['cpu'] / one['seconds']:.2f}")
        row(f"{followers} followers (gRPC StreamOutput)", many["lat_ms"], f"{many['after']['cores']:.3f}",
            f"{many['cpu'] / many['seconds']:.2f}")
        p99_many, p99_one = percentile(many["lat_ms"], 99), percentile(one["lat_ms"], 99)
        for name, r in (("1 follower", one), (f"{followers} followers", many)):
            rate_msgs = r["msgs"] / (duration + WARMUP_S)  # nearly all messages come while the job writes
            print(f"{name}: {rate_msgs:.0f} messages/s received in all ({r['bytes'] / max(r['msgs'], 1):.0f} bytes "
                  f"each on average), daemon {r['after']['cores'] * 1e6 / rate_msgs:.0f} us CPU per message")
        print(f"ratios: p99 {followers} followers / 1 follower {p99_many / p99_one:.2f}x; p50 {followers} followers / "
              f"1 follower {percentile(many['lat_ms'], 50) / percentile(one['lat_ms'], 50):.2f}x; daemon CPU "
              f"{many['after']['cores'] / max(one['after']['cores'], 1e-3):.1f}x; daemon RSS "
              f"{many['after']['rss_kb'] / 1024:.1f} MB with {followers} followers")
        line1 = verdict(f"{followers} followers p99 latency", p99_many, 10, "ms", False)
        line2 = verdict(f"{followers} followers daemon CPU", many["after"]["cores"], 0.4, "cores", False)
        if "MISSED" in line1 + line2 or os.environ.get("BENCH_PROFILE") == "1":
            run_once(d, followers, min(duration, 5.0), rate, procs, with_local=False, profile=True)


if __name__ == "__main__":
    main()
