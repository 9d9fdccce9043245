"""VM tier: the real .deb in a throwaway Debian 12 guest with systemd as PID 1 and pure cgroup v2.

One guest boot per session (software emulation is slow): the `guest` fixture builds the .deb
(scripts/build-deb.sh, or takes JOBWORKERD_DEB / the newest dist/ .deb with
JOBWORKERD_DEB_PREBUILT=1), builds or reuses the cached image (vm-harness.sh, with the .deb's
dependencies baked in: the guest has no network), boots it with a share holding the .deb and
guest_checks.py, and collects guest_checks.py's results. Each guest check is one test here; a
failure shows the check's details and the guest's journal. The share's out/ (results.json,
transcript.txt, journals, serial log) is copied to dist/vm-test/ for the record.

Needs root (debootstrap, qemu's 9p share as root) and qemu; skipped only if qemu cannot run at all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
HARNESS = HERE / "vm-harness.sh"
RECORD = REPO / "dist" / "vm-test"

# in the order guest_checks.py runs them
CHECKS = [
    "install",
    "service-active",
    "first-job",
    "job-group",
    "containment",
    "sandbox",
    "network-bridge",
    "man-pages",
    "bash-completion",
    "metrics-endpoint",
    "journal-fields",
    "transcript-limited-job",
    "delegation-placement",
    "memory-oom-killed",
    "cpu-throttled",
    "pids-fork-bomb-contained",
    "io-write-throttled",
    "job-group-io",
    "restart-keeps-history",
    "stop-leaves-nothing",
    "crash-restart",
    "reinstall-keeps-state",
    "purge",
]

GUEST_TIMEOUT = int(os.environ.get("VM_GUEST_TIMEOUT", "720"))  # guest_checks.py, inside the guest
VM_TIMEOUT = GUEST_TIMEOUT + 180  # plus boot and power-off


def _run(cmd: list[str], timeout: float, env: dict | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace", timeout=timeout)


def _deb(figures: dict) -> Path:
    if os.environ.get("JOBWORKERD_DEB"):
        return Path(os.environ["JOBWORKERD_DEB"]).resolve()
    if os.environ.get("JOBWORKERD_DEB_PREBUILT") == "1":
        debs = sorted((REPO / "dist").glob("jobworkerd_*.deb"), key=lambda p: p.stat().st_mtime)
        if debs:
            return debs[-1]
    start = time.monotonic()
    proc = _run(["scripts/build-deb.sh"], timeout=900, env={"LINTIAN": "0"})
    figures["deb build"] = f"{time.monotonic() - start:.0f} s"
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-deb.sh failed:\n{proc.stdout[-5000:]}")
    built = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("build-deb: /")]
    return Path(built[-1])


def _depends(deb: Path) -> str:
    """The .deb's Depends as sorted package names, comma-separated: baked into the guest image."""
    field = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], check=True, capture_output=True, text=True).stdout
    names = {alt.split("|")[0].split("(")[0].split(":")[0].strip() for alt in field.split(",")}
    return ",".join(sorted(n for n in names if n))


def _qemu_unusable() -> str | None:
    if os.geteuid() != 0:
        return "the VM tier needs root (debootstrap, qemu with a 9p share)"
    deps = _run([str(HARNESS), "deps"], timeout=900)
    if shutil.which("qemu-system-x86_64") is None:
        return f"qemu-system-x86_64 is not installed and could not be installed:\n{deps.stdout[-2000:]}"
    try:  # start a machine-less emulator and quit it from its monitor
        probe = _run(["qemu-system-x86_64", "-accel", "tcg", "-machine", "none", "-nodefaults", "-display", "none",
                      "-S", "-monitor", "stdio"], timeout=60, stdin="quit\n")
    except subprocess.TimeoutExpired:
        return "qemu-system-x86_64 did not start within 60 s"
    if probe.returncode != 0:
        return f"qemu-system-x86_64 cannot start: {probe.stdout[-2000:]}"
    return None


