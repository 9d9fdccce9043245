"""Shared helpers for benchmarks: percentiles and tables, a throwaway JobManager, a throwaway daemon
(its own CA, config, state and run directories, and cgroup subtree), /proc readings (RSS, CPU), the
client-side workers that run in separate processes (gRPC streams, plain TLS sockets, a local inotify
reader), profiles of the daemon for missed targets (CPU per thread, py-spy), candidate daemon changes
patched into throwaway daemons for experiments, and `python bench/common.py cleanup` (what a killed
benchmark left behind).

Every figure is printed beside a baseline measured in the same run, as a ratio: these machines are
noisy and absolute times drift from run to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "tests" / "integration"):  # the package, and the daemon harness the tests use
    if str(_path) not in sys.path:
        sys.path.insert(1, str(_path))

from daemon_harness import Daemon, unmount_output_tmpfs  # noqa: E402

PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1e6  # throughput figures are in MB/s (10^6 bytes), as in DESIGN.md
CHUNK = 256 << 10  # what the daemon sends per message while catching up; the TLS baseline uses the same
_counter = itertools.count()
# Client processes are spawned, never forked: the parent may hold grpc's threads and locks.
SPAWN = multiprocessing.get_context("spawn")


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: stop the daemon, kill the baseline processes


if multiprocessing.parent_process() is None and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


# ---- statistics and tables ----------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(name: str, values_s: list[float]) -> dict[str, float]:
    return {"name": name, "p50": percentile(values_s, 50) * 1e3, "p90": percentile(values_s, 90) * 1e3,
            "mean": statistics.fmean(values_s) * 1e3, "n": len(values_s)}


def print_table(rows: list[dict], baseline: str) -> None:
    base = next(r for r in rows if r["name"] == baseline)
    print(f"{'':52} {'p50 ms':>8} {'p90 ms':>8} {'p50 ratio':>10} {'n':>5}")
    for row in rows:
        ratio = row["p50"] / base["p50"] if base["p50"] else float("nan")
        print(f"{row['name']:52} {row['p50']:8.2f} {row['p90']:8.2f} {ratio:9.2f}x {row['n']:5d}")
    print(f"(ratios against: {baseline})")


def print_rate_table(rows: list[tuple[str, list[float]]], baseline: str, unit: str) -> None:
    """Rows of (name, repeated measurements of a rate, higher is better): median, min, max, ratio of medians."""
    medians = {name: statistics.median(values) for name, values in rows}
    base = medians[baseline]
    width = max(52, *(len(name) for name, _ in rows))
    print(f"{'':{width}} {'median ' + unit:>14} {'min':>9} {'max':>9} {'ratio':>7} {'n':>3}")
    for name, values in rows:
        ratio = medians[name] / base if base else float("nan")
        print(f"{name:{width}} {medians[name]:14.1f} {min(values):9.1f} {max(values):9.1f} {ratio:6.2f}x {len(values):3d}")
    print(f"(ratios against: {baseline})")


def verdict(what: str, value: float, target: float, unit: str, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    line = f"TARGET {what}: {value:.2f} {unit} (target {sign} {target:g} {unit}): {'met' if ok else 'MISSED'}"
    print(line)
    return line


def header(title: str) -> None:
    print(f"== {title} ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f})", flush=True)


# ---- /proc readings ---------------------------------------------------------------------------------------------


def status_kb(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM); 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as handle:
                found += [int(p) for p in handle.read().split()]
        except FileNotFoundError:
            pass
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


class RssPoller:
    """Polls VmRSS of a process every `interval` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval = pid, interval
        self.peak_kb = status_kb(pid, "VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS"))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS"))


# ---- a throwaway JobManager (the library, in this process) -----------------------------------------------------


@contextlib.contextmanager
def manager(**config) -> Iterator["object"]:
    from jobworkerd.config import config_from_dict
    from jobworkerd.worker.manager import JobManager

    with tempfile.TemporaryDirectory(prefix="jobworkerd-bench-") as tmp:
        settings = {"state_dir": f"{tmp}/state", "run_dir": f"{tmp}/run",
                    "cgroup": {"subtree": f"jobworkerd-bench-{os.getpid()}-{next(_counter)}"}, **config}
        try:
            with JobManager(config_from_dict(settings)) as m:
                yield m
        finally:
            unmount_output_tmpfs(tmp)


