"""Job spec validation (jobworkerd.worker.spec.resolve): every mistake a person can make is refused
with a typed error and a message that says what was wrong. Needs no root."""

import math
import os
import pwd

import pytest

from jobworkerd.cgroups.base import CgroupBackend
from jobworkerd.config import LimitsConfig, LimitValues
from jobworkerd.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, StartFailed
from jobworkerd.worker.models import IOTarget, JobSpec, Limits
from jobworkerd.worker.spec import DEFAULT_PATH, MIN_MEMORY, check_limits, find_program, resolve

NO_DEFAULTS = LimitsConfig(default=LimitValues(), max=LimitValues())
ME = pwd.getpwuid(os.geteuid()).pw_name


def ok(spec: JobSpec, config: LimitsConfig = NO_DEFAULTS, default_user: str = ME):
    return resolve(spec, config, default_user)


def refused(error: type, spec: JobSpec, config: LimitsConfig = NO_DEFAULTS, default_user: str = ME,
            dynamic_uid: int | None = None) -> str:
    with pytest.raises(error) as info:
        resolve(spec, config, default_user, dynamic_uid)
    assert type(info.value) is error, f"expected exactly {error.__name__}, got {type(info.value).__name__}"
    assert info.value.message == str(info.value)
    return info.value.message


# -- what a valid spec resolves to ---------------------------------------------------------------------


def test_a_valid_spec_resolves():
    r = ok(JobSpec("true", ("a", "b c"), env={"FOO": "bar"}))
    assert os.path.isabs(r.program) and os.path.basename(r.program) == "true"
    assert r.argv == ("true", "a", "b c")
    assert r.user == ME and r.uid == os.geteuid()
    assert r.gid == pwd.getpwuid(os.geteuid()).pw_gid
    assert r.gid in r.groups  # the user's groups from the group database, with the primary one
    assert r.directory == "/"
    assert r.env["FOO"] == "bar"
    assert r.env["PATH"] == DEFAULT_PATH
    assert r.env["USER"] == ME and r.env["LOGNAME"] == ME and "HOME" in r.env
    assert r.io_target is None


def test_explicit_user_and_group_by_name_and_number():
    r = ok(JobSpec("true", user="nobody"))
    assert r.uid == pwd.getpwnam("nobody").pw_uid and r.user == "nobody"
    r = ok(JobSpec("true", user=str(pwd.getpwnam("nobody").pw_uid), group="0"))
    assert r.user == "nobody" and r.gid == 0


def test_the_default_user_applies_when_the_spec_names_none():
    assert ok(JobSpec("true"), default_user="nobody").user == "nobody"


def test_the_env_path_is_used_to_find_the_program(tmp_path):
    program = tmp_path / "myprog"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    r = ok(JobSpec("myprog", env={"PATH": str(tmp_path)}))
    assert r.program == str(program)
    (tmp_path / "notexec").write_text("")
    refused(FailedPrecondition, JobSpec("notexec", env={"PATH": str(tmp_path)}))


def test_a_relative_program_path_resolves_against_the_directory(tmp_path):
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    r = ok(JobSpec("./run.sh", directory=str(tmp_path)))
    assert r.program == str(tmp_path / "run.sh")


def test_directory_is_normalised(tmp_path):
    assert ok(JobSpec("true", directory=f"{tmp_path}/./x/..")).directory == str(tmp_path)


def test_defaults_apply_and_the_user_wins():
    config = LimitsConfig(default=LimitValues(cpu=1.0, memory=64 << 20, pids=100), max=LimitValues())
    assert ok(JobSpec("true"), config).limits == Limits(cpu=1.0, memory=64 << 20, pids=100)
    limits = ok(JobSpec("true", limits=Limits(cpu=0.5, memory=32 << 20, pids=10)), config).limits
    assert limits == Limits(cpu=0.5, memory=32 << 20, pids=10)


# -- command, arguments, environment, name ---------------------------------------------------------------


def test_empty_command():
    assert refused(InvalidArgument, JobSpec("")) == "command is empty"


