"""The cgroup v2 backend against a fake unified hierarchy in a temp dir: delegation set-up, exact file
writes per limit, usage parsing, kill, removal. Files do not pre-exist; writes create them. Files the
backend reads (cgroup.controllers, cgroup.procs, cgroup.events, cpu.stat, ...) are pre-created."""

import os
import signal

import pytest

from jobworkerd.cgroups import v2 as v2_mod
from jobworkerd.cgroups.v2 import V2Backend
from jobworkerd.errors import InternalError, InvalidArgument
from jobworkerd.worker.models import IOTarget, JobGroup, Limits, Usage

OWN = "/system.slice/jobworkerd.service"
JOB = "0123456789ab"
ENABLE = "+cpu +memory +io +pids"


@pytest.fixture
def own(tmp_path):
    own = tmp_path / OWN.lstrip("/")
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (own / "cgroup.procs").write_text("")
    return own


@pytest.fixture
def writes(monkeypatch):
    """Every write_file call of the v2 backend, in order (and still performed)."""
    log = []
    real = v2_mod.write_file

    def spy(path, value):
        log.append((str(path), value))
        real(path, value)

    monkeypatch.setattr(v2_mod, "write_file", spy)
    return log


def make(tmp_path, subtree="x"):
    return V2Backend(str(tmp_path), OWN, subtree)


def ready(tmp_path, subtree="x"):
    backend = make(tmp_path, subtree)
    backend.setup()
    return backend


def read(path):
    return path.read_text()


def files_in(path):
    return sorted(p.name for p in path.iterdir() if p.is_file())


def test_paths(tmp_path, own):
    backend = make(tmp_path)
    assert backend.own_dir == str(own)
    assert backend.jobs_dir == str(own / "x" / "jobs")
    backend.setup()
    backend.create(JOB, Limits(), None)
    assert backend.join_files(JOB) == [str(own / "x" / "jobs" / "admin" / JOB / "cgroup.procs")]


def test_setup_moves_our_processes_to_supervisor_and_enables_controllers(tmp_path, own, writes, monkeypatch):
    (own / "cgroup.procs").write_text("4242\n4343\n")
    backend = make(tmp_path)
    backend.setup()
    assert writes == [
        (str(own / "supervisor" / "cgroup.procs"), "4242"),
        (str(own / "supervisor" / "cgroup.procs"), "4343"),
        (str(own / "cgroup.subtree_control"), ENABLE),
        (str(own / "x" / "cgroup.subtree_control"), ENABLE),
        (str(own / "x" / "jobs" / "cgroup.subtree_control"), ENABLE),
    ]
    assert (own / "supervisor").is_dir()
    assert (own / "x" / "jobs").is_dir()
    assert read(own / "cgroup.subtree_control") == ENABLE
    assert read(own / "x" / "jobs" / "cgroup.subtree_control") == ENABLE


def test_setup_without_subtree(tmp_path, own, writes):
    backend = make(tmp_path, subtree="")
    backend.setup()
    assert backend.jobs_dir == str(own / "jobs")
    assert [w for w in writes if w[0].endswith("subtree_control")] == [
        (str(own / "cgroup.subtree_control"), ENABLE),
        (str(own / "jobs" / "cgroup.subtree_control"), ENABLE),
    ]


def test_setup_tolerates_a_process_that_exits_while_we_move_it(tmp_path, own, monkeypatch):
    gone = 2**22 + 12345  # above pid_max: no /proc entry
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n{gone}\n")
    real = v2_mod.write_file

    def write(path, value):
        if value == str(gone):
            raise InternalError(f"cgroup write {value!r} to {path} failed: No such process")
        real(path, value)

    monkeypatch.setattr(v2_mod, "write_file", write)
    make(tmp_path).setup()


