"""Shared helpers for benchmarks: percentiles, a throwaway JobManager, and ratio printing.

Every figure is printed beside a baseline measured in the same run, as a ratio: these machines are
noisy and absolute times drift from run to run.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
from collections.abc import Iterator


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(name: str, values_s: list[float]) -> dict[str, float]:
    return {"name": name, "p50": percentile(values_s, 50) * 1e3, "p90": percentile(values_s, 90) * 1e3,
            "mean": statistics.fmean(values_s) * 1e3, "n": len(values_s)}


def print_table(rows: list[dict], baseline: str) -> None:
    base = next(r for r in rows if r["name"] == baseline)
    print(f"{'':44} {'p50 ms':>8} {'p90 ms':>8} {'p50 ratio':>10} {'n':>5}")
    for row in rows:
        ratio = row["p50"] / base["p50"] if base["p50"] else float("nan")
        print(f"{row['name']:44} {row['p50']:8.2f} {row['p90']:8.2f} {ratio:9.2f}x {row['n']:5d}")
    print(f"(ratios against: {baseline})")


@contextlib.contextmanager
def manager(**config) -> Iterator["object"]:
    from jobworkerd.config import config_from_dict
    from jobworkerd.worker.manager import JobManager

    with tempfile.TemporaryDirectory(prefix="jobworkerd-bench-") as tmp:
        settings = {"state_dir": f"{tmp}/state", "run_dir": f"{tmp}/run",
                    "cgroup": {"subtree": f"jobworkerd-bench-{os.getpid()}"}, **config}
        with JobManager(config_from_dict(settings)) as m:
            yield m