def test_nul_bytes_anywhere_are_refused():
    assert "command contains a NUL byte" in refused(InvalidArgument, JobSpec("tr\0ue"))
    assert "argument 2 contains a NUL byte" in refused(InvalidArgument, JobSpec("true", ("ok", "b\0d")))
    assert "contains a NUL byte" in refused(InvalidArgument, JobSpec("true", env={"A": "x\0y"}))
    assert "contains a NUL byte" in refused(InvalidArgument, JobSpec("true", env={"A\0": "x"}))
    assert "user contains a NUL byte" in refused(InvalidArgument, JobSpec("true", user="no\0body"))
    assert "directory contains a NUL byte" in refused(InvalidArgument, JobSpec("true", directory="/t\0mp"))


def test_environment_names():
    assert "'A=B'" in refused(InvalidArgument, JobSpec("true", env={"A=B": "x"}))
    assert "empty" in refused(InvalidArgument, JobSpec("true", env={"": "x"}))


def test_oversized_arguments_and_environment():
    message = refused(InvalidArgument, JobSpec("true", ("x" * (1 << 20),)))
    assert "at most" in message and "bytes" in message
    message = refused(InvalidArgument, JobSpec("true", env={"BIG": "x" * (600 << 10)}))
    assert "environment is" in message and "at most" in message


def test_job_name_with_control_characters():
    assert "control characters" in refused(InvalidArgument, JobSpec("true", name="a\x1bb"))
    assert "256" in refused(InvalidArgument, JobSpec("true", name="n" * 257))
    assert ok(JobSpec("true", name="nightly backup ✓")).spec.name == "nightly backup ✓"


# -- user, group, directory, program --------------------------------------------------------------------


def test_unknown_user():
    message = refused(InvalidArgument, JobSpec("true", user="no-such-user-xyz"))
    assert message == "run-as user 'no-such-user-xyz' does not exist on this host"
    assert "does not exist" in refused(InvalidArgument, JobSpec("true", user="4000000000"))
    assert "does not exist" in refused(InvalidArgument, JobSpec("true", user="99999999999999999999999"))


def test_unknown_group():
    message = refused(InvalidArgument, JobSpec("true", group="no-such-group-xyz"))
    assert message == "run-as group 'no-such-group-xyz' does not exist on this host"


def test_relative_directory():
    message = refused(InvalidArgument, JobSpec("true", directory="tmp"))
    assert message == "directory 'tmp' must be an absolute path"


def test_missing_directory(tmp_path):
    message = refused(InvalidArgument, JobSpec("true", directory=str(tmp_path / "absent")))
    assert "does not exist or is not a directory" in message and "absent" in message
    (tmp_path / "file").write_text("")
    assert "not a directory" in refused(InvalidArgument, JobSpec("true", directory=str(tmp_path / "file")))


def test_missing_program_is_a_failed_precondition(tmp_path):
    message = refused(FailedPrecondition, JobSpec("no-such-program-xyz"))
    assert "'no-such-program-xyz' not found in PATH" in message and DEFAULT_PATH in message
    message = refused(FailedPrecondition, JobSpec(str(tmp_path / "absent")))
    assert message == f"program {str(tmp_path / 'absent')!r} does not exist"


def test_missing_program_is_not_a_start_failure():
    with pytest.raises(FailedPrecondition) as info:
        ok(JobSpec("/no/such/program"))
    assert not isinstance(info.value, StartFailed)


def test_find_program_skips_directories_and_empty_entries(tmp_path):
    (tmp_path / "tool").mkdir()  # a directory named like the program is not the program
    assert find_program("true", f"{tmp_path}::/usr/bin:/bin", "/") in ("/usr/bin/true", "/bin/true")


# -- limits -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cpu", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_cpu_must_be_a_positive_finite_number(cpu):
    message = refused(InvalidArgument, JobSpec("true", limits=Limits(cpu=cpu)))
    assert message.startswith("cpu must be a positive number of cores (e.g. 0.5), got ")


