"""jobctl against an in-process fake JobWorker server over real mutual TLS (no daemon, no root).

Certificates are made here with `cryptography`. Covers the TLS diagnosis (expired certificate,
another CA, key mismatch, ...) and the client's behaviour end to end with the real `jobctl`
as a subprocess: attached run and exit status, -d, binary logs, resuming `logs -f` across a
server restart, and Ctrl-C once (stop) and twice (detach).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import select
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb
from jobworkerd.gen.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobctl.client import Client
from jobctl.diagnose import check_client_files
from jobctl.errors import JobctlError
from jobctl.settings import Settings

DEADLINE = 30.0  # seconds; generous upper bound for polls, never a sleep


# ---- certificates ------------------------------------------------------------------------------


def _name(cn: str, ou: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    return x509.Name(attrs)


class CA:
    def __init__(self, cn: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, cn, ou=None, server=False, hosts=(), valid_from_days=-1, valid_to_days=30):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder().subject_name(_name(cn, ou)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=valid_from_days))
            .not_valid_after(now + datetime.timedelta(days=valid_to_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if hosts:
            sans = []
            for host in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def _pem_cert(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Files: ca, server, admin (good), expired, future, other (another CA), twin (a different CA
    with the same name), servercert (a server certificate used as a client one), wrong.key."""
    d = tmp_path_factory.mktemp("pki")
    ca, other, twin = CA("jobctl test CA"), CA("another CA"), CA("jobctl test CA")
    files = {}

    def save(name, cert, key):
        (d / f"{name}.crt").write_bytes(_pem_cert(cert))
        (d / f"{name}.key").write_bytes(_pem_key(key))
        files[name] = (str(d / f"{name}.crt"), str(d / f"{name}.key"))

    save("ca", ca.cert, ca.key)
    save("other-ca", other.cert, other.key)
    save("server", *ca.issue("server", server=True, hosts=["localhost", "127.0.0.1"]))
    save("wrong-host-server", *ca.issue("server", server=True, hosts=["example.invalid"]))
    save("admin", *ca.issue("admin", "admin"))
    save("expired", *ca.issue("admin", "admin", valid_from_days=-10, valid_to_days=-1))
    save("future", *ca.issue("admin", "admin", valid_from_days=2, valid_to_days=30))
    save("other", *other.issue("admin", "admin"))
    save("twin", *twin.issue("admin", "admin"))
    save("servercert", *ca.issue("server", server=True, hosts=["localhost"]))
    (d / "wrong.key").write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    files["wrong.key"] = str(d / "wrong.key")
    (d / "garbage.crt").write_bytes(b"not a certificate\n")
    files["garbage.crt"] = str(d / "garbage.crt")
    return files


# ---- the fake server ---------------------------------------------------------------------------


class FakeJobWorker(pb_grpc.JobWorkerServicer):
    """Jobs by program name: `emit HEX [CODE]` writes bytes and exits CODE; `signal N` is killed by
    N; `oom` is OOM-killed; `forever` writes 'ready' and runs until stopped; `stubborn` is like
    forever but StopJob blocks until `release` is set; `missing` fails to start."""

    def __init__(self):
        self.cond = threading.Condition()
        self.jobs: dict[str, pb.Job] = {}
        self.out: dict[str, bytearray] = {}
        self.stops: list[pb.StopJobRequest] = []
        self.release = threading.Event()

    def write(self, job_id: str, data: bytes) -> None:
        with self.cond:
            self.out[job_id] += data
            self.cond.notify_all()

    def finish(self, job_id: str, **fields) -> pb.Job:
        with self.cond:
            job = self.jobs[job_id]
            if job.state != pb.JOB_STATE_FINISHED:
                job.state = pb.JOB_STATE_FINISHED
                job.reason = fields.pop("reason", pb.TERMINATION_REASON_EXITED)
                for key, value in fields.items():
                    setattr(job, key, value)
                job.finished_at.GetCurrentTime()
            self.cond.notify_all()
            return pb.Job.FromString(job.SerializeToString())

    def _job(self, job_id, context) -> pb.Job:
        if job_id not in self.jobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job with id {job_id!r}")
        return self.jobs[job_id]

    def StartJob(self, request, context):
        program, args = request.command.command, list(request.command.arguments)
        if program == "missing":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "cannot run 'missing': no such program in PATH")
        with self.cond:
            job_id = f"job-{len(self.jobs) + 1}"
            job = pb.Job(id=job_id, name=request.name, owner="admin", state=pb.JOB_STATE_RUNNING,
                         command=request.command, limits=request.limits)
            job.created_at.GetCurrentTime()
            job.started_at.GetCurrentTime()
            self.jobs[job_id], self.out[job_id] = job, bytearray()
        if program == "emit":
            self.write(job_id, bytes.fromhex(args[0]))
            self.finish(job_id, exit_code=int(args[1]) if len(args) > 1 else 0)
        elif program == "signal":
            self.finish(job_id, signal=int(args[0]))
        elif program == "oom":
            self.finish(job_id, signal=9, reason=pb.TERMINATION_REASON_OOM_KILLED)
        elif program in ("forever", "stubborn"):
            self.write(job_id, b"ready\n")
        return self.jobs[job_id]

    def StopJob(self, request, context):
        job = self._job(request.job_id, context)
        self.stops.append(request)
        if job.command.command == "stubborn":
            self.release.wait(DEADLINE)
        return self.finish(request.job_id, signal=15, reason=pb.TERMINATION_REASON_STOPPED)

    def GetJob(self, request, context):
        return self._job(request.job_id, context)

    def ListJobs(self, request, context):
        return pb.ListJobsResponse(jobs=list(self.jobs.values()))

    def WaitJob(self, request, context):
        job = self._job(request.job_id, context)
        with self.cond:
            while job.state != pb.JOB_STATE_FINISHED and context.is_active():
                self.cond.wait(0.1)
        return job

    def StreamOutput(self, request, context):
        self._job(request.job_id, context)
        offset = request.offset
        while context.is_active():
            with self.cond:
                data = bytes(self.out[request.job_id][offset : offset + (256 << 10)])
                ended = self.jobs[request.job_id].state == pb.JOB_STATE_FINISHED
                if not data and not ended and not request.no_follow:
                    self.cond.wait(0.1)
                    continue
            if not data:
                return
            yield pb.OutputChunk(data=data, offset=offset)
            offset += len(data)