# ---- a throwaway daemon (the real one, as a subprocess) ---------------------------------------------------------


def cgroup_dirs(subtree: str) -> list[str]:
    """Every directory of this subtree (beneath this process's own cgroups) that exists now, in every hierarchy."""
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            hierarchy = controller.removeprefix("name=") or "unified"  # name=systemd is mounted at .../systemd
            base = Path("/sys/fs/cgroup") / hierarchy / path.lstrip("/") / subtree
            if base.is_dir():
                found += [str(p) for p in base.rglob("*") if p.is_dir()] + [str(base)]
    return found


def remove_cgroups(subtree: str) -> list[str]:
    """Last resort after a failed run: kill whatever is in the subtree and remove it, deepest first.
    Returns what was there."""
    left = cgroup_dirs(subtree)
    for path in sorted(left, key=lambda p: -p.count("/")):
        for _ in range(50):
            try:
                pids = [int(p) for p in Path(path, "cgroup.procs").read_text().split()]
            except OSError:
                pids = []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)
    return left


_EXEC_WITH_PDEATHSIG = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)

_PATCHED_SERVE = (
    "import ctypes, signal, sys; ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
    "PATCH\n"
    "from jobworkerd.cli import main\n"
    "sys.exit(main(['serve', '--config', sys.argv[1]]))\n"
)


class BenchDaemon(Daemon):
    """The integration tests' daemon (tests/integration/daemon_harness.py) with a run directory on tmpfs
    (like /run), a throwaway work directory, PR_SET_PDEATHSIG, and optional experiment patches.
    Use through `daemon()`."""

    # In the benchmark's session: with a session of its own, the kernel's autogroup scheduling
    # (sched_autogroup_enabled=1 here) gives the daemon one session's share of the 2 cores against the
    # benchmark's client processes on the same machine (100 followers: p99 ~400 ms instead of ~9 ms).
    # Under systemd the clients are elsewhere and the jobs are in cgroups, where autogroups do not apply.
    new_session = False

    def __init__(self, config: dict | None = None, patch: str = ""):
        self.patch = patch  # Python run in the daemon before it serves: experiments only, never the figures
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        run_dir = Path(tempfile.mkdtemp(prefix="jobworkerd-bench-run-", dir=shm))
        workdir = Path(tempfile.mkdtemp(prefix="jobworkerd-bench-"))
        super().__init__(workdir, {"stop_grace": "2s", **(config or {})}, run_dir, "jobworkerd-bench")
        self.server_cert, self.server_key = str(workdir / "server.crt"), str(workdir / "server.key")

    def argv(self) -> list[str]:
        # PR_SET_PDEATHSIG (kept across execve): if the benchmark dies without cleaning up, the daemon
        # gets SIGTERM and stops its jobs itself.
        if self.patch:
            return [PY, "-c", _PATCHED_SERVE.replace("PATCH", self.patch, 1), str(self.config_path)]
        return [PY, "-c", _EXEC_WITH_PDEATHSIG, PY, "-m", "jobworkerd", "serve", "--config", str(self.config_path)]

    def forkserver_pid(self) -> int:
        for child in children(self.pid):
            if "--forkserver" in cmdline(child):
                return child
        return 0

    def client_args(self, name: str = "admin", role: str = "admin") -> tuple[str, str, str, str]:
        """(addr, ca, cert, key): what a client in another process needs."""
        crt, key = self.cert(name, role)
        return self.addr, self.ca, crt, key

    def jobctl_env(self, name: str = "admin", role: str = "admin") -> dict[str, str]:
        return self.env(name, role)

    def channel(self, name: str = "admin", role: str = "admin"):
        channel = grpc_channel(*self.client_args(name, role))
        self._channels.append(channel)
        return channel

    def stub(self, name: str = "admin", role: str = "admin"):
        import grpc

        from jobworkerd.gen.jobworker.v1 import jobworker_pb2_grpc

        channel = self.channel(name, role)
        grpc.channel_ready_future(channel).result(timeout=10)
        return jobworker_pb2_grpc.JobWorkerStub(channel)

    def output_path(self, job_id: str) -> str:
        return str(self.run_dir / "jobs" / job_id / "output")

    def job_cgroups(self) -> list[str]:
        """Job cgroups of this daemon that exist now (the subtree's own directories are not jobs)."""
        return [p for p in cgroup_dirs(self.subtree) if re.search(r"/jobs/[0-9a-f]{12}$", p)]

    def stop(self, timeout: float = 120.0) -> list[str]:  # type: ignore[override]
        """SIGTERM and wait; then make sure no cgroup of ours is left. Returns the cgroups that were left
        (and have been removed by force), which is a bug of the daemon."""
        try:
            super().stop(timeout)
        except subprocess.TimeoutExpired:
            pass  # killed by the harness
        left = remove_cgroups(self.subtree)
        unmount_output_tmpfs(self.run_dir)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        return left


