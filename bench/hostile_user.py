"""One hostile authenticated user against everyone else (issue 12): while user `mallory` does all of this at
once, an admin's GetJob and ListJobs latency is measured, against the same calls on the idle daemon in the
same run:

  - 10,000 records with 10 KB of arguments each (mallory's start-rate quota lifted for this, so that the
    history bounds and ListJobs are what is under load);
  - 1,000 starts against the user quotas (a burst far past starts_per_second and running_jobs);
  - 500 streams and 500 waits (far past the quotas);
  - 100 stops, with a long grace, of a job that ignores SIGTERM.

    python bench/hostile_user.py [RECORDS]     (as root; default 10000)

Target (issue 12): the admin's GetJob and ListJobs p99 under the attack <= 3x idle (the same daemon, with
the same history, before the live attack; the empty daemon's figures are printed too); the daemon's RSS
and fds bounded; nothing stored lost.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import daemon, header, percentile, start_job, verdict, wait_job  # noqa: E402

from daemon_harness import fd_count, rss_bytes  # noqa: E402


def admin_latencies(stub, kept_id: str, n: int) -> dict[str, list[float]]:
    from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

    out: dict[str, list[float]] = {"GetJob": [], "ListJobs": []}
    for _ in range(n):
        t = time.perf_counter()
        stub.GetJob(pb.GetJobRequest(job_id=kept_id), timeout=30)
        out["GetJob"].append(time.perf_counter() - t)
        t = time.perf_counter()
        stub.ListJobs(pb.ListJobsRequest(page_size=100, view=pb.JOB_VIEW_SUMMARY), timeout=30)
        out["ListJobs"].append(time.perf_counter() - t)
    return out


def main() -> None:
    import grpc

    from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

    records = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    header(f"a hostile user: {records} large records, 1000 starts, 500 streams, 500 waits, 100 long stops")
    quotas = {"users": {"mallory-records": {"starts_per_second": None, "running_jobs": 64}}}
    with daemon({"quotas": quotas, "history": {"max_records": records + 2000}}) as d:
        admin = d.stub()
        kept = start_job(admin, ["sh", "-c", "echo kept"])
        wait_job(admin, kept.id)
        admin_latencies(admin, kept.id, 20)  # warm up
        empty = admin_latencies(admin, kept.id, 200)
        fds0, rss0 = fd_count(d.pid), rss_bytes(d.pid)

        filler, mallory = d.stub("mallory-records", "user"), d.stub("mallory", "user")
        big = ["z" * 1000] * 10
        t = time.monotonic()

        def fill(count: int) -> None:
            for _ in range(count):
                wait_job(filler, start_job(filler, ["true", *big]).id)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(fill, [records // 4] * 4))
        fill_s = time.monotonic() - t
        # The idle baseline: the same daemon with the same history, before the live attack (a page of 100
        # records costs more than a page of one whatever else happens: that is the records' own cost).
        idle = admin_latencies(admin, kept.id, 200)
        stubborn = start_job(mallory, ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"])
        time.sleep(0.5)
        stop = threading.Event()
        refused = {"starts": 0, "streams": 0, "waits": 0}

        def starts() -> None:
            for _ in range(1000):
                try:
                    start_job(mallory, ["true"])
                except grpc.RpcError as err:
                    refused["starts"] += err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        def streams() -> None:
            calls = [mallory.StreamOutput(pb.StreamOutputRequest(job_id=stubborn.id), timeout=600) for _ in range(500)]
            waits = [mallory.WaitJob.future(pb.WaitJobRequest(job_id=stubborn.id), timeout=600) for _ in range(500)]
            stop.wait(600)
            refused["waits"] = sum(1 for w in waits if w.done() and w.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
            for call in calls:
                try:
                    call.cancel()
                    refused["streams"] += call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                except Exception:
                    pass
            for w in waits:
                w.cancel()

        stops = [mallory.StopJob.future(pb.StopJobRequest(job_id=stubborn.id, grace_seconds=120), timeout=600)
                 for _ in range(100)]
        with ThreadPoolExecutor(2) as pool:
            attack = [pool.submit(starts), pool.submit(streams)]
            time.sleep(1.0)
            under = admin_latencies(admin, kept.id, 200)
            fds1, rss1 = fd_count(d.pid), rss_bytes(d.pid)
            attack[0].result()
            stop.set()
            attack[1].result()
        admin.StopJob(pb.StopJobRequest(job_id=stubborn.id, grace_seconds=0), timeout=60)
        for f in stops:
            f.result()
        still = wait_job(admin, kept.id)
        listed = 0
        token = ""
        while True:
            page = admin.ListJobs(pb.ListJobsRequest(page_token=token, view=pb.JOB_VIEW_SUMMARY), timeout=60)
            listed += len(page.jobs)
            token = page.next_page_token
            if not token:
                break

    print(f"records: {records} made in {fill_s:.0f} s; refused: starts {refused['starts']}/1000, "
          f"streams {refused['streams']}/500, waits {refused['waits']}/500; 100 stops were one")
    print(f"{'':28} {'idle p50 ms':>12} {'idle p99 ms':>12} {'attack p50':>11} {'attack p99':>11} {'p99 ratio':>10}")
    ratios = []
    for name in ("GetJob", "ListJobs"):
        e50, e99 = percentile(empty[name], 50) * 1e3, percentile(empty[name], 99) * 1e3
        print(f"{'admin ' + name + ', empty daemon':28} {e50:12.2f} {e99:12.2f}")
        i50, i99 = percentile(idle[name], 50) * 1e3, percentile(idle[name], 99) * 1e3
        a50, a99 = percentile(under[name], 50) * 1e3, percentile(under[name], 99) * 1e3
        ratios.append(a99 / i99)
        print(f"{'admin ' + name:28} {i50:12.2f} {i99:12.2f} {a50:11.2f} {a99:11.2f} {a99 / i99:9.2f}x")
    print(f"daemon: fds {fds0} idle, {fds1} under attack; RSS {rss0 / 1e6:.1f} MB idle, {rss1 / 1e6:.1f} MB under "
          f"attack; the admin's job kept: {still.exit_code == 0}; jobs listed after: {listed}")
    verdict("admin GetJob p99 under attack / idle", ratios[0], 3.0, "x", False)
    verdict("admin ListJobs p99 under attack / idle", ratios[1], 3.0, "x", False)


if __name__ == "__main__":
    main()
