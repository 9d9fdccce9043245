"""The cgroup v1 backend against a fake cgroup tree in a temp dir: exact file writes per limit, usage
parsing, join files, removal. Plain directories stand in for cgroupfs: files do not pre-exist, writes
create them; files the backend only reads are pre-created with what the kernel would show."""

import errno
import os
import signal
import threading
from pathlib import Path

import pytest
from cgroupspy.controllers import Controller

from jobworkerd.cgroups import base as base_mod
from jobworkerd.cgroups.groups import group_dir
from jobworkerd.cgroups.v1 import V1Backend
from jobworkerd.errors import InternalError, InvalidArgument
from jobworkerd.worker.models import IOTarget, JobGroup, Limits, Usage

CONTROLLERS = ("cpu", "cpuacct", "memory", "blkio", "pids", "freezer")
OWN = "/some/own"
JOB = "0123456789ab"


@pytest.fixture
def tree(tmp_path):
    for controller in CONTROLLERS:
        (tmp_path / controller / OWN.lstrip("/")).mkdir(parents=True)
    return tmp_path


def make(tree, subtree="x", controllers=CONTROLLERS, own=OWN):
    mounts = {c: str(tree / c) for c in controllers}
    return V1Backend(mounts=mounts, own={c: own for c in controllers}, subtree=subtree)


def job_dir(tree, controller, job=JOB, subtree="x", group="admin"):
    return tree / controller / OWN.lstrip("/") / subtree / "jobs" / group / job


def read(path):
    return path.read_text()


def files_in(path):
    return sorted(p.name for p in path.iterdir() if p.is_file())


def clear_files(tree, job=JOB, group="admin"):
    """What the kernel does at rmdir: the control files go with the directory (the job's and its group's)."""
    for controller in CONTROLLERS:
        for d in (job_dir(tree, controller, job, group=group), job_dir(tree, controller, job, group=group).parent):
            if d.is_dir():
                for f in d.iterdir():
                    if f.is_file():
                        f.unlink()


def test_setup_creates_the_jobs_dir_beneath_our_own_cgroup_in_every_hierarchy(tree):
    backend = make(tree)
    backend.setup()
    for controller in CONTROLLERS:
        assert (tree / controller / "some/own/x/jobs").is_dir()
    backend.setup()  # idempotent


def test_missing_required_controller(tree):
    with pytest.raises(InternalError, match="controllers not mounted: pids"):
        make(tree, controllers=("cpu", "cpuacct", "memory", "blkio", "freezer"))


def test_blkio_is_optional(tree):
    backend = make(tree, controllers=("cpu", "cpuacct", "memory", "pids", "freezer"))
    backend.setup()
    backend.create(JOB, Limits(pids=5), None)
    assert "blkio" not in backend.controllers
    with pytest.raises(InternalError, match="blkio controller is not mounted"):
        backend.create("another00001", Limits(io_write_bps=1), IOTarget(8, 0))
    assert not job_dir(tree, "cpu", "another00001").exists()  # rolled back


def test_create_makes_one_node_per_controller_and_writes_nothing_without_limits(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(), None)
    for controller in CONTROLLERS:
        assert job_dir(tree, controller).is_dir()
        assert files_in(job_dir(tree, controller)) == []


def test_cpu_limit_half_a_core(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(cpu=0.5), None)
    d = job_dir(tree, "cpu")
    assert read(d / "cpu.cfs_period_us") == "100000"
    assert read(d / "cpu.cfs_quota_us") == "50000"
    assert files_in(d) == ["cpu.cfs_period_us", "cpu.cfs_quota_us"]


@pytest.mark.parametrize(("cores", "quota"), [(0.2, "20000"), (1.0, "100000"), (2.5, "250000"), (0.001, "1000"), (0.0001, "1000")])
def test_cpu_quota_values(tree, cores, quota):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(cpu=cores), None)
    assert read(job_dir(tree, "cpu") / "cpu.cfs_quota_us") == quota  # never below the kernel's 1 ms floor


def test_memory_limit_without_memsw(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(memory=64 << 20), None)
    d = job_dir(tree, "memory")
    assert read(d / "memory.limit_in_bytes") == str(64 << 20)
    assert files_in(d) == ["memory.limit_in_bytes"]