@contextlib.contextmanager
def daemon(config: dict | None = None, patch: str = "") -> Iterator[BenchDaemon]:
    d = BenchDaemon(config, patch)
    try:
        yield d.start()
    finally:
        left = d.stop()
        if left:
            print(f"WARNING: the daemon left {len(left)} cgroup(s) behind (removed by the benchmark): {left[:3]}")


def grpc_channel(addr: str, ca: str, cert: str, key: str, aio: bool = False):
    """A mutual-TLS channel with its own connection (channels do not share subchannels/connections)."""
    import grpc

    credentials = grpc.ssl_channel_credentials(Path(ca).read_bytes(), Path(key).read_bytes(), Path(cert).read_bytes())
    options = [("grpc.max_receive_message_length", 16 << 20), ("grpc.use_local_subchannel_pool", 1)]
    if aio:
        return grpc.aio.secure_channel(addr, credentials, options=options)
    return grpc.secure_channel(addr, credentials, options=options)


def start_job(stub, argv: list[str], **limits):
    from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

    request = pb.StartJobRequest(command=pb.Command(command=argv[0], arguments=argv[1:]), limits=pb.Limits(**limits))
    return stub.StartJob(request, timeout=60)


def list_all_jobs(stub) -> list:
    """Every job the caller sees, following ListJobs pages where the API has them."""
    from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

    jobs: list = []
    request = pb.ListJobsRequest()
    for _ in range(10_000):
        response = stub.ListJobs(request, timeout=60)
        jobs += response.jobs
        token = getattr(response, "next_page_token", "")
        if not token:
            break
        request = pb.ListJobsRequest(page_token=token)
    return jobs


def wait_job(stub, job_id: str):
    from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

    return stub.WaitJob(pb.WaitJobRequest(job_id=job_id), timeout=300)


