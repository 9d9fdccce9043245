"""JobStore: job records in SQLite, surviving a reopen."""

import dataclasses
import os
import stat
import threading

import pytest

from jobworkerd.errors import ResourceExhausted
from jobworkerd.worker.models import JobRecord, JobSpec, JobState, Limits, Reason, Usage
from jobworkerd.worker.store import JobStore


def record(job_id, owner="alice", created_at=1.0, **changes):
    spec = JobSpec(
        command="/bin/sh",
        args=("-c", "echo hi; exit 3"),
        name="greeting",
        user="nobody",
        group="nogroup",
        directory="/tmp",
        env={"A": "1", "B": "two words"},
        limits=Limits(cpu=0.5, memory=64 << 20, io_device="/", io_write_bps=2 << 20),
    )
    base = JobRecord(id=job_id, owner=owner, spec=spec, limits=Limits(cpu=0.5, memory=64 << 20, pids=1024), created_at=created_at)
    return base.evolve(**changes)


@pytest.fixture
def store(tmp_path):
    s = JobStore(str(tmp_path / "state"))
    yield s
    s.close()


def test_put_get_round_trips_every_field(store):
    finished = record(
        "aaaaaaaaaaaa",
        state=JobState.FINISHED,
        reason=Reason.OOM_KILLED,
        exit_code=None,
        signal=9,
        message="killed by the kernel's OOM killer",
        started_at=2.0,
        finished_at=3.5,
        usage=Usage(cpu_seconds=0.25, memory_peak_bytes=67108864, io_read_bytes=1, io_write_bytes=2, oom_kills=1, output_bytes=5),
        pid=4242,
    )
    store.put(finished)
    got = store.get("aaaaaaaaaaaa")
    assert got == finished
    assert isinstance(got.spec.args, tuple)
    assert got.state is JobState.FINISHED and got.reason is Reason.OOM_KILLED
    assert got.finished


def test_get_unknown_is_none(store):
    assert store.get("nope") is None


def test_put_updates_in_place(store):
    store.put(record("aaaaaaaaaaaa"))
    store.put(record("aaaaaaaaaaaa", state=JobState.RUNNING, started_at=2.0, pid=7))
    store.put(record("aaaaaaaaaaaa", state=JobState.FINISHED, reason=Reason.EXITED, exit_code=3, finished_at=4.0))
    got = store.get("aaaaaaaaaaaa")
    assert got.state is JobState.FINISHED and got.exit_code == 3
    assert len(store.list()) == 1


def test_list_is_ordered_by_creation_and_filtered_by_owner(store):
    store.put(record("cccccccccccc", owner="bob", created_at=3.0))
    store.put(record("aaaaaaaaaaaa", owner="alice", created_at=1.0))
    store.put(record("bbbbbbbbbbbb", owner="alice", created_at=2.0))
    assert [r.id for r in store.list()] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"]
    assert [r.id for r in store.list("alice")] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    assert [r.id for r in store.list("bob")] == ["cccccccccccc"]
    assert store.list("carol") == []


def test_unfinished(store):
    store.put(record("aaaaaaaaaaaa", state=JobState.STARTING))
    store.put(record("bbbbbbbbbbbb", state=JobState.RUNNING))
    store.put(record("cccccccccccc", state=JobState.STOPPING))
    store.put(record("dddddddddddd", state=JobState.FINISHED, reason=Reason.EXITED))
    assert sorted(r.id for r in store.unfinished()) == ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"]


def test_records_survive_a_reopen(tmp_path):
    state = str(tmp_path / "state")
    first = JobStore(state)
    first.put(record("aaaaaaaaaaaa", state=JobState.RUNNING, pid=1))
    first.put(record("bbbbbbbbbbbb", state=JobState.FINISHED, reason=Reason.STOPPED, signal=15))
    first.close()
    second = JobStore(state)
    try:
        assert second.get("aaaaaaaaaaaa") == record("aaaaaaaaaaaa", state=JobState.RUNNING, pid=1)
        assert second.get("bbbbbbbbbbbb").reason is Reason.STOPPED
        assert [r.id for r in second.unfinished()] == ["aaaaaaaaaaaa"]
    finally:
        second.close()


def test_state_dir_is_created_private(tmp_path):
    state = tmp_path / "a" / "b"
    JobStore(str(state)).close()
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert (state / "jobs.sqlite3").exists()