def test_memory_limit_with_memsw_present(tree, monkeypatch):
    backend = make(tree)
    backend.setup()
    # The kernel creates memory.memsw.limit_in_bytes with the node when swap accounting is on.
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        if str(path).startswith(str(tree / "memory")):
            with open(os.path.join(path, "memory.memsw.limit_in_bytes"), "w") as handle:
                handle.write("9223372036854771712\n")

    monkeypatch.setattr(os, "mkdir", mkdir)
    backend.create(JOB, Limits(memory=64 << 20), None)
    d = job_dir(tree, "memory")
    assert read(d / "memory.limit_in_bytes") == str(64 << 20)
    assert read(d / "memory.memsw.limit_in_bytes") == str(64 << 20)  # equal: no swap for the job


def test_pids_limit(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(pids=50), None)
    assert read(job_dir(tree, "pids") / "pids.max") == "50"


def test_blkio_write_bps_file_has_no_trailing_space(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(io_write_bps=2 << 20), IOTarget(8, 0))
    d = job_dir(tree, "blkio")
    assert files_in(d) == ["blkio.throttle.write_bps_device"]  # not "blkio.throttle.write_bps_device "
    assert read(d / "blkio.throttle.write_bps_device") == "8:0 2097152"


def test_all_blkio_limits(tree):
    backend = make(tree)
    backend.setup()
    backend.create(
        JOB,
        Limits(io_read_bps=1 << 20, io_write_bps=2 << 20, io_read_iops=100, io_write_iops=200),
        IOTarget(254, 16),
    )
    d = job_dir(tree, "blkio")
    assert {name: read(d / name) for name in files_in(d)} == {
        "blkio.throttle.read_bps_device": "254:16 1048576",
        "blkio.throttle.write_bps_device": "254:16 2097152",
        "blkio.throttle.read_iops_device": "254:16 100",
        "blkio.throttle.write_iops_device": "254:16 200",
    }
    for name in files_in(d):
        assert name == name.strip()


def test_every_limit_at_once(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(cpu=0.5, memory=128 << 20, pids=50, io_write_bps=2 << 20), IOTarget(8, 0))
    assert read(job_dir(tree, "cpu") / "cpu.cfs_quota_us") == "50000"
    assert read(job_dir(tree, "memory") / "memory.limit_in_bytes") == str(128 << 20)
    assert read(job_dir(tree, "pids") / "pids.max") == "50"
    assert read(job_dir(tree, "blkio") / "blkio.throttle.write_bps_device") == "8:0 2097152"
    assert files_in(job_dir(tree, "cpuacct")) == []
    assert files_in(job_dir(tree, "freezer")) == []


def test_io_limits_without_a_device_are_refused_before_anything_is_created(tree):
    backend = make(tree)
    backend.setup()
    with pytest.raises(InvalidArgument, match="block device"):
        backend.create(JOB, Limits(io_write_bps=1), None)
    for controller in CONTROLLERS:
        assert not job_dir(tree, controller).exists()


def test_create_refuses_an_existing_job_cgroup(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(), None)
    with pytest.raises(InternalError, match="already exists"):
        backend.create(JOB, Limits(), None)


def test_a_failed_limit_write_removes_the_nodes(tree, monkeypatch):
    backend = make(tree)
    backend.setup()

    def failing_write(path, value):
        raise InternalError(f"cgroup write {value!r} to {path} failed: Invalid argument")

    monkeypatch.setattr("jobworkerd.cgroups.v1.write_file", failing_write)
    with pytest.raises(InternalError, match="pids.max"):
        backend.create(JOB, Limits(pids=5), None)
    for controller in CONTROLLERS:
        assert not job_dir(tree, controller).exists()


def test_join_files_are_the_tasks_files_of_every_hierarchy(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(), None)
    assert backend.join_files(JOB) == [str(job_dir(tree, c) / "tasks") for c in ("cpu", "cpuacct", "memory", "blkio", "pids", "freezer")]


