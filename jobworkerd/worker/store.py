"""Job records in SQLite (stdlib sqlite3, WAL), written at every state change so history survives restarts."""

from __future__ import annotations

import grp
import json
import os
import pwd
import sqlite3
import threading
import time

from ..errors import InternalError, ResourceExhausted
from .models import ADMIN_OWNER_PREFIX, JobRecord, JobState

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, id);
CREATE TABLE IF NOT EXISTS start_keys (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE TABLE IF NOT EXISTS addresses (
    address INTEGER PRIMARY KEY,
    job_id TEXT UNIQUE NOT NULL
);
"""
# PRAGMA user_version. 2: dynamic_users. 1: owners are qualified by role (models.ADMIN_OWNER_PREFIX).
# 0: the bare CN for both. A daemon of schema 1 opens a store of schema 2 as its own (it ignores the table).
SCHEMA_VERSION = 2
# Each owner's own uid (= gid) for jobs run as "dynamic" (run_as.dynamic_uids), kept for good: records keep
# their owners, and files the uid left behind must never become another owner's.
DYNAMIC_USERS = """
CREATE TABLE IF NOT EXISTS dynamic_users (
    owner TEXT PRIMARY KEY,
    uid INTEGER UNIQUE NOT NULL,
    allocated_at REAL NOT NULL
);
"""


class JobStore:
    def __init__(self, state_dir: str):
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(state_dir, "jobs.sqlite3")
        self._lock = threading.Lock()
        self._db = self._connect()
        self._db.executescript(SCHEMA)
        if "summary" not in {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}:
            # The record without arguments and environment, for listings: a page of large records
            # must not cost decoding all of them (NULL in rows written before: the record stands in).
            self._db.execute("ALTER TABLE jobs ADD COLUMN summary TEXT")
        self._upgrade()

    def _upgrade(self) -> None:
        """Schema 0 -> 1, once: a job that ran as UID 0 was an admin's (users never could run as root), so it
        goes to "admin:" + its CN. The rest stay their CN's, i.e. the user's: a record of schema 0 cannot
        tell an admin's job run as another user from that user's (docs/SECURITY.md, section 1).
        Schema 1 -> 2: the (empty) table of dynamic uids."""
        if self._db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version < 1:
                    self._qualify_owners()
                if version < 2:
                    self._db.execute(DYNAMIC_USERS)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _qualify_owners(self) -> None:
        rows = self._db.execute("SELECT id, owner, record FROM jobs").fetchall()
        for job_id, owner, text in rows:
            data = json.loads(text)
            if owner.startswith(ADMIN_OWNER_PREFIX) or not _runs_as_root(data["spec"].get("user", "")):
                continue
            data["owner"] = ADMIN_OWNER_PREFIX + owner
            self._db.execute("UPDATE jobs SET owner = ?, record = ? WHERE id = ?",
                             (data["owner"], json.dumps(data, separators=(",", ":")), job_id))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def put(self, record: JobRecord) -> None:
        full = record.to_dict()
        data = json.dumps(full, separators=(",", ":"))
        full["spec"] = {**full["spec"], "args": [], "env": {}}
        summary = json.dumps(full, separators=(",", ":"))
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO jobs (id, owner, created_at, state, record, summary) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET state = excluded.state, record = excluded.record, "
                    "summary = excluded.summary",
                    (record.id, record.owner, record.created_at, record.state.value, data, summary),
                )
        except sqlite3.OperationalError as exc:
            self._reconnect()  # after a full disk (an I/O error on the WAL index) the old connection may stay broken
            if "full" in str(exc) or _disk_full(self.path):
                raise ResourceExhausted(f"state directory is full; cannot record job {record.id}") from exc
            raise InternalError(f"job store {self.path}: {exc}") from exc

    def _reconnect(self) -> None:
        with self._lock:
            try:
                fresh = self._connect()
            except sqlite3.Error:
                return  # still unusable: the next write tries again
            self._db.close()
            self._db = fresh

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_dict(json.loads(row[0])) if row else None

    def list(
        self, owner: str | None = None, after: tuple[float, str] | None = None, limit: int | None = None,
        summary: bool = False,
    ) -> list[JobRecord]:
        """Oldest first; `after` (created_at, id) of the last record of the previous page. With `summary`, the
        records come without their arguments and environment (cheap to read however large they are)."""
        clauses, params = [], []
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        if after is not None:
            clauses.append("(created_at, id) > (?, ?)")
            params += list(after)
        column = "coalesce(summary, record)" if summary else "record"
        query = f"SELECT {column} FROM jobs" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        query += " ORDER BY created_at, id"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [JobRecord.from_dict(json.loads(r[0])) for r in rows]

    def dynamic_uid(self, owner: str, low: int, high: int) -> int:
        """The uid (= gid) of `owner`'s jobs run as "dynamic": the one it was given, or else the lowest uid from
        low to high that is neither a user nor a group of this host (passwd, group databases) nor another
        owner's, given for good. ResourceExhausted, naming run_as.dynamic_uids, when none is left."""
        try:
            with self._lock:
                row = self._db.execute("SELECT uid FROM dynamic_users WHERE owner = ?", (owner,)).fetchone()
                if row:
                    return row[0]
                held = {uid for (uid,) in self._db.execute(
                    "SELECT uid FROM dynamic_users WHERE uid BETWEEN ? AND ?", (low, high))}
                # Ends after len(held) + (accounts in the range) + 1 steps however wide the range.
                for uid in range(low, high + 1):
                    if uid in held or _on_host(uid):
                        continue
                    self._db.execute("INSERT INTO dynamic_users (owner, uid, allocated_at) VALUES (?, ?, ?)",
                                     (owner, uid, time.time()))
                    return uid
        except sqlite3.OperationalError as exc:
            self._reconnect()
            if "full" in str(exc) or _disk_full(self.path):
                raise ResourceExhausted(f"state directory is full; cannot allocate a uid to {owner!r}") from exc
            raise InternalError(f"job store {self.path}: {exc}") from exc
        raise ResourceExhausted(
            f"no uid left for {owner!r} in run_as.dynamic_uids ({low}-{high}): each is another client's or a "
            f"user or group of this host; widen the range (uids once given stay their owners')"
        )

    def take_address(self, job_id: str, first: int, last: int) -> int:
        """The lowest address (an integer) from first to last that no other job holds, now the job's until
        release_address. Persistent, so a restarted daemon never hands out a live job's address.
        ResourceExhausted, naming network.subnet, when all are held."""
        try:
            with self._lock:
                row = self._db.execute("SELECT address FROM addresses WHERE job_id = ?", (job_id,)).fetchone()
                if row:
                    return row[0]
                gap = self._db.execute(
                    "SELECT ? AS a WHERE NOT EXISTS (SELECT 1 FROM addresses WHERE address = ?) UNION ALL "
                    "SELECT address + 1 FROM addresses WHERE address + 1 <= ? AND address >= ? AND address + 1 NOT IN "
                    "(SELECT address FROM addresses) ORDER BY a LIMIT 1", (first, first, last, first)).fetchone()
                if gap is None:
                    raise ResourceExhausted(f"no address left in network.subnet for job {job_id}: {last - first + 1} "
                                            "bridge-mode jobs hold them all; widen the subnet")
                self._db.execute("INSERT INTO addresses (address, job_id) VALUES (?, ?)", (gap[0], job_id))
                return gap[0]
        except sqlite3.OperationalError as exc:
            self._reconnect()
            raise InternalError(f"job store {self.path}: cannot allocate an address: {exc}") from exc

    def move_address(self, holder: str, job_id: str) -> None:
        """A pooled namespace's address becomes the job's that joins it."""
        with self._lock:
            self._db.execute("UPDATE addresses SET job_id = ? WHERE job_id = ?", (job_id, holder))

    def release_address(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM addresses WHERE job_id = ?", (job_id,))

    def addresses(self) -> dict[str, int]:
        """Every job's address, by job id."""
        with self._lock:
            return dict(self._db.execute("SELECT job_id, address FROM addresses").fetchall())

    def dynamic_users(self) -> dict[str, int]:
        """Every owner's dynamic uid."""
        with self._lock:
            return dict(self._db.execute("SELECT owner, uid FROM dynamic_users ORDER BY uid").fetchall())

    def remember_key(self, owner: str, key: str, job_id: str, at: float) -> None:
        """The job a client's idempotency key started (see StartJobRequest.idempotency_key)."""
        try:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO start_keys (owner, key, job_id, created_at) VALUES (?, ?, ?, ?)",
                                 (owner, key, job_id, at))
        except sqlite3.OperationalError as exc:  # as put(): a full or failing disk
            self._reconnect()
            if "full" in str(exc) or _disk_full(self.path):
                raise ResourceExhausted(f"state directory is full; cannot record the start key of job {job_id}") from exc
            raise InternalError(f"job store {self.path}: {exc}") from exc

    def job_for_key(self, owner: str, key: str, since: float) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT job_id FROM start_keys WHERE owner = ? AND key = ? AND created_at >= ?",
                                   (owner, key, since)).fetchone()
        return row[0] if row else None

    def prune(self, max_records: int | None, created_before: float | None, keys_before: float) -> list[str]:
        """Delete finished records created before `created_before`, then the oldest finished ones beyond
        `max_records` in all, and start keys older than `keys_before`. Returns the jobs deleted."""
        finished = JobState.FINISHED.value
        with self._lock:
            gone = []
            if created_before is not None:
                gone += [r[0] for r in self._db.execute(
                    "DELETE FROM jobs WHERE state = ? AND created_at < ? RETURNING id", (finished, created_before))]
            if max_records is not None:
                (total,) = self._db.execute("SELECT count(*) FROM jobs").fetchone()
                if total > max_records:
                    ids = [r[0] for r in self._db.execute(
                        "SELECT id FROM jobs WHERE state = ? ORDER BY created_at, id LIMIT ?",
                        (finished, total - max_records))]
                    self._db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
                    gone += ids
            self._db.execute("DELETE FROM start_keys WHERE created_at < ?", (keys_before,))
        return gone

    def unfinished(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM jobs WHERE state != ?", (JobState.FINISHED.value,)).fetchall()
        return [JobRecord.from_dict(json.loads(r[0])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _disk_full(path: str) -> bool:
    try:
        st = os.statvfs(os.path.dirname(path))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 << 10


def _on_host(uid: int) -> bool:
    """Whether the passwd or the group database has this id (as a uid, as a gid)."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
        except KeyError:
            continue
        return True
    return False


def _runs_as_root(user: str) -> bool:
    if user.isascii() and user.isdigit():
        return int(user) == 0
    try:
        return pwd.getpwnam(user).pw_uid == 0
    except KeyError:
        return False