@pytest.fixture(scope="module")
def deb(vm_state) -> Path:
    vm_state["tier_start"] = time.monotonic()
    if os.geteuid() != 0:
        pytest.skip("the VM tier needs root (build dependencies, debootstrap, qemu with a 9p share)")
    return _deb(vm_state["figures"])


@pytest.fixture(scope="module")
def guest(deb, vm_state) -> dict:
    figures = vm_state["figures"]
    reason = _qemu_unusable()
    if reason:
        pytest.skip(reason)

    start = time.monotonic()
    extra = _depends(deb)
    image = _run([str(HARNESS), "image"], timeout=1800, env={"EXTRA_PKGS": extra})
    took = time.monotonic() - start
    if image.returncode != 0:
        pytest.fail(f"guest image build failed:\n{image.stdout[-5000:]}")
    built = "building" in image.stdout
    figures["guest image"] = f"{'built' if built else 'cached'} in {took:.0f} s ({image.stdout.strip().splitlines()[-1]})"

    # our own directory, not pytest's tmp_path: other pytest sessions on this machine prune those
    share = Path(tempfile.mkdtemp(prefix="jobworkerd-vm-share."))
    shutil.copy2(deb, share / deb.name)
    shutil.copy2(HERE / "guest_checks.py", share / "guest_checks.py")
    (share / "run.sh").write_text("#!/bin/sh\nexec /usr/bin/python3 /mnt/host/guest_checks.py\n")
    (share / "run.sh").chmod(0o755)
    (share / "run.timeout").write_text(f"{GUEST_TIMEOUT}\n")
    out = share / "out"
    vm_state["out"] = out

    start = time.monotonic()
    try:
        run = _run([str(HARNESS), "run", str(share)], timeout=VM_TIMEOUT + 60,
                   env={"EXTRA_PKGS": extra, "VM_TIMEOUT": str(VM_TIMEOUT)})
        harness_log = run.stdout
    except subprocess.TimeoutExpired as exc:
        harness_log = f"harness timed out after {exc.timeout}s"
    figures["guest run (boot + checks + power-off)"] = f"{time.monotonic() - start:.0f} s"
    boot = (out / "boot.txt").read_text() if (out / "boot.txt").exists() else ""
    if boot:
        figures["guest boot to systemd ready"] = boot.splitlines()[0]
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {"checks": [], "facts": {}}
    for key in ("apt_install_seconds", "daemon_start_to_ready_seconds", "jobctl_run_true_seconds",
                "systemctl_restart_seconds", "systemctl_stop_seconds", "guest_script_seconds"):
        if key in results["facts"]:
            figures[f"guest {key}"] = results["facts"][key]
    figures["whole VM tier"] = f"{time.monotonic() - vm_state['tier_start']:.0f} s"

    shutil.rmtree(RECORD, ignore_errors=True)
    RECORD.mkdir(parents=True)
    if out.exists():
        shutil.copytree(out, RECORD, dirs_exist_ok=True)
    (RECORD / "harness.log").write_text(harness_log)
    (RECORD / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    vm_state["out"] = RECORD
    shutil.rmtree(share, ignore_errors=True)
    return {"results": results, "deb": deb, "harness_log": harness_log, "out": RECORD}


@pytest.mark.parametrize("name", CHECKS)
def test_guest(guest, name):
    by_name = {c["name"]: c for c in guest["results"]["checks"]}
    if name not in by_name:
        reported = ", ".join(by_name) or "none"
        pytest.fail(f"the guest reported no result for {name!r} (reported: {reported}).\n"
                    f"harness:\n{guest['harness_log'][-3000:]}\n"
                    f"guest run.log tail:\n{_tail(guest['out'] / 'run.log', 40)}")
    entry = by_name[name]
    if not entry["ok"]:
        detail = json.dumps(entry.get("detail"), indent=2, default=str)
        pytest.fail(f"{name}: {entry.get('error')}\n{entry.get('traceback', '')}\ndetail: {detail}")


def test_lintian_clean(deb):
    proc = _run(["lintian", "--fail-on", "error", str(deb)], timeout=300)
    assert proc.returncode == 0, f"lintian reports errors:\n{proc.stdout}"


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return f"({path.name} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