def test_absurd_cpu():
    assert "not a real number of cores" in refused(InvalidArgument, JobSpec("true", limits=Limits(cpu=1e9)))


@pytest.mark.parametrize("memory", [0, 1, 1 << 20, MIN_MEMORY - 1, -5, 1 << 63])
def test_memory_out_of_range(memory):
    message = refused(InvalidArgument, JobSpec("true", limits=Limits(memory=memory)))
    assert message.startswith(f"memory must be between {MIN_MEMORY >> 20}M and ")
    assert message.endswith(f"got {memory}")


def test_memory_minimum_itself_is_accepted():
    assert ok(JobSpec("true", limits=Limits(memory=MIN_MEMORY))).limits.memory == MIN_MEMORY


@pytest.mark.parametrize("pids", [0, -1, (1 << 22) + 1])
def test_pids_out_of_range(pids):
    message = refused(InvalidArgument, JobSpec("true", limits=Limits(pids=pids)))
    assert message == f"pids must be between 1 and {1 << 22}, got {pids}"


def test_one_pid_is_enough_for_the_program_alone():
    # The job's init is not in the job's cgroup: the program is the cgroup's first process.
    assert ok(JobSpec("true", limits=Limits(pids=1))).limits.pids == 1


def test_a_cpu_quota_below_the_kernels_floor_is_refused_not_clamped():
    message = refused(InvalidArgument, JobSpec("true", limits=Limits(cpu=0.005)))
    assert "at least 0.01 cores" in message and "0.005" in message
    assert ok(JobSpec("true", limits=Limits(cpu=0.01))).limits.cpu == 0.01


@pytest.mark.parametrize("name", ["io_read_iops", "io_write_iops"])
def test_iops_above_32_bits_are_refused_not_silently_unlimited(name):
    io = Limits(**{name: 1 << 32}, io_device="/")
    message = refused(InvalidArgument, JobSpec("true", limits=io))
    assert f"at most {(1 << 32) - 1}" in message


@pytest.mark.parametrize("name", ["io_read_bps", "io_write_bps", "io_read_iops", "io_write_iops"])
@pytest.mark.parametrize("value", [0, -1, 1])
def test_io_limits_the_kernel_refuses_are_invalid_not_internal(name, value):
    message = refused(InvalidArgument, JobSpec("true", limits=Limits(**{name: value})))
    assert message == (f"{name.replace('_', '-')} must be a number from 2 (the kernel's io.max refuses 0 and 1) "
                       f"to {1 << 62}, got {value}")
    assert check_limits(Limits(**{name: 2}), NO_DEFAULTS) == Limits(**{name: 2})


def test_io_limit_on_something_that_is_not_a_block_device():
    # /proc is a pseudo filesystem: no block device behind it.
    message = refused(InvalidArgument, JobSpec("true", limits=Limits(io_write_bps=1 << 20, io_device="/proc")))
    assert "io limits need a block device" in message and "'/proc'" in message and "--io-device" in message


def test_io_limit_on_a_missing_device_path(tmp_path):
    message = refused(InvalidArgument, JobSpec("true", limits=Limits(io_read_bps=2, io_device=str(tmp_path / "x"))))
    assert message.startswith("io device ") and "No such file" in message


def test_io_device_without_an_io_limit():
    message = refused(InvalidArgument, JobSpec("true", limits=Limits(io_device="/")))
    assert message == "io device given without any io limit (io read/write bps or iops)"


def test_io_limits_default_to_the_directorys_device():
    if not os.path.exists(f"/sys/dev/block/{os.major(os.stat('/').st_dev)}:{os.minor(os.stat('/').st_dev)}"):
        pytest.skip("/ is not on a block device here")
    r = ok(JobSpec("true", directory="/", limits=Limits(io_write_bps=2 << 20)))
    assert isinstance(r.io_target, IOTarget)


