"""Hostile input against the RUNNING server, over every RPC (issue 5): property-based (hypothesis).

Huge and empty fields, NUL bytes, path traversal in `directory` and in job ids, odd unicode, negative,
NaN, infinite and overflowing limits, argument lists of megabytes (under and over the 4 MiB message
limit), huge env maps, huge offsets, and raw bytes that are not a valid message at all.

For every example: the answer is never INTERNAL or UNKNOWN, every error carries a message that
explains, the daemon process is still alive, and valid starts succeed (every started job is stopped).
The number of cases run is printed at the end of the module (for the closing note).
"""

from __future__ import annotations

import collections
import math
import re

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faultkit import report, wait_job
from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.root

CASES: collections.Counter[str] = collections.Counter()
EXPLAINED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
MESSAGE_LIMIT = 4 << 20
SETTINGS = dict(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
# Never generated as a command, whatever the user: nothing here should take the host down.
FORBIDDEN_COMMANDS = {"reboot", "shutdown", "halt", "poweroff", "init", "telinit", "systemctl", "kill", "pkill",
                      "killall", "sh", "bash", "dash", "su", "sudo", "dd", "rm", "yes", "cat", "tee", "mkfs"}


# -- the daemon under attack ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target(tmp_path_factory, request):
    from daemon_harness import Daemon

    # Thousands of starts in a few seconds: quotas are tested in test_governance.py, not here.
    quotas = {"user": {"starts_per_second": None, "running_jobs": None}, "admin": {"starts_per_second": None, "running_jobs": None}}
    d = Daemon(tmp_path_factory.mktemp("hostile"), {"limits": {"output_cap": "1M"}, "stop_grace": "1s",
                                                     "quotas": quotas}).start()
    admin, alice, bob = d.stub("admin", "admin"), d.stub("alice", "user"), d.stub("bob", "user")
    jobs, run_as = {}, {}
    for who, stub in (("admin", admin), ("alice", alice)):
        job = stub.StartJob(pb.StartJobRequest(command=pb.Command(command="echo", arguments=[f"hello {who}"])),
                            timeout=30)
        wait_job(stub, job.id)
        jobs[who], run_as[who] = job.id, job.run_as
    assert re.fullmatch(r"dynamic:\d+", run_as["alice"]), run_as  # a user's default: a uid of its own
    yield Target(d, admin, alice, bob, jobs, run_as["alice"])
    report(request.config, "hostile input: {} cases against the running daemon ({})".format(
        sum(CASES.values()), ", ".join(f"{k} {v}" for k, v in sorted(CASES.items()))))
    assert d.proc.poll() is None, "the daemon died"
    d.stop()
    assert not d.cgroup_dirs(), d.cgroup_dirs()


class Target:
    def __init__(self, daemon, admin, alice, bob, jobs, alice_as):
        self.daemon, self.admin, self.alice, self.bob, self.jobs = daemon, admin, alice, bob, jobs
        self.alice_as = alice_as  # the run-as of alice's jobs that name no user: "dynamic:N"

    def stub(self, role: str):
        return {"admin": self.admin, "alice": self.alice, "bob": self.bob}[role]


def describe(request) -> str:
    text = repr(request)
    return text if len(text) < 600 else text[:600] + f"... ({len(text)} characters)"


def call(target: Target, kind: str, fn, request):
    """One hostile call. Returns the response (a list of chunks for streams) or the RpcError."""
    CASES[kind] += 1
    try:
        if kind == "StreamOutput":
            return list(fn(request, timeout=30))
        return fn(request, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() in EXPLAINED, f"{kind} answered {exc.code()}: {exc.details()!r} for {describe(request)}"
        assert exc.details() and exc.details().strip(), f"{kind}: {exc.code()} without a message for {describe(request)}"
        return exc
    finally:
        assert target.daemon.proc.poll() is None, f"the daemon died on {kind} {describe(request)}"


def stop_if_started(target: Target, stub, result) -> None:
    if isinstance(result, pb.Job):
        stopped = stub.StopJob(pb.StopJobRequest(job_id=result.id, grace_seconds=0), timeout=60)
        assert stopped.state == pb.JOB_STATE_FINISHED


# -- strategies ---------------------------------------------------------------------------------------------------

unicode = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # proto strings cannot hold surrogates
NASTY = [
    "", " ", "\0", "a\0b", "\0" * 64, "\n", "\r\n", "\t", "\x1b[31m", "\x7f", "-", "--", "--help", "-c",
    ".", "..", "../..", "../../../../etc/passwd", "/", "//", "/.", "/..", "/../../../../", "/tmp/../../..",
    "/etc/passwd", "/etc/shadow", "/proc/self/root", "/proc/1/cwd", "/proc/self/fd/0", "/dev/null", "/dev/zero",
    "/root", "/nonexistent", "relative/dir", "~", "~root", "$HOME", "$(id)", "`id`", "%s%s%n", "{}", "'\"",
    "\u202e", "\ufeff", "\u200b", "\u0301" * 50, "\U0010ffff", "😀" * 64, "Ω≈ç√", "ﷺ", "²", "①", "٣", "߀",
    "0", "-1", "65534", "4294967295", "18446744073709551616", "9" * 40, "root", "nobody", "daemon",
    "dynamic", "Dynamic", "dynamic ", "dynamic:61184", "dynamic:0", "dynamic-61184", "61184",
    "disk", "shadow", "sudo", "x" * 255, "x" * 256, "x" * 257, "x" * 4096, "x" * 4097, "é" * 3000,
    "0123456789ab", "000000000000", "ffffffffffff", "0123456789AB", "0123456789a", "0123456789abc",
    "0123456789ab\0", "../0123456789", "/jobs/../../", "%2e%2e%2f", "..%2f..%2f",
]
texts = st.one_of(unicode, st.sampled_from(NASTY), st.integers(0, 70_000).map(lambda n: "y" * n))
paths = st.one_of(texts, st.lists(st.sampled_from(["..", ".", "", "tmp", "etc", "\0", "é", "proc", "x" * 300]),
                                  max_size=30).map(lambda parts: "/" + "/".join(parts)))
uint64 = st.one_of(st.none(), st.integers(0, 2**64 - 1),
                   st.sampled_from([0, 1, 2, 3, 4 << 20, (4 << 20) - 1, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]))
doubles = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 5e-324, 1e-9, 1e308, 2.0**21]))