def test_pids_come_from_the_pids_hierarchy(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(), None)
    assert backend.pids(JOB) == []
    (job_dir(tree, "pids") / "cgroup.procs").write_text("12\n345\n")
    assert backend.pids(JOB) == [12, 345]
    assert not backend.is_empty(JOB)
    assert backend.pids("absent000000") == []


def test_freeze_and_thaw_write_the_freezer_state(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(), None)
    backend.freeze(JOB, True)
    assert read(job_dir(tree, "freezer") / "freezer.state") == "FROZEN"
    backend.freeze(JOB, False)
    assert read(job_dir(tree, "freezer") / "freezer.state") == "THAWED"
    backend.freeze("absent000000", True)  # a job whose cgroup is gone: nothing to do
    assert not job_dir(tree, "freezer", "absent000000").exists()


def test_signal_freezes_signals_every_pid_and_thaws(tree, monkeypatch):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(), None)
    (job_dir(tree, "pids") / "cgroup.procs").write_text("101\n102\n")
    events = []
    monkeypatch.setattr(backend, "freeze", lambda job, frozen: events.append(("freeze", frozen)))

    def kill(pid, sig):
        events.append(("kill", pid, sig))
        if pid == 102:
            raise ProcessLookupError

    monkeypatch.setattr(base_mod.os, "kill", kill)
    backend.signal(JOB, signal.SIGTERM)
    assert events == [("freeze", True), ("kill", 101, signal.SIGTERM), ("kill", 102, signal.SIGTERM), ("freeze", False)]


def test_usage_is_parsed_from_the_v1_files(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(), None)
    (job_dir(tree, "cpuacct") / "cpuacct.usage").write_text("1500000000\n")
    (job_dir(tree, "memory") / "memory.max_usage_in_bytes").write_text("67108864\n")
    (job_dir(tree, "memory") / "memory.usage_in_bytes").write_text("33554432\n")
    (job_dir(tree, "pids") / "pids.current").write_text("7\n")
    (job_dir(tree, "memory") / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (job_dir(tree, "blkio") / "blkio.throttle.io_service_bytes").write_text(
        "8:0 Read 4096\n8:0 Write 6291456\n8:0 Sync 6291456\n8:0 Async 4096\n8:0 Discard 0\n8:0 Total 6295552\n"
        "254:0 Read 1000\n254:0 Write 24\n254:0 Total 1024\nTotal 6296576\n"
    )
    assert backend.usage(JOB) == Usage(
        cpu_seconds=1.5, memory_peak_bytes=64 << 20, io_read_bytes=5096, io_write_bytes=6291480, oom_kills=2,
        memory_bytes=32 << 20, pids=7,
    )


def test_usage_of_a_cgroup_with_no_figures_yet(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(), None)
    (job_dir(tree, "memory") / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")  # kernel < 4.13
    assert backend.usage(JOB) == Usage()


def test_remove_removes_every_node_and_missing_is_fine(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(cpu=1.0, pids=5), None)
    assert backend.job_ids() == [JOB]
    clear_files(tree)
    backend.remove(JOB)
    for controller in CONTROLLERS:
        assert not job_dir(tree, controller).exists()
    assert backend.job_ids() == []
    backend.remove(JOB)  # already gone


def test_remove_retries_while_busy(tree, monkeypatch):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(), None)
    real_rmdir = os.rmdir
    busy = {"left": 3}

    def rmdir(path):
        if busy["left"]:
            busy["left"] -= 1
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_rmdir(path)

    monkeypatch.setattr(os, "rmdir", rmdir)
    backend.remove(JOB)
    assert not job_dir(tree, "pids").exists()


def test_remove_reports_other_errors_naming_the_cgroup(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(pids=5), None)  # pids.max left inside: rmdir fails with ENOTEMPTY
    with pytest.raises(InternalError, match=f"cannot remove cgroup .*{JOB}"):
        backend.remove(JOB)


def test_job_ids_lists_job_cgroups_only(tree):
    backend = make(tree)
    assert backend.job_ids() == []  # before setup: no jobs dir
    backend.setup()
    backend.create("bbbbbbbbbbbb", Limits(), None)
    backend.create("aaaaaaaaaaaa", Limits(), None)
    (tree / "pids/some/own/x/jobs/cgroup.procs").write_text("")
    assert backend.job_ids() == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]


