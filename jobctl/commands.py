"""What each jobctl command does with its parsed arguments. Each returns jobctl's exit status
and raises JobctlError for anything it reports as an error."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import uuid

from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

from . import render
from .client import Client
from .console import line as _print
from .console import say as _say
from .errors import JobctlError
from .settings import KEYS, resolve

EXIT_DETACHED = 130  # a second Ctrl-C detached from an attached run
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: stdout's reader went away


def run(args: argparse.Namespace) -> int:
    request = start_request(args)
    with _client(args) as client:
        job = client.start(request)
        if args.detach:
            _print(job.id)
            return 0
        return _attach(client, job.id)


def logs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _copy(client.output(args.job_id, follow=args.follow))
    return 0


def status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get(args.job_id)
    if args.output == "json":
        import json

        _print(json.dumps(render.to_json_obj(job), indent=2))
    else:
        _print(render.status_text(job))
    return 0


def ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        # The table shows no arguments: the summary view keeps pages small under any history.
        jobs = sorted(client.list(summary=args.output != "json"),
                      key=lambda j: (j.created_at.seconds, j.created_at.nanos, j.id))
    if args.output == "json":
        import json

        _print(json.dumps([render.to_json_obj(job) for job in jobs], indent=2))
    else:
        _print(render.table(jobs))
    return 0


def stop(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.stop(args.job_id, args.grace)
    _print(render.status_line(job))
    return 0


def wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.wait(args.job_id)
    return _finished(job)


def events(args: argparse.Namespace) -> int:
    """Follows until interrupted (Ctrl-C: exit 130) or until the daemon ends the stream with an error."""
    import json

    with _client(args) as client:
        for event in client.events(args.since or 0):
            if args.output == "json":
                _print(json.dumps(render.to_json_obj(event)))
            else:
                _print(render.event_line(event))
    return 0


def stats(args: argparse.Namespace) -> int:
    """A table per refresh, one ListJobs call each. --no-stream samples twice (CPU % needs an interval)."""
    import time

    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() and not args.no_stream else ""
    before: dict[str, tuple[float, float]] = {}
    with _client(args) as client:
        while True:
            jobs = client.running(args.job_ids)
            at = time.monotonic()
            if before or not args.no_stream:
                _print(clear + render.stats_table(jobs, before, at) + ("" if clear or args.no_stream else "\n"))
                if args.no_stream:
                    return 0
            before = {job.id: (job.usage.cpu_seconds, at) for job in jobs}
            time.sleep(min(args.interval, 1.0) if args.no_stream else args.interval)


def start_request(args: argparse.Namespace) -> pb.StartJobRequest:
    """The StartJobRequest for `jobctl run`: limits only where given, so defaults stay the daemon's."""
    command = pb.Command(
        command=args.program[0],
        arguments=args.program[1:],
        user=args.user,
        group=args.group,
        directory=args.dir or "",
        env=dict(args.env),
    )
    limits = pb.Limits(io_device=args.io_device or "")
    for field, value in (
        ("cpu", args.cpu),
        ("memory_bytes", args.mem),
        ("pids", args.pids),
        ("io_read_bps", args.io_read_bps),
        ("io_write_bps", args.io_write_bps),
        ("io_read_iops", args.io_read_iops),
        ("io_write_iops", args.io_write_iops),
    ):
        if value is not None:
            setattr(limits, field, value)
    # A fresh key per run: if the reply is lost and the start is retried, the daemon returns the same job.
    request = pb.StartJobRequest(name=args.name, command=command, limits=limits, idempotency_key=str(uuid.uuid4()))
    if args.timeout is not None:
        request.timeout_seconds = args.timeout
    request.sandbox.CopyFrom(pb.Sandbox(
        profile=args.profile or "", seccomp=args.seccomp, hostname=args.hostname, devices=args.device,
        rootfs=args.rootfs, mounts=[pb.Mount(source=s, target=t, read_only=ro) for s, t, ro in args.mount],
    ))
    request.network.CopyFrom(pb.Network(mode=args.net, allow=args.allow, publish=args.publish))
    return request


# ---- attached run ------------------------------------------------------------------------------


class _Detach(Exception):
    """Raised by the SIGINT handler on the second Ctrl-C."""


class _CtrlC:
    """SIGINT during an attached run: the first asks the daemon to stop the job (in a thread, so
    output keeps flowing meanwhile), the second detaches. An inherited SIG_IGN is respected."""

    def __init__(self, client: Client, job_id: str):
        self.client, self.job_id, self.count = client, job_id, 0
        self._previous = None

    def __enter__(self) -> _CtrlC:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count > 1:
            raise _Detach()
        _say(f"stopping job {self.job_id} (Ctrl-C again to detach)")
        threading.Thread(target=self._stop, name="jobctl-stop", daemon=True).start()

    def _stop(self) -> None:
        try:
            self.client.stop(self.job_id)
        except JobctlError as err:
            if not err.message.startswith(("cancelled", "failed precondition")):
                _say(f"could not stop job {self.job_id}: {err.message}")


def _attach(client: Client, job_id: str) -> int:
    with _CtrlC(client, job_id):
        try:
            _copy(client.output(job_id, follow=True, connected=True))
            job = client.wait(job_id, connected=True)
        except _Detach:
            _say(f"detached; the daemon goes on stopping job {job_id} (jobctl status {job_id})")
            return EXIT_DETACHED
        except JobctlError as err:
            raise JobctlError(f"{err.message} (job {job_id} may still be running: jobctl status {job_id})") from None
        except BrokenPipeError:
            # Nobody reads the output any more (jobctl run ... | head): end the job as a pipeline
            # would end its writer, then leave quietly.
            _discard_stdout()
            try:
                client.stop(job_id)
            except JobctlError:
                pass
            return EXIT_BROKEN_PIPE
    return _finished(job)


def _finished(job: pb.Job) -> int:
    note = render.ending_note(job)
    if note:
        _say(note)
    return render.exit_status(job)


# ---- helpers -----------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    return Client(resolve({key: getattr(args, key, None) for key in (*KEYS, "context")}))


def _copy(chunks) -> None:
    """Raw bytes to stdout, flushed per chunk so output appears as the job writes it."""
    out = sys.stdout.buffer
    for data in chunks:
        out.write(data)
        out.flush()




def _discard_stdout() -> None:
    """Point fd 1 at /dev/null so that the interpreter's final flush cannot fail again."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)