@st.composite
def limits(draw):
    message = pb.Limits(io_device=draw(st.one_of(st.just(""), paths)))
    cpu = draw(doubles)
    if cpu is not None:
        message.cpu = cpu
    for field in ("memory_bytes", "pids", "io_read_bps", "io_write_bps", "io_read_iops", "io_write_iops"):
        value = draw(uint64)
        if value is not None:
            setattr(message, field, value)
    return message


def megabyte_args(total: int) -> list[str]:
    return ["a" * 1023] * (total // 1024)


arguments = st.one_of(
    st.lists(texts, max_size=8),
    st.sampled_from([  # argument lists of megabytes: over the argv limit, under and over the message limit
        megabyte_args(1 << 20), megabyte_args(3 << 20), megabyte_args((4 << 20) - (64 << 10)),
        megabyte_args(5 << 20), megabyte_args(16 << 20), ["a"] * 200_000, ["x" * (2 << 20)],
    ]),
)
envs = st.one_of(
    st.dictionaries(texts, texts, max_size=6),
    st.sampled_from([  # huge env maps
        {f"K{i}": "v" * 100 for i in range(6000)}, {f"K{i}": "" for i in range(100_000)},
        {"BIG": "v" * (3 << 20)}, {"K" * (600 << 10): "v"},
    ]),
)
safe_commands = st.sampled_from(["true", "/bin/true", "/usr/bin/../bin/true", "echo", "/bin/echo",
                                 "../../../../../bin/true", "env"])
any_command = st.one_of(safe_commands, texts).filter(lambda c: c.rsplit("/", 1)[-1] not in FORBIDDEN_COMMANDS)


@st.composite
def start_requests(draw, command):
    return pb.StartJobRequest(
        name=draw(texts),
        command=pb.Command(
            command=draw(command),
            arguments=draw(arguments),
            user=draw(st.one_of(st.just(""), texts)),
            group=draw(st.one_of(st.just(""), texts)),
            directory=draw(st.one_of(st.just(""), paths)),
            env=draw(envs),
        ),
        limits=draw(limits()),
    )


# -- StartJob -----------------------------------------------------------------------------------------------------


@settings(max_examples=250, **SETTINGS)
@given(request=start_requests(any_command))
def test_start_job_hostile_as_user(target, request):
    """A non-admin may send anything: its jobs, if any start, run as its own dynamic uid, or as nobody."""
    result = call(target, "StartJob", target.alice.StartJob, request)
    if isinstance(result, pb.Job):
        assert result.run_as in (target.alice_as, "nobody") and result.owner == "alice", result
        if result.run_as == "nobody":
            assert result.command.group in ("", "nogroup", "65534"), "a user must not pick another group"
        else:
            assert result.command.group == "", "a user's dynamic uid has no group but its own"
        stop_if_started(target, target.alice, result)


@pytest.mark.parametrize("user", ["", "nobody"])
@pytest.mark.parametrize("group", ["root", "0", "disk", "shadow", "sudo", "٠"])
def test_user_cannot_pick_a_privileged_group(target, user, group):
    """nobody in group disk could read the raw disks; in group root, root's group-readable files. A dynamic
    uid (the default) may name no group at all."""
    result = call(target, "StartJob", target.alice.StartJob,
                  pb.StartJobRequest(command=pb.Command(command="id", user=user, group=group)))
    assert isinstance(result, grpc.RpcError), f"started as {user or 'the default'} in group {group!r}"
    if not user:
        assert result.code() is grpc.StatusCode.PERMISSION_DENIED, result
        assert "may not name a group for a job run as 'dynamic'" in result.details()
        return
    assert result.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT), result
    if result.code() is grpc.StatusCode.PERMISSION_DENIED:
        assert "only in that user's own groups" in result.details()


