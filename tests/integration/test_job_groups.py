"""Job groups on this host's real cgroup v1 (issue 12, item 2): each user's jobs in jobs/user-<name>,
admins' in jobs/admin, the groups' ceilings enforced by the kernel over all of a group's jobs together,
no group left once its jobs have ended, and old-layout (jobs/<id>) leftovers reconciled. io ceilings are
refused on v1 at start, with a config error, because blkio throttling is not hierarchical here (measured
below, so a kernel that changes this is noticed); on v2 they are the VM tier's `job-group-io` check.

The ceilings are tested through JobManager directly (readiness through the jobs' output, never by
sleeping); the placement by identity through the real daemon and jobctl with user and admin certificates.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from faultkit import CGROUP_ROOT, V1_CONTROLLERS, own_cgroups, v1_usable

from jobworkerd.config import ConfigError, config_from_dict
from jobworkerd.worker import JobGroup, JobManager, JobSpec, Limits, Reason

SUBTREE = f"jobworkerd-groups-{os.getpid()}"
PYTHON = "/usr/bin/python3"
DEADLINE = 30.0
ALICE, BOB = JobGroup.of("alice", False), JobGroup.of("bob", False)


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: real cgroups and namespaces"),
    pytest.mark.skipif(not v1_usable(), reason="needs cgroup v1 controllers mounted under /sys/fs/cgroup (hybrid host)"),
]


def jobs_dir(controller: str, subtree: str = SUBTREE) -> Path:
    return CGROUP_ROOT / controller / own_cgroups().get(controller, "/").lstrip("/") / subtree / "jobs"


def leftovers(subtree: str = SUBTREE) -> list[str]:
    found = []
    for controller in V1_CONTROLLERS:
        base = jobs_dir(controller, subtree).parent
        if base.exists():
            found += [str(base)] + [str(p) for p in base.rglob("*") if p.is_dir()]
    return found


@pytest.fixture
def make_manager(tmp_path):
    made: list[JobManager] = []

    def make(**limits) -> JobManager:
        config = config_from_dict({
            "state_dir": str(tmp_path / "state"), "run_dir": str(tmp_path / "run"),
            "cgroup": {"subtree": SUBTREE}, "stop_grace": "2s", "limits": limits,
        })
        m = JobManager(config).open()
        made.append(m)
        return m

    yield make
    for m in made:
        if not m._closing:
            m.close()
    assert leftovers() == [], "job or group cgroups left behind"


def output(m: JobManager, job_id: str) -> bytes:
    return (Path(m.jobs_dir) / job_id / "output").read_bytes()


def wait_for_output(m: JobManager, job_id: str, marker: bytes) -> bytes:
    deadline = time.monotonic() + DEADLINE
    while marker not in (data := output(m, job_id)):
        record = m.status(job_id)
        if record.finished:
            pytest.fail(f"job ended before printing {marker!r}: {record}\noutput: {data!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"job did not print {marker!r} within {DEADLINE}s: {data!r}")
        time.sleep(0.01)
    return data


def wait_gone(path: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while path.exists():
        assert time.monotonic() < deadline, f"{path} still exists"
        time.sleep(0.01)


# A job that touches `mib` MiB, says so, and holds them until the release file exists.
HOLD = """
import os, sys, time
hold = b"x" * ({mib} << 20)
print("holding", flush=True)
while not os.path.exists({release!r}):
    time.sleep(0.02)
print("released", len(hold) >> 20, flush=True)
"""


def hold(m: JobManager, group: JobGroup, mib: int, release: Path, **limits):
    # The release file is in the job's directory: the one host directory a job sees written (its /tmp is its own).
    return m.start(JobSpec(PYTHON, ("-S", "-c", HOLD.format(mib=mib, release=str(release))), directory=str(release.parent),
                           limits=Limits(**limits)), owner=group.name, group=group)


def test_a_per_user_memory_ceiling_bounds_the_sum_of_one_users_jobs_and_spares_the_others(make_manager, tmp_path):
    m = make_manager(per_user={"memory": "64M"})
    release = tmp_path / "release"
    first = hold(m, ALICE, 40, release, memory=256 << 20)
    wait_for_output(m, first.id, b"holding")  # one job alone fits under alice's 64M
    group = jobs_dir("memory") / "user-alice"
    assert (group / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
    assert (group / "memory.use_hierarchy").read_text().strip() == "1"
    assert (group / first.id / "memory.limit_in_bytes").read_text().strip() == str(256 << 20)
    others = hold(m, BOB, 40, release, memory=256 << 20)
    wait_for_output(m, others.id, b"holding")
    second = hold(m, ALICE, 40, release, memory=256 << 20)  # each under its own 256M; together over 64M
    deadline = time.monotonic() + DEADLINE
    while not (m.status(first.id).finished or m.status(second.id).finished):
        assert time.monotonic() < deadline, "neither of alice's jobs was OOM-killed at her ceiling"
        time.sleep(0.02)
    release.touch()
    ends = {job.id: m.wait(job.id, DEADLINE) for job in (first, second, others)}
    killed = [r for r in (ends[first.id], ends[second.id]) if r.reason is Reason.OOM_KILLED]
    assert len(killed) == 1, ends
    assert killed[0].usage.oom_kills >= 1 and killed[0].usage.memory_peak_bytes < 64 << 20
    survivor = ends[second.id] if killed[0].id == first.id else ends[first.id]
    assert survivor.reason is Reason.EXITED and survivor.exit_code == 0, survivor
    assert ends[others.id].reason is Reason.EXITED and ends[others.id].exit_code == 0, ends[others.id]
    assert b"released 40" in output(m, others.id)
    for controller in V1_CONTROLLERS:
        wait_gone(jobs_dir(controller) / "user-alice")
        wait_gone(jobs_dir(controller) / "user-bob")


FORKER = """
import os, time
children = failed = 0
for _ in range({n}):
    try:
        pid = os.fork()
    except OSError:
        failed += 1
        continue
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children += 1
print("forked", children, "failed", failed, flush=True)
while not os.path.exists({release!r}):
    time.sleep(0.02)