def jobs_cpu_seconds(subtree: str) -> float:
    """CPU used so far in the jobs' cgroups of a subtree (hierarchical: jobs removed since still count)."""
    for path in cgroup_dirs(subtree):
        if path.endswith("/jobs") and Path(path, "cpuacct.usage").exists():
            return int(Path(path, "cpuacct.usage").read_text()) / 1e9
        if path.endswith("/jobs") and Path(path, "cpu.stat").exists():
            for line in Path(path, "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
    return 0.0


def make_data_file(size: int) -> str:
    """A file of `size` incompressible bytes on tmpfs (the job `cat`s it). The caller removes it."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, path = tempfile.mkstemp(prefix="jobworkerd-bench-data-", dir=shm)
    os.close(fd)
    subprocess.run(["head", "-c", str(size), "/dev/urandom"], stdout=open(path, "wb"), check=True, timeout=120)
    os.chmod(path, 0o644)
    return path


# ---- plain TLS sockets: the baseline of the streaming benchmarks -------------------------------------------------


def tls_server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3  # negotiates TLS_AES_256_GCM_SHA384, as grpc does here
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def tls_client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    return context


def tls_file_server(cert: str, key: str, ca: str, path: str, connections: int, port_queue, deadline_s: float) -> None:
    """Process body: accept `connections` mutual-TLS connections (one thread each) and send each the whole
    file, read in CHUNK-sized preads and sent in CHUNK-sized writes, like the daemon's catch-up."""
    context = tls_server_context(cert, key, ca)
    listener = socket.create_server(("127.0.0.1", 0), backlog=connections + 8)
    listener.settimeout(deadline_s)
    port_queue.put(listener.getsockname()[1])

    sending_cpu: list[float] = []

    def serve(conn: socket.socket) -> None:
        import resource

        try:
            with context.wrap_socket(conn, server_side=True) as tls, open(path, "rb", buffering=0) as handle:
                tls.recv(1)  # the client says when: connections are made before the clock starts
                before = resource.getrusage(resource.RUSAGE_THREAD)
                fd, offset = handle.fileno(), 0
                while True:
                    data = os.pread(fd, CHUNK, offset)
                    if not data:
                        break
                    tls.sendall(data)
                    offset += len(data)
                after = resource.getrusage(resource.RUSAGE_THREAD)
                sending_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                with contextlib.suppress(OSError):
                    tls.unwrap()
        except OSError:
            pass

    threads = []
    for _ in range(connections):
        conn, _ = listener.accept()
        conn.settimeout(deadline_s)
        thread = threading.Thread(target=serve, args=(conn,), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(deadline_s)
    listener.close()
    port_queue.put(sum(sending_cpu))  # CPU of the sending threads while sending (no start-up, no handshakes)


def tls_connect(context: ssl.SSLContext, port: int, deadline_s: float) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=deadline_s)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")  # handshakes here


def tls_read_all(tls: ssl.SSLSocket) -> tuple[int, str, float, float]:
    """On a connected socket: ask the server to send (one byte), read until EOF. Returns bytes, protocol
    and cipher, and the CLOCK_MONOTONIC times of the request and of EOF."""
    buffer = bytearray(CHUNK)
    total = 0
    with tls:
        cipher = f"{tls.version()} {tls.cipher()[0]}"
        start = time.monotonic()
        tls.sendall(b"g")
        while True:
            n = tls.recv_into(buffer)
            if not n:
                break
            total += n
    return total, cipher, start, time.monotonic()


# ---- client workers in separate processes ---------------------------------------------------------------------


def _rusage_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stream_worker(kind: str, args: dict, n_streams: int, ready, go, results) -> None:
    """Process body: `n_streams` clients of one kind, connected first, started together on `go`.

    kind "grpc-bytes": StreamOutput of args["job_id"] from byte 0 on its own mTLS channel, counting bytes.
    kind "grpc-lines": the same, following; each line is a time.time_ns() stamp: records receive time - stamp.
    kind "tls-bytes":  a plain TLS socket to args["port"] (connected first), counting bytes until EOF.
    kind "local-bytes": a local pread of args["path"] in CHUNK-sized reads.
    kind "inotify-lines": a local `tail -f` of args["path"] (one inotify watch, read on every IN_MODIFY)
                        until args["lines"] lines have come, timing lines as "grpc-lines" does.
    Puts one dict on `results`: bytes, start/end (CLOCK_MONOTONIC, comparable across processes), latencies
    (ms, lines kind), errors, this process's CPU seconds from the start signal to the end."""
    deadline = args.get("deadline_s", 120.0)
    out = {"bytes": 0, "msgs": 0, "start": 0.0, "end": 0.0, "lat_ms": [], "errors": [], "cpu": 0.0, "info": ""}
    try:
        if kind in ("tls-bytes", "local-bytes"):
            box: list = []
            if kind == "tls-bytes":
                context = tls_client_context(args["cert"], args["key"], args["ca"])
                sockets = [tls_connect(context, args["port"], deadline) for _ in range(n_streams)]

                def reader(i: int) -> None:
                    try:
                        box.append(tls_read_all(sockets[i]))
                    except Exception as exc:  # noqa: BLE001 - reported back
                        out["errors"].append(repr(exc))
            else:

                def reader(i: int) -> None:
                    total = 0
                    with open(args["path"], "rb", buffering=0) as handle:
                        while data := os.pread(handle.fileno(), CHUNK, total):
                            total += len(data)
                    box.append((total, "", 0.0, 0.0))

            ready.put(os.getpid())
            go.wait(deadline)
            out["start"], out["cpu0"] = time.monotonic(), _rusage_cpu()
            threads = [threading.Thread(target=reader, args=(i,)) for i in range(n_streams)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(deadline)
            out["end"] = time.monotonic()
            out["bytes"] = sum(item[0] for item in box)
            out["info"] = box[0][1] if box else ""
        elif kind == "inotify-lines":
            ready.put(os.getpid())
            go.wait(deadline)
            out["start"], out["cpu0"] = time.monotonic(), _rusage_cpu()
            _inotify_follow(args["path"], args["lines"], deadline, out)
            out["end"] = time.monotonic()
        else:
            asyncio.run(_grpc_streams(kind, args, n_streams, ready, go, out))
    except Exception as exc:  # noqa: BLE001 - reported back
        out["errors"].append(repr(exc))
        with contextlib.suppress(Exception):
            ready.put(os.getpid())
    out["cpu"] = _rusage_cpu() - out.get("cpu0", 0.0)  # from the start signal on
    results.put(out)


def _inotify_follow(path: str, expected_lines: int, deadline: float, out: dict) -> None:
    import ctypes
    import select

    libc = ctypes.CDLL(None, use_errno=True)
    ifd = libc.inotify_init1(0o2000000)  # IN_CLOEXEC
    if ifd < 0 or libc.inotify_add_watch(ifd, path.encode(), 0x2) < 0:  # IN_MODIFY
        raise OSError(ctypes.get_errno(), f"inotify on {path}")
    poller = select.poll()
    poller.register(ifd, select.POLLIN)
    lat: list[float] = out["lat_ms"]
    seen, offset, tail = 0, 0, b""
    end = time.monotonic() + deadline
    with open(path, "rb", buffering=0) as handle:
        while seen < expected_lines and time.monotonic() < end:
            while data := os.pread(handle.fileno(), CHUNK, offset):
                now = time.time_ns()
                offset += len(data)
                out["bytes"] += len(data)
                lines = (tail + data).split(b"\n")
                tail = lines.pop()
                seen += len(lines)
                lat += [(now - int(line)) / 1e6 for line in lines if not line.startswith(b"w")]
            if seen < expected_lines and poller.poll(200):
                os.read(ifd, 65536)
    os.close(ifd)


async def _grpc_streams(kind: str, args: dict, n_streams: int, ready, go, out: dict) -> None:
    import grpc

    from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb
    from jobworkerd.gen.jobworker.v1 import jobworker_pb2_grpc as pb_grpc

    deadline = args.get("deadline_s", 120.0)
    channels = [grpc_channel(args["addr"], args["ca"], args["cert"], args["key"], aio=True) for _ in range(n_streams)]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 30)
        stubs = [pb_grpc.JobWorkerStub(c) for c in channels]
        ready.put(os.getpid())
        await asyncio.get_running_loop().run_in_executor(None, go.wait, deadline)
        follow = kind == "grpc-lines"
        request = pb.StreamOutputRequest(job_id=args["job_id"], no_follow=not follow)
        lat: list[float] = out["lat_ms"]

        async def one(stub) -> int:
            total = 0
            tail = b""
            async for chunk in stub.StreamOutput(request, timeout=deadline):
                out["msgs"] += 1
                if follow:
                    now = time.time_ns()
                    lines = (tail + chunk.data).split(b"\n")
                    tail = lines.pop()
                    for line in lines:
                        if not line.startswith(b"w"):  # "w..." lines are the writer's warm-up
                            lat.append((now - int(line)) / 1e6)
                total += len(chunk.data)
            return total

        out["start"], out["cpu0"] = time.monotonic(), _rusage_cpu()
        done = await asyncio.gather(*(one(s) for s in stubs), return_exceptions=True)
        out["end"] = time.monotonic()
        for item in done:
            if isinstance(item, BaseException):
                out["errors"].append(repr(item))
            else:
                out["bytes"] += item
    except grpc.aio.AioRpcError as exc:
        out["errors"].append(f"{exc.code()}: {exc.details()}")
    finally:
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)