def test_user_may_pick_the_run_as_users_own_group(target):
    job = target.alice.StartJob(pb.StartJobRequest(command=pb.Command(command="id", arguments=["-g"], user="nobody",
                                                                      group="nogroup")), timeout=30)
    assert wait_job(target.alice, job.id).exit_code == 0
    assert b"".join(c.data for c in target.alice.StreamOutput(pb.StreamOutputRequest(job_id=job.id))) == b"65534\n"


@settings(max_examples=120, **SETTINGS)
@given(request=start_requests(safe_commands))
def test_start_job_hostile_as_admin(target, request):
    result = call(target, "StartJob", target.admin.StartJob, request)
    stop_if_started(target, target.admin, result)


@pytest.mark.parametrize("size, code", [
    ((4 << 20) - (64 << 10), grpc.StatusCode.INVALID_ARGUMENT),  # under the message limit: argv too long
    ((4 << 20) + (64 << 10), grpc.StatusCode.RESOURCE_EXHAUSTED),  # over it: refused by gRPC itself
])
def test_megabyte_argument_lists_either_side_of_the_message_limit(target, size, code):
    request = pb.StartJobRequest(command=pb.Command(command="true", arguments=megabyte_args(size)))
    assert (request.ByteSize() < MESSAGE_LIMIT) == (code is grpc.StatusCode.INVALID_ARGUMENT)
    result = call(target, "StartJob", target.admin.StartJob, request)
    assert isinstance(result, grpc.RpcError) and result.code() == code, result
    assert "argument" in result.details() or "larger than max" in result.details(), result.details()