def test_backend_refuses_io_limits_without_a_device():
    with pytest.raises(InvalidArgument, match="io limits need a block device"):
        CgroupBackend.check_limits(Limits(io_write_bps=1), None)
    CgroupBackend.check_limits(Limits(io_write_bps=1), IOTarget(8, 0))
    CgroupBackend.check_limits(Limits(), None)


@pytest.mark.parametrize(
    ("limits", "maximum", "fragment"),
    [
        (Limits(cpu=2.0), LimitValues(cpu=1.0), "cpu 2.0 is over the configured maximum of 1.0"),
        (Limits(memory=1 << 30), LimitValues(memory=256 << 20), f"memory {1 << 30} is over the configured maximum"),
        (Limits(pids=500), LimitValues(pids=100), "pids 500 is over the configured maximum of 100"),
        (Limits(), LimitValues(memory=256 << 20), "memory no limit is over the configured maximum"),
    ],
)
def test_over_the_configured_maximum_is_resource_exhausted(limits, maximum, fragment):
    config = LimitsConfig(default=LimitValues(), max=maximum)
    message = refused(ResourceExhausted, JobSpec("true", limits=limits), config)
    assert fragment in message and "ask for at most" in message


def test_at_the_maximum_is_fine():
    config = LimitsConfig(default=LimitValues(), max=LimitValues(cpu=1.0, memory=64 << 20, pids=100))
    limits = ok(JobSpec("true", limits=Limits(cpu=1.0, memory=64 << 20, pids=100)), config).limits
    assert limits == Limits(cpu=1.0, memory=64 << 20, pids=100)


def test_a_default_over_the_maximum_is_refused_too():
    config = LimitsConfig(default=LimitValues(pids=1024), max=LimitValues(pids=100))
    refused(ResourceExhausted, JobSpec("true"), config)


def test_invalid_beats_over_the_maximum():
    config = LimitsConfig(default=LimitValues(), max=LimitValues(cpu=1.0))
    refused(InvalidArgument, JobSpec("true", limits=Limits(cpu=-2.0)), config)


def test_check_limits_keeps_io_settings():
    limits = Limits(io_device="/", io_read_bps=2, io_write_bps=3, io_read_iops=4, io_write_iops=5)
    assert check_limits(limits, NO_DEFAULTS) == limits


