"""Job records in SQLite (stdlib sqlite3, WAL), written at every state change so history survives restarts."""

from __future__ import annotations

import json
import os
import sqlite3
import threading

from ..errors import InternalError, ResourceExhausted
from .models import JobRecord, JobState

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at);
"""


class JobStore:
    def __init__(self, state_dir: str):
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(state_dir, "jobs.sqlite3")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def put(self, record: JobRecord) -> None:
        data = json.dumps(record.to_dict(), separators=(",", ":"))
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO jobs (id, owner, created_at, state, record) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET state = excluded.state, record = excluded.record",
                    (record.id, record.owner, record.created_at, record.state.value, data),
                )
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):
                raise ResourceExhausted(f"state directory is full; cannot record job {record.id}") from exc
            raise InternalError(f"job store {self.path}: {exc}") from exc

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_dict(json.loads(row[0])) if row else None

    def list(
        self, owner: str | None = None, after: tuple[float, str] | None = None, limit: int | None = None
    ) -> list[JobRecord]:
        """Oldest first; `after` (created_at, id) of the last record of the previous page."""
        clauses, params = [], []
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        if after is not None:
            clauses.append("(created_at, id) > (?, ?)")
            params += list(after)
        query = "SELECT record FROM jobs" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        query += " ORDER BY created_at, id"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [JobRecord.from_dict(json.loads(r[0])) for r in rows]

    def unfinished(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM jobs WHERE state != ?", (JobState.FINISHED.value,)).fetchall()
        return [JobRecord.from_dict(json.loads(r[0])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