printable = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Co", "Cn")), max_size=40)
env_names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0="), min_size=1, max_size=20) \
    .filter(lambda k: k != "PATH" and not k.startswith("LD_"))


@st.composite
def valid_start_requests(draw):
    request = pb.StartJobRequest(
        name=draw(printable),
        command=pb.Command(
            command=draw(st.sampled_from(["true", "/bin/true", "echo", "/usr/bin/../bin/echo"])),
            arguments=draw(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                                            max_size=30), max_size=6)),
            user=draw(st.sampled_from(["", "nobody", "dynamic"])),
            directory=draw(st.sampled_from(["", "/", "/tmp", "/usr/../tmp", "//tmp/", "/./", "/tmp/../../../.."])),
            env=draw(st.dictionaries(env_names, st.text(st.characters(blacklist_categories=("Cs",),
                                                                      blacklist_characters="\0"), max_size=30),
                                     max_size=5)),
        ),
    )
    if draw(st.booleans()):
        request.limits.cpu = draw(st.floats(0.05, 64))
    if draw(st.booleans()):
        request.limits.memory_bytes = draw(st.integers(32 << 20, 1 << 40))
    if draw(st.booleans()):
        request.limits.pids = draw(st.integers(8, 1 << 22))
    return request


@settings(max_examples=60, **SETTINGS)
@given(request=valid_start_requests())
def test_valid_starts_succeed(target, request):
    CASES["StartJob"] += 1
    job = target.alice.StartJob(request, timeout=30)
    ended = wait_job(target.alice, job.id)
    assert (ended.reason, ended.exit_code) == (pb.TERMINATION_REASON_EXITED, 0), ended
    assert list(ended.command.arguments) == list(request.command.arguments)
    assert ended.name == request.name
    assert ended.run_as == ("nobody" if request.command.user == "nobody" else target.alice_as), ended
    assert target.daemon.proc.poll() is None


# -- the other RPCs ----------------------------------------------------------------------------------------------

job_ids = st.one_of(texts, st.sampled_from(["admin", "alice"]), st.text("0123456789abcdef", min_size=12, max_size=12))


def resolve_id(target: Target, job_id: str) -> str:
    """'admin'/'alice' stand for the ids of finished jobs those two own (real ids, to reach deeper code)."""
    return target.jobs.get(job_id, job_id)


@settings(max_examples=150, **SETTINGS)
@given(role=st.sampled_from(["admin", "alice", "bob"]), job_id=job_ids)
def test_get_and_wait_job_hostile(target, role, job_id):
    stub = target.stub(role)
    job_id = resolve_id(target, job_id)
    for kind, fn, request in (("GetJob", stub.GetJob, pb.GetJobRequest(job_id=job_id)),
                              ("WaitJob", stub.WaitJob, pb.WaitJobRequest(job_id=job_id))):
        result = call(target, kind, fn, request)
        if isinstance(result, pb.Job):
            assert result.id == job_id and result.state == pb.JOB_STATE_FINISHED
            assert role == "admin" or result.owner == role, "a user must never see another user's job"


@settings(max_examples=150, **SETTINGS)
@given(role=st.sampled_from(["admin", "alice", "bob"]), job_id=job_ids, grace=doubles)
def test_stop_job_hostile(target, role, job_id, grace):
    stub = target.stub(role)
    request = pb.StopJobRequest(job_id=resolve_id(target, job_id))
    if grace is not None:
        request.grace_seconds = grace
    result = call(target, "StopJob", stub.StopJob, request)
    if isinstance(result, pb.Job):
        assert result.state == pb.JOB_STATE_FINISHED
        assert role == "admin" or result.owner == role


