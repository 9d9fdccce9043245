"""The API's security properties against the real daemon: the TLS policy seen by a real TLS client
(openssl s_client), client-certificate verification, per-user authorization, and error codes."""

from __future__ import annotations

import datetime
import os
import re
import select
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jobworkerd import ca
from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.root


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def s_client_accepted(daemon, *args: str, cert: bool = True) -> bool:
    """Whether the server completes a TLS connection made by `openssl s_client ARGS` and then speaks
    HTTP/2 on it. The handshake output alone is not proof: when grpc rejects a client (e.g. without a
    certificate) it closes the socket without an alert, after the client has already printed a cipher.
    So: send the HTTP/2 preface and wait for the server's SETTINGS frame."""
    host, port = daemon.addr.rsplit(":", 1)
    command = ["openssl", "s_client", "-quiet", "-alpn", "h2", "-connect", f"{host}:{port}",
               "-CAfile", daemon.ca, "-verify_return_error", *args]
    if cert:
        crt, key = daemon.cert("admin", "admin")
        command += ["-cert", crt, "-key", key]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        proc.stdin.write(H2_PREFACE)
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        data = os.read(proc.stdout.fileno(), 9) if ready else b""
        return len(data) >= 4 and data[3] == 0x04  # an HTTP/2 frame of type SETTINGS
    finally:
        proc.kill()
        proc.wait()


def s_client_cipher(daemon, *args: str) -> str:
    host, port = daemon.addr.rsplit(":", 1)
    crt, key = daemon.cert("admin", "admin")
    result = subprocess.run(["openssl", "s_client", "-connect", f"{host}:{port}", "-CAfile", daemon.ca,
                             "-cert", crt, "-key", key, *args], input=b"", capture_output=True, timeout=30)
    match = re.search(r"Cipher is (\S+)", result.stdout.decode(errors="replace"))
    return match.group(1) if match else ""