"""


def test_a_per_user_pids_ceiling_bounds_all_of_one_users_jobs_together(make_manager, tmp_path):
    m = make_manager(per_user={"pids": 20}, users={"bob": {"pids": None}})
    release = tmp_path / "release"

    def forker(group: JobGroup, n: int):
        return m.start(JobSpec(PYTHON, ("-S", "-c", FORKER.format(n=n, release=str(release))), limits=Limits(pids=100),
                               directory=str(release.parent)),
                       owner=group.name, group=group)

    first = forker(ALICE, 15)
    assert wait_for_output(m, first.id, b"failed").split()[:4] == [b"forked", b"15", b"failed", b"0"]
    second = forker(ALICE, 15)  # well under its own 100, but alice has 16 of her 20 already
    words = wait_for_output(m, second.id, b"failed").split()
    group = jobs_dir("pids") / "user-alice"
    current = int((group / "pids.current").read_text())
    assert (group / "pids.max").read_text().strip() == "20"
    assert int(words[3]) > 0 and int(words[1]) <= 3, words
    assert current <= 20
    bob = forker(BOB, 25)  # bob's override: no ceiling
    assert wait_for_output(m, bob.id, b"failed").split()[:4] == [b"forked", b"25", b"failed", b"0"]
    assert (jobs_dir("pids") / "user-bob" / "pids.max").read_text().strip() == "max"
    release.touch()
    for job in (first, second, bob):
        assert m.wait(job.id, DEADLINE).finished
    for controller in V1_CONTROLLERS:
        wait_gone(jobs_dir(controller) / "user-alice")
        wait_gone(jobs_dir(controller) / "user-bob")


def test_reconcile_kills_and_removes_an_old_layout_job_left_by_an_earlier_version(make_manager, tmp_path):
    """Before groups, jobs lived at jobs/<id>; a daemon upgraded after a crash finds them there."""
    old_id = "0ddba11c0ffe"
    dirs = [jobs_dir(c) / old_id for c in V1_CONTROLLERS if (CGROUP_ROOT / c).is_dir()]
    leftover = subprocess.Popen(["/bin/sleep", "600"], start_new_session=True)
    try:
        for path in dirs:
            path.mkdir(parents=True)
            (path / "cgroup.procs").write_text(str(leftover.pid))
        m = make_manager()  # reconciles at open
        assert leftover.wait(DEADLINE) == -9
        assert not any(path.exists() for path in dirs)
        assert m.backend.job_ids() == []
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()
        for path in dirs:  # left only if the test failed before reconcile: empty now, the sleep is dead
            if path.exists():
                path.rmdir()


# -- through the daemon: the servicer puts each caller's jobs in its own group -------------------------------


def test_users_jobs_land_in_their_own_groups_and_admins_in_theirs_and_no_group_outlives_them(daemon_factory):
    d = daemon_factory({"limits": {"per_user": {"memory": "512M", "pids": 300}, "admins": {"pids": 900},
                                   "users": {"bob": {"memory": "1G"}}}}).start()

    def start(who: str, role: str) -> str:
        done = d.jobctl("run", "-d", "--", "sleep", "600", name=who, role=role)
        assert done.returncode == 0, done.stderr
        return done.stdout.decode().strip()

    alice, bob, admin = start("alice", "user"), start("bob", "user"), start("root", "admin")
    layout = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller in V1_CONTROLLERS:
                jobs = CGROUP_ROOT / controller / path.lstrip("/") / d.subtree / "jobs"
                layout[controller] = sorted(str(p.relative_to(jobs)) for p in jobs.rglob("*") if p.is_dir())
    expected = sorted(["admin", f"admin/{admin}", "user-alice", f"user-alice/{alice}", "user-bob", f"user-bob/{bob}"])
    assert layout == {c: expected for c in V1_CONTROLLERS if c in layout}, layout
    memory = jobs_dir("memory", d.subtree)
    pids = jobs_dir("pids", d.subtree)
    assert (memory / "user-alice/memory.limit_in_bytes").read_text().strip() == str(512 << 20)
    assert (memory / "user-bob/memory.limit_in_bytes").read_text().strip() == str(1 << 30)
    assert (pids / "user-alice/pids.max").read_text().strip() == "300"
    assert (pids / "admin/pids.max").read_text().strip() == "900"
    member = (pids / "user-alice" / alice / "cgroup.procs").read_text().split()
    assert member and (pids / "user-alice/cgroup.procs").read_text().split() == []  # the group holds no process
    for job_id, who, role in ((alice, "alice", "user"), (bob, "bob", "user"), (admin, "root", "admin")):
        assert d.jobctl("stop", "--grace", "0", job_id, name=who, role=role).returncode == 0
    assert d.cgroup_dirs() and all(Path(p).name == "jobs" or Path(p).name == d.subtree for p in d.cgroup_dirs()), d.cgroup_dirs()


# -- io ceilings: none on v1 --------------------------------------------------------------------------------


def _disk_of(path: Path) -> str | None:
    dev = os.stat(path).st_dev
    entry = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not entry.exists():
        return None
    if (entry / "partition").exists():
        return (entry.resolve().parent / "dev").read_text().strip()
    return f"{os.major(dev)}:{os.minor(dev)}"


def _dd_in(cgroup: Path, *dd: str) -> tuple[float, str]:
    """dd run inside a blkio cgroup; (seconds dd reports, its last line)."""
    done = subprocess.run(["sh", "-c", f'echo $$ > {cgroup}/tasks && exec "$@"', "sh", "dd", *dd],
                          capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    return float(re.search(r"copied, ([0-9.]+) s", line).group(1)), line


def test_v1_blkio_throttling_is_not_hierarchical_on_this_kernel_which_is_why_v1_has_no_io_ceilings(tmp_path):
    disk = _disk_of(tmp_path)
    blkio = CGROUP_ROOT / "blkio" / own_cgroups().get("blkio", "/").lstrip("/")
    if disk is None or not (blkio / "blkio.throttle.write_bps_device").exists():
        pytest.skip("needs the blkio controller and a temp directory on a disk")
    parent = blkio / f"{SUBTREE}-io-probe"
    child = parent / "child"
    child.mkdir(parents=True)
    limit = 2 << 20
    try:
        # The control: a limit on the cgroup the writer is in throttles it (8 MiB in 1 MiB O_DIRECT writes: ~3.5 s).
        (child / "blkio.throttle.write_bps_device").write_text(f"{disk} {limit}")
        alone, alone_line = _dd_in(child, "if=/dev/zero", f"of={tmp_path / 'a'}", "bs=1M", "count=8", "oflag=direct")
        (child / "blkio.throttle.write_bps_device").write_text(f"{disk} 0")
        # The same limit on its parent only, as a group ceiling would be: the child's writes pass unthrottled.
        (parent / "blkio.throttle.write_bps_device").write_text(f"{disk} {limit}")
        below, below_line = _dd_in(child, "if=/dev/zero", f"of={tmp_path / 'b'}", "bs=1M", "count=8", "oflag=direct")
        written = {line.split()[1]: int(line.split()[2]) for line in
                   (parent / "blkio.throttle.io_service_bytes_recursive").read_text().splitlines()
                   if line.startswith(disk + " ")}
    finally:
        child.rmdir()
        parent.rmdir()
    print(f"2 MiB/s on the writer's own blkio cgroup: {alone_line}; on its parent only: {below_line}")
    assert alone >= 7 * (1 << 20) / limit * 0.9, alone_line  # throttled: the measurement works
    assert written.get("Write", 0) >= 16 << 20  # both writes went to the limited disk, counted at the parent
    assert below < 7 * (1 << 20) / limit / 2, (
        f"a parent's blkio limit now bounds its child ({below_line}): v1 blkio is hierarchical on this kernel, "
        "so the v1 backend could offer io ceilings instead of refusing them")


@pytest.mark.parametrize(("limits", "keys"), [
    ({"per_user": {"io_write_bps": "2M"}}, "limits.per_user.io_write_bps"),
    ({"users": {"bob": {"io_read_iops": 100, "io_write_iops": 100}}},
     "limits.users.bob.io_read_iops, limits.users.bob.io_write_iops"),
    ({"admins": {"io_device": "/", "io_read_bps": "1G"}}, "limits.admins.io_read_bps"),
])
def test_an_io_ceiling_on_v1_is_a_config_error_before_anything_is_made(make_manager, limits, keys):
    with pytest.raises(ConfigError) as info:
        make_manager(**limits)
    assert str(info.value).startswith(f"{keys}: io ceilings need cgroup v2, and jobs run on cgroup v1 here, whose "
                                      "blkio throttling is not hierarchical"), str(info.value)
    assert leftovers() == []


def test_the_daemon_refuses_to_start_with_an_io_ceiling_on_v1(daemon_factory):
    d = daemon_factory({"limits": {"per_user": {"io_write_bps": "10M"}}})
    with pytest.raises(RuntimeError) as info:
        d.start()
    assert "daemon exited with 2" in str(info.value)
    assert "jobworkerd: limits.per_user.io_write_bps: io ceilings need cgroup v2" in str(info.value)
    assert d.cgroup_dirs() == []