def run_clients(kind: str, args: dict, n_streams: int, n_procs: int, before_go=None, after_go=None,
                timeout: float = 180.0) -> dict:
    """Spread `n_streams` clients of one kind over `n_procs` spawned processes; connect all, then start them
    together. Returns the merged results: bytes, seconds (first start to last end), latencies, errors,
    clients' CPU seconds. `before_go()` runs once every client is connected (e.g. start the job), `after_go()`
    right after they have been told to start; what they return is in "before" and "after"."""
    ready, results, go = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Event()
    counts = [n_streams // n_procs + (1 if i < n_streams % n_procs else 0) for i in range(n_procs)]
    procs = [SPAWN.Process(target=stream_worker, args=(kind, args, c, ready, go, results), daemon=True)
             for c in counts if c]
    for proc in procs:
        proc.start()
    merged = {"bytes": 0, "msgs": 0, "lat_ms": [], "errors": [], "cpu": 0.0, "info": "", "seconds": 0.0}
    try:
        for _ in procs:
            ready.get(timeout=60)
        merged["before"] = before_go() if before_go else None
        t_go = time.monotonic()
        go.set()
        merged["after"] = after_go() if after_go else None
        outs = [results.get(timeout=timeout) for _ in procs]
        for out in outs:
            merged["bytes"] += out["bytes"]
            merged["msgs"] += out["msgs"]
            merged["lat_ms"] += out["lat_ms"]
            merged["errors"] += out["errors"]
            merged["cpu"] += out["cpu"]
            merged["info"] = merged["info"] or out["info"]
        merged["seconds"] = max(o["end"] for o in outs) - t_go
        merged["go"] = t_go
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return merged


@contextlib.contextmanager
def tls_server_process(cert: str, key: str, ca: str, path: str, connections: int, deadline_s: float = 120.0):
    """A plain TLS file server in its own process; yields a dict with its "port"; once the body is done and
    the server has sent everything, "cpu" holds the server's CPU seconds."""
    port_queue = SPAWN.Queue()
    proc = SPAWN.Process(target=tls_file_server, args=(cert, key, ca, path, connections, port_queue, deadline_s),
                         daemon=True)
    proc.start()
    info = {"port": port_queue.get(timeout=30), "cpu": float("nan")}
    try:
        yield info
        info["cpu"] = port_queue.get(timeout=deadline_s)
    finally:
        proc.join(deadline_s)
        if proc.is_alive():
            proc.kill()
            proc.join()


# ---- experiments: candidate daemon changes, patched into a throwaway daemon's memory (the code is unchanged) ----

# Catch-up: 1 MiB per read and per message instead of 256 KiB, and OutputChunk serialized by hand (field 1
# bytes, field 2 varint) in one join instead of building a protobuf message and serializing it (one copy less).
PATCH_BIG_CHUNKS = "import jobworkerd.worker.output as _o; _o.READ_CHUNK = 1 << 20"
PATCH_RAW_CHUNKS = """
import jobworkerd.gen.jobworker.v1.jobworker_pb2 as _pb


def _varint(n):
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _RawChunk:
    __slots__ = ("raw",)

    def __init__(self, data=b"", offset=0):
        self.raw = b"".join((b"\\x0a", _varint(len(data)), data, b"\\x10", _varint(offset)))

    def SerializeToString(self):
        return self.raw


_pb.OutputChunk = _RawChunk
"""


# ---- profiles (for targets that are missed) ------------------------------------------------------------------


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far per thread (TID) of a process."""
    out: dict[int, float] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        out[int(task)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def thread_names(pid: int) -> dict[int, str]:
    """TID -> Python thread name, from `py-spy dump` (threads without a Python state are grpc's C++ threads)."""
    spy = py_spy()
    if not spy:
        return {pid: "MainThread"}
    result = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'^Thread (\d+) \([^)]*\): "(.*)"', result.stdout, re.M)}


