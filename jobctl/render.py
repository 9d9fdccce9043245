"""How jobs look: the `ls` table, the `status` view, JSON, and what a finished job means for
jobctl's exit status. Works on `Job` messages through their descriptors, so nothing here
imports grpc or the generated modules.
"""

from __future__ import annotations

import datetime
import re
import shlex
import signal as _signal
from typing import Any, Iterable

from jobworkerd.units import format_size


# ---- enums ---------------------------------------------------------------------------------------


def enum_name(message: Any, field: str) -> str:
    """JOB_STATE_RUNNING -> 'running', TERMINATION_REASON_OOM_KILLED -> 'oom-killed'."""
    descriptor = message.DESCRIPTOR.fields_by_name[field]
    return _enum_value_name(descriptor.enum_type, getattr(message, field))


def _enum_value_name(enum_type: Any, number: int) -> str:
    value = enum_type.values_by_number.get(number)
    if value is None:
        return str(number)
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum_type.name).upper() + "_"
    return value.name.removeprefix(prefix).lower().replace("_", "-")


# ---- exit status ---------------------------------------------------------------------------------


EXIT_TIMED_OUT = 124  # as timeout(1) exits when its command timed out


def exit_status(job: Any) -> int:
    """What jobctl run/wait exit with: the job's exit code, or 128+N when signal N killed it; 124 when it
    ran past its deadline (as timeout(1))."""
    if enum_name(job, "reason") == "timed-out":
        return EXIT_TIMED_OUT
    if job.HasField("exit_code"):
        return job.exit_code & 0xFF
    if job.HasField("signal"):
        return 128 + job.signal
    if enum_name(job, "reason") in ("oom-killed", "output-capped"):
        return 128 + _signal.SIGKILL
    return 1  # failed to start or lost: no status of its own


def ending_note(job: Any) -> str | None:
    """One line for stderr when a job did not simply exit by itself (None when it did)."""
    reason = enum_name(job, "reason")
    extra = f": {job.message}" if job.message else ""
    if reason == "oom-killed":
        limit = job.limits.memory_bytes if job.limits.HasField("memory_bytes") else None
        limit_text = f"memory limit {format_size(limit)}" if limit is not None else "memory limit"
        return f"job {job.id} was killed by the OOM killer ({limit_text})"
    if reason == "stopped":
        return f"job {job.id} was stopped ({_how_it_ended(job)})"
    if reason == "output-capped":
        return f"job {job.id} was killed: its output reached the cap{extra}"
    if reason == "failed-to-start":
        return f"job {job.id} failed to start{extra}"
    if reason == "lost":
        return f"job {job.id} was lost: the daemon stopped while it ran{extra}"
    if reason == "timed-out":
        return f"job {job.id} timed out after {job.timeout_seconds:g}s and was stopped ({_how_it_ended(job)})"
    return None


def _how_it_ended(job: Any) -> str:
    if job.HasField("exit_code"):
        return f"exit code {job.exit_code}"
    if job.HasField("signal"):
        return signal_name(job.signal)
    return "no exit status"


def signal_name(number: int) -> str:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# ---- one job ---------------------------------------------------------------------------------


def status_line(job: Any) -> str:
    """'3f2a... finished (stopped, SIGTERM)' or '3f2a... running'."""
    state = enum_name(job, "state")
    if state != "finished":
        return f"{job.id} {state}"
    return f"{job.id} finished ({enum_name(job, 'reason')}, {_how_it_ended(job)})"