def _program(path, mode: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return str(path)


def test_relative_path_entries_are_the_jobs_directory_not_the_daemons(tmp_path, monkeypatch):
    job_dir = tmp_path / "job"
    mine = _program(job_dir / "bin" / "tool", 0o755)
    daemon_side = tmp_path / "daemon-cwd"
    _program(daemon_side / "bin" / "tool", 0o755)
    monkeypatch.chdir(daemon_side)
    assert find_program("tool", "bin", str(job_dir)) == mine
    assert find_program("tool", ":/usr/bin", str(job_dir / "bin")) == mine  # empty entry: "."


def test_a_program_the_run_as_user_may_not_execute_is_passed_over(tmp_path):
    owner_only = _program(tmp_path / "first" / "tool", 0o700)  # root's: only root may run it
    everyone = _program(tmp_path / "second" / "tool", 0o755)
    path = f"{tmp_path}/first:{tmp_path}/second"
    assert find_program("tool", path, "/", uid=0) == owner_only
    assert find_program("tool", path, "/", uid=65534, gids=(65534,)) == everyone
    with pytest.raises(FailedPrecondition, match="which user 65534 may not execute"):
        find_program("tool", f"{tmp_path}/first", "/", uid=65534, gids=(65534,))


# -- dynamic users (run_as "dynamic": the client's own uid, allocated by JobStore.dynamic_uid) ---------------

DYN = 1_999_990_042  # a uid in no passwd or group database (checked)


@pytest.fixture
def dyn():
    import grp

    for lookup in (pwd.getpwuid, grp.getgrgid):
        with pytest.raises(KeyError):
            lookup(DYN)
    return DYN


def test_a_dynamic_user_runs_as_its_uid_with_only_its_own_group(dyn):
    r = resolve(JobSpec("true", user="dynamic", env={"FOO": "bar"}), NO_DEFAULTS, ME, dynamic_uid=dyn)
    assert (r.uid, r.gid, r.groups) == (dyn, dyn, (dyn,))
    assert r.user == f"dynamic:{dyn}" and r.spec.user == f"dynamic:{dyn}"  # what the record shows
    assert r.env["HOME"] == "/tmp" and r.env["USER"] == r.env["LOGNAME"] == f"dynamic-{dyn}"
    assert r.env["FOO"] == "bar" and r.env["PATH"] == DEFAULT_PATH
    assert r.spec.command == "true" and r.spec.env == {"FOO": "bar"}  # the rest of the spec as asked
    assert resolve(JobSpec("true"), NO_DEFAULTS, "dynamic", dynamic_uid=dyn).user == f"dynamic:{dyn}"  # default
    # The job's own environment still wins, as for any user.
    assert resolve(JobSpec("true", user="dynamic", env={"HOME": "/srv"}), NO_DEFAULTS, ME,
                   dynamic_uid=dyn).env["HOME"] == "/srv"


def test_an_admins_group_with_a_dynamic_user_keeps_the_uids_own_group_too(dyn):
    r = resolve(JobSpec("true", user="dynamic", group="nogroup"), NO_DEFAULTS, ME, dynamic_uid=dyn)
    assert (r.uid, r.gid, r.groups) == (dyn, 65534, (65534, dyn))


def test_the_dynamic_uid_is_not_used_for_named_users(dyn):
    r = resolve(JobSpec("true", user="nobody"), NO_DEFAULTS, ME, dynamic_uid=dyn)
    assert (r.uid, r.user, r.spec.user) == (pwd.getpwnam("nobody").pw_uid, "nobody", "nobody")


def test_dynamic_without_an_allocated_uid_is_refused():
    assert "needs the uid allocated" in refused(InvalidArgument, JobSpec("true", user="dynamic"))


def test_the_recorded_form_is_not_a_user_to_ask_for(dyn):
    message = refused(InvalidArgument, JobSpec("true", user=f"dynamic:{dyn}"))
    assert "how a job's record shows a dynamic uid" in message and "ask for 'dynamic'" in message


def test_a_dynamic_uid_that_an_account_took_since_is_refused():
    """nobody (65534) stands for an account created in the range after the uid was given out."""
    message = refused(FailedPrecondition, JobSpec("true", user="dynamic"), dynamic_uid=65534)
    assert "uid 65534" in message and "'nobody'" in message and "run_as.dynamic_uids" in message


def test_the_program_is_checked_as_the_dynamic_uid(tmp_path, dyn):
    owner_only = _program(tmp_path / "first" / "tool", 0o700)  # the test user's: not the dynamic uid's to run
    everyone = _program(tmp_path / "second" / "tool", 0o755)
    env = {"PATH": f"{tmp_path}/first:{tmp_path}/second"}
    spec = JobSpec("tool", user="dynamic", env=env)
    assert resolve(spec, NO_DEFAULTS, ME, dynamic_uid=dyn).program == everyone
    assert resolve(JobSpec("tool", env=env), NO_DEFAULTS, ME).program == owner_only  # as the test's own user
    message = refused(FailedPrecondition, JobSpec("tool", user="dynamic", env={"PATH": f"{tmp_path}/first"}),
                      dynamic_uid=dyn)
    assert f"which user {dyn} may not execute" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_the_dynamic_uids_own_files_and_group_are_its_to_execute(tmp_path, dyn):
    own = _program(tmp_path / "own" / "tool", 0o700)
    os.chown(own, dyn, 0)
    by_group = _program(tmp_path / "group" / "tool", 0o070)
    os.chown(by_group, 0, dyn)
    for path, program in ((f"{tmp_path}/own", own), (f"{tmp_path}/group", by_group)):
        assert resolve(JobSpec("tool", user="dynamic", env={"PATH": path}), NO_DEFAULTS, ME,
                       dynamic_uid=dyn).program == program
