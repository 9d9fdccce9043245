"""Start latency: from asking for a job to its program running, beside baselines run in the same
process and the same minute (rounds interleaved, so drift on a noisy machine hits all alike):

  - posix_spawn of /bin/true, waited for (the floor of starting any process);
  - `unshare --pid --mount --net --fork --mount-proc true` (the same isolation done by util-linux);
  - the bare launcher run by hand: jobworkerd.worker.process.launch(), which spawns
    `python3 -I -S jobworkerd/launcher/__main__.py` per job (no forkserver), into a real job cgroup
    made beforehand (not timed);
  - the forkserver's launch() alone, into a cgroup made beforehand (what the forkserver saves);
  - JobManager.start() (the library call: validate, record, cgroup, launch; returns once the program runs);
  - StartJob through gRPC (mutual TLS, a warm channel) to a real daemon: returns once the program runs.

    python bench/start_latency.py [N]     (as root; default N=200)

Targets: StartJob p50 <= 2x unshare(1) (issue 6); no more than 10% above the 2.23x of the launcher before
the init became the job's shim (issue 9; measured by this benchmark at commit a115ce7, in two runs, one of
them in bench/RESULTS.md of that commit): <= 2.45x.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import daemon, header, manager, percentile, print_table, start_job, summary, verdict, wait_job  # noqa: E402

from jobworkerd.worker.models import JobSpec  # noqa: E402
from jobworkerd.worker.process import LAUNCHER, LaunchPlan, launch  # noqa: E402
from jobworkerd.worker.spec import resolve  # noqa: E402

UNSHARE = ["unshare", "--pid", "--mount", "--net", "--fork", "--mount-proc", "true"]
UNSHARE_NAME = "unshare --pid --mount --net --fork --mount-proc true"


def time_posix_spawn(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        pid = os.posix_spawn("/bin/true", ["true"], {})
        os.waitpid(pid, 0)
        out.append(time.perf_counter() - t)
    return out


def time_unshare(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(UNSHARE, check=True)
        out.append(time.perf_counter() - t)
    return out


def time_launcher(m, n: int, tmp: str, forkserver: bool) -> list[float]:
    """launch() by hand: a real job cgroup from the manager's backend (made and removed untimed), the
    launcher until it reports the program exec'd; then wait for the job's end and clean up."""
    resolved = resolve(JobSpec(command="/bin/true"), m.config.limits, "root")
    backend = m.backend
    out = []

    def plan(job_id: str) -> LaunchPlan:
        return LaunchPlan(backend.join_files(job_id), os.path.join(tmp, job_id, "exit"), m.config.limits.output_cap,
                          m.hidden_paths)

    for _ in range(n):
        job_id = uuid.uuid4().hex[:12]
        backend.create(job_id, resolved.limits, None)
        job_dir = os.path.join(tmp, job_id)
        os.mkdir(job_dir)
        output_fd = os.open(os.path.join(job_dir, "output"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            t = time.perf_counter()
            if forkserver:
                launched = m.forkserver.launch(resolved, plan(job_id), output_fd)
            else:
                launched = launch(resolved, plan(job_id), output_fd)
            out.append(time.perf_counter() - t)
            while os.read(launched.status_fd, 4096):  # EOF: the job's init has exited
                pass
            os.close(launched.status_fd)
        finally:
            os.close(output_fd)
            if not backend.wait_empty(job_id, 5.0):
                backend.kill(job_id)
            backend.remove(job_id)
    return out


def time_library(m, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        record = m.start(JobSpec(command="/bin/true"))
        out.append(time.perf_counter() - t)
        m.wait(record.id)
    return out


def library_breakdown(m, n: int) -> dict[str, list[float]]:
    """Where JobManager.start's time goes: its steps timed by wrapping them in this process only (the daemon
    is not changed). Only calls from this thread count (job ends record in other threads)."""
    import jobworkerd.worker.manager as manager_module

    me = threading.get_ident()
    timings: dict[str, list[float]] = defaultdict(list)
    per_call: dict[str, float] = defaultdict(float)

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if threading.get_ident() == me:
                    per_call[name] += time.perf_counter() - t
        return wrapper

    original_resolve = manager_module.resolve
    manager_module.resolve = timed("validate (resolve)", original_resolve)
    m.backend.create = timed("cgroup create", m.backend.create)
    m._launch = timed("launch (forkserver)", m._launch)
    m.store.put = timed("SQLite put (x2)", m.store.put)
    try:
        for _ in range(n):
            per_call.clear()
            t = time.perf_counter()
            record = m.start(JobSpec(command="/bin/true"))
            total = time.perf_counter() - t
            m.wait(record.id)
            for name, value in per_call.items():
                timings[name].append(value)
            timings["rest of start()"].append(total - sum(per_call.values()))
            timings["total"].append(total)
    finally:
        manager_module.resolve = original_resolve
        for name in ("create",):
            del m.backend.__dict__[name]
        del m.__dict__["_launch"]
        del m.store.__dict__["put"]
    return timings


# Replays the launcher's sequence with the launcher's own functions (imported from its files, under -I -S as the
# forkserver runs), stamping CLOCK_MONOTONIC between steps. Input on stdin: one line per job, the job cgroup's
# join files separated by spaces; argv: the launcher's file, then the paths the job's init hides. Output: one
# line per job, the outcome ("ok" or the failure) and then the stamps (ns).
STEPS_HELPER = r"""
import os, sys, time
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import shim, syscalls as S
ns = lambda: str(time.monotonic_ns()).encode()
hidden = [p.encode() for p in sys.argv[2:]]
for line in sys.stdin.buffer.read().splitlines():
    job = {"uid": b"0", "gid": b"0", "group": [b"0"], "cwd": b"/", "program": b"/bin/true", "arg": [b"true"],
           "env": [b"PATH=/usr/bin:/bin"], "join": line.split()}
    r, w = os.pipe()
    t0 = ns()
    pid = os.fork()
    if pid == 0:  # L
        os.close(r)
        stamps = [t0, ns()]
        S.check("unshare", S.libc.unshare(S.CLONE_NEWPID | S.CLONE_NEWNS | S.CLONE_NEWNET))
        stamps.append(ns())
        S.check("make-mounts-private", S.libc.mount(b"none", b"/", None, S.MS_REC | S.MS_PRIVATE, None))
        stamps.append(ns())
        if os.fork():
            os._exit(0)
        stamps.append(ns())  # C, PID 1 of the job
        os.setsid()
        S.mount("mount-proc", b"proc", b"/proc", b"proc", S.MS_NOSUID | S.MS_NODEV | S.MS_NOEXEC)
        stamps.append(ns())
        shim.bring_up_loopback()
        stamps.append(ns())
        for path in hidden:
            S.hide(path)
        stamps.append(ns())
        output_r, output_w = os.pipe()
        exec_r, exec_w = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(exec_r)
            shim.exec_program(job, output_w, exec_w)
        os.close(exec_w)
        outcome = os.read(exec_r, 4096)
        stamps.append(ns())
        os.write(w, (outcome or b"ok").replace(b" ", b"_") + b" " + b" ".join(stamps) + b"\n")
        os.waitpid(child, 0)
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    data = os.read(r, 4096)
    os.close(r)
    sys.stdout.buffer.write(data.rstrip() + b" " + ns() + b"\n")