def test_concurrent_puts_from_many_threads(store):
    def worker(n):
        for i in range(20):
            store.put(record(f"{n:06x}{i:06x}", created_at=float(i)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.list()) == 160


def test_record_dict_round_trip():
    r = record("aaaaaaaaaaaa", state=JobState.RUNNING)
    data = r.to_dict()
    assert data["state"] == "running" and data["reason"] == ""
    assert data["spec"]["args"] == ["-c", "echo hi; exit 3"]
    assert JobRecord.from_dict(data) == r


def test_list_pages_oldest_first_without_gaps_or_repeats(tmp_path):
    from jobworkerd.worker.models import JobRecord, JobSpec, Limits
    from jobworkerd.worker.store import JobStore

    store = JobStore(str(tmp_path))
    for i in range(7):  # two records share a creation time: the id breaks the tie
        store.put(JobRecord(id=f"{i:012x}", owner="a" if i % 2 else "b", spec=JobSpec(command="true"),
                            limits=Limits(), created_at=100.0 + (i // 2) * 0.1))
    seen, after = [], None
    while page := store.list(after=after, limit=3):
        seen += [r.id for r in page]
        after = (page[-1].created_at, page[-1].id)
    assert seen == [f"{i:012x}" for i in range(7)]
    assert [r.id for r in store.list(owner="a", after=(100.0, "000000000000"), limit=10)] == \
        ["000000000001", "000000000003", "000000000005"]


# -- schema 0 -> 1: owners qualified by role --------------------------------------------------------------------

def schema0_store(state_dir, records):
    """A store as a daemon before schema 1 left it: owners are bare CNs, user_version 0."""
    import json
    import sqlite3

    from jobworkerd.worker.store import SCHEMA

    os.makedirs(state_dir, mode=0o700)
    db = sqlite3.connect(os.path.join(state_dir, "jobs.sqlite3"), isolation_level=None)
    db.executescript(SCHEMA)
    for r in records:
        db.execute("INSERT INTO jobs (id, owner, created_at, state, record) VALUES (?, ?, ?, ?, ?)",
                   (r.id, r.owner, r.created_at, r.state.value, json.dumps(r.to_dict())))
    db.close()


def as_user(r, user):
    return r.evolve(spec=dataclasses.replace(r.spec, user=user))


def test_schema0_jobs_that_ran_as_root_become_the_admins_and_the_rest_stay_the_users(tmp_path):
    state = str(tmp_path / "state")
    schema0_store(state, [
        as_user(record("aaaaaaaaaaaa", owner="alice", created_at=1.0), "root"),    # only an admin could
        as_user(record("bbbbbbbbbbbb", owner="alice", created_at=2.0), "nobody"),  # either: stays the user's
        as_user(record("cccccccccccc", owner="bob", created_at=3.0), "0"),         # UID 0 by number
        as_user(record("dddddddddddd", owner="alice", created_at=4.0), "no-such-user-here"),
    ])
    s = JobStore(state)
    try:
        assert s.get("aaaaaaaaaaaa").owner == "admin:alice"
        assert s.get("cccccccccccc").owner == "admin:bob"
        assert [r.id for r in s.list(owner="alice")] == ["bbbbbbbbbbbb", "dddddddddddd"]
        assert [r.id for r in s.list(owner="admin:alice")] == ["aaaaaaaaaaaa"]
        assert s.get("aaaaaaaaaaaa").spec.user == "root"  # nothing else of the record changed
        assert len(s.list()) == 4
        # Once: what is stored from now on is already qualified and is not touched again.
        s.put(as_user(record("eeeeeeeeeeee", owner="carol", created_at=5.0), "root"))
    finally:
        s.close()
    s = JobStore(state)
    try:
        assert s.get("eeeeeeeeeeee").owner == "carol"
        assert s.get("aaaaaaaaaaaa").owner == "admin:alice"
    finally:
        s.close()


def test_a_new_store_starts_at_schema_2(tmp_path):
    import sqlite3

    from jobworkerd.worker.store import SCHEMA_VERSION

    JobStore(str(tmp_path / "state")).close()
    db = sqlite3.connect(str(tmp_path / "state" / "jobs.sqlite3"))
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert db.execute("SELECT count(*) FROM dynamic_users").fetchone() == (0,)
    db.close()


def test_a_schema1_store_gains_the_dynamic_users_table_and_keeps_its_records(tmp_path):
    import sqlite3

    state = str(tmp_path / "state")
    s = JobStore(state)
    s.put(record("aaaaaaaaaaaa", owner="admin:alice"))
    s.put(record("bbbbbbbbbbbb", owner="alice"))
    s.close()
    db = sqlite3.connect(os.path.join(state, "jobs.sqlite3"), isolation_level=None)  # as schema 1 left it
    db.execute("DROP TABLE dynamic_users")
    db.execute("PRAGMA user_version = 1")
    db.close()
    s = JobStore(state)
    try:
        assert s.get("aaaaaaaaaaaa").owner == "admin:alice"  # not qualified again (nor changed otherwise)
        assert s.get("aaaaaaaaaaaa") == record("aaaaaaaaaaaa", owner="admin:alice")
        assert [r.id for r in s.list(owner="alice")] == ["bbbbbbbbbbbb"]
        assert s.dynamic_uid("alice", FAR, FAR + 9) == FAR
    finally:
        s.close()
    db = sqlite3.connect(os.path.join(state, "jobs.sqlite3"))
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()


# -- dynamic uids ----------------------------------------------------------------------------------------------

FAR = 1_999_990_000  # a range no account of a test machine is in (checked)


@pytest.fixture
def far():
    import grp
    import pwd

    taken = {u.pw_uid for u in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    assert not taken & set(range(FAR, FAR + 1000)), "an account of this machine is in the test range"
    return FAR


def test_each_owner_gets_its_own_uid_lowest_first_and_keeps_it(store, far):
    assert store.dynamic_uid("alice", far, far + 9) == far
    assert store.dynamic_uid("bob", far, far + 9) == far + 1
    assert store.dynamic_uid("admin:alice", far, far + 9) == far + 2  # an admin is an owner of its own
    assert store.dynamic_uid("alice", far, far + 9) == far
    assert store.dynamic_users() == {"alice": far, "bob": far + 1, "admin:alice": far + 2}


def test_dynamic_uids_survive_a_reopen_and_a_changed_range(tmp_path, far):
    state = str(tmp_path / "state")
    s = JobStore(state)
    assert (s.dynamic_uid("alice", far, far + 9), s.dynamic_uid("bob", far, far + 9)) == (far, far + 1)
    s.close()
    s = JobStore(state)
    try:
        assert s.dynamic_uid("bob", far, far + 9) == far + 1
        assert s.dynamic_uid("carol", far, far + 9) == far + 2
        # An owner keeps its uid even if the range is moved; a new one comes from the new range.
        assert s.dynamic_uid("alice", far + 100, far + 109) == far
        assert s.dynamic_uid("dave", far + 100, far + 109) == far + 100
    finally:
        s.close()


def test_a_uid_is_never_given_to_another_owner_even_after_its_jobs_records_are_gone(store, far):
    store.put(record("aaaaaaaaaaaa", owner="alice", state=JobState.FINISHED))
    uid = store.dynamic_uid("alice", far, far)
    assert store.prune(max_records=0, created_before=None, keys_before=0) == ["aaaaaaaaaaaa"]
    assert store.dynamic_uid("alice", far, far) == uid
    with pytest.raises(ResourceExhausted):
        store.dynamic_uid("bob", far, far)


def test_uids_of_the_passwd_database_are_skipped(store):
    import pwd

    nobody = pwd.getpwnam("nobody").pw_uid  # 65534 on Debian
    assert store.dynamic_uid("alice", nobody, nobody + 1) == nobody + 1
    with pytest.raises(ResourceExhausted):
        store.dynamic_uid("bob", nobody, nobody)


def test_gids_of_the_group_database_are_skipped(store):
    """gid = uid: a group-only id (no user has it as uid) would give the jobs that group's files."""
    import grp
    import pwd

    uids = {u.pw_uid for u in pwd.getpwall()}
    gid = next(g.gr_gid for g in grp.getgrall() if g.gr_gid not in uids and g.gr_gid > 0)
    with pytest.raises(ResourceExhausted):
        store.dynamic_uid("alice", gid, gid)


def test_a_used_up_range_is_resource_exhausted_naming_the_setting(store, far):
    assert [store.dynamic_uid(o, far, far + 2) for o in ("a", "b", "c")] == [far, far + 1, far + 2]
    with pytest.raises(ResourceExhausted) as info:
        store.dynamic_uid("d", far, far + 2)
    assert "run_as.dynamic_uids" in info.value.message and f"{far}-{far + 2}" in info.value.message
    assert "'d'" in info.value.message
    assert store.dynamic_uid("c", far, far + 2) == far + 2  # those who have one keep it
    assert "d" not in store.dynamic_users()


def test_concurrent_allocations_give_distinct_uids_and_one_per_owner(store, far):
    got: dict[tuple[str, int], int] = {}
    barrier = threading.Barrier(40)

    def allocate(owner: str, attempt: int) -> None:
        barrier.wait()
        got[owner, attempt] = store.dynamic_uid(owner, far, far + 99)

    threads = [threading.Thread(target=allocate, args=(f"user{i % 20}", i // 20)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_owner = {owner: {uid for (o, _), uid in got.items() if o == owner} for owner, _ in got}
    assert all(len(uids) == 1 for uids in per_owner.values()), per_owner
    assert sorted(uid for uids in per_owner.values() for uid in uids) == list(range(far, far + 20))
    assert store.dynamic_users() == {owner: next(iter(uids)) for owner, uids in per_owner.items()}
