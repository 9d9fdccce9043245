"""Start latency of a bridge-mode job against a none-mode one, in the same run (issue 11, point 7): N rounds,
each starting one job of each mode (StartJob + WaitJob of /bin/true over a warm channel), in an order
shuffled from round to round. The daemon runs in a network namespace this benchmark makes and removes
(nothing touches the host's own network), started with `nsenter --net` as the tests do.

    python bench/network_start.py [N]     (as root; default N=200)

Run twice, each in a namespace of its own: with the daemon's pool of prepared namespaces (network.pool 2,
the default) and without it (0), to show the pool's effect.

Target: bridge-mode p50 <= 1.3x none-mode p50 (with the pool). Where the time goes: the jobs' own timestamps
(created -> running holds the address, the nftables rules, and a pooled namespace or a new veth).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PY, daemon, header, percentile, print_table, summary, verdict, wait_job  # noqa: E402

NETNS = f"jwbench-{os.getpid()}"
POOLS = (2, 0)
NAMES = {"none": "StartJob+WaitJob, --net none", "bridge": "StartJob+WaitJob, --net bridge"}
CONFIG = {"network": {"bridge": "benchbr0", "subnet": "10.89.0.0/16"},
          "quotas": {"admin": {"running_jobs": None, "starts_per_second": None}}}


def one(stub, mode: str, parts: dict[str, list[float]]) -> float:
    from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

    request = pb.StartJobRequest(command=pb.Command(command="/bin/true"), network=pb.Network(mode=mode))
    t = time.perf_counter()
    started = stub.StartJob(request, timeout=60)
    job = wait_job(stub, started.id)
    elapsed = time.perf_counter() - t
    if job.exit_code != 0:
        raise RuntimeError(f"job {job.id} ({mode}): exit {job.exit_code}: {job.message}")
    created, running = (getattr(job, f).ToMicroseconds() / 1e6 for f in ("created_at", "started_at"))
    parts[mode].append(running - created)
    return elapsed


def inside(n: int, pool: int) -> None:
    series: dict[str, list[float]] = defaultdict(list)
    parts: dict[str, list[float]] = defaultdict(list)
    config = {**CONFIG, "network": {**CONFIG["network"], "pool": pool}}
    print(f"-- network.pool {pool}{' (no pool: each bridge job waits for its veth)' if not pool else ''}")
    with daemon(config) as d:
        stub = d.stub()
        order = list(NAMES)
        for _ in range(5):  # warm-up: the forkserver, the channel, pyroute2's import and the bridge
            for mode in order:
                one(stub, mode, defaultdict(list))
        shuffle = random.Random(0).shuffle
        for _ in range(n):
            shuffle(order)
            for mode in order:
                series[mode].append(one(stub, mode, parts))
    print_table([summary(NAMES[mode], series[mode]) for mode in NAMES], NAMES["none"])
    ratio = percentile(series["bridge"], 50) / percentile(series["none"], 50)
    print(f"bridge / none = {ratio:.2f} (target <= 1.3)")
    verdict(f"start p50, --net bridge / --net none, network.pool {pool}", ratio, 1.3, "x", False)
    print("where the time goes: created -> running (record, cgroup, launch; bridge: address, rules, a pooled "
          "namespace or a new veth), p50 ms:")
    for mode in NAMES:
        print(f"  {mode:8} {percentile(parts[mode], 50) * 1e3:6.2f}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    header(f"network start: {n} interleaved rounds of --net none and --net bridge")
    for pool in POOLS:
        subprocess.run(["ip", "netns", "add", NETNS], check=True)
        try:
            subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
            subprocess.run(["nsenter", f"--net=/run/netns/{NETNS}", PY, os.path.abspath(__file__), "--inside",
                            str(n), str(pool)], check=True)
        finally:
            subprocess.run(["ip", "netns", "del", NETNS], check=False)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inside"]:
        inside(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