def test_setup_fails_when_moving_a_live_process_fails(tmp_path, own, monkeypatch):
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def write(path, value):
        raise InternalError(f"cgroup write {value!r} to {path} failed: Permission denied")

    monkeypatch.setattr(v2_mod, "write_file", write)
    with pytest.raises(InternalError, match="Permission denied"):
        make(tmp_path).setup()


def test_setup_refuses_when_controllers_are_not_delegated(tmp_path, own):
    (own / "cgroup.controllers").write_text("cpu pids\n")
    with pytest.raises(InternalError) as info:
        make(tmp_path).setup()
    assert "memory, io are not delegated" in str(info.value) and "Delegate=yes" in str(info.value)


def test_create_without_limits_writes_nothing(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(), None)
    assert (own / "x/jobs/admin" / JOB).is_dir()
    assert files_in(own / "x/jobs/admin" / JOB) == []


def test_cpu_max(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(cpu=0.5), None)
    assert read(own / "x/jobs/admin" / JOB / "cpu.max") == "50000 100000"


@pytest.mark.parametrize(("cores", "text"), [(0.2, "20000 100000"), (2.0, "200000 100000"), (0.00001, "1000 100000")])
def test_cpu_max_values(tmp_path, own, cores, text):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(cpu=cores), None)
    assert read(own / "x/jobs/admin" / JOB / "cpu.max") == text


def test_memory_max_without_swap_file(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(memory=64 << 20), None)
    d = own / "x/jobs/admin" / JOB
    assert read(d / "memory.max") == str(64 << 20)
    assert files_in(d) == ["memory.max"]


def test_memory_max_with_swap_max_zero_when_present(tmp_path, own, monkeypatch):
    backend = ready(tmp_path)
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):  # the kernel creates memory.swap.max with the cgroup
        real_mkdir(path, *args, **kwargs)
        open(os.path.join(path, "memory.swap.max"), "w").close()

    monkeypatch.setattr(os, "mkdir", mkdir)
    backend.create(JOB, Limits(memory=64 << 20), None)
    d = own / "x/jobs/admin" / JOB
    assert read(d / "memory.max") == str(64 << 20)
    assert read(d / "memory.swap.max") == "0"


def test_pids_max(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(pids=50), None)
    assert read(own / "x/jobs/admin" / JOB / "pids.max") == "50"


def test_io_max_read_and_write_bps(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(io_read_bps=1 << 20, io_write_bps=2 << 20), IOTarget(8, 0))
    assert read(own / "x/jobs/admin" / JOB / "io.max") == "8:0 rbps=1048576 wbps=2097152"


