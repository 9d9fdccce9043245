"""The daemon side of the sandbox: which role may ask for what (jobworkerd.sandbox.plan.decide), the
launcher fields a start sends, and the config's profiles. The launcher side runs for real in
tests/integration/test_sandbox.py."""

from __future__ import annotations

import os

import pytest

from jobworkerd.config import ConfigError, config_from_dict
from jobworkerd.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from jobworkerd.sandbox.options import Mount, SandboxRequest
from jobworkerd.sandbox.plan import ROOT_CAPS_MASK, decide, launcher_fields
from jobworkerd.sandbox.seccomp import compile_program

CONFIG = config_from_dict({}).sandbox


def fields(request=SandboxRequest(), is_admin=False, uid=65534, directory="/", config=CONFIG, **kw):
    sandbox = decide(request, is_admin, config)
    values = launcher_fields(sandbox, job_id="0123456789ab", uid=uid, directory=directory,
                             hidden=kw.get("hidden", ["/run/jobworkerd/jobs"]), cgroup_view=[(".", "cgroup2", "")],
                             cgroup_links=[])
    return values


def field(values, key):
    found = [v for k, v in values if k == key]
    return found[0] if len(found) == 1 else found


def test_both_roles_get_the_default_profile_and_only_admins_may_loosen_it():
    assert decide(SandboxRequest(), False, CONFIG).profile_name == "default"
    assert decide(SandboxRequest(), True, CONFIG).profile_name == "default"
    assert decide(SandboxRequest(profile="privileged"), True, CONFIG).profile.privileged
    for request, named in ((SandboxRequest(profile="privileged"), "privileged"),
                           (SandboxRequest(seccomp="unconfined"), "--seccomp unconfined"),
                           (SandboxRequest(devices=("/dev/null",)), "--device"),
                           (SandboxRequest(mounts=(Mount("/etc", "/mnt"),)), "mount source '/etc'"),
                           (SandboxRequest(rootfs="/srv/image"), "rootfs '/srv/image'")):
        with pytest.raises(PermissionDenied, match=named):
            decide(request, False, CONFIG)


def test_unknown_profiles_and_bad_values_are_invalid_arguments():
    with pytest.raises(InvalidArgument, match="no sandbox profile 'nope'"):
        decide(SandboxRequest(profile="nope"), True, CONFIG)
    with pytest.raises(InvalidArgument, match="seccomp must be"):
        decide(SandboxRequest(seccomp="off"), True, CONFIG)
    for name in ("-x", "a b", "x" * 65, "dot/slash"):
        with pytest.raises(InvalidArgument, match="hostname"):
            decide(SandboxRequest(hostname=name), False, CONFIG)


def test_a_user_job_gets_no_capabilities_and_a_root_job_dockers_set():
    assert field(fields(uid=65534), "caps") == "0"
    assert int(field(fields(uid=0, is_admin=True), "caps"), 16) == ROOT_CAPS_MASK == 0xA80425FB


def test_the_default_profile_sends_every_hardening_and_the_compiled_filter():
    values = fields()
    assert field(values, "root_ro") == "1" and field(values, "hostname") == "0123456789ab"
    assert field(values, "seccomp") == compile_program().hex()
    assert field(values, "cgview") == ".\tcgroup2\t" and field(values, "privileged") == []
    unconfined = fields(SandboxRequest(seccomp="unconfined"), is_admin=True)
    assert field(unconfined, "seccomp") == []


def test_privileged_sends_only_what_it_keeps():
    values = dict(fields(SandboxRequest(profile="privileged", hostname="h"), is_admin=True, uid=0))
    assert values == {"hostname": "h", "rootfs": "", "privileged": "1"}


def test_the_jobs_directory_is_writable_but_never_the_root_or_a_daemon_directory(tmp_path):
    assert field(fields(directory=str(tmp_path)), "bind") == f"{tmp_path}\t{tmp_path}\trw"
    assert field(fields(directory="/"), "bind") == []
    hidden = fields(directory=str(tmp_path), hidden=[str(tmp_path.parent)])
    assert field(hidden, "bind") == []
    for kernel in ("/sys/fs/cgroup", "/proc/sys", "/dev"):  # a root job there would write the host's kernel state
        assert field(fields(directory=kernel, is_admin=True, uid=0), "bind") == []