class TestTLSPolicy:
    def test_tls12_with_ecdhe_aead_is_accepted(self, daemon):
        assert s_client_accepted(daemon, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
        assert s_client_cipher(daemon, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256") == \
            "ECDHE-ECDSA-AES128-GCM-SHA256"

    def test_tls13_is_accepted(self, daemon):
        assert s_client_accepted(daemon, "-tls1_3")

    def test_tls11_is_refused(self, daemon):
        # SECLEVEL=0 so that it is the server, not our own client, that says no.
        assert not s_client_accepted(daemon, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")

    @pytest.mark.parametrize("suite", [
        "AES128-GCM-SHA256",            # no ECDHE (static RSA key exchange)
        "ECDHE-ECDSA-AES128-SHA256",    # ECDHE, but CBC (no AEAD)
        "ECDHE-ECDSA-AES256-SHA",       # ECDHE, CBC with SHA-1
    ])
    def test_tls12_weak_suites_are_refused(self, daemon, suite):
        assert not s_client_accepted(daemon, "-tls1_2", "-cipher", f"{suite}:@SECLEVEL=0")

    @pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
    def test_no_client_certificate_is_refused(self, daemon, version):
        assert not s_client_accepted(daemon, version, cert=False)


def _rpc_code(stub_call, request) -> grpc.StatusCode | None:
    try:
        stub_call(request, timeout=15)
    except grpc.RpcError as exc:
        return exc.code()
    return None


class TestClientCertificates:
    def test_certificate_from_another_ca_is_refused(self, daemon, tmp_path):
        ca.init_ca(tmp_path / "other")
        other = ca.issue_client(tmp_path / "other", "mallory", "admin", tmp_path / "mallory")
        stub = daemon.stub(cert=(str(other.cert), str(other.key)))
        assert _rpc_code(stub.ListJobs, pb.ListJobsRequest()) == grpc.StatusCode.UNAVAILABLE

    def test_expired_certificate_is_refused(self, daemon, tmp_path):
        expired_at = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
        old = ca.issue_client(daemon.ca_dir, "oldtimer", "admin", tmp_path / "old", not_after=expired_at)
        stub = daemon.stub(cert=(str(old.cert), str(old.key)))
        assert _rpc_code(stub.ListJobs, pb.ListJobsRequest()) == grpc.StatusCode.UNAVAILABLE

    def test_certificate_without_role_is_unauthenticated(self, daemon, tmp_path):
        ca_cert, ca_key = ca.load_ca(daemon.ca_dir)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "norole")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        crt_path, key_path = tmp_path / "norole.crt", tmp_path / "norole.key"
        crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        stub = daemon.stub(cert=(str(crt_path), str(key_path)))
        with pytest.raises(grpc.RpcError) as info:
            stub.ListJobs(pb.ListJobsRequest(), timeout=15)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "OU must be 'admin' or 'user'" in info.value.details()


def start(stub, *argv: str, **kwargs) -> pb.Job:
    return stub.StartJob(pb.StartJobRequest(command=pb.Command(command=argv[0], arguments=argv[1:], **kwargs)),
                         timeout=30)


class TestAuthorization:
    def test_users_see_only_their_own_jobs_and_admins_see_all(self, daemon):
        alice, bob, admin = daemon.stub("alice", "user"), daemon.stub("bob", "user"), daemon.stub("admin", "admin")
        job = start(alice, "sleep", "300")
        try:
            assert job.owner == "alice" and job.run_as.startswith("dynamic:")  # a uid of its own
            for call, request in [
                (bob.GetJob, pb.GetJobRequest(job_id=job.id)),
                (bob.StopJob, pb.StopJobRequest(job_id=job.id, grace_seconds=0)),
                (bob.WaitJob, pb.WaitJobRequest(job_id=job.id)),
            ]:
                assert _rpc_code(call, request) == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as info:
                list(bob.StreamOutput(pb.StreamOutputRequest(job_id=job.id), timeout=15))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert job.id not in {j.id for j in bob.ListJobs(pb.ListJobsRequest()).jobs}
            assert job.id in {j.id for j in alice.ListJobs(pb.ListJobsRequest()).jobs}
            assert job.id in {j.id for j in admin.ListJobs(pb.ListJobsRequest()).jobs}
            assert alice.GetJob(pb.GetJobRequest(job_id=job.id)).state == pb.JOB_STATE_RUNNING
        finally:
            stopped = admin.StopJob(pb.StopJobRequest(job_id=job.id, grace_seconds=5), timeout=30)
        assert stopped.state == pb.JOB_STATE_FINISHED and stopped.reason == pb.TERMINATION_REASON_STOPPED

    def test_users_never_run_as_root(self, daemon):
        alice = daemon.stub("alice", "user")
        for user in ("root", "0"):
            with pytest.raises(grpc.RpcError) as info:
                start(alice, "true", user=user)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "may run jobs only as: dynamic (a uid of its own), nobody;" in info.value.details()

    def test_admin_runs_as_root_by_default_and_as_any_user(self, daemon):
        admin = daemon.stub()
        assert start(admin, "true").run_as == "root"
        assert start(admin, "true", user="daemon").run_as == "daemon"


class TestErrors:
    @pytest.mark.parametrize("request_, code, text", [
        (pb.StartJobRequest(command=pb.Command(command="")), grpc.StatusCode.INVALID_ARGUMENT, "command is empty"),
        (pb.StartJobRequest(command=pb.Command(command="true"), limits=pb.Limits(cpu=-1)),
         grpc.StatusCode.INVALID_ARGUMENT, "cpu must be a positive number"),
        (pb.StartJobRequest(command=pb.Command(command="true", user="no-such-user")),
         grpc.StatusCode.INVALID_ARGUMENT, "run-as user 'no-such-user' does not exist"),
        (pb.StartJobRequest(command=pb.Command(command="no-such-program")),
         grpc.StatusCode.FAILED_PRECONDITION, "program 'no-such-program' not found in PATH"),
        (pb.StartJobRequest(command=pb.Command(command="/etc/passwd")),
         grpc.StatusCode.FAILED_PRECONDITION, "cannot execute program '/etc/passwd': Permission denied (EACCES)"),
        (pb.StartJobRequest(command=pb.Command(command="true", directory="relative/dir")),
         grpc.StatusCode.INVALID_ARGUMENT, "must be an absolute path"),
        (pb.StartJobRequest(command=pb.Command(command="true", arguments=["a\0b"])),
         grpc.StatusCode.INVALID_ARGUMENT, "NUL byte"),
    ])
    def test_bad_start_requests(self, daemon, request_, code, text):
        with pytest.raises(grpc.RpcError) as info:
            daemon.stub().StartJob(request_, timeout=30)
        assert info.value.code() == code
        assert text in info.value.details()

    def test_unknown_and_malformed_job_ids(self, daemon):
        stub = daemon.stub()
        with pytest.raises(grpc.RpcError) as info:
            stub.GetJob(pb.GetJobRequest(job_id="0123456789ab"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            stub.GetJob(pb.GetJobRequest(job_id="../../etc"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def test_over_configured_maximum_is_resource_exhausted(self, daemon_factory):
        d = daemon_factory({"limits": {"max": {"memory": "512M", "cpu": 1}}}).start()
        with pytest.raises(grpc.RpcError) as info:
            start_request = pb.StartJobRequest(command=pb.Command(command="true"), limits=pb.Limits(memory_bytes=1 << 30))
            d.stub().StartJob(start_request, timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over the configured maximum" in info.value.details()

    def test_oversized_request_is_refused_and_daemon_carries_on(self, daemon):
        stub = daemon.stub()
        with pytest.raises(grpc.RpcError) as info:
            start(stub, "true", *(["x" * 1024] * 5000))  # ~5 MB, over the 4 MiB message limit
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        job = start(stub, "true")  # the daemon carries on
        assert stub.WaitJob(pb.WaitJobRequest(job_id=job.id), timeout=30).exit_code == 0

    def test_health_service_reports_serving(self, daemon):
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        crt, key = daemon.cert("admin", "admin")
        credentials = grpc.ssl_channel_credentials(Path(daemon.ca).read_bytes(), Path(key).read_bytes(),
                                                   Path(crt).read_bytes())
        with grpc.secure_channel(daemon.addr, credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = stub.Check(health_pb2.HealthCheckRequest(service="jobworker.v1.JobWorker"), timeout=15)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_stream_output_follows_and_two_streams_match(daemon):
    stub = daemon.stub()
    job = start(stub, "sh", "-c", "for i in $(seq 1 200); do echo line $i; sleep 0.005; done; printf 'end'")
    first = stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id), timeout=60)
    second = stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id), timeout=60)
    data_a = b"".join(c.data for c in first)
    data_b = b"".join(c.data for c in second)
    assert data_a == data_b
    assert data_a.endswith(b"end") and data_a.count(b"\n") == 200
    # From an offset: exactly the tail.
    tail = b"".join(c.data for c in stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id, offset=10), timeout=30))
    assert tail == data_a[10:]
    deadline = time.monotonic() + 10
    while stub.GetJob(pb.GetJobRequest(job_id=job.id)).state != pb.JOB_STATE_FINISHED:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_list_jobs_pages_through_everything(daemon_factory):
    d = daemon_factory().start()
    stub = d.stub("pager", "user")
    started = [start(stub, "true").id for _ in range(7)]
    seen, token = [], ""
    while True:
        page = stub.ListJobs(pb.ListJobsRequest(page_size=3, page_token=token), timeout=15)
        assert len(page.jobs) <= 3
        seen += [j.id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == started
    with pytest.raises(grpc.RpcError) as info:
        stub.ListJobs(pb.ListJobsRequest(page_token="garbage"), timeout=15)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