def serve(fake, pki, server="server", port=0):
    server_obj = grpc.server(futures.ThreadPoolExecutor(16))
    pb_grpc.add_JobWorkerServicer_to_server(fake, server_obj)
    crt, key = pki[server]
    with open(crt, "rb") as c, open(key, "rb") as k, open(pki["ca"][0], "rb") as ca:
        credentials = grpc.ssl_server_credentials([(k.read(), c.read())], root_certificates=ca.read(),
                                                  require_client_auth=True)
    port = server_obj.add_secure_port(f"127.0.0.1:{port}", credentials)
    server_obj.start()
    return server_obj, port


@pytest.fixture
def daemon(pki):
    fake = FakeJobWorker()
    fake.server, fake.port = serve(fake, pki)
    yield fake
    fake.release.set()
    fake.server.stop(None)


def settings_for(pki, port, cert="admin", key=None, ca="ca", host="127.0.0.1") -> Settings:
    crt, default_key = pki[cert]
    return Settings(addr=f"{host}:{port}", ca=pki[ca][0], cert=crt, key=pki[key] if key else default_key,
                    origin={"ca": "--ca", "cert": "--cert", "key": "--key"})


def env_for(pki, port, cert="admin", key=None) -> dict[str, str]:
    crt, default_key = pki[cert]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCTL_")}
    env.update(JOBCTL_ADDR=f"127.0.0.1:{port}", JOBCTL_CA=pki["ca"][0], JOBCTL_CERT=crt, JOBCTL_KEY=pki[key] if key else default_key)
    return env


def jobctl(daemon, pki, *args, cert="admin", key=None, timeout=DEADLINE):
    return subprocess.run([sys.executable, "-m", "jobctl", *args], env=env_for(pki, daemon.port, cert, key),
                          capture_output=True, timeout=timeout)


# ---- TLS diagnosis -----------------------------------------------------------------------------


def read_pem(settings: Settings) -> dict[str, bytes]:
    return {k: open(getattr(settings, k), "rb").read() for k in ("ca", "cert", "key")}


def diagnosis(pki, **kwargs) -> str | None:
    settings = settings_for(pki, 1, **kwargs)
    return check_client_files(settings, read_pem(settings))


def test_good_files_have_no_diagnosis(pki):
    assert diagnosis(pki) is None


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"cert": "expired"}, "client certificate {cert} (from --cert) expired on "),
        ({"cert": "future"}, "client certificate {cert} (from --cert) is not valid yet"),
        ({"cert": "other"}, "client certificate {cert} (from --cert) was issued by 'CN=another CA', not by the CA in CA certificate {ca} (from --ca) ('CN=jobctl test CA')"),
        ({"cert": "twin"}, "its signature does not verify with the CA in CA certificate {ca}"),
        ({"key": "wrong.key"}, "client key {key} (from --key) does not belong to client certificate {cert}"),
        ({"cert": "servercert"}, "client certificate {cert} (from --cert) is not a client certificate"),
        ({"ca": "admin"}, None),  # a leaf as CA file: parses, but does not issue the cert
        ({"key": "garbage.crt"}, "client key {key} (from --key) holds no PEM private key"),
    ],
)
def test_diagnosis_names_the_file_at_fault(pki, kwargs, expected):
    settings = settings_for(pki, 1, **kwargs)
    message = check_client_files(settings, read_pem(settings))
    if expected is None:
        assert message is not None and "was issued by" in message
    else:
        assert message is not None and expected.format(cert=settings.cert, key=settings.key, ca=settings.ca) in message


