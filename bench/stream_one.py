"""One client streaming a 512 MiB output after the job has finished (catch-up throughput), beside:

  - a plain Python TLS socket (ssl module, the daemon's own certificates, mutual TLS 1.3 with AES-GCM,
    loopback) sending the same file, pread and sent in 256 KiB chunks, to a reader in another process;
  - a local read of the same file (pread, 256 KiB chunks) in this process.

The output is incompressible (a file from /dev/urandom on tmpfs that the job `cat`s); the daemon's
output cap is raised to 1G. The gRPC client is this process (sync stub as jobctl uses, warm channel), the
daemon another; also shown: a grpc.aio client in a process of its own (connected before the clock starts).
The TLS reader is this process, the TLS sender another. Repeats are interleaved; medians. CPU per GB of
sender and receiver, which depends less on the machine's load than MB/s, is printed beside.

    python bench/stream_one.py [REPEATS] [SIZE_MIB]     (as root; default 5 repeats of 512 MiB)

Target (issue 6): gRPC >= 0.8x the plain TLS socket.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    CHUNK, MB, PATCH_BIG_CHUNKS, PATCH_RAW_CHUNKS, daemon, run_clients, header, make_data_file, print_rate_table, profile_daemon, start_job,
    tls_client_context, tls_connect, tls_read_all, tls_server_process, verdict, wait_job, cpu_seconds,
)


def grpc_once(stub, job_id: str, size: int) -> tuple[float, float]:
    from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

    total = 0
    t, cpu = time.monotonic(), time.process_time()
    for chunk in stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id), timeout=300):
        total += len(chunk.data)
    elapsed = time.monotonic() - t
    if total != size:
        raise RuntimeError(f"StreamOutput sent {total} bytes, expected {size}")
    return total / elapsed / MB, elapsed, (time.process_time() - cpu) / elapsed


def tls_once(d, path: str, size: int) -> tuple[float, str]:
    _addr, ca, cert, key = d.client_args()
    context = tls_client_context(cert, key, ca)
    with tls_server_process(d.server_cert, d.server_key, d.ca, path, 1) as server:
        tls = tls_connect(context, server["port"], 120)
        cpu = time.process_time()
        total, cipher, start, end = tls_read_all(tls)
        reader_cpu = time.process_time() - cpu
    if total != size:
        raise RuntimeError(f"TLS socket sent {total} bytes, expected {size}")
    return total / (end - start) / MB, cipher, server["cpu"] / (total / 1e9), reader_cpu / (total / 1e9)


def local_once(path: str, size: int) -> float:
    total = 0
    t = time.monotonic()
    with open(path, "rb", buffering=0) as handle:
        fd = handle.fileno()
        while True:
            data = os.pread(fd, CHUNK, total)
            if not data:
                break
            total += len(data)
    return total / (time.monotonic() - t) / MB


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    size = (int(sys.argv[2]) if len(sys.argv) > 2 else 512) << 20
    header(f"one stream of a {size >> 20} MiB output (catch-up), {repeats} interleaved repeats")
    data = make_data_file(size)
    try:
        with daemon({"limits": {"output_cap": "1G"}}) as d:
            stub = d.stub()
            job = start_job(stub, ["cat", data])
            done = wait_job(stub, job.id)
            if done.usage.output_bytes != size:
                raise RuntimeError(f"the job wrote {done.usage.output_bytes} bytes: {done}")
            output = d.output_path(job.id)
            addr, ca, cert, key = d.client_args()
            aio_args = {"addr": addr, "ca": ca, "cert": cert, "key": key, "job_id": job.id}
            aio_rates: list[float] = []
            grpc_rates, tls_rates, local_rates, daemon_cores, client_cores, tls_cpu_gb, reader_cpu_gb = ([] for _ in range(7))
            cipher = ""
            grpc_once(stub, job.id, size)  # warm up
            for _ in range(repeats):
                cpu0 = cpu_seconds(d.pid)
                rate, elapsed, client = grpc_once(stub, job.id, size)
                daemon_cores.append((cpu_seconds(d.pid) - cpu0) / elapsed)
                client_cores.append(client)
                grpc_rates.append(rate)
                result = run_clients("grpc-bytes", aio_args, 1, 1)
                if result["errors"] or result["bytes"] != size:
                    raise RuntimeError(f"aio client: {result['bytes']} bytes, errors {result['errors'][:2]}")
                aio_rates.append(size / result["seconds"] / MB)
                rate, cipher, cpu_gb, reader_gb = tls_once(d, output, size)
                tls_rates.append(rate)
                tls_cpu_gb.append(cpu_gb)
                reader_cpu_gb.append(reader_gb)
                local_rates.append(local_once(output, size))
            rows = [
                ("local read of the file (pread 256 KiB)", local_rates),
                (f"plain TLS socket ({cipher}, 256 KiB writes)", tls_rates),
                ("StreamOutput, one client (gRPC, mTLS)", grpc_rates),
                ("  the same with a grpc.aio client in another process", aio_rates),
            ]
            print_rate_table(rows, rows[1][0], "MB/s")
            daemon_cpu_gb = statistics.median(c / (r * MB / 1e9) for c, r in zip(daemon_cores, grpc_rates))
            print(f"while streaming (medians): daemon CPU {statistics.median(daemon_cores):.2f} cores, gRPC client "
                  f"(this process) {statistics.median(client_cores):.2f} cores")
            print(f"sender CPU per GB sent (medians; less tied to the machine's load): daemon {daemon_cpu_gb:.2f} s, "
                  f"plain TLS sender {statistics.median(tls_cpu_gb):.2f} s "
                  f"({daemon_cpu_gb / statistics.median(tls_cpu_gb):.2f}x)")
            client_cpu_gb = statistics.median(c / (r * MB / 1e9) for c, r in zip(client_cores, grpc_rates))
            print(f"receiver CPU per GB: gRPC Python client {client_cpu_gb:.2f} s, plain TLS reader "
                  f"{statistics.median(reader_cpu_gb):.2f} s ({client_cpu_gb / statistics.median(reader_cpu_gb):.2f}x)")
            ratio = statistics.median(grpc_rates) / statistics.median(tls_rates)
            line = verdict("one stream / plain TLS socket", ratio, 0.8, "x", True)
            if "MISSED" in line or os.environ.get("BENCH_PROFILE") == "1":
                with profile_daemon(d.pid, "the daemon during one more (unmeasured) stream", native=True):
                    grpc_once(stub, job.id, size)
        if "MISSED" in line or os.environ.get("BENCH_EXPERIMENT") == "1":
            experiment(data, size, min(repeats, 3))
    finally:
        os.unlink(data)


def experiment(data: str, size: int, repeats: int) -> None:
    """Candidate daemon changes, patched into the memory of throwaway daemons (the code is not changed):
    each row beside the daemon as it is and the plain TLS socket, measured in turn."""
    print("EXPERIMENT (not the daemon's figures: candidate changes patched into throwaway daemons):")
    variants = [
        ("daemon as it is (256 KiB messages)", ""),
        ("1 MiB reads and messages", PATCH_BIG_CHUNKS),
        ("1 MiB + OutputChunk serialized by hand", PATCH_BIG_CHUNKS + "\n" + PATCH_RAW_CHUNKS),
    ]
    rows, tls_rates = [], []
    for name, patch in variants:
        with daemon({"limits": {"output_cap": "1G"}}, patch=patch) as d:
            stub = d.stub()
            job = start_job(stub, ["cat", data])
            wait_job(stub, job.id)
            grpc_once(stub, job.id, size)
            rates, cpu_gb = [], []
            for _ in range(repeats):
                cpu0 = cpu_seconds(d.pid)
                rate, _elapsed, _client = grpc_once(stub, job.id, size)
                rates.append(rate)
                cpu_gb.append((cpu_seconds(d.pid) - cpu0) / (size / 1e9))
                tls_rates.append(tls_once(d, d.output_path(job.id), size)[0])
            rows.append((name, statistics.median(rates), statistics.median(cpu_gb)))
    base = statistics.median(tls_rates)
    print(f"  plain TLS socket (all rounds) {base:8.1f} MB/s")
    for name, rate, cpu_gb in rows:
        print(f"  {name:42} {rate:8.1f} MB/s {rate / base:6.2f}x the TLS socket; daemon {cpu_gb:.2f} s CPU per GB")


if __name__ == "__main__":
    main()