def test_teardown_removes_jobs_and_subtree_dirs_when_empty(tree):
    backend = make(tree)
    backend.setup()
    backend.teardown()
    for controller in CONTROLLERS:
        assert not (tree / controller / "some/own/x").exists()
        assert (tree / controller / "some/own").is_dir()  # our own cgroup is never removed


def test_teardown_keeps_dirs_that_still_hold_jobs(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(), None)
    backend.teardown()
    for controller in CONTROLLERS:
        assert job_dir(tree, controller).is_dir()


def test_without_subtree_jobs_live_directly_under_our_cgroup(tree):
    backend = make(tree, subtree="")
    backend.setup()
    backend.create(JOB, Limits(pids=3), None)
    assert read(tree / "pids/some/own/jobs/admin" / JOB / "pids.max") == "3"
    clear_files_path = tree / "pids/some/own/jobs/admin" / JOB / "pids.max"
    clear_files_path.unlink()
    backend.remove(JOB)
    backend.teardown()
    assert not (tree / "pids/some/own/jobs").exists()
    assert (tree / "pids/some/own").is_dir()


def test_own_cgroup_at_the_root(tmp_path):
    for controller in CONTROLLERS:
        (tmp_path / controller).mkdir()
    backend = V1Backend({c: str(tmp_path / c) for c in CONTROLLERS}, {c: "/" for c in CONTROLLERS}, "t")
    backend.setup()
    backend.create(JOB, Limits(cpu=0.5), None)
    assert read(tmp_path / "cpu/t/jobs/admin" / JOB / "cpu.cfs_quota_us") == "50000"


def test_create_is_all_or_nothing_when_a_later_hierarchy_fails(tmp_path):
    from jobworkerd.cgroups.v1 import V1Backend
    from jobworkerd.worker.models import Limits

    controllers = ("cpu", "cpuacct", "memory", "blkio", "pids", "freezer")
    for c in controllers:
        (tmp_path / c / "own" / "jobs").mkdir(parents=True)
    backend = V1Backend({c: str(tmp_path / c) for c in controllers}, {c: "/own" for c in controllers})
    (tmp_path / "freezer" / "own" / "jobs").rmdir()  # the last hierarchy's mkdir will fail
    with pytest.raises(OSError):
        backend.create("job1", Limits(), None)
    assert not [c for c in controllers if (tmp_path / c / "own" / "jobs" / "admin" / "job1").exists()]
    assert not [c for c in controllers if (tmp_path / c / "own" / "jobs" / "admin").exists()]  # nor its new group


# -- job groups ----------------------------------------------------------------------------------------------

ALICE = JobGroup.of("alice", False)
BOB = JobGroup.of("bob", False)


def group_path(tree, controller, group="user-alice", subtree="x"):
    return tree / controller / OWN.lstrip("/") / subtree / "jobs" / group


def test_a_users_job_lives_in_its_group_with_the_ceilings_written_to_the_group(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(pids=10), None, ALICE, Limits(cpu=1.5, memory=256 << 20, pids=100))
    files = {c: files_in(group_path(tree, c)) for c in CONTROLLERS}
    assert files == {
        "cpu": ["cpu.cfs_period_us", "cpu.cfs_quota_us"],
        "cpuacct": [],
        "memory": ["memory.limit_in_bytes"],
        "blkio": [],
        "pids": ["pids.max"],
        "freezer": [],
    }
    assert read(group_path(tree, "cpu") / "cpu.cfs_quota_us") == "150000"
    assert read(group_path(tree, "cpu") / "cpu.cfs_period_us") == "100000"
    assert read(group_path(tree, "memory") / "memory.limit_in_bytes") == str(256 << 20)
    assert read(group_path(tree, "pids") / "pids.max") == "100"
    for controller in CONTROLLERS:
        assert job_dir(tree, controller, group="user-alice").is_dir()
    assert read(job_dir(tree, "pids", group="user-alice") / "pids.max") == "10"
    assert backend.join_files(JOB) == [str(job_dir(tree, c, group="user-alice") / "tasks") for c in CONTROLLERS]


def test_a_group_without_ceilings_gets_no_files(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(), None, ALICE, Limits())
    assert all(files_in(group_path(tree, c)) == [] for c in CONTROLLERS)