def test_garbage_certificate_or_ca_is_named(pki):
    for field in ("ca", "cert"):
        settings = settings_for(pki, 1)
        pem = read_pem(settings)
        pem[field] = b"garbage"
        assert check_client_files(settings, pem).endswith(f"{getattr(settings, field)} (from --{field}) holds no PEM certificate")


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"cert": "expired"}, "expired on"),
        ({"cert": "other"}, "was issued by 'CN=another CA'"),
        ({"key": "wrong.key"}, "does not belong to"),
        ({"ca": "other-ca"}, "the server's certificate does not verify with CA certificate"),
        ({"host": "localhost"}, None),  # the server certificate names localhost: works
    ],
)
def test_refused_handshake_becomes_an_actionable_message(pki, daemon, kwargs, expected):
    client = Client(settings_for(pki, daemon.port, **kwargs))
    try:
        if expected is None:
            with pytest.raises(JobctlError, match="not found: no job with id 'x'"):
                client.get("x")
            return
        with pytest.raises(JobctlError) as caught:
            client.get("x")
        assert expected in caught.value.message
    finally:
        client.close()


def test_server_certificate_for_another_host(pki):
    server, port = serve(FakeJobWorker(), pki, server="wrong-host-server")
    try:
        with Client(settings_for(pki, port)) as client, pytest.raises(JobctlError) as caught:
            client.get("x")
        assert "the server's certificate is not valid for '127.0.0.1'" in caught.value.message
    finally:
        server.stop(None)


def test_nothing_listening(pki):
    import socket

    with socket.socket() as probe:  # a free port, closed again: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Client(settings_for(pki, port)) as client, pytest.raises(JobctlError) as caught:
        client.list()
    assert caught.value.message == f"cannot connect to 127.0.0.1:{port}: connection refused (is jobworkerd running and listening there?)"


def test_unreadable_file_is_named(pki, tmp_path):
    settings = settings_for(pki, 1)
    missing = str(tmp_path / "nope.crt")
    with pytest.raises(JobctlError) as caught:
        Client(Settings(settings.addr, settings.ca, missing, settings.key, origin={"cert": "JOBCTL_CERT"}))
    assert caught.value.message == f"cannot read client certificate {missing} (from JOBCTL_CERT): No such file or directory"


def test_cli_prints_one_line_without_grpc_logging(pki, daemon):
    done = jobctl(daemon, pki, "ls", cert="expired")
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.startswith(b"jobctl: client certificate ") and b"expired on" in done.stderr
    assert done.stderr.count(b"\n") == 1, done.stderr


# ---- commands end to end against the fake -----------------------------------------------------


def test_run_attached_prints_output_and_exits_with_the_code(pki, daemon):
    done = jobctl(daemon, pki, "run", "--mem", "64M", "--", "emit", b"hi\n".hex(), "3")
    assert (done.returncode, done.stdout, done.stderr) == (3, b"hi\n", b"")
    assert daemon.jobs["job-1"].limits.memory_bytes == 64 << 20


@pytest.mark.parametrize(
    "program, status, note",
    [
        (["signal", "9"], 137, b""),
        (["signal", "2"], 130, b""),
        (["oom"], 137, b"jobctl: job job-1 was killed by the OOM killer (memory limit 32M)\n"),
    ],
)
def test_run_killed_by_a_signal_exits_128_plus_n(pki, daemon, program, status, note):
    done = jobctl(daemon, pki, "run", "--mem", "32M", "--", *program)
    assert (done.returncode, done.stdout, done.stderr) == (status, b"", note)


def test_run_detached_prints_the_id(pki, daemon):
    done = jobctl(daemon, pki, "run", "-d", "--", "forever")
    assert (done.returncode, done.stdout) == (0, b"job-1\n")
    assert daemon.jobs["job-1"].state == pb.JOB_STATE_RUNNING


def test_errors_from_the_server_are_one_line_with_the_code(pki, daemon):
    done = jobctl(daemon, pki, "status", "nope")
    assert (done.returncode, done.stderr) == (1, b"jobctl: not found: no job with id 'nope'\n")
    done = jobctl(daemon, pki, "run", "--", "missing")
    assert (done.returncode, done.stderr) == (1, b"jobctl: failed precondition: cannot run 'missing': no such program in PATH\n")


