"""The output path (issue 9): a job writing as fast as it can (`head -c SIZE /dev/zero`) through its init
(the program writes into a pipe; the init copies it into the recorded output file, counting against the
cap), against the same command writing straight into a file on the same filesystem (the daemon's output
tmpfs), in the same run, rounds interleaved. Throughput in MB/s (10^6 bytes).

Also the init's copy loop alone, in this process with the init's own Output class: readv of 256 KiB into
a reused buffer + pwrite (what the init does) against splice(2) of 1 MiB from the pipe into the file
(the zero-copy alternative), each fed by `head -c SIZE /dev/zero` through a 1 MiB pipe.

    python bench/output_path.py [SIZE] [ROUNDS]      (as root; default 2G 5)

Target (issue 9): through the init >= 0.7x the direct write.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import MB, daemon, header, print_rate_table, start_job, verdict, wait_job  # noqa: E402

from jobworkerd.launcher import __file__ as _launcher_init  # noqa: E402
from jobworkerd.units import parse_size  # noqa: E402

sys.path.insert(0, os.path.dirname(_launcher_init))
from shim import F_SETPIPE_SZ, OUTPUT_PIPE_SIZE, Output  # noqa: E402


def direct(path: str, size: int) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t = time.perf_counter()
        subprocess.run(["head", "-c", str(size), "/dev/zero"], stdout=fd, check=True)
        return size / (time.perf_counter() - t) / MB
    finally:
        os.close(fd)
        os.unlink(path)


def through_the_init(d, stub, size: int) -> float:
    t = time.perf_counter()
    job = start_job(stub, ["head", "-c", str(size), "/dev/zero"])
    ended = wait_job(stub, job.id)
    elapsed = time.perf_counter() - t
    assert ended.exit_code == 0 and ended.usage.output_bytes == size, ended
    os.unlink(d.output_path(job.id))  # give the budget back for the next round
    return size / elapsed / MB


def copy_loop(path: str, size: int, mode: str) -> float:
    """head -> 1 MiB pipe -> this process -> file, with the init's loop (readv) or with splice."""
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, OUTPUT_PIPE_SIZE)
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t = time.perf_counter()
        head = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=w)
        os.close(w)
        if mode == "readv":
            output = Output(r, out, size + 1)  # room for EOF to be seen
            while output.open:
                output.copy_available()
            written = output.written
        else:
            written = 0
            while n := os.splice(r, out, 1 << 20, offset_dst=written):
                written += n
        head.wait()
        rate = size / (time.perf_counter() - t) / MB
        assert written == size, (mode, written)
        return rate
    finally:
        os.close(r)
        os.close(out)
        os.unlink(path)


def main() -> None:
    size = parse_size(sys.argv[1]) if len(sys.argv) > 1 else 2 << 30
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    header(f"output path: head -c {size} /dev/zero, {rounds} interleaved rounds")
    names = {
        "direct": "head > file on the output tmpfs (direct)",
        "job": "a job through its init (StartJob to WaitJob)",
        "readv": "init copy loop: readv 256 KiB + pwrite (used)",
        "splice": "copy loop with splice(2), 1 MiB",
    }
    series: dict[str, list[float]] = {key: [] for key in names}
    config = {"limits": {"output_cap": size + (1 << 20), "output_total": 3 * size}}
    with daemon(config) as d:
        stub = d.stub()
        scratch = str(d.run_dir / "jobs" / "bench-direct")
        through_the_init(d, stub, 64 << 20)  # warm up
        for _ in range(rounds):
            series["direct"].append(direct(scratch, size))
            series["job"].append(through_the_init(d, stub, size))
            series["readv"].append(copy_loop(scratch, size, "readv"))
            series["splice"].append(copy_loop(scratch, size, "splice"))
    rows = [(names[key], values) for key, values in series.items()]
    print_rate_table(rows, names["direct"], "MB/s")
    medians = {key: sorted(values)[len(values) // 2] for key, values in series.items()}
    verdict("output through the init / direct write", medians["job"] / medians["direct"], 0.7, "x", True)
    print(f"       copy loop: readv {medians['readv']:.0f} MB/s, splice {medians['splice']:.0f} MB/s "
          f"({medians['readv'] / medians['splice']:.2f}x)")


if __name__ == "__main__":
    main()