def test_the_memory_ceiling_holds_swap_too_and_memsw_never_drops_below_the_limit(tree, monkeypatch):
    backend = make(tree)
    backend.setup()
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        if str(path).startswith(str(tree / "memory")):
            (Path(path) / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")

    monkeypatch.setattr(os, "mkdir", mkdir)
    written = []
    real_set = Controller.set_property
    monkeypatch.setattr(Controller, "set_property", lambda self, name, value: written.append((name, value)) or real_set(self, name, value))
    backend.create(JOB, Limits(), None, ALICE, Limits(memory=64 << 20))
    assert written == [(b"memory.memsw.limit_in_bytes", -1), (b"memory.limit_in_bytes", 64 << 20),
                       (b"memory.memsw.limit_in_bytes", 64 << 20)]
    assert read(group_path(tree, "memory") / "memory.memsw.limit_in_bytes") == str(64 << 20)


@pytest.mark.parametrize(("found", "expected"), [("0\n", "1"), ("1\n", "1\n")])
def test_a_new_group_gets_hierarchical_memory_accounting(tree, monkeypatch, found, expected):
    backend = make(tree)
    backend.setup()
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):  # the kernel inherits use_hierarchy from the parent (before 5.11)
        real_mkdir(path, *args, **kwargs)
        if str(path).startswith(str(tree / "memory")):
            (Path(path) / "memory.use_hierarchy").write_text(found)

    monkeypatch.setattr(os, "mkdir", mkdir)
    backend.create(JOB, Limits(), None, ALICE, Limits(memory=64 << 20))
    assert read(group_path(tree, "memory") / "memory.use_hierarchy") == expected


def test_a_jobs_cpu_limit_above_its_groups_ceiling_is_written_as_the_ceiling(tree):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(cpu=2.0), None, ALICE, Limits(cpu=0.5))  # v1 would refuse 200000 under 50000
    assert read(job_dir(tree, "cpu", group="user-alice") / "cpu.cfs_quota_us") == "50000"
    backend.create("aaaaaaaaaaaa", Limits(cpu=0.25), None, ALICE, Limits(cpu=0.5))
    assert read(job_dir(tree, "cpu", "aaaaaaaaaaaa", group="user-alice") / "cpu.cfs_quota_us") == "25000"


def test_ceilings_are_written_once_and_again_only_where_they_changed(tree, monkeypatch):
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(), None, ALICE, Limits(cpu=1.0, memory=64 << 20, pids=100))
    written = []
    real_set = Controller.set_property
    monkeypatch.setattr(Controller, "set_property", lambda self, name, value: written.append((name, value)) or real_set(self, name, value))
    monkeypatch.setattr("jobworkerd.cgroups.v1.write_file", lambda path, value: written.append((os.path.basename(path), value)) or base_mod.write_file(path, value))
    backend.create("aaaaaaaaaaaa", Limits(), None, ALICE, Limits(cpu=1.0, memory=64 << 20, pids=100))
    assert written == []  # same ceilings: nothing written
    backend.create("bbbbbbbbbbbb", Limits(), None, ALICE, Limits(cpu=1.0, memory=None, pids=200))  # config changed
    assert written == [(b"memory.limit_in_bytes", -1), ("pids.max", "200")]
    assert read(group_path(tree, "memory") / "memory.limit_in_bytes") == "-1"


def test_after_a_restart_an_existing_groups_ceilings_are_all_written(tree):
    make(tree).setup()
    first = make(tree)
    first.create(JOB, Limits(), None, ALICE, Limits(pids=100))
    again = make(tree)  # a new daemon: what the group holds is unknown
    again.setup()
    again.create("aaaaaaaaaaaa", Limits(), None, ALICE, Limits(memory=1 << 30))
    assert read(group_path(tree, "pids") / "pids.max") == "max"
    assert read(group_path(tree, "cpu") / "cpu.cfs_quota_us") == "-1"
    assert read(group_path(tree, "memory") / "memory.limit_in_bytes") == str(1 << 30)