def test_logs_are_binary_safe_and_larger_than_a_chunk(pki, daemon):
    data = bytes(range(256)) * 4096  # 1 MiB: four 256 KiB messages
    job = daemon.StartJob(pb.StartJobRequest(command=pb.Command(command="forever")), None)
    daemon.write(job.id, data)
    daemon.finish(job.id, exit_code=0)
    done = jobctl(daemon, pki, "logs", job.id)
    assert done.returncode == 0
    assert done.stdout == b"ready\n" + data


def test_status_ls_stop_wait(pki, daemon):
    job_id = jobctl(daemon, pki, "run", "-d", "--name", "svc", "--", "forever").stdout.decode().strip()
    status = jobctl(daemon, pki, "status", "-o", "json", job_id)
    import json

    assert json.loads(status.stdout)["state"] == "running"
    table = jobctl(daemon, pki, "ls").stdout.decode().splitlines()
    assert table[0].startswith("ID") and table[1].split()[:4] == [job_id, "svc", "admin", "running"]
    assert json.loads(jobctl(daemon, pki, "ls", "-o", "json").stdout)[0]["name"] == "svc"
    stopped = jobctl(daemon, pki, "stop", "--grace", "2s", job_id)
    assert (stopped.returncode, stopped.stdout) == (0, f"{job_id} finished (stopped, SIGTERM)\n".encode())
    assert daemon.stops[0].grace_seconds == 2.0
    waited = jobctl(daemon, pki, "wait", job_id)
    assert (waited.returncode, waited.stderr) == (143, f"jobctl: job {job_id} was stopped (SIGTERM)\n".encode())


class Output:
    """Collects a subprocess pipe in a thread, so a test can await bytes with a deadline."""

    def __init__(self, pipe):
        self.data, self._cond = b"", threading.Condition()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe):
        while chunk := os.read(pipe.fileno(), 65536):
            with self._cond:
                self.data += chunk
                self._cond.notify_all()

    def wait_for(self, marker: bytes) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: marker in self.data, DEADLINE), (marker, self.data)


def await_true(predicate, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        select.select([], [], [], 0.02)


def test_logs_follow_resumes_after_the_server_restarts(pki, daemon):
    job = daemon.StartJob(pb.StartJobRequest(command=pb.Command(command="forever")), None)
    proc = subprocess.Popen([sys.executable, "-m", "jobctl", "logs", "-f", job.id],
                            env=env_for(pki, daemon.port), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = Output(proc.stdout)
    try:
        daemon.write(job.id, b"before restart\n")
        out.wait_for(b"before restart\n")
        daemon.server.stop(None)  # streams end with UNAVAILABLE, as when the daemon exits
        daemon.write(job.id, b"while down\n")
        daemon.server, _ = serve(daemon, pki, port=daemon.port)
        daemon.write(job.id, b"after restart\n")
        daemon.finish(job.id, exit_code=0)
        assert proc.wait(DEADLINE) == 0, proc.stderr.read()
        assert out.data == b"ready\nbefore restart\nwhile down\nafter restart\n"
    finally:
        proc.kill()


def _start_attached(pki, daemon, program):
    proc = subprocess.Popen([sys.executable, "-m", "jobctl", "run", "--", program], env=env_for(pki, daemon.port),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Output(proc.stdout), Output(proc.stderr)
    try:
        out.wait_for(b"ready\n")  # streaming has begun, so the Ctrl-C handler is in place
    except AssertionError:
        proc.kill()
        raise AssertionError(f"jobctl printed no 'ready': exit {proc.wait()}, stderr {err.data!r}") from None
    return proc, out, err


def test_ctrl_c_once_stops_the_job_and_exits_with_its_status(pki, daemon):
    proc, out, err = _start_attached(pki, daemon, "forever")
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(DEADLINE) == 143
        err.wait_for(b"jobctl: job job-1 was stopped (SIGTERM)\n")
        assert b"jobctl: stopping job job-1 (Ctrl-C again to detach)\n" in err.data
        assert len(daemon.stops) == 1 and not daemon.stops[0].HasField("grace_seconds")
        assert out.data == b"ready\n"
    finally:
        proc.kill()


def test_ctrl_c_twice_detaches_with_130(pki, daemon):
    proc, out, err = _start_attached(pki, daemon, "stubborn")
    try:
        proc.send_signal(signal.SIGINT)
        await_true(lambda: daemon.stops, "the stop request")
        err.wait_for(b"Ctrl-C again to detach")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(DEADLINE) == 130
        err.wait_for(b"jobctl: detached; the daemon goes on stopping job job-1 (jobctl status job-1)\n")
        assert daemon.jobs["job-1"].state == pb.JOB_STATE_RUNNING
    finally:
        proc.kill()
