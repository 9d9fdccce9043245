"""Each client its own Unix identity (run_as "dynamic", README "What a job gets", docs/SECURITY.md section 3),
through the real daemon: two users' default jobs run as two uids, one user's jobs as one; an admin asking
for "dynamic" gets a uid of its own (not the user's with the same CN); the uids survive a restart, are
never in the passwd database, and one user's private file is not another's to read. Naming a group with
a dynamic uid is an admin's alone; a used-up range is RESOURCE_EXHAUSTED naming run_as.dynamic_uids."""

from __future__ import annotations

import grp
import pwd
import shutil
import tempfile
from pathlib import Path

import grpc
import pytest

from faultkit import read_all, rpc_error, sh, start, wait_job
from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.root

IDENTITY = 'id -u; id -g; id -G; echo "$HOME $USER $LOGNAME"'


def identity(stub, **command) -> tuple[pb.Job, list[str]]:
    """Run IDENTITY; the finished job and its output lines (uid, gid, groups, environment)."""
    job = sh(stub, IDENTITY, **command)
    ended = wait_job(stub, job.id)
    assert (ended.reason, ended.exit_code) == (pb.TERMINATION_REASON_EXITED, 0), ended
    return ended, read_all(stub, job.id).decode().splitlines()


def dynamic_uid(stub, **command) -> int:
    job, (uid, gid, groups, env) = identity(stub, **command)
    assert uid == gid == groups, (uid, gid, groups)  # its own group, and only that one
    assert env == f"/tmp dynamic-{uid} dynamic-{uid}"
    assert job.run_as == job.command.user == f"dynamic:{uid}"
    for lookup in (pwd.getpwuid, grp.getgrgid):  # nobody's account, nobody's group
        with pytest.raises(KeyError):
            lookup(int(uid))
    return int(uid)


@pytest.fixture
def shared_dir():
    """World-writable and sticky, like /tmp: where jobs of two clients could meet. The sandbox gives every
    job its own /tmp and /var/tmp and a read-only host, so this is a host directory the config makes
    writable to jobs (sandbox.profiles.default.writable_paths)."""
    path = Path(tempfile.mkdtemp(prefix="jobworkerd-dynamic-", dir="/var/lib"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_each_user_runs_as_a_uid_of_its_own_and_an_admin_asking_for_dynamic_too(daemon):
    alice, bob = daemon.stub("alice", "user"), daemon.stub("bob", "user")
    admin_alice = daemon.stub("alice", "admin")  # the same CN as the user, another owner
    first, again = dynamic_uid(alice), dynamic_uid(alice, user="dynamic")  # the default, and by name
    assert first == again
    other = dynamic_uid(bob)
    own = dynamic_uid(admin_alice, user="dynamic")
    assert len({first, other, own}) == 3
    assert all(61184 <= uid <= 65519 for uid in (first, other, own))  # run_as.dynamic_uids, as shipped
    # Named accounts stay as they were: admins default to root, users may still ask for nobody.
    assert identity(admin_alice)[0].run_as == "root"
    job, (uid, gid, _, env) = identity(alice, user="nobody")
    assert (job.run_as, uid, gid) == ("nobody", "65534", "65534") and env.startswith("/nonexistent nobody")


def test_one_users_private_file_is_not_anothers(daemon_factory, shared_dir):
    daemon = daemon_factory({"sandbox": {"profiles": {"default": {"writable_paths": [str(shared_dir)]}}}}).start()
    alice, bob = daemon.stub("alice", "user"), daemon.stub("bob", "user")
    secret = shared_dir / "secret"
    wrote = wait_job(alice, sh(alice, f"umask 077; echo mine > {secret}").id)
    assert wrote.exit_code == 0
    assert secret.stat().st_uid == secret.stat().st_gid == int(wrote.run_as.removeprefix("dynamic:"))
    read = wait_job(bob, sh(bob, f"cat {secret}; rm -f {secret}").id)
    assert read.exit_code != 0 and secret.read_text() == "mine\n"  # neither read nor removed (sticky directory)
    assert b"Permission denied" in read_all(bob, read.id)
    again = wait_job(alice, sh(alice, f"cat {secret}").id)  # and alice's next job still has it
    assert read_all(alice, again.id) == b"mine\n"


def test_a_user_may_not_name_a_group_for_a_dynamic_uid_but_an_admin_may(daemon):
    alice, admin = daemon.stub("alice", "user"), daemon.stub("carol", "admin")
    for group in ("nogroup", "65534", "root"):
        error = rpc_error(lambda: start(alice, "true", group=group))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
        assert "may not name a group for a job run as 'dynamic'" in error.details()
    job, (uid, gid, groups, _) = identity(admin, user="dynamic", group="nogroup")
    assert job.run_as == f"dynamic:{uid}" and gid == "65534"
    assert sorted(groups.split()) == sorted(["65534", uid])  # the uid's own group stays one of its groups
    error = rpc_error(lambda: start(alice, "true", user=job.run_as))  # the recorded form is not a user name
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "may run jobs only as: dynamic" in error.details()
    error = rpc_error(lambda: start(admin, "true", user=job.run_as))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "ask for 'dynamic'" in error.details()


def test_the_uids_survive_a_restart(daemon_factory):
    d = daemon_factory().start()
    before = {who: dynamic_uid(d.stub(*who), user="dynamic") for who in (("dana", "user"), ("erin", "user"),
                                                                           ("dana", "admin"))}
    assert len(set(before.values())) == 3
    d.stop()
    d.start()
    # Asked for in another order: still each one's own, and a newcomer gets a fresh one.
    after = {who: dynamic_uid(d.stub(*who), user="dynamic") for who in reversed(list(before))}
    assert after == before
    assert dynamic_uid(d.stub("frank", "user")) not in before.values()


def test_a_used_up_range_is_resource_exhausted_and_those_with_a_uid_keep_it(daemon_factory):
    low = 61184
    while any(_on_host(uid) for uid in (low, low + 1)):
        low += 2
    d = daemon_factory({"run_as": {"dynamic_uids": f"{low}-{low + 1}"}}).start()
    assert (dynamic_uid(d.stub("gina", "user")), dynamic_uid(d.stub("hal", "user"))) == (low, low + 1)
    error = rpc_error(lambda: start(d.stub("ivan", "user"), "true"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert "run_as.dynamic_uids" in error.details() and f"{low}-{low + 1}" in error.details()
    assert dynamic_uid(d.stub("gina", "user")) == low
    # A named account still runs.
    assert wait_job(d.stub("ivan", "user"), start(d.stub("ivan", "user"), "true", user="nobody").id).exit_code == 0


def _on_host(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False