"""
STEP_NAMES = ["fork L (forkserver -> launcher)", "unshare(PID|NS|NET)", "mounts private (MS_REC|MS_PRIVATE /)",
              "fork C (the job's init)", "setsid + mount /proc", "loopback up", "hide run + state dirs",
              "pipes, fork G, join cgroup, drop privileges, execve (exec pipe EOF)", "report to the parent"]


def launcher_steps(m, n: int) -> dict[str, list[float]]:
    """The launcher's steps, timed (see STEPS_HELPER), in real job cgroups made beforehand."""
    resolved = resolve(JobSpec(command="/bin/true"), m.config.limits, "root")
    ids = [uuid.uuid4().hex[:12] for _ in range(n)]
    for job_id in ids:
        m.backend.create(job_id, resolved.limits, None)
    try:
        stdin = "".join(" ".join(m.backend.join_files(job_id)) + "\n" for job_id in ids)
        result = subprocess.run([sys.executable, "-I", "-S", "-c", STEPS_HELPER, LAUNCHER, *m.hidden_paths],
                                input=stdin.encode(), capture_output=True, timeout=120, cwd="/")
        if result.returncode != 0:
            raise RuntimeError(f"launcher steps helper failed: {result.stderr.decode(errors='replace')[-2000:]}")
    finally:
        for job_id in ids:
            if not m.backend.wait_empty(job_id, 5.0):
                m.backend.kill(job_id)
            m.backend.remove(job_id)
    steps: dict[str, list[float]] = defaultdict(list)
    for line in result.stdout.decode().splitlines():
        outcome, *fields = line.split()
        if outcome != "ok":
            raise RuntimeError(f"launcher steps: {line}")
        stamps = [int(x) for x in fields]
        for name, a, b in zip(STEP_NAMES, stamps, stamps[1:]):
            steps[name].append((b - a) / 1e9)
        steps["total"].append((stamps[-1] - stamps[0]) / 1e9)
    return steps