def status_text(job: Any, now: datetime.datetime | None = None) -> str:
    """The `jobctl status ID` view: one 'field: value' per line."""
    now = now or _now()
    state = enum_name(job, "state")
    if state == "finished":
        state += f" ({enum_name(job, 'reason')}, {_how_it_ended(job)})"
    cmd = job.command
    rows = [
        ("id", job.id),
        ("name", job.name or "-"),
        ("owner", job.owner),
        ("state", state),
        ("command", shlex.join([cmd.command, *cmd.arguments])),
        ("run as", job.run_as or cmd.user or "-"),
        ("directory", cmd.directory or "/"),
        ("limits", _limits_text(job.limits)),
        ("sandbox", _sandbox_text(job.sandbox)),
        ("network", _network_text(job.network)),
        ("usage", _usage_text(job.usage)),
        ("created", _time_text(job.created_at, now)),
        ("started", _time_text(job.started_at, now)),
        ("finished", _time_text(job.finished_at, now)),
    ]
    if cmd.env:
        rows.insert(5, ("env", " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(cmd.env.items()))))
    if job.message:
        rows.append(("message", job.message))
    width = max(len(k) for k, _ in rows) + 1
    return "\n".join(f"{k + ':':<{width}} {printable(v)}" for k, v in rows)


def _network_text(net: Any) -> str:
    parts = [net.mode or "none"]
    if net.address:
        parts.append(f"address {net.address}")
    parts += [f"allow {a}" for a in net.allow]
    parts += [f"publish {p}" for p in net.publish]
    return ", ".join(parts)


def _sandbox_text(box: Any) -> str:
    parts = [box.profile or "-"]
    if box.seccomp:
        parts.append(f"seccomp {box.seccomp}")
    if box.hostname:
        parts.append(f"hostname {box.hostname}")
    if box.rootfs:
        parts.append(f"rootfs {box.rootfs}")
    parts += [f"mount {m.source}:{m.target}{':ro' if m.read_only else ''}" for m in box.mounts]
    parts += [f"device {d}" for d in box.devices]
    return ", ".join(parts)


def _limits_text(limits: Any) -> str:
    parts = []
    if limits.HasField("cpu"):
        parts.append(f"cpu {limits.cpu:g}")
    if limits.HasField("memory_bytes"):
        parts.append(f"memory {format_size(limits.memory_bytes)}")
    if limits.HasField("pids"):
        parts.append(f"pids {limits.pids}")
    for field, label in (("io_read_bps", "read"), ("io_write_bps", "write")):
        if limits.HasField(field):
            parts.append(f"io {label} {format_size(getattr(limits, field))}/s")
    for field, label in (("io_read_iops", "read"), ("io_write_iops", "write")):
        if limits.HasField(field):
            parts.append(f"io {label} {getattr(limits, field)} iops")
    if limits.io_device:
        parts.append(f"on {limits.io_device}")
    return ", ".join(parts) or "none"


def _usage_text(usage: Any) -> str:
    return (
        f"cpu {usage.cpu_seconds:.2f}s, memory peak {human_size(usage.memory_peak_bytes)}, "
        f"io read {human_size(usage.io_read_bytes)} write {human_size(usage.io_write_bytes)}, "
        f"output {human_size(usage.output_bytes)}"
        + (f", oom kills {usage.oom_kills}" if usage.oom_kills else "")
    )


# ---- the ls table ------------------------------------------------------------------------------

COLUMNS = ("ID", "NAME", "OWNER", "STATE", "REASON", "EXIT", "CPU", "MEM PEAK", "AGE")


def table(jobs: Iterable[Any], now: datetime.datetime | None = None) -> str:
    now = now or _now()
    rows = [COLUMNS] + [tuple(printable(cell) for cell in _row(job, now)) for job in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _row(job: Any, now: datetime.datetime) -> tuple[str, ...]:
    if job.HasField("exit_code"):
        exit_text = str(job.exit_code)
    elif job.HasField("signal"):
        exit_text = signal_name(job.signal)
    else:
        exit_text = "-"
    return (
        job.id,
        job.name or "-",
        job.owner or "-",
        enum_name(job, "state"),
        enum_name(job, "reason") if job.reason else "-",
        exit_text,
        f"{job.usage.cpu_seconds:.2f}s",
        human_size(job.usage.memory_peak_bytes),
        _age(_timestamp(job.created_at), now),
    )


def human_size(value: int) -> str:
    """1536 -> '1.5K', 268435456 -> '256M' (powers of 1024, 3 significant digits at most)."""
    for suffix, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= factor:
            scaled = value / factor
            return f"{scaled:.1f}{suffix}" if scaled < 10 and value % factor else f"{scaled:.0f}{suffix}"
    return str(value)


def _age(moment: datetime.datetime | None, now: datetime.datetime) -> str:
    if moment is None:
        return "-"
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# ---- events --------------------------------------------------------------------------------------


def event_line(event: Any) -> str:
    """REVISION TIME TYPE ID NAME OWNER [how it ended]: one line per event of `jobctl events`."""
    job = event.job
    moment = _timestamp(event.time)
    ended = f" {enum_name(job, 'reason')} ({_how_it_ended(job)})" if enum_name(event, "type") == "finished" else ""
    return (f"{event.revision} {_rfc3339(moment) or '-'} {enum_name(event, 'type')} {job.id} "
            f"{printable(job.name) or '-'} {printable(job.owner) or '-'}{ended}")


# ---- stats --------------------------------------------------------------------------------------

STATS_COLUMNS = ("ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "IO READ / WRITE", "PIDS", "OUTPUT")


def stats_table(now: Iterable[Any], before: dict[str, tuple[float, float]], at: float) -> str:
    """The jobs (usage read at `at`) as docker stats shows containers. CPU % is over the time since
    `before` {id: (cpu_seconds, sampled at)}, 100% per core; '-' for a job first seen now."""
    rows = [STATS_COLUMNS]
    for job in now:
        usage, limit = job.usage, job.limits.memory_bytes if job.limits.HasField("memory_bytes") else 0
        cpu = "-"
        if job.id in before and at > before[job.id][1]:
            cpu = f"{100 * max(0.0, usage.cpu_seconds - before[job.id][0]) / (at - before[job.id][1]):.2f}%"
        rows.append((
            job.id, printable(job.name) or "-", cpu,
            f"{human_size(usage.memory_bytes)} / {human_size(limit) if limit else '-'}",
            f"{100 * usage.memory_bytes / limit:.2f}%" if limit else "-",
            f"{human_size(usage.io_read_bytes)} / {human_size(usage.io_write_bytes)}",
            str(usage.pids), human_size(usage.output_bytes),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(STATS_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def printable(text: str) -> str:
    """Control characters shown as escapes, never sent raw: a job's owner chooses its name, arguments and
    environment, and must not put terminal escape sequences into an admin's terminal (JSON output
    escapes them by itself)."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


# ---- JSON ----------------------------------------------------------------------------------------


def to_json_obj(message: Any) -> dict[str, Any]:
    """Every field of a message by its proto name: enums as lower-dash strings, timestamps as
    RFC 3339 or null, optional fields null when unset, maps as objects."""
    result: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            result[field.name] = dict(value)
        elif field.is_repeated:
            result[field.name] = [_scalar(field, v) for v in value]
        elif field.message_type is not None and field.message_type.full_name == "google.protobuf.Timestamp":
            moment = _timestamp(value) if message.HasField(field.name) else None
            result[field.name] = _rfc3339(moment)
        elif field.has_presence and field.message_type is None and not message.HasField(field.name):
            result[field.name] = None
        else:
            result[field.name] = _scalar(field, value)
    return result


def _scalar(field: Any, value: Any) -> Any:
    if field.message_type is not None:
        return to_json_obj(value)
    if field.enum_type is not None:
        return _enum_value_name(field.enum_type, value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def _timestamp(ts: Any) -> datetime.datetime | None:
    """A Timestamp as an aware datetime; None for the zero (unset) value."""
    if not ts.seconds and not ts.nanos:
        return None
    return datetime.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, datetime.timezone.utc)


def _rfc3339(moment: datetime.datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _time_text(ts: Any, now: datetime.datetime) -> str:
    moment = _timestamp(ts)
    if moment is None:
        return "-"
    local = moment.astimezone()
    return f"{local:%Y-%m-%d %H:%M:%S %Z} ({_age(moment, now)} ago)"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