def test_two_users_get_two_groups_and_admins_their_own(tree):
    backend = make(tree)
    backend.setup()
    backend.create("aaaaaaaaaaaa", Limits(), None, ALICE, Limits())
    backend.create("bbbbbbbbbbbb", Limits(), None, BOB, Limits())
    backend.create("cccccccccccc", Limits(), None, JobGroup.of("alice", True), Limits())
    backend.create("dddddddddddd", Limits(), None, JobGroup.of("al/ce", False), Limits())
    for controller in CONTROLLERS:
        jobs = tree / controller / "some/own/x/jobs"
        assert sorted(p.name for p in jobs.iterdir()) == ["admin", "user-al_ce~" + group_dir(JobGroup("al/ce")).split("~")[1],
                                                          "user-alice", "user-bob"]
        assert (jobs / "user-alice/aaaaaaaaaaaa").is_dir() and (jobs / "admin/cccccccccccc").is_dir()
    assert backend.job_ids() == ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc", "dddddddddddd"]


def test_removing_the_last_job_of_a_group_removes_the_group(tree):
    backend = make(tree)
    backend.setup()
    backend.create("aaaaaaaaaaaa", Limits(), None, ALICE, Limits())
    backend.create("bbbbbbbbbbbb", Limits(), None, ALICE, Limits())
    backend.remove("aaaaaaaaaaaa")
    assert all(group_path(tree, c).is_dir() for c in CONTROLLERS)  # bob... alice's other job is still there
    backend.remove("bbbbbbbbbbbb")
    for controller in CONTROLLERS:
        assert not group_path(tree, controller).exists()
        assert (tree / controller / "some/own/x/jobs").is_dir()


def test_a_group_found_busy_at_removal_is_left_to_its_new_job(tree, monkeypatch):
    """EBUSY/ENOTEMPTY at the group's rmdir means a job is in it again: not an error."""
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(), None, ALICE, Limits())
    real_rmdir = os.rmdir

    def rmdir(path):
        if os.path.basename(path) == "user-alice":
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_rmdir(path)

    monkeypatch.setattr(os, "rmdir", rmdir)
    backend.remove(JOB)
    assert not job_dir(tree, "pids", group="user-alice").exists()
    assert group_path(tree, "pids").is_dir()
    monkeypatch.setattr(os, "rmdir", real_rmdir)
    backend.create("aaaaaaaaaaaa", Limits(), None, ALICE, Limits())  # the group is used again as it is
    assert job_dir(tree, "pids", "aaaaaaaaaaaa", group="user-alice").is_dir()


def test_a_job_created_while_another_of_its_group_is_removed_keeps_its_group(tree, monkeypatch):
    """The race: alice's last job ends while her next one is being created, between its group being
    ensured and its own directories being made. The ending job must not take the group away then."""
    backend = make(tree)
    backend.setup()
    backend.create(JOB, Limits(), None, ALICE, Limits())
    ensured, proceed = threading.Event(), threading.Event()
    real_ensure = backend._ensure_group

    def ensure_then_pause(name, ceilings):
        real_ensure(name, ceilings)
        ensured.set()
        proceed.wait(5)

    monkeypatch.setattr(backend, "_ensure_group", ensure_then_pause)
    errors = []

    def create():
        try:
            backend.create("aaaaaaaaaaaa", Limits(), None, ALICE, Limits())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    creator = threading.Thread(target=create)
    creator.start()
    assert ensured.wait(5)
    ender = threading.Thread(target=backend.remove, args=(JOB,))
    ender.start()
    ender.join(0.3)  # it removes the job's directories, then waits for the creation to finish
    proceed.set()
    creator.join(5)
    ender.join(5)
    assert errors == []
    for controller in CONTROLLERS:
        assert job_dir(tree, controller, "aaaaaaaaaaaa", group="user-alice").is_dir()
        assert not job_dir(tree, controller, JOB, group="user-alice").exists()


def test_a_new_groups_ceiling_that_cannot_be_written_leaves_no_group(tree, monkeypatch):
    backend = make(tree)
    backend.setup()

    def failing_write(path, value):
        raise InternalError(f"cgroup write {value!r} to {path} failed: Invalid argument")

    monkeypatch.setattr("jobworkerd.cgroups.v1.write_file", failing_write)
    with pytest.raises(InternalError, match="pids.max"):
        backend.create(JOB, Limits(), None, ALICE, Limits(pids=5))
    for controller in CONTROLLERS:
        assert not group_path(tree, controller).exists()