def _thread_group(name: str | None) -> str:
    if name is None:
        return "grpc C++ threads"
    if name == "MainThread":
        return "MainThread (asyncio loop)"
    if "_poll_wrapper" in name:
        return "grpc aio poller thread"
    return re.sub(r"_\d+$", "", name) + " threads"


def py_spy() -> str | None:
    candidate = os.path.join(os.path.dirname(PY), "py-spy")
    return candidate if os.path.exists(candidate) else shutil.which("py-spy")


RATE = 200


@contextlib.contextmanager
def profile_daemon(pid: int, label: str, top: int = 12, native: bool = False):
    """Profile a process while the body runs: CPU per thread (from /proc) and, where py-spy is installed,
    the Python functions on CPU (self and inclusive, as % of non-idle samples). Prints both."""
    spy = py_spy()
    proc, raw = None, None
    if spy:
        raw = tempfile.NamedTemporaryFile(prefix="jobworkerd-bench-pyspy-", suffix=".txt", delete=False).name
        # --native (C/Cython frames, e.g. grpc's cygrpc) pauses the process at each sample: profile runs are
        # separate from measured ones.
        argv = [spy, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw", "--output", raw,
                "--function"] + (["--native"] if native else ["--nonblocking"])
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached
    before, t0 = thread_cpu(pid), time.monotonic()
    try:
        yield
    finally:
        elapsed = time.monotonic() - t0
        after = thread_cpu(pid)
        if proc is not None:  # stop the recorder before `py-spy dump` attaches (--native holds the process)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        names = thread_names(pid)
        groups: dict[str, float] = {}
        for tid, seconds in after.items():
            group = _thread_group(names.get(tid))
            groups[group] = groups.get(group, 0.0) + seconds - before.get(tid, 0.0)
        total = sum(groups.values())
        print(f"PROFILE: {label} ({elapsed:.1f} s)")
        print(f"  daemon CPU {total / elapsed:.2f} cores; by thread: "
              + ", ".join(f"{name} {v / elapsed:.2f}" for name, v in sorted(groups.items(), key=lambda kv: -kv[1])
                          if v > 0.005 * elapsed))
        if raw is not None:
            _print_py_spy(raw, top)
            os.unlink(raw)
        else:
            print("  (py-spy not installed: `.venv/bin/pip install py-spy` for the Python functions)")


