"""Start latency of a fully sandboxed job beside the sandboxing tools (DESIGN.md section 11), in the same
minute: N rounds, each running every variant once, in an order shuffled from round to round.

  - jobworkerd: StartJob + WaitJob of /bin/true over a warm mTLS channel, memory 256M and cpu 0.5, with
    the daemon's default sandbox (a benchmark daemon, as bench/start_latency.py starts it);
  - `crun run` of an OCI bundle: `crun spec` with the same limits (memory 256M, cpu quota 50000/100000), a
    read-only bind of / as the rootfs, namespaces pid, mount, network, ipc, uts, /bin/true; a fresh
    container id and cgroup per round (`crun run` deletes the container when it exits);
  - bwrap --unshare-pid --unshare-net --unshare-ipc --unshare-uts --ro-bind / / --dev /dev --proc /proc
    --tmpfs /tmp /bin/true;
  - unshare --pid --mount --net --fork --mount-proc /bin/true: the baseline every ratio is against.

crun 1.8 (Debian 12) refuses a hybrid host whose cgroup2 lists a controller, and with a relative
cgroupsPath it still makes its cgroups at the root of every hierarchy. So crun runs from a helper (this
file, `--crun-helper`) in a private mount namespace (`unshare --mount --propagation private`) where this
benchmark's own cgroup is bind-mounted over each hierarchy (its cgroupsPath "/<id>" lands beneath it) and
an empty file over the cgroup2's cgroup.controllers; the host's mounts are untouched. The helper times
each `crun run` from spawn to exit, as the other tools are timed here; the benchmark checks afterwards that
no cgroup is left under /sys/fs/cgroup/*/.

    python bench/sandbox_start.py [N]     (as root; default N=400; scripts/bench.sh installs crun and bwrap)

Target: jobworkerd p50 <= 0.5x crun p50.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (PY, daemon, header, percentile, print_table, remove_cgroups, start_job,  # noqa: E402
                    summary, verdict, wait_job)

MEMORY = 256 << 20
CPU = 0.5
UNSHARE = ["unshare", "--pid", "--mount", "--net", "--fork", "--mount-proc", "/bin/true"]
BWRAP = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--ro-bind", "/", "/",
         "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "/bin/true"]
NAMES = {
    "jobworkerd": "jobworkerd StartJob+WaitJob (256M, cpu 0.5)",
    "crun": "crun run (256M, cpu 50000/100000)",
    "bwrap": "bwrap (pid, net, ipc, uts; ro /)",
    "unshare": "unshare --pid --mount --net --fork --mount-proc",
}
# The numeric tail lets `python bench/common.py cleanup` find it after a killed run; 1000 keeps it clear of the
# daemons' subtrees (jobworkerd-bench-<pid>-0, -1, ...).
PARENT = f"jobworkerd-bench-{os.getpid()}-1000"
CONTAINER_PREFIX = f"jobworkerd-bench-{os.getpid()}-c"


def timed(argv: list[str]) -> float:
    """Spawn a command and wait for it: seconds. Every tool is run (and timed) this way."""
    t = time.perf_counter()
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {result.returncode}: {result.stderr.decode(errors='replace')[-500:]}")
    return elapsed


# ---- where crun's cgroups go -------------------------------------------------------------------------------------


def hierarchies() -> list[tuple[str, str]]:
    """(mount point, this process's cgroup in it) for every hierarchy in /proc/self/cgroup."""
    out = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        mount = Path("/sys/fs/cgroup") / (controllers.split(",")[0].removeprefix("name=") or "unified")
        if mount.is_dir():
            out.append((str(mount), path))
    return out


def make_parent() -> list[tuple[str, str]]:
    """PARENT beneath this process's cgroup in every hierarchy: [(its directory, the hierarchy's mount point)]."""
    made = []
    for mount, own in hierarchies():
        directory = os.path.join(mount + own, PARENT)
        os.mkdir(directory)
        made.append((directory, mount))
        if os.path.exists(os.path.join(directory, "cpuset.cpus")):  # cgroup v1 cpuset starts empty
            for name in ("cpuset.cpus", "cpuset.mems"):
                Path(directory, name).write_text(Path(mount + own, name).read_text())
    return made


def leftovers() -> list[str]:
    """Directories of this benchmark (PARENT, crun's containers) anywhere under /sys/fs/cgroup/*/."""
    found = []
    for mount in sorted(set(m for m, _ in hierarchies())):
        for root, dirs, _ in os.walk(mount):
            found += [os.path.join(root, d) for d in dirs if d.startswith((PARENT, CONTAINER_PREFIX))]
    return found


# ---- crun, from a helper in a private mount namespace -----------------------------------------------------------


def make_bundle(directory: str) -> None:
    """`crun spec`, edited; the helper sets cgroupsPath per container and binds / over rootfs."""
    os.makedirs(os.path.join(directory, "rootfs"))
    subprocess.run(["crun", "spec"], cwd=directory, check=True)
    path = os.path.join(directory, "config.json")
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/true"]
    config["root"] = {"path": "rootfs", "readonly": True}
    config["hostname"] = "bench"
    linux = config["linux"]
    linux["resources"]["memory"] = {"limit": MEMORY}
    linux["resources"]["cpu"] = {"quota": int(CPU * 100000), "period": 100000}
    want = {"pid", "mount", "network", "ipc", "uts"}
    assert {ns["type"] for ns in linux["namespaces"]} == want, linux["namespaces"]
    # Not the default /sys/fs/cgroup mount: crun 1.8 mounts v1 hierarchies there, net_cls,net_prio among them,
    # which are kernel-wide objects (not mounted on this host) while a container runs. jobworkerd's jobs and
    # bwrap here do not get that view either.
    config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/sys/fs/cgroup"]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=1)


def crun_helper(bundle: str, state: str, empty: str, binds: list[str]) -> None:
    """The helper's body: in its private mount namespace, bind each cgroup over its hierarchy (argv
    "DIR=MOUNT"), an empty file over cgroup.controllers, a read-only / over the rootfs; then for each
    container id on stdin run crun and answer "ok SECONDS" or "error WHAT" on stdout."""
    if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
        sys.exit("crun helper: not in a mount namespace of its own; refusing to mount anything")
    for bind in binds:
        source, target = bind.split("=", 1)
        subprocess.run(["mount", "--bind", source, target], check=True)
    subprocess.run(["mount", "--bind", empty, "/sys/fs/cgroup/unified/cgroup.controllers"], check=True)
    rootfs = os.path.join(bundle, "rootfs")
    subprocess.run(["mount", "--bind", "/", rootfs], check=True)  # / alone; crun mounts /proc, /dev, /sys
    subprocess.run(["mount", "-o", "remount,bind,ro", rootfs], check=True)
    config_path = os.path.join(bundle, "config.json")
    config = json.loads(Path(config_path).read_text())
    for line in sys.stdin:
        container = line.strip()
        config["linux"]["cgroupsPath"] = "/" + container  # beneath the benchmark's cgroup, bound over the root
        Path(config_path).write_text(json.dumps(config))
        try:
            answer = f"ok {timed(['crun', '--root', state, 'run', '--bundle', bundle, container]):.9f}"
        except RuntimeError as exc:
            answer = "error " + str(exc).replace("\n", " ")
        print(answer, flush=True)


class Crun:
    """The helper process, from the benchmark's side."""

    def __init__(self, tmp: str, made: list[tuple[str, str]]):
        self.bundle, self.state = os.path.join(tmp, "bundle"), os.path.join(tmp, "state")
        make_bundle(self.bundle)
        empty = os.path.join(tmp, "empty")
        Path(empty).touch()
        argv = ["unshare", "--mount", "--propagation", "private", PY, os.path.abspath(__file__), "--crun-helper",
                self.bundle, self.state, empty, *(f"{d}={m}" for d, m in made)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.count = 0

    def run(self) -> float:
        self.count += 1
        self.proc.stdin.write(f"{CONTAINER_PREFIX}{self.count}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split(" ", 1)
        if answer[0] != "ok":
            raise RuntimeError(f"crun: {answer[-1].strip() or 'the helper ended'}")
        return float(answer[1])

    def close(self) -> list[str]:
        """Stop the helper; returns the containers crun left in its state directory."""
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return os.listdir(self.state) if os.path.isdir(self.state) else []


# ---- jobworkerd -------------------------------------------------------------------------------------------------


def time_jobworkerd(stub, parts: dict[str, list[float]]) -> float:
    """One StartJob + WaitJob; adds where it went to `parts`, from the job's own timestamps (the daemon's
    clock: this machine's, as the client's)."""
    sent, t = time.time(), time.perf_counter()
    started = start_job(stub, ["/bin/true"], memory_bytes=MEMORY, cpu=CPU)
    replied = time.time()
    job = wait_job(stub, started.id)
    elapsed, done = time.perf_counter() - t, time.time()
    if job.exit_code != 0:
        raise RuntimeError(f"job {job.id}: exit {job.exit_code}, signal {job.signal}: {job.message}")
    created, running, finished = (getattr(job, f).ToMicroseconds() / 1e6
                                  for f in ("created_at", "started_at", "finished_at"))
    parts["StartJob sent -> created (RPC in, auth, checks)"].append(created - sent)
    parts["created -> running (record, cgroup, launch)"].append(running - created)
    parts["running -> StartJob reply at the client"].append(replied - running)
    parts["running -> finished recorded (exit seen, cleanup)"].append(finished - running)
    parts["finished -> WaitJob reply at the client"].append(done - finished)
    return elapsed


# ---- the benchmark ----------------------------------------------------------------------------------------------


def rounds(n: int, runners: dict, series: dict[str, list[float]], seed: int = 0) -> None:
    """n rounds, each running every variant once in a shuffled order: after whatever ran before it (the
    daemon's own clean-up after a job, say), every variant alike."""
    order, shuffle = list(runners), random.Random(seed).shuffle
    for _ in range(n):
        shuffle(order)
        for key in order:
            series[key].append(runners[key]())


def report(series: dict[str, list[float]], parts: dict[str, list[float]], burst: list[float]) -> None:
    print_table([summary(NAMES[key], series[key]) for key in NAMES], NAMES["unshare"])
    p50 = {key: percentile(values, 50) for key, values in series.items()}
    ratio = p50["jobworkerd"] / p50["crun"]
    print(f"jobworkerd / crun = {ratio:.2f} (target <= 0.5)")
    print(f"       jobworkerd / bwrap = {p50['jobworkerd'] / p50['bwrap']:.2f}")
    verdict("start p50, jobworkerd StartJob+WaitJob / crun run", ratio, 0.5, "x", False)
    print("where jobworkerd's time goes (p50s, ms, the jobs' own timestamps; the job runs while StartJob replies):")
    for name, values in parts.items():
        print(f"  {name:52} {percentile(values, 50) * 1e3:6.2f}")
    p50_ms, p90_ms = percentile(burst, 50) * 1e3, percentile(burst, 90) * 1e3
    print(f"crun run back to back, {len(burst)} more runs (not in the ratios): "
          f"p50 {p50_ms:.2f} ms, p90 {p90_ms:.2f} ms")
    print("  (crun joins its cgroups through cgroup.procs, which on cgroup v1 waits for an RCU grace period\n"
          "  unless another such write came a few ms before; jobworkerd writes `tasks`)")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    for tool in ("crun", "bwrap", "unshare"):
        if not shutil.which(tool):
            sys.exit(f"sandbox_start: {tool} not found (scripts/bench.sh installs crun and bubblewrap)")
    header(f"sandboxed start: {n} interleaved rounds of jobworkerd, crun, bwrap, unshare")
    series: dict[str, list[float]] = defaultdict(list)
    parts: dict[str, list[float]] = defaultdict(list)
    try:
        with daemon() as d, tempfile.TemporaryDirectory(prefix="jobworkerd-bench-crun-") as tmp:
            crun = Crun(tmp, make_parent())
            try:
                stub = d.stub()
                runners = {"jobworkerd": lambda: time_jobworkerd(stub, parts), "crun": crun.run,
                           "bwrap": lambda: timed(BWRAP), "unshare": lambda: timed(UNSHARE)}
                rounds(5, runners, defaultdict(list))  # warm-up: page cache, the forkserver, the channel
                parts.clear()
                rounds(n, runners, series)
                burst = [crun.run() for _ in range(min(n, 50))]
            finally:
                in_state = crun.close()  # before the bundle goes (its rootfs is bound in the helper only)
    finally:
        crun_left = [p for p in remove_cgroups(PARENT) if not p.endswith("/" + PARENT)]  # and PARENT itself
        anywhere = leftovers()
    report(series, parts, burst)
    print(f"left behind: crun containers in its state directory {len(in_state)}; crun cgroups beneath the "
          f"benchmark's {len(crun_left)}\n  (removed by it); this benchmark's cgroups under /sys/fs/cgroup/*/ "
          f"afterwards {len(anywhere)}")
    if in_state or crun_left or anywhere:
        print(f"WARNING: left behind: {(in_state + crun_left + anywhere)[:5]}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--crun-helper"]:
        crun_helper(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        main()
