"""Job group directory names (jobworkerd.cgroups.groups): safe, collision-free, never a job id."""

import pytest

from jobworkerd.cgroups.groups import group_dir, is_job_id
from jobworkerd.worker.models import ADMIN_GROUP, JobGroup


def test_admins_share_one_group_whatever_their_name():
    assert group_dir(ADMIN_GROUP) == "admin"
    assert group_dir(JobGroup.of("root", True)) == "admin"
    assert group_dir(JobGroup.of("alice", True)) == "admin"


@pytest.mark.parametrize("name", ["alice", "ci-bot", "a.b_c-d", "A9", ".", "..", "x" * 64])
def test_a_plain_name_is_used_as_it_is(name):
    assert group_dir(JobGroup.of(name, False)) == f"user-{name}"


@pytest.mark.parametrize("name", ["", "al ce", "a/b", "../x", "ü", "x" * 65, "a~b", "new\nline", "admin\0"])
def test_any_other_name_gets_a_safe_prefix_and_a_hash_of_the_whole_name(name):
    directory = group_dir(JobGroup.of(name, False))
    prefix, _, digest = directory.rpartition("~")
    assert prefix.startswith("user-") and len(prefix) <= len("user-") + 32
    assert len(digest) == 16 and all(c in "0123456789abcdef" for c in digest)
    assert all(c.isascii() and (c.isalnum() or c in "._-~") for c in directory)
    assert len(directory) <= 255 and "/" not in directory


def test_names_that_sanitize_alike_stay_apart():
    names = ["a b", "a/b", "a_b", "a\tb", "x" * 65, "x" * 64 + "y", ""]
    dirs = [group_dir(JobGroup.of(n, False)) for n in names]
    assert len(set(dirs)) == len(names)
    assert group_dir(JobGroup.of("a_b", False)) == "user-a_b"  # the plain one keeps its name
    # a plain name can never look hashed (no "~" in plain names), so it cannot take a hashed one's place
    hashed = group_dir(JobGroup.of("a b", False))
    assert group_dir(JobGroup.of(hashed.removeprefix("user-"), False)) != hashed


def test_the_mapping_is_stable():
    assert group_dir(JobGroup.of("al ce", False)) == group_dir(JobGroup.of("al ce", False))


def test_a_group_is_never_taken_for_a_job_id():
    assert is_job_id("0123456789ab")
    assert not is_job_id("0123456789AB") and not is_job_id("0123456789a") and not is_job_id("admin")
    for name in ("0123456789ab", "abcdefabcdef"):
        assert not is_job_id(group_dir(JobGroup.of(name, False)))
