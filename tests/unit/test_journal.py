"""jobworkerd.journal: the journal's native protocol, received on a real unix datagram socket the test binds
(as journald binds /run/systemd/journal/socket), decoded here by a parser written from systemd's protocol
description, independently of the encoder."""

from __future__ import annotations

import array
import fcntl
import logging
import os
import socket
import struct

import pytest

from jobworkerd import journal


def parse(data: bytes) -> list[tuple[str, bytes]]:
    """systemd's "Native Journal Protocol": NAME=value\\n, or NAME\\n<u64 LE length><value>\\n."""
    fields, i = [], 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            i = end + 1
        else:
            name, (size,) = line, struct.unpack("<Q", data[end + 1:end + 9])
            value = data[end + 9:end + 9 + size]
            assert data[end + 9 + size:end + 10 + size] == b"\n", "a binary value ends with a newline"
            i = end + 10 + size
        fields.append((name.decode(), value))
    return fields


@pytest.fixture
def journald(tmp_path):
    """A bound datagram socket standing for journald's; yields (path, receive)."""
    path = str(tmp_path / "journal.socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    # room for the large datagrams of these tests (a real journald raises its buffer too)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    def receive() -> tuple[bytes, list[int]]:
        """One datagram: its bytes, and the file descriptors passed with it."""
        fds = array.array("i")
        data, ancdata, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * fds.itemsize))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        return data, list(fds)

    yield path, receive
    sock.close()


@pytest.fixture
def logger():
    log = logging.getLogger("jobworkerd.test-journal")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def test_a_job_line_carries_its_fields(journald, logger):
    path, receive = journald
    logger.addHandler(journal.JournalHandler(path))
    logger.info("job %s finished: %s", "0123456789ab", "exited",
                extra={"JOB_ID": "0123456789ab", "OWNER": "alice", "REASON": "exited"})
    data, fds = receive()
    assert fds == []
    fields = dict(parse(data))
    assert fields["MESSAGE"] == b"job 0123456789ab finished: exited"
    assert fields["PRIORITY"] == b"6"
    assert fields["SYSLOG_IDENTIFIER"] == b"jobworkerd"
    assert (fields["JOB_ID"], fields["OWNER"], fields["REASON"]) == (b"0123456789ab", b"alice", b"exited")
    assert fields["LOGGER"] == b"jobworkerd.test-journal"
    assert fields["CODE_FILE"] == __file__.encode() and fields["CODE_FUNC"] == b"test_a_job_line_carries_its_fields"
    assert int(fields["CODE_LINE"]) > 0
    # plain lines for values without a newline: the datagram is readable as it stands
    assert b"\nJOB_ID=0123456789ab\n" in data and data.startswith(b"MESSAGE=job 0123456789ab")


def test_lower_case_extras_and_standard_attributes_are_not_fields(journald, logger):
    path, receive = journald
    logger.addHandler(journal.JournalHandler(path))
    logger.warning("plain", extra={"job_id": "x", "_PRIVATE": "y", "1ST": "z"})
    names = [name for name, _ in parse(receive()[0])]
    assert names == ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "LOGGER", "CODE_FILE", "CODE_LINE", "CODE_FUNC"]


@pytest.mark.parametrize(("level", "priority"), [(logging.DEBUG, b"7"), (logging.INFO, b"6"),
                                                 (logging.WARNING, b"4"), (logging.ERROR, b"3"),
                                                 (logging.CRITICAL, b"2")])
def test_levels_become_syslog_priorities(journald, logger, level, priority):
    path, receive = journald
    logger.addHandler(journal.JournalHandler(path))
    logger.log(level, "x")
    assert dict(parse(receive()[0]))["PRIORITY"] == priority


def test_a_value_with_newlines_uses_the_binary_safe_form(journald, logger):
    path, receive = journald
    logger.addHandler(journal.JournalHandler(path))
    message = "line one\nline two\n\nKEY=not a field\n"
    logger.error(message, extra={"OWNER": "o\nwner"})
    data, _ = receive()
    encoded = message.encode()
    assert b"MESSAGE\n" + struct.pack("<Q", len(encoded)) + encoded + b"\n" in data
    fields = parse(data)
    assert dict(fields)["MESSAGE"] == encoded and dict(fields)["OWNER"] == b"o\nwner"
    assert "KEY" not in dict(fields)


def test_an_exception_travels_in_the_message(journald, logger):
    path, receive = journald
    logger.addHandler(journal.JournalHandler(path))
    try:
        raise RuntimeError("the cgroup vanished")
    except RuntimeError:
        logger.exception("job %s: recording its end failed", "0123456789ab")
    message = dict(parse(receive()[0]))["MESSAGE"].decode()
    assert message.startswith("job 0123456789ab: recording its end failed\nTraceback (most recent call last):")
    assert message.endswith("RuntimeError: the cgroup vanished")