def test_mounts_are_checked_before_anything_is_created(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    values = fields(SandboxRequest(mounts=(Mount(str(source), "/tmp/in", True),)), is_admin=True, uid=0)
    assert field(values, "bind") == f"{source}\t/tmp/in\tro"  # below /tmp: the launcher makes the mount point
    with pytest.raises(FailedPrecondition, match="must already exist"):
        fields(SandboxRequest(mounts=(Mount(str(source), "/no/such/dir"),)), is_admin=True)
    with pytest.raises(FailedPrecondition, match="does not exist"):
        fields(SandboxRequest(mounts=(Mount(str(tmp_path / "missing"), "/mnt"),)), is_admin=True)
    with pytest.raises(InvalidArgument, match="other than /"):
        fields(SandboxRequest(mounts=(Mount(str(source), "/"),)), is_admin=True)
    with pytest.raises(InvalidArgument, match="absolute"):
        fields(SandboxRequest(mounts=(Mount("relative", "/mnt"),)), is_admin=True)
    with pytest.raises(PermissionDenied, match="daemon's own"):
        fields(SandboxRequest(mounts=(Mount(str(source), "/mnt"),)), is_admin=True, hidden=[str(tmp_path)])


def test_a_user_mount_below_an_allowed_prefix_resolves_symlinks_first(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "escape").symlink_to("/etc")
    config = config_from_dict({"sandbox": {"user_mount_prefixes": [str(allowed)]}}).sandbox
    assert decide(SandboxRequest(mounts=(Mount(str(allowed), "/mnt"),)), False, config)
    with pytest.raises(PermissionDenied, match="not below"):
        decide(SandboxRequest(mounts=(Mount(str(allowed / "escape"), "/mnt"),)), False, config)


def test_devices_must_be_device_nodes_under_dev(tmp_path):
    values = fields(SandboxRequest(devices=("/dev/null",)), is_admin=True, uid=0)
    st = os.stat("/dev/null")
    assert field(values, "device") == f"/dev/null\tc\t1\t3\t{st.st_mode & 0o7777:o}\t0\t0"
    with pytest.raises(InvalidArgument, match="not a character or block device"):
        fields(SandboxRequest(devices=("/etc/passwd",)), is_admin=True)


def test_a_rootfs_needs_its_mount_points(tmp_path):
    with pytest.raises(FailedPrecondition, match="lacks the directories /proc, /dev, /sys, /run"):
        fields(SandboxRequest(rootfs=str(tmp_path)), is_admin=True)
    for sub in ("proc", "dev", "sys", "run"):
        (tmp_path / sub).mkdir()
    assert field(fields(SandboxRequest(rootfs=str(tmp_path)), is_admin=True), "rootfs") == str(tmp_path)


def test_the_config_never_gives_users_a_loosened_profile():
    for profile in ({"privileged": True}, {"seccomp": "unconfined"}, {"read_only_root": False}):
        with pytest.raises(ConfigError, match="user-role jobs get only confined profiles"):
            config_from_dict({"sandbox": {"profiles": {"loose": profile}, "user": {"allowed": ["default", "loose"]}}})
    with pytest.raises(ConfigError, match="no profile 'missing'"):
        config_from_dict({"sandbox": {"admin": {"profile": "missing", "allowed": ["missing"]}}})
    with pytest.raises(ConfigError, match="must be one of"):
        config_from_dict({"sandbox": {"admin": {"profile": "privileged", "allowed": ["default"]}}})
    custom = config_from_dict({"sandbox": {"profiles": {"build": {"tmp_size": "2G", "writable_paths": ["/srv/cache"]}},
                                           "user": {"profile": "build", "allowed": ["build"]}}}).sandbox
    assert custom.profiles["build"].tmp_size == 2 << 30 and custom.profiles["build"].writable_paths == ("/srv/cache",)
    assert "default" in custom.profiles and "privileged" in custom.profiles
