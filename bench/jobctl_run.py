"""`jobctl run -- true` end to end (a fresh process, as a person runs it), and where the time goes:

  - interpreter start: `python -I -S -c pass`, `python -S -c pass`, `python -c pass` (the venv's python,
    whose site runs the editable install's .pth finder);
  - imports: `python -m jobctl --help` (argparse only; grpc is not imported), and the imports of the
    run path (`python -c 'import jobctl.cli, jobctl.commands'`), wall time; plus a -X importtime
    breakdown of a real `jobctl run -- true` by top-level package (self times, which add up);
  - TLS handshake + first RPC from a warm interpreter: a new channel (its own connection) until ready,
    then one GetJob;
  - the RPCs of `run` on a warm channel: StartJob, StreamOutput (following until the job ends), WaitJob.

    python bench/jobctl_run.py [N]     (as root; default N=20)

Target (issue 6): jobctl run -- true <= 250 ms end to end (p50).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PY, REPO, daemon, grpc_channel, header, print_table, start_job, summary, verdict  # noqa: E402


def wall(argv: list[str], env: dict[str, str] | None = None, check: bool = True) -> float:
    t = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    elapsed = time.perf_counter() - t
    if check and result.returncode != 0:
        raise RuntimeError(f"{argv} exited {result.returncode}: {result.stderr.decode(errors='replace')}")
    return elapsed


def jobctl_argv() -> list[str]:
    """The installed console script (what `jobctl` is after setup), else python -m jobctl."""
    script = os.path.join(os.path.dirname(PY), "jobctl")
    return [script] if os.path.exists(script) else [PY, "-m", "jobctl"]


def importtime_by_package(env: dict[str, str]) -> tuple[float, list[tuple[str, float]]]:
    """-X importtime of a real `jobctl run -- true`: total import time and self time per top-level package."""
    result = subprocess.run([PY, "-X", "importtime", "-m", "jobctl", "run", "--", "true"], env=env, cwd=str(REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    groups: dict[str, float] = defaultdict(float)
    for line in result.stderr.decode(errors="replace").splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            groups[match.group(4).split(".")[0]] += int(match.group(1)) / 1e3
    total = sum(groups.values())
    return total, sorted(groups.items(), key=lambda kv: -kv[1])


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    header(f"jobctl run -- true end to end: {n} runs per variant, interleaved")
    import grpc

    from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb
    from jobworkerd.gen.jobworker.v1 import jobworker_pb2_grpc as pb_grpc

    jobctl = jobctl_argv()
    with daemon() as d:
        env = d.jobctl_env()
        addr, ca, cert, key = d.client_args()
        stub = d.stub()
        probe = start_job(stub, ["/bin/true"])
        variants = {
            "python -I -S -c pass": [PY, "-I", "-S", "-c", "pass"],
            "python -S -c pass": [PY, "-S", "-c", "pass"],
            "python -c pass (venv: site + .pth finder)": [PY, "-c", "pass"],
            "jobctl --help (argparse, no grpc)": [*jobctl, "--help"],
            "python -c 'import jobctl.cli, jobctl.commands'": [PY, "-c", "import jobctl.cli, jobctl.commands"],
            f"{os.path.basename(jobctl[-1])} run -- true (end to end)": [*jobctl, "run", "--", "true"],
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        handshake, first_rpc, rpc_start, rpc_stream, rpc_wait, rpc_all = [], [], [], [], [], []
        for argv in variants.values():  # warm the page cache
            wall(argv, env)
        for _ in range(n):
            for name, argv in variants.items():
                times[name].append(wall(argv, env))
            # TLS handshake + first RPC, from this warm interpreter (grpc imported, certificates read).
            channel = grpc_channel(addr, ca, cert, key)
            t0 = time.perf_counter()
            grpc.channel_ready_future(channel).result(timeout=10)
            t1 = time.perf_counter()
            pb_grpc.JobWorkerStub(channel).GetJob(pb.GetJobRequest(job_id=probe.id), timeout=10)
            t2 = time.perf_counter()
            channel.close()
            handshake.append(t1 - t0)
            first_rpc.append(t2 - t1)
            # The RPCs of `run`, on a warm channel.
            t0 = time.perf_counter()
            job = start_job(stub, ["true"])
            t1 = time.perf_counter()
            for _chunk in stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id), timeout=30):
                pass
            t2 = time.perf_counter()
            stub.WaitJob(pb.WaitJobRequest(job_id=job.id), timeout=30)
            t3 = time.perf_counter()
            rpc_start.append(t1 - t0)
            rpc_stream.append(t2 - t1)
            rpc_wait.append(t3 - t2)
            rpc_all.append(t3 - t0)
        import_total, groups = importtime_by_package(env)

    rows = [summary(name, values) for name, values in times.items()]
    rows += [
        summary("TLS handshake (new channel until ready, warm)", handshake),
        summary("first RPC on it (GetJob)", first_rpc),
        summary("run's RPCs, warm channel: StartJob", rpc_start),
        summary("  StreamOutput (follow until the job ends)", rpc_stream),
        summary("  WaitJob", rpc_wait),
        summary("  all three", rpc_all),
    ]
    base_name = "python -c pass (venv: site + .pth finder)"
    print_table(rows, base_name)
    p50 = {row["name"]: row["p50"] for row in rows}
    total = p50[list(variants)[-1]]
    interp = p50[base_name]
    imports = p50["python -c 'import jobctl.cli, jobctl.commands'"] - interp
    tls = p50["TLS handshake (new channel until ready, warm)"] + p50["first RPC on it (GetJob)"]
    rpcs = p50["  all three"]
    print("where jobctl run -- true goes (p50s, ms):")
    print(f"  interpreter start incl. site   {interp:7.1f}")
    print(f"  imports of the run path        {imports:7.1f}   (import jobctl.cli+commands, minus python -c pass)")
    print(f"  TLS handshake + first RPC      {tls:7.1f}")
    print(f"  StartJob+StreamOutput+WaitJob  {rpcs:7.1f}")
    print(f"  rest (arg parsing, exit, ...)  {total - interp - imports - tls - rpcs:7.1f}")
    print(f"  total                          {total:7.1f}")
    print(f"-X importtime of `jobctl run -- true`: {import_total:.1f} ms of imports (self times, inflated by the "
          "measuring), by top-level package:")
    print("  " + ", ".join(f"{name} {ms:.1f}" for name, ms in groups[:10]))
    verdict("jobctl run -- true p50", total, 250, "ms", False)


if __name__ == "__main__":
    main()
