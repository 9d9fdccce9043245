"""Start latency: JobManager.start() (validate, cgroup, namespaces, exec) until the program runs,
beside two baselines run in the same process and the same minute:
  - posix_spawn of /bin/true, waited for (the floor of starting any process);
  - `unshare --pid --mount --net --fork --mount-proc true` (the same isolation done by util-linux).

    python bench/start_latency.py [N]     (as root; default N=100)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import manager, print_table, summary  # noqa: E402

from jobworkerd.worker.models import JobSpec  # noqa: E402


def time_posix_spawn(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        pid = os.posix_spawn("/bin/true", ["true"], {})
        os.waitpid(pid, 0)
        out.append(time.perf_counter() - t)
    return out


def time_unshare(n: int) -> list[float]:
    argv = ["unshare", "--pid", "--mount", "--net", "--fork", "--mount-proc", "true"]
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, check=True)
        out.append(time.perf_counter() - t)
    return out


def time_library(m, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        record = m.start(JobSpec(command="/bin/true"))
        out.append(time.perf_counter() - t)
        m.wait(record.id)
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    with manager() as m:
        time_library(m, 5)  # warm up caches (page cache, dentries)
        rows = []
        # Interleave rounds so that drift on a noisy machine hits all three alike.
        spawn, unshare, library = [], [], []
        for _ in range(5):
            spawn += time_posix_spawn(n // 5)
            unshare += time_unshare(n // 5)
            library += time_library(m, n // 5)
    rows = [summary("posix_spawn /bin/true", spawn), summary("unshare --pid --mount --net --fork --mount-proc", unshare),
            summary("JobManager.start (until the program runs)", library)]
    print(f"start latency over {n} jobs, {os.cpu_count()} cores")
    print_table(rows, "unshare --pid --mount --net --fork --mount-proc")


if __name__ == "__main__":
    main()
