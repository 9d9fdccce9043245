"""50 concurrent streams of one job's 50 MiB output (catch-up, after the job finished): aggregate MB/s and
the daemon's peak RSS (VmRSS polled every 20 ms, and VmHWM), beside baselines in the same run:

  - 50 plain TLS sockets (ssl module, the daemon's certificates, mutual TLS 1.3 AES-GCM, loopback): one
    sender process with a thread per connection (pread + write in 256 KiB chunks), the same readers;
  - 50 local readers of the file (pread, 256 KiB chunks).

Clients: 50 gRPC clients, each on its own mTLS connection, spread over several processes (grpc.aio), all
connected before the clock starts; the same process layout for the TLS and local readers. The clients'
CPU is printed beside the daemon's: on 2 cores the clients compete with the daemon for the machine.

    python bench/stream_many.py [REPEATS] [STREAMS] [SIZE_MIB] [CLIENT_PROCS]   (default 3 50 50 5)

Targets (issue 6): >= 1 GB/s aggregate with daemon RSS <= 120 MB.
"""

from __future__ import annotations

import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    MB, RssPoller, cpu_seconds, daemon, header, make_data_file, print_rate_table, profile_daemon, run_clients,
    start_job, status_kb, tls_server_process, verdict, wait_job,
)


def check(result: dict, expected: int, what: str) -> None:
    if result["errors"] or result["bytes"] != expected:
        raise RuntimeError(f"{what}: {result['bytes']} bytes of {expected}; errors: {result['errors'][:3]}")


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    streams = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    size = (int(sys.argv[3]) if len(sys.argv) > 3 else 50) << 20
    procs = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    header(f"{streams} concurrent streams of a {size >> 20} MiB output, {procs} client processes, {repeats} repeats")
    data = make_data_file(size)
    expected = streams * size
    try:
        with daemon({"limits": {"output_cap": "1G"}}) as d:
            stub = d.stub()
            job = start_job(stub, ["cat", data])
            wait_job(stub, job.id)
            addr, ca, cert, key = d.client_args()
            output = d.output_path(job.id)
            grpc_args = {"addr": addr, "ca": ca, "cert": cert, "key": key, "job_id": job.id}
            rss_idle = status_kb(d.pid, "VmRSS")
            rates: dict[str, list[float]] = {"grpc": [], "tls": [], "local": []}
            peaks, daemon_cores, client_cores, tls_client_cores, tls_cpu_gb = [], [], [], [], []
            cipher = ""
            for _ in range(repeats):
                with RssPoller(d.pid) as poller:
                    result = run_clients("grpc-bytes", grpc_args, streams, procs, before_go=lambda: cpu_seconds(d.pid))
                    daemon_cores.append((cpu_seconds(d.pid) - result["before"]) / result["seconds"])
                check(result, expected, "StreamOutput")
                peaks.append(poller.peak_kb)
                rates["grpc"].append(result["bytes"] / result["seconds"] / MB)
                client_cores.append(result["cpu"] / result["seconds"])

                with tls_server_process(d.server_cert, d.server_key, d.ca, output, streams) as server:
                    result = run_clients("tls-bytes", {"port": server["port"], "ca": ca, "cert": cert, "key": key},
                                         streams, procs)
                tls_cpu_gb.append(server["cpu"] / (expected / 1e9))
                check(result, expected, "TLS sockets")
                cipher = result["info"]
                rates["tls"].append(result["bytes"] / result["seconds"] / MB)
                tls_client_cores.append(result["cpu"] / result["seconds"])

                result = run_clients("local-bytes", {"path": output}, streams, procs)
                check(result, expected, "local readers")
                rates["local"].append(result["bytes"] / result["seconds"] / MB)
            hwm = status_kb(d.pid, "VmHWM")
            rows = [
                (f"{streams} local readers (pread 256 KiB)", rates["local"]),
                (f"{streams} plain TLS sockets ({cipher})", rates["tls"]),
                (f"{streams} StreamOutput clients (gRPC, mTLS)", rates["grpc"]),
            ]
            print_rate_table(rows, rows[1][0], "MB/s")
            peak_mb = max(peaks) / 1024
            print(f"daemon RSS: idle {rss_idle / 1024:.1f} MB, peak while streaming {peak_mb:.1f} MB "
                  f"(VmHWM {hwm / 1024:.1f} MB)")
            print(f"CPU while streaming (medians, cores): daemon {statistics.median(daemon_cores):.2f}, gRPC clients "
                  f"{statistics.median(client_cores):.2f}; TLS-socket clients {statistics.median(tls_client_cores):.2f}")
            daemon_cpu_gb = statistics.median(c / (r * MB / 1e9) for c, r in zip(daemon_cores, rates["grpc"]))
            client_cpu_gb = statistics.median(c / (r * MB / 1e9) for c, r in zip(client_cores, rates["grpc"]))
            tls_sender_gb = statistics.median(tls_cpu_gb)
            tls_client_gb = statistics.median(c / (r * MB / 1e9) for c, r in zip(tls_client_cores, rates["tls"]))
            cores = os.cpu_count() or 1
            print(f"CPU per GB (medians, s): daemon {daemon_cpu_gb:.2f} + gRPC clients {client_cpu_gb:.2f}; plain TLS "
                  f"sender {tls_sender_gb:.2f} + readers {tls_client_gb:.2f}; daemon / TLS sender "
                  f"{daemon_cpu_gb / tls_sender_gb:.2f}x")
            print(f"CPU-bound ceiling with the clients on this {cores}-core machine: gRPC "
                  f"{cores / (daemon_cpu_gb + client_cpu_gb) * 1e3:.0f} MB/s, plain TLS "
                  f"{cores / (tls_sender_gb + tls_client_gb) * 1e3:.0f} MB/s; the daemon alone on all cores "
                  f"{cores / daemon_cpu_gb * 1e3:.0f} MB/s")
            line1 = verdict(f"{streams} streams aggregate", statistics.median(rates["grpc"]), 1000, "MB/s", True)
            print(f"       ratio to the plain TLS sockets: "
                  f"{statistics.median(rates['grpc']) / statistics.median(rates['tls']):.2f}x")
            line2 = verdict("daemon peak RSS while streaming", peak_mb, 120, "MB", False)
            if "MISSED" in line1 + line2 or os.environ.get("BENCH_PROFILE") == "1":
                with profile_daemon(d.pid, f"the daemon during one more (unmeasured) run of {streams} streams"):
                    run_clients("grpc-bytes", grpc_args, streams, procs)
    finally:
        os.unlink(data)


if __name__ == "__main__":
    main()
