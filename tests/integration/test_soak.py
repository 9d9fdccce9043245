"""A short soak in CI: bench/soak.py (its own daemon) with 20 clients for 10 s. Every RPC must succeed,
every job must end, no cgroup may be left, and the daemon's open fds must return to their baseline.
The full run (200 clients, 60 s) is `python bench/soak.py`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from daemon_harness import REPO
from faultkit import report

pytestmark = pytest.mark.root


def test_short_soak_has_no_errors_and_fds_return_to_baseline(request):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--clients", "20", "--seconds", "10", "--users", "4",
         "--json"],
        capture_output=True, text=True, timeout=300,
    )
    print(result.stdout, result.stderr)
    lines = [line for line in result.stdout.splitlines() if line.startswith("SOAK-JSON ")]
    assert lines, f"no summary from the soak (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    summary = json.loads(lines[-1].removeprefix("SOAK-JSON "))
    report(request.config, "soak (20 clients, 10 s): {rpcs} RPCs, {jobs} jobs, errors {errors}; daemon RSS "
           "{before:.1f} -> {after:.1f} MB, fds {fds_before} -> {fds_after} (peak {fds_peak})".format(
               before=summary["rss_before"] / 1e6, after=summary["rss_after"] / 1e6, **summary))
    assert summary["errors"] == 0, summary["error_examples"]
    assert summary["jobs"] > 0 and summary["rpcs"] > summary["jobs"]
    assert summary["daemon_alive"]
    assert summary["job_cgroups_left"] == []
    assert summary["fds_peak"] > summary["fds_before"], "the run should have opened connections"
    assert summary["fds_after"] <= summary["fds_before"], summary
    assert summary["rss_after"] <= summary["rss_before"] + (64 << 20), summary
    assert result.returncode == 0, result.stdout