def test_io_max_all_keys(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(
        JOB, Limits(io_read_bps=1, io_write_bps=2, io_read_iops=3, io_write_iops=4), IOTarget(254, 0)
    )
    assert read(own / "x/jobs/admin" / JOB / "io.max") == "254:0 rbps=1 wbps=2 riops=3 wiops=4"


def test_io_max_only_write_iops(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(io_write_iops=100), IOTarget(8, 16))
    assert read(own / "x/jobs/admin" / JOB / "io.max") == "8:16 wiops=100"


def test_every_limit_at_once(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(cpu=1.5, memory=128 << 20, pids=64, io_write_bps=2 << 20), IOTarget(8, 0))
    d = own / "x/jobs/admin" / JOB
    assert {name: read(d / name) for name in files_in(d)} == {
        "cpu.max": "150000 100000",
        "memory.max": str(128 << 20),
        "pids.max": "64",
        "io.max": "8:0 wbps=2097152",
    }


def test_io_limits_without_a_device(tmp_path, own):
    backend = ready(tmp_path)
    with pytest.raises(InvalidArgument):
        backend.create(JOB, Limits(io_read_bps=5), None)
    assert not (own / "x/jobs/admin" / JOB).exists()


def test_create_refuses_an_existing_cgroup(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(), None)
    with pytest.raises(InternalError, match="already exists"):
        backend.create(JOB, Limits(), None)


def test_a_failed_write_removes_the_cgroup(tmp_path, own, monkeypatch):
    backend = ready(tmp_path)

    real = v2_mod.write_file

    def write(path, value):
        if path.endswith("cpu.max"):
            raise InternalError(f"cgroup write {value!r} to {path} failed: Invalid argument")
        real(path, value)

    monkeypatch.setattr(v2_mod, "write_file", write)
    with pytest.raises(InternalError, match="cpu.max"):
        backend.create(JOB, Limits(cpu=1.0), None)
    assert not (own / "x/jobs/admin" / JOB).exists()


def test_pids_and_is_empty(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(), None)
    d = own / "x/jobs/admin" / JOB
    assert backend.pids(JOB) == [] and backend.is_empty(JOB)
    (d / "cgroup.procs").write_text("7\n8\n")
    assert backend.pids(JOB) == [7, 8]
    assert not backend.is_empty(JOB)
    (d / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    assert backend.is_empty(JOB)  # cgroup.events wins when present
    (d / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert not backend.is_empty(JOB)


def test_freeze_writes_cgroup_freeze(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(), None)
    d = own / "x/jobs/admin" / JOB
    (d / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    backend.freeze(JOB, True)
    assert read(d / "cgroup.freeze") == "1"
    backend.freeze(JOB, False)
    assert read(d / "cgroup.freeze") == "0"
    backend.freeze("absent000000", True)
    assert not (own / "x/jobs/absent000000").exists()


def test_kill_writes_cgroup_kill(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(), None)
    d = own / "x/jobs/admin" / JOB
    (d / "cgroup.kill").write_text("")
    (d / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    backend.kill(JOB)
    assert read(d / "cgroup.kill") == "1"


def test_kill_without_cgroup_kill_falls_back_to_freeze_and_sigkill(tmp_path, own, monkeypatch):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(), None)
    d = own / "x/jobs/admin" / JOB
    (d / "cgroup.procs").write_text("31337\n")
    (d / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    killed = []

    def kill(pid, sig):
        killed.append((pid, sig))
        (d / "cgroup.procs").write_text("")
        (d / "cgroup.events").write_text("populated 0\nfrozen 1\n")

    monkeypatch.setattr("jobworkerd.cgroups.base.os.kill", kill)
    backend.kill(JOB)
    assert killed == [(31337, signal.SIGKILL)]
    assert read(d / "cgroup.freeze") == "0"  # thawed afterwards, so the SIGKILL is delivered


def test_usage_is_parsed_from_the_v2_files(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(), None)
    d = own / "x/jobs/admin" / JOB
    (d / "cpu.stat").write_text(
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 30\nnr_throttled 25\nthrottled_usec 1\n"
    )
    (d / "memory.peak").write_text("67108864\n")
    (d / "memory.current").write_text("33554432\n")
    (d / "pids.current").write_text("7\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n")
    (d / "io.stat").write_text(
        "8:0 rbytes=1024 wbytes=6291456 rios=1 wios=6 dbytes=0 dios=0\n"
        "253:0 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n"
    )
    assert backend.usage(JOB) == Usage(
        cpu_seconds=2.5, memory_peak_bytes=64 << 20, io_read_bytes=1034, io_write_bytes=6291476, oom_kills=1,
        memory_bytes=32 << 20, pids=7,
    )


def test_usage_counts_oom_kill_not_oom(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(), None)
    (own / "x/jobs/admin" / JOB / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 3\noom_kill 0\n")
    assert backend.usage(JOB).oom_kills == 0


def test_usage_with_no_files(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(), None)
    assert backend.usage(JOB) == Usage()  # kernels without memory.peak report 0


def test_remove_and_job_ids(tmp_path, own):
    backend = ready(tmp_path)
    assert backend.job_ids() == []
    backend.create("bbbbbbbbbbbb", Limits(), None)
    backend.create("aaaaaaaaaaaa", Limits(), None)
    assert backend.job_ids() == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    backend.remove("aaaaaaaaaaaa")
    backend.remove("aaaaaaaaaaaa")  # missing is fine
    assert backend.job_ids() == ["bbbbbbbbbbbb"]


def test_teardown_removes_jobs_and_subtree_but_never_our_own_cgroup(tmp_path, own):
    backend = ready(tmp_path)
    (own / "x/jobs/cgroup.subtree_control").unlink()  # a kernel's control files vanish with the directory
    (own / "x/cgroup.subtree_control").unlink()
    backend.teardown()
    assert not (own / "x").exists()
    assert own.is_dir()
    assert (own / "supervisor").is_dir()  # we live there


def test_teardown_keeps_a_jobs_dir_with_jobs(tmp_path, own):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(), None)
    for f in ("x/jobs/cgroup.subtree_control", "x/cgroup.subtree_control"):
        (own / f).unlink()
    backend.teardown()
    assert (own / "x/jobs/admin" / JOB).is_dir()


# -- job groups ----------------------------------------------------------------------------------------------

ALICE = JobGroup.of("alice", False)


def test_a_users_job_lives_in_its_group_which_enables_controllers_and_holds_the_ceilings(tmp_path, own, writes):
    backend = ready(tmp_path)
    writes.clear()
    backend.create(JOB, Limits(pids=10), None, ALICE, Limits(cpu=1.5, memory=256 << 20, pids=100))
    group = own / "x/jobs/user-alice"
    assert writes == [
        (str(group / "cgroup.subtree_control"), ENABLE),  # the group holds no processes: its jobs do
        (str(group / "cpu.max"), "150000 100000"),
        (str(group / "memory.max"), str(256 << 20)),
        (str(group / "pids.max"), "100"),
        (str(group / JOB / "pids.max"), "10"),
    ]
    assert backend.join_files(JOB) == [str(group / JOB / "cgroup.procs")]


def test_a_group_without_ceilings_only_enables_controllers(tmp_path, own, writes):
    backend = ready(tmp_path)
    writes.clear()
    backend.create(JOB, Limits(), None, ALICE, Limits())
    assert writes == [(str(own / "x/jobs/user-alice/cgroup.subtree_control"), ENABLE)]


def test_the_groups_memory_ceiling_holds_swap_too(tmp_path, own, monkeypatch):
    backend = ready(tmp_path)
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):  # the kernel creates memory.swap.max with the cgroup
        real_mkdir(path, *args, **kwargs)
        open(os.path.join(path, "memory.swap.max"), "w").close()

    monkeypatch.setattr(os, "mkdir", mkdir)
    backend.create(JOB, Limits(), None, ALICE, Limits(memory=64 << 20))
    assert read(own / "x/jobs/user-alice/memory.max") == str(64 << 20)
    assert read(own / "x/jobs/user-alice/memory.swap.max") == "0"


def test_ceilings_are_written_again_only_where_the_config_changed(tmp_path, own, writes):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(), None, ALICE, Limits(cpu=1.0, memory=64 << 20, pids=100))
    writes.clear()
    backend.create("aaaaaaaaaaaa", Limits(), None, ALICE, Limits(cpu=1.0, memory=64 << 20, pids=100))
    assert writes == []
    backend.create("bbbbbbbbbbbb", Limits(), None, ALICE, Limits(cpu=None, memory=64 << 20, pids=200))
    assert writes == [(str(own / "x/jobs/user-alice/cpu.max"), "max 100000"),
                      (str(own / "x/jobs/user-alice/pids.max"), "200")]


def test_after_a_restart_an_existing_groups_ceilings_are_all_written(tmp_path, own, writes):
    ready(tmp_path).create(JOB, Limits(), None, ALICE, Limits(pids=100))
    again = ready(tmp_path)
    writes.clear()
    again.create("aaaaaaaaaaaa", Limits(), None, ALICE, Limits(memory=1 << 30))
    group = own / "x/jobs/user-alice"
    assert writes == [(str(group / "cpu.max"), "max 100000"), (str(group / "memory.max"), str(1 << 30)),
                      (str(group / "pids.max"), "max")]


def test_admin_jobs_and_each_users_jobs_have_their_own_group(tmp_path, own):
    backend = ready(tmp_path)
    backend.create("aaaaaaaaaaaa", Limits(), None, ALICE, Limits())
    backend.create("bbbbbbbbbbbb", Limits(), None, JobGroup.of("bob", False), Limits())
    backend.create("cccccccccccc", Limits(), None, JobGroup.of("root", True), Limits())
    jobs = own / "x/jobs"
    assert sorted(p.name for p in jobs.iterdir() if p.is_dir()) == ["admin", "user-alice", "user-bob"]
    assert (jobs / "admin/cccccccccccc").is_dir() and (jobs / "user-bob/bbbbbbbbbbbb").is_dir()
    assert backend.job_ids() == ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"]


def test_removing_the_last_job_of_a_group_removes_the_group(tmp_path, own):
    backend = ready(tmp_path)
    backend.create("aaaaaaaaaaaa", Limits(), None, ALICE, Limits())
    backend.create("bbbbbbbbbbbb", Limits(), None, ALICE, Limits())
    (own / "x/jobs/user-alice/cgroup.subtree_control").unlink()  # control files go with the directory
    backend.remove("aaaaaaaaaaaa")
    assert (own / "x/jobs/user-alice").is_dir()
    backend.remove("bbbbbbbbbbbb")
    assert not (own / "x/jobs/user-alice").exists()
    assert (own / "x/jobs").is_dir()


def test_a_restarted_backend_finds_the_group_of_each_job(tmp_path, own):
    ready(tmp_path).create(JOB, Limits(), None, ALICE, Limits())
    (own / "x/jobs/user-alice" / JOB / "cgroup.procs").write_text("99\n")
    again = ready(tmp_path)
    assert again.pids(JOB) == [99]
    assert again.join_files(JOB) == [str(own / "x/jobs/user-alice" / JOB / "cgroup.procs")]


def test_old_layout_jobs_are_found_and_removed(tmp_path, own):
    backend = ready(tmp_path)
    (own / "x/jobs/0ddba11c0ffe").mkdir()
    (own / "x/jobs/0ddba11c0ffe/cgroup.procs").write_text("5\n")
    backend.create(JOB, Limits(), None, ALICE, Limits())
    assert backend.job_ids() == [JOB, "0ddba11c0ffe"]
    assert backend.pids("0ddba11c0ffe") == [5]
    (own / "x/jobs/0ddba11c0ffe/cgroup.procs").unlink()
    backend.remove("0ddba11c0ffe")
    assert not (own / "x/jobs/0ddba11c0ffe").exists()
    assert backend.job_ids() == [JOB]


def test_setup_and_teardown_remove_empty_groups(tmp_path, own):
    backend = ready(tmp_path)
    (own / "x/jobs/user-gone").mkdir()
    backend.create(JOB, Limits(), None, ALICE, Limits())
    ready(tmp_path)
    assert not (own / "x/jobs/user-gone").exists()
    assert (own / "x/jobs/user-alice" / JOB).is_dir()
    (own / "x/jobs/user-empty").mkdir()
    backend.teardown()
    assert not (own / "x/jobs/user-empty").exists()
    assert (own / "x/jobs/user-alice" / JOB).is_dir()


# -- the group's io ceiling (io.max on jobs/<group>; io throttling is hierarchical on v2) ----------------------

DISK = "254:0"


@pytest.fixture
def disk(monkeypatch):
    """Every io_device resolves to the disk 254:0 (paths are the test's; the disk is the kernel's)."""
    seen = []

    def resolve(path, **kwargs):
        seen.append(path)
        return IOTarget(254, 0) if path != "/other-disk" else IOTarget(8, 16)

    monkeypatch.setattr("jobworkerd.cgroups.base.block_device_for", resolve)
    return seen


def test_a_groups_io_ceiling_is_one_io_max_line_for_its_disk_with_the_rest_unlimited(tmp_path, own, writes, disk):
    backend = ready(tmp_path)
    writes.clear()
    backend.create(JOB, Limits(io_write_bps=8 << 20), IOTarget(254, 0), ALICE,
                   Limits(io_device="/var/lib/jobworkerd", io_write_bps=2 << 20, io_read_iops=300))
    group = own / "x/jobs/user-alice"
    assert disk == ["/var/lib/jobworkerd"]
    assert writes == [
        (str(group / "cgroup.subtree_control"), ENABLE),  # io among them: the group's jobs get io.max too
        (str(group / "io.max"), f"{DISK} rbps=max wbps={2 << 20} riops=300 wiops=max"),
        (str(group / JOB / "io.max"), f"{DISK} wbps={8 << 20}"),  # the job's own, bounded by the group's
    ]


def test_an_io_ceiling_moved_to_another_disk_or_removed_clears_the_old_line(tmp_path, own, writes, disk):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(), None, ALICE, Limits(io_device="/", io_read_bps=1 << 20))
    group = own / "x/jobs/user-alice"
    writes.clear()
    backend.create("aaaaaaaaaaaa", Limits(), None, ALICE, Limits(io_device="/other-disk", io_read_bps=1 << 20))
    assert writes == [(str(group / "io.max"), f"{DISK} rbps=max wbps=max riops=max wiops=max"),
                      (str(group / "io.max"), f"8:16 rbps={1 << 20} wbps=max riops=max wiops=max")]
    writes.clear()
    backend.create("bbbbbbbbbbbb", Limits(), None, ALICE, Limits())  # the config's io ceiling is gone
    assert writes == [(str(group / "io.max"), "8:16 rbps=max wbps=max riops=max wiops=max")]


def test_after_a_restart_an_io_ceiling_no_longer_configured_is_cleared(tmp_path, own, writes, disk):
    ready(tmp_path).create(JOB, Limits(), None, ALICE, Limits(io_device="/", io_write_iops=50))
    again = ready(tmp_path)  # what io.max holds is unknown to it: it reads the file
    writes.clear()
    again.create("aaaaaaaaaaaa", Limits(), None, ALICE, Limits(pids=10))
    group = own / "x/jobs/user-alice"
    assert (str(group / "io.max"), f"{DISK} rbps=max wbps=max riops=max wiops=max") in writes


def test_an_unchanged_io_ceiling_is_not_written_again(tmp_path, own, writes, disk):
    backend = ready(tmp_path)
    backend.create(JOB, Limits(), None, ALICE, Limits(io_device="/", io_write_bps=4 << 20))
    writes.clear()
    backend.create("aaaaaaaaaaaa", Limits(), None, ALICE, Limits(io_device="/", io_write_bps=4 << 20))
    assert writes == []


def test_check_ceilings_refuses_an_io_ceiling_on_something_that_is_no_disk(tmp_path, own):
    from jobworkerd.config import ConfigError

    backend = make(tmp_path)
    with pytest.raises(ConfigError) as info:
        backend.check_ceilings(Limits(io_device="/proc", io_write_bps=1 << 20), "limits.users.bob")
    message = str(info.value)
    assert message.startswith("limits.users.bob.io_device (default: state_dir): io limits need a block device, "
                              "but '/proc' is on device"), message
    assert message.endswith("set limits.users.bob.io_device to a path on a real disk"), message
    with pytest.raises(ConfigError, match="limits.per_user.io_device .*No such file"):
        backend.check_ceilings(Limits(io_device=str(tmp_path / "none"), io_read_iops=10), "limits.per_user")
    backend.check_ceilings(Limits(io_device="/proc", memory=1 << 30), "limits.admins")  # no io ceiling: no disk needed
    assert not (own / "x").exists()  # checked before anything is made