def test_non_utf8_safe_text_is_kept_readable(journald, logger):
    path, receive = journald
    logger.addHandler(journal.JournalHandler(path))
    logger.info("name: %s", "caf\udce9 ünï")
    assert dict(parse(receive()[0]))["MESSAGE"] == "name: caf\\udce9 ünï".encode()


def test_a_record_too_big_for_a_datagram_goes_in_a_sealed_memfd(journald, logger):
    path, receive = journald
    logger.addHandler(journal.JournalHandler(path))
    big = "x" * (4 << 20)  # beyond any datagram the socket takes
    logger.info(big, extra={"JOB_ID": "0123456789ab"})
    data, fds = receive()
    assert data == b"" and len(fds) == 1
    fd = fds[0]
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        for seal in (fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_GROW, fcntl.F_SEAL_WRITE, fcntl.F_SEAL_SEAL):
            assert seals & seal
        content = os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)
    fields = dict(parse(content))
    assert fields["MESSAGE"] == big.encode() and fields["JOB_ID"] == b"0123456789ab"


def test_an_unreachable_socket_is_an_os_error_at_connect(tmp_path):
    with pytest.raises(OSError):
        journal.JournalHandler(str(tmp_path / "no-such.socket"))


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_a_record_that_cannot_be_sent_goes_to_the_fallback(tmp_path, logger):
    path = str(tmp_path / "journal.socket")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    fallback = Collect()
    logger.addHandler(journal.JournalHandler(path, fallback=fallback))
    receiver.close()  # journald went away (restarting): sends are refused
    logger.info("job %s started", "0123456789ab", extra={"JOB_ID": "0123456789ab"})
    assert [r.getMessage() for r in fallback.records] == ["job 0123456789ab started"]


def test_under_journald_means_journal_stream_names_stderr(tmp_path):
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        same = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert journal.under_journald(same, stream.fileno())
        assert not journal.under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream.fileno())
        assert not journal.under_journald({}, stream.fileno())
        for garbage in ("", "1", ":", "a:b", f"{st.st_dev}:{st.st_ino}:0", f"{st.st_dev}-{st.st_ino}"):
            assert not journal.under_journald({"JOURNAL_STREAM": garbage}, stream.fileno()), garbage
        with open(tmp_path / "other", "w") as other:  # stderr redirected elsewhere: plain text again
            assert not journal.under_journald(same, other.fileno())


@pytest.fixture
def bare_root_logger():
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers = []
    yield root
    for handler in root.handlers:
        handler.close()
    root.handlers, root.level = saved, level


def _stderr_stream_env(monkeypatch) -> None:
    st = os.fstat(2)  # the daemon's stderr is fd 2 (pytest points it at a file)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")


def test_setup_logging_uses_the_journal_under_journald(bare_root_logger, journald, monkeypatch):
    path, receive = journald
    _stderr_stream_env(monkeypatch)
    handler = journal.setup_logging(path=path)
    assert isinstance(handler, journal.JournalHandler)
    logging.getLogger("jobworkerd").info("listening on %s", "127.0.0.1:7443")
    assert dict(parse(receive()[0]))["MESSAGE"] == b"listening on 127.0.0.1:7443"


def test_setup_logging_falls_back_to_stderr_when_the_socket_is_unreachable(bare_root_logger, monkeypatch,
                                                                          tmp_path, capsys):
    _stderr_stream_env(monkeypatch)
    handler = journal.setup_logging(path=str(tmp_path / "absent.socket"))
    assert type(handler) is logging.StreamHandler
    err = capsys.readouterr().err
    assert f"WARNING jobworkerd: the journal's socket is unreachable ({tmp_path / 'absent.socket'}: " in err
    assert "logging to stderr" in err


def test_setup_logging_is_plain_text_on_stderr_otherwise(bare_root_logger, journald, monkeypatch, capsys):
    path, _ = journald
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    handler = journal.setup_logging(path=path)
    assert type(handler) is logging.StreamHandler
    logging.getLogger("jobworkerd.jobs").info("job %s started", "0123456789ab", extra={"JOB_ID": "0123456789ab"})
    assert capsys.readouterr().err == "INFO jobworkerd.jobs: job 0123456789ab started\n"  # today's format


def test_encode_refuses_names_journald_would_drop():
    for name in ("lower", "_TRUSTED", "9LIVES", "WITH-DASH", "A" * 65, ""):
        with pytest.raises(ValueError):
            journal.encode([(name, "x")])
    assert journal.encode([("A" * 64, "x")]) == b"A" * 64 + b"=x\n"