def _print_py_spy(path: str, top: int) -> None:
    selfs: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r"^0x[0-9a-f]+ \((.*)\)$", r"[native code in \1]", re.sub(r" \((.*?):\d+\)$", r" (\1)", f))
                  for f in stack.split(";")]
        total += count
        selfs[frames[-1]] = selfs.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        print("  py-spy: no samples")
        return
    skip = ("Thread._bootstrap", "Thread.run", "_worker (concurrent", "_WorkItem.run", "<module>", "_run_module",
            "run (asyncio/runners", "Runner.run", "_run_code", "main (jobworkerd", "serve (jobworkerd",
            "BaseEventLoop.run_", "_run_once", "Handle._run", "Context.run", "asyncio.run")
    print(f"  py-spy: {total} non-idle samples at {RATE} Hz ({total / RATE:.1f} thread-seconds); self:")
    selfs.pop("", None)
    inclusive.pop("", None)
    for frame, count in sorted(selfs.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * count / total:5.1f}%  {frame}")
    print("  inclusive:")
    shown = 0
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1]):
        if frame.startswith("[native code in") or any(frame.startswith(s) or s in frame for s in skip):
            continue
        print(f"    {100 * count / total:5.1f}%  {frame}")
        shown += 1
        if shown >= top:
            break


# ---- clean-up after an interrupted run -------------------------------------------------------------------------


def cleanup_stale() -> int:
    """Remove what benchmarks of dead processes left: cgroup subtrees jobworkerd-bench-<pid>-<n> whose pid is
    gone (their processes are killed first). Returns how many subtrees were removed."""
    subtrees: set[str] = set()
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            base = Path("/sys/fs/cgroup") / (controller.removeprefix("name=") or "unified") / path.lstrip("/")
            with contextlib.suppress(OSError):
                for entry in base.iterdir():
                    match = re.fullmatch(r"jobworkerd-bench-(\d+)-\d+", entry.name)
                    if match and entry.is_dir() and not Path(f"/proc/{match.group(1)}").exists():
                        subtrees.add(entry.name)
    for subtree in sorted(subtrees):
        left = remove_cgroups(subtree)
        print(f"cleanup: removed {len(left)} cgroup directories of {subtree} (a benchmark died without cleaning up)")
    return len(subtrees)


if __name__ == "__main__" and sys.argv[1:] == ["cleanup"]:
    cleanup_stale()