def test_a_restarted_backend_finds_jobs_in_groups_and_removes_their_groups(tree):
    first = make(tree)
    first.setup()
    first.create(JOB, Limits(), None, ALICE, Limits())
    (job_dir(tree, "pids", group="user-alice") / "cgroup.procs").write_text("4242\n")
    again = make(tree)
    again.setup()  # learns where each job is
    assert again.pids(JOB) == [4242]
    (job_dir(tree, "pids", group="user-alice") / "cgroup.procs").unlink()
    again.remove(JOB)
    assert not any(group_path(tree, c).exists() for c in CONTROLLERS)


def test_old_layout_jobs_are_found_and_removed(tree):
    """Before groups, jobs lived at jobs/<id>: reconcile after an upgrade must find and end them."""
    backend = make(tree)
    backend.setup()
    for controller in CONTROLLERS:
        job_dir(tree, controller, "0ddba11c0ffe", group="").mkdir()
    (job_dir(tree, "pids", "0ddba11c0ffe", group="") / "cgroup.procs").write_text("77\n")
    backend.create(JOB, Limits(), None, ALICE, Limits())
    again = make(tree)
    assert again.job_ids() == ["0123456789ab", "0ddba11c0ffe"]
    assert again.pids("0ddba11c0ffe") == [77]
    assert again.join_files("0ddba11c0ffe")[0] == str(job_dir(tree, "cpu", "0ddba11c0ffe", group="") / "tasks")
    (job_dir(tree, "pids", "0ddba11c0ffe", group="") / "cgroup.procs").unlink()
    again.remove("0ddba11c0ffe")
    assert not any(job_dir(tree, c, "0ddba11c0ffe", group="").exists() for c in CONTROLLERS)
    assert again.job_ids() == ["0123456789ab"]


def test_setup_and_teardown_remove_empty_groups(tree):
    backend = make(tree)
    backend.setup()
    for controller in CONTROLLERS:
        group_path(tree, controller, "user-gone").mkdir()  # left by a crash between group and job
    backend.create(JOB, Limits(), None, ALICE, Limits())
    make(tree).setup()
    assert not any(group_path(tree, c, "user-gone").exists() for c in CONTROLLERS)
    assert all(group_path(tree, c).is_dir() for c in CONTROLLERS)  # alice's job is still in hers
    for controller in CONTROLLERS:
        group_path(tree, controller, "user-empty").mkdir()
    backend.teardown()
    assert not any(group_path(tree, c, "user-empty").exists() for c in CONTROLLERS)
    assert all(job_dir(tree, c, group="user-alice").is_dir() for c in CONTROLLERS)


# -- no io ceilings on v1: blkio throttling is not hierarchical (a parent's limit bounds no child) ------------


def test_check_ceilings_refuses_an_io_ceiling_with_a_config_error_saying_why(tree):
    from jobworkerd.config import ConfigError

    backend = make(tree)
    with pytest.raises(ConfigError) as info:
        backend.check_ceilings(Limits(cpu=1.0, io_device="/", io_write_bps=2 << 20, io_read_iops=100), "limits.per_user")
    message = str(info.value)
    assert message.startswith("limits.per_user.io_write_bps, limits.per_user.io_read_iops: io ceilings need cgroup v2"), \
        message
    assert "not hierarchical" in message and "a job's own io limits do work on v1" in message
    backend.check_ceilings(Limits(cpu=1.0, memory=1 << 30, pids=100), "limits.per_user")  # the others are fine


def test_an_io_ceiling_that_reaches_create_anyway_is_refused_and_leaves_no_group(tree):
    backend = make(tree)
    backend.setup()
    with pytest.raises(InternalError, match="io ceilings need cgroup v2"):
        backend.create(JOB, Limits(), None, ALICE, Limits(io_device="/", io_write_bps=2 << 20))
    for controller in CONTROLLERS:
        assert not group_path(tree, controller).exists()
        assert files_in(group_path(tree, controller).parent) == []
