"""The real daemon under (a stand-in for) journald: started with JOURNAL_STREAM naming its stderr, in a mount
namespace of its own where /run/systemd/journal/socket is a datagram socket this test binds. Its log
records arrive there in the native protocol, and a job run through jobctl has its start and end lines
with JOB_ID, OWNER and REASON. (The VM tier checks the same with the real journald and journalctl.)
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from daemon_harness import Daemon

pytestmark = pytest.mark.root

# Inside a private mount namespace: the test's directory over /run/systemd, then the daemon.
IN_NAMESPACE = 'mount --bind "$1" /run/systemd && shift && exec "$@"'


def fields_of(data: bytes) -> dict[str, str]:
    """The native protocol: NAME=value\\n, or NAME\\n<u64 LE length><value>\\n."""
    fields, i = {}, 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            i = end + 1
        else:
            name, (size,) = line, struct.unpack("<Q", data[end + 1:end + 9])
            value, i = data[end + 9:end + 9 + size], end + 10 + size
        fields[name.decode()] = value.decode(errors="replace")
    return fields


class JournaldDaemon(Daemon):
    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.systemd_dir = workdir / "run-systemd"
        (self.systemd_dir / "journal").mkdir(parents=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.systemd_dir / "journal" / "socket"))
        self.sock.settimeout(0.2)
        self.records: list[dict[str, str]] = []
        self._closed = False
        self._reader = threading.Thread(target=self._receive, daemon=True)
        self._reader.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                self.records.append(fields_of(self.sock.recv(1 << 20)))
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return

    def argv(self) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", IN_NAMESPACE, "sh",
                str(self.systemd_dir), *super().argv()]

    def start(self, timeout: float = 20.0) -> "JournaldDaemon":
        self.log.touch()
        st = self.log.stat()
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}  # stderr goes to the log file below
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd="/",
                                         env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in list(self.records):
                match = re.match(r"listening on (\S+)", record.get("MESSAGE", ""))
                if match:
                    self.addr = match.group(1)
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()}")
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"no 'listening on' record within {timeout}s; stderr:\n{self.log.read_text()}")

    def close(self) -> None:
        self._closed = True
        self._reader.join(5)
        self.sock.close()


@pytest.fixture
def journald_daemon(tmp_path):
    d = JournaldDaemon(tmp_path / "d")
    try:
        yield d.start()
    finally:
        d.stop()
        d.close()


def test_job_lines_reach_the_journal_with_their_fields(journald_daemon):
    d = journald_daemon
    run = d.jobctl("run", "--", "sh", "-c", "exit 3", name="alice", role="user")
    assert run.returncode == 3, run
    (job,) = json.loads(d.jobctl("ls", "-o", "json", name="alice", role="user").stdout)
    job_id = job["id"]

    def job_records():
        return [r for r in d.records if r.get("JOB_ID") == job_id]

    deadline = time.monotonic() + 10
    while len(job_records()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    started, ended = job_records()
    assert re.match(rf"job {job_id} started for 'alice' as dynamic:\d+: ", started["MESSAGE"]), started["MESSAGE"]
    assert started["OWNER"] == "alice" and "REASON" not in started
    assert ended["MESSAGE"].startswith(f"job {job_id} finished: exited (exit 3, signal None)")
    assert (ended["OWNER"], ended["REASON"]) == ("alice", "exited")
    for record in (started, ended):
        assert record["SYSLOG_IDENTIFIER"] == "jobworkerd" and record["PRIORITY"] == "6"
        assert record["LOGGER"] == "jobworkerd.jobs"
    # every record went to the journal, none to stderr; the metrics line too
    assert any(r["MESSAGE"].startswith("metrics listening on http://127.0.0.1:") for r in d.records)
    assert all("SYSLOG_IDENTIFIER" in r and "PRIORITY" in r for r in d.records)
    assert d.log.read_text() == ""