def time_grpc(stub, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        job = start_job(stub, ["/bin/true"])
        out.append(time.perf_counter() - t)
        wait_job(stub, job.id)
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rounds = 5
    header(f"start latency: {n} jobs per variant, {rounds} interleaved rounds")
    series: dict[str, list[float]] = {}
    names = {
        "spawn": "posix_spawn /bin/true",
        "unshare": UNSHARE_NAME,
        "launcher": "bare launcher: process.launch() (python -I -S)",
        "forkserver": "forkserver launch() alone (cgroup made before)",
        "library": "JobManager.start (library call)",
        "grpc": "StartJob through gRPC (mTLS, warm channel)",
    }
    with daemon() as d, manager() as m, tempfile.TemporaryDirectory(prefix="jobworkerd-bench-launch-") as tmp:
        stub = d.stub()
        # Warm up caches (page cache, dentries, the forkserver, the channel).
        time_library(m, 5)
        time_grpc(stub, 5)
        time_launcher(m, 3, tmp, forkserver=False)
        time_launcher(m, 3, tmp, forkserver=True)
        per_round = max(1, n // rounds)
        for _ in range(rounds):
            series.setdefault("spawn", []).extend(time_posix_spawn(per_round))
            series.setdefault("unshare", []).extend(time_unshare(per_round))
            series.setdefault("launcher", []).extend(time_launcher(m, per_round, tmp, forkserver=False))
            series.setdefault("forkserver", []).extend(time_launcher(m, per_round, tmp, forkserver=True))
            series.setdefault("library", []).extend(time_library(m, per_round))
            series.setdefault("grpc", []).extend(time_grpc(stub, per_round))
        breakdown = library_breakdown(m, max(20, n // 4))
        steps = launcher_steps(m, max(20, n // 4))
    rows = [summary(names[key], values) for key, values in series.items()]
    print_table(rows, UNSHARE_NAME)
    by_name = {row["name"]: row for row in rows}
    base = by_name[UNSHARE_NAME]["p50"]
    grpc_ratio = by_name[names["grpc"]]["p50"] / base
    verdict("start p50 (gRPC StartJob) / unshare p50", grpc_ratio, 2.0, "x", False)
    verdict("start p50 (gRPC StartJob) / unshare p50, against 2.23x before the shim (+10%)", grpc_ratio,
            round(2.23 * 1.10, 2), "x", False)
    print(f"       library call p50 / unshare p50: {by_name[names['library']]['p50'] / base:.2f}x")
    print("where JobManager.start goes (p50 ms over a separate run of "
          f"{len(breakdown['total'])}): " + ", ".join(f"{name} {percentile(values, 50) * 1e3:.2f}"
                                                    for name, values in breakdown.items()))
    print(f"the launcher's steps (p50 ms over {len(steps['total'])}, replayed with its own functions): "
          + ", ".join(f"{name} {percentile(values, 50) * 1e3:.2f}" for name, values in steps.items()))


if __name__ == "__main__":
    main()
