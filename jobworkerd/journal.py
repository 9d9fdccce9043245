"""The daemon's logging: structured records to the systemd journal when it runs under journald, plain text
on stderr otherwise. Standard library only (no systemd-python).

Under journald means what systemd.exec(5) documents: `JOURNAL_STREAM` holds the device and inode of the
stream that stderr is connected to ("DEV:INODE"); a stderr redirected elsewhere (a file, a pipe) no longer
matches, and gets plain text.

The native protocol (systemd's "Native Journal Protocol"): one datagram per record on the unix socket
/run/systemd/journal/socket, made of fields, each either `NAME=value\\n`, or for a value holding a newline
(or any bytes) `NAME\\n` + the value's length as 64-bit little-endian + the value + `\\n`. A record too big
for a datagram goes in a sealed memfd passed over the same socket (SCM_RIGHTS), as sd_journal_send does.

Fields: MESSAGE, PRIORITY (syslog levels), SYSLOG_IDENTIFIER=jobworkerd, LOGGER (the Python logger), the
CODE_* fields, and every upper-case `extra=` of the log call (JOB_ID, OWNER, REASON on the job lines), so
`journalctl -u jobworkerd JOB_ID=<id>` finds a job's lines. When a send fails (journald restarting, its
socket gone), that record goes to stderr as plain text.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping

SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "jobworkerd"
PLAIN_FORMAT = "%(levelname)s %(name)s: %(message)s"
SEND_TIMEOUT = 1.0  # seconds a record may wait for room in the socket before it goes to stderr
# Names a client may set: upper-case letters, digits and "_", not starting with "_" (journald's trusted
# fields) nor a digit, at most 64 characters.
FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}\Z")
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7


def under_journald(environ: Mapping[str, str] = os.environ, fd: int = 2) -> bool:
    """True if `fd` (stderr) is the stream systemd connected to the journal (JOURNAL_STREAM=DEV:INODE)."""
    dev, colon, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (colon and dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def encode(fields: Iterable[tuple[str, str | bytes]]) -> bytes:
    """Fields in the native protocol's form: `NAME=value\\n`, or the binary-safe form for values with a newline."""
    out = bytearray()
    for name, value in fields:
        if not FIELD_NAME.match(name):
            raise ValueError(f"not a journal field name: {name!r}")
        data = value if isinstance(value, bytes) else value.encode("utf-8", "backslashreplace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def priority(levelno: int) -> int:
    for level, value in PRIORITIES:
        if levelno >= level:
            return value
    return DEBUG_PRIORITY


class JournalHandler(logging.Handler):
    """Sends each record to the journal as one datagram; `fallback` gets the records that cannot be sent."""

    def __init__(self, path: str = SOCKET, identifier: str = IDENTIFIER, fallback: logging.Handler | None = None):
        super().__init__()
        self.identifier = identifier
        self.fallback = fallback
        self._formatter = logging.Formatter()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.connect(path)  # OSError when journald's socket is not there: the caller falls back
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(SEND_TIMEOUT)

    def fields(self, record: logging.LogRecord) -> Iterator[tuple[str, str]]:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self._formatter.formatException(record.exc_info)
        if record.stack_info:
            message += "\n" + self._formatter.formatStack(record.stack_info)
        yield "MESSAGE", message
        yield "PRIORITY", str(priority(record.levelno))
        yield "SYSLOG_IDENTIFIER", self.identifier
        yield "LOGGER", record.name
        yield "CODE_FILE", record.pathname
        yield "CODE_LINE", str(record.lineno)
        yield "CODE_FUNC", record.funcName
        for name, value in record.__dict__.items():  # extra={"JOB_ID": ...}: LogRecord's own names are lower-case
            if FIELD_NAME.match(name) and value is not None:
                yield name, str(value)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(encode(self.fields(record)))
        except Exception:
            if self.fallback is not None:
                self.fallback.handle(record)
            else:
                self.handleError(record)

    def send(self, data: bytes) -> None:
        try:
            self._sock.send(data)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("journal-record", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            # journald accepts only a sealed memfd: nobody can change the record after it was sent
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
        finally:
            os.close(fd)

    def close(self) -> None:
        self._sock.close()
        super().close()


def setup_logging(level: int = logging.INFO, path: str = SOCKET) -> logging.Handler:
    """Install the root handler (once, at start): the journal under journald if its socket answers, else stderr."""
    root = logging.getLogger()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter(PLAIN_FORMAT))
    handler: logging.Handler = stderr
    unreachable = ""
    if under_journald():
        try:
            handler = JournalHandler(path, fallback=stderr)
        except OSError as exc:
            unreachable = f"{path}: {exc.strerror or exc}"
    root.addHandler(handler)
    root.setLevel(level)
    if unreachable:
        logging.getLogger("jobworkerd").warning("the journal's socket is unreachable (%s); logging to stderr",
                                                unreachable)
    return handler