def test_stop_running_job_with_hostile_grace(target):
    job = target.alice.StartJob(pb.StartJobRequest(command=pb.Command(command="sleep", arguments=["300"])),
                                timeout=30)
    for grace in (math.nan, math.inf, -math.inf, -1.0, 1e300, 3601.0):
        result = call(target, "StopJob", target.alice.StopJob, pb.StopJobRequest(job_id=job.id, grace_seconds=grace))
        assert isinstance(result, grpc.RpcError) and result.code() == grpc.StatusCode.INVALID_ARGUMENT, result
        assert "grace" in result.details()
    assert target.alice.GetJob(pb.GetJobRequest(job_id=job.id), timeout=30).state == pb.JOB_STATE_RUNNING
    stopped = target.alice.StopJob(pb.StopJobRequest(job_id=job.id, grace_seconds=0), timeout=60)
    assert stopped.reason == pb.TERMINATION_REASON_STOPPED


@settings(max_examples=200, **SETTINGS)
@given(role=st.sampled_from(["admin", "alice", "bob"]), job_id=job_ids,
       offset=st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1),
                        st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1])),
       no_follow=st.booleans())
def test_stream_output_hostile(target, role, job_id, offset, no_follow):
    job_id = resolve_id(target, job_id)
    stub = target.stub(role)
    request = pb.StreamOutputRequest(job_id=job_id, offset=offset, no_follow=no_follow)
    result = call(target, "StreamOutput", stub.StreamOutput, request)
    if isinstance(result, list):  # only the finished jobs of the fixture can be found: streams end
        owner = next(who for who, jid in target.jobs.items() if jid == job_id)
        assert role == "admin" or owner == role
        expected = f"hello {owner}\n".encode()[offset:]
        assert b"".join(c.data for c in result) == expected


@settings(max_examples=60, **SETTINGS)
@given(role=st.sampled_from(["admin", "alice", "bob"]))
def test_list_jobs_shows_only_own_jobs(target, role):
    result = call(target, "ListJobs", target.stub(role).ListJobs, pb.ListJobsRequest())
    assert isinstance(result, pb.ListJobsResponse)
    assert role == "admin" or all(j.owner == role for j in result.jobs)


# -- bytes that are not a valid message -------------------------------------------------------------------------

METHODS = {
    "StartJob": "unary", "StopJob": "unary", "GetJob": "unary", "ListJobs": "unary", "WaitJob": "unary",
    "StreamOutput": "stream",
}
raw_messages = st.one_of(
    st.binary(max_size=256),
    # A well-formed frame around a string field whose bytes are not UTF-8 (protobuf refuses to parse it).
    st.builds(lambda tag, body: bytes([tag, len(body)]) + body, st.sampled_from([0x0A, 0x12, 0x1A, 0x22, 0x2A]),
              st.binary(min_size=1, max_size=100).filter(lambda b: not _is_utf8(b))),
    # StartJobRequest.command (field 2) holding a Command whose `directory` (field 5) is not UTF-8.
    st.binary(min_size=1, max_size=60).filter(lambda b: not _is_utf8(b))
    .map(lambda b: bytes([0x12, len(b) + 2, 0x2A, len(b)]) + b),
)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.fixture(scope="module")
def raw_channel(target):
    from pathlib import Path

    crt, key = target.daemon.cert("admin", "admin")
    credentials = grpc.ssl_channel_credentials(Path(target.daemon.ca).read_bytes(), Path(key).read_bytes(),
                                               Path(crt).read_bytes())
    with grpc.secure_channel(target.daemon.addr, credentials) as channel:
        yield channel


@settings(max_examples=200, **SETTINGS)
@given(method=st.sampled_from(sorted(METHODS)), payload=raw_messages)
def test_raw_bytes_that_are_not_a_valid_request(target, raw_channel, method, payload):
    path = f"/jobworker.v1.JobWorker/{method}"
    fn = raw_channel.unary_stream(path) if METHODS[method] == "stream" else raw_channel.unary_unary(path)
    result = call(target, "raw " + method, fn, payload)
    if isinstance(result, bytes) and method == "StartJob":  # it parsed and started something: stop it
        stop_if_started(target, target.admin, pb.Job.FromString(result))
    if isinstance(result, list) and method == "StreamOutput":
        pass  # a parseable request for a real job's output
