"""The CA tool: certificate contents, file modes, chains checked by openssl, CLI errors."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jobworkerd import ca


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _ext(cert: x509.Certificate, kind: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


def _verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Raises InvalidSignature unless `issuer`'s key signed `cert` with ECDSA-SHA256."""
    public_key = issuer.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))


def _openssl_verify(ca_cert: Path, cert: Path, purpose: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile", str(ca_cert), str(cert)],
                          capture_output=True, text=True)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobworkerd", "ca", *args], capture_output=True, text=True)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    ca.init_ca(directory)
    return directory


def test_init_makes_a_p256_ca_with_ca_extensions(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "ca"
    written = ca.init_ca(directory, name="test CA", days=10)
    assert written == (directory / "ca.crt", directory / "ca.key")
    cert = _cert(written.cert)
    key = serialization.load_pem_private_key(written.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == cert.public_key()
    assert written.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # unencrypted PKCS8
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test CA"
    _verify_signed_by(cert, cert)
    basic = _ext(cert, x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=10) <= lifetime < datetime.timedelta(days=10, minutes=10)
    assert (_mode(directory), _mode(written.cert), _mode(written.key)) == (0o700, 0o644, 0o600)


def test_init_refuses_to_replace_a_ca_unless_forced(ca_dir: Path) -> None:
    before = (ca_dir / "ca.crt").read_bytes(), (ca_dir / "ca.key").read_bytes()
    with pytest.raises(ca.CAError, match="already exists.*--force"):
        ca.init_ca(ca_dir)
    assert ((ca_dir / "ca.crt").read_bytes(), (ca_dir / "ca.key").read_bytes()) == before
    ca.init_ca(ca_dir, force=True)
    assert (ca_dir / "ca.key").read_bytes() != before[1]
    assert _mode(ca_dir / "ca.key") == 0o600


def test_client_cert_chains_to_the_ca_and_names_user_and_role(ca_dir: Path, tmp_path: Path) -> None:
    written = ca.issue_client(ca_dir, "alice", "admin", tmp_path / "clients" / "alice")
    assert written == (tmp_path / "clients" / "alice.crt", tmp_path / "clients" / "alice.key")
    ca_cert, cert = _cert(ca_dir / "ca.crt"), _cert(written.cert)
    _verify_signed_by(cert, ca_cert)
    assert cert.issuer == ca_cert.subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "admin"
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert _ext(cert, x509.BasicConstraints).value.ca is False
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(ca_cert, x509.SubjectKeyIdentifier).value.digest
    key = serialization.load_pem_private_key(written.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == cert.public_key()
    assert (_mode(written.cert), _mode(written.key)) == (0o644, 0o600)


def test_a_user_name_that_takes_the_admin_owner_prefix_is_not_issued(ca_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ca.CAError, match="may not begin with 'admin:'"):
        ca.issue_client(ca_dir, "admin:alice", "user", tmp_path / "eve")
    assert not list(tmp_path.glob("eve*"))
    assert ca.issue_client(ca_dir, "admin:alice", "admin", tmp_path / "odd-admin").cert.exists()


def test_server_cert_lists_dns_names_and_ip_addresses(ca_dir: Path, tmp_path: Path) -> None:
    hosts = ["localhost", "127.0.0.1", "::1", "jobs.example.com"]
    written = ca.issue_server(ca_dir, hosts, tmp_path / "server")
    cert = _cert(written.cert)
    _verify_signed_by(cert, _cert(ca_dir / "ca.crt"))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "jobs.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                         ipaddress.ip_address("::1")]
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _mode(written.key) == 0o600
    assert _openssl_verify(ca_dir / "ca.crt", written.cert, "sslserver").returncode == 0


def test_openssl_accepts_the_client_cert_only_against_its_own_ca(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-ca"
    ca.init_ca(other)
    written = ca.issue_client(ca_dir, "bob", "user", tmp_path / "bob")
    good = _openssl_verify(ca_dir / "ca.crt", written.cert, "sslclient")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "OK" in good.stdout
    bad = _openssl_verify(other / "ca.crt", written.cert, "sslclient")
    assert bad.returncode != 0
    assert "unable to get local issuer certificate" in bad.stdout + bad.stderr
    # the client certificate is not good for a server, nor the server one for a client
    assert _openssl_verify(ca_dir / "ca.crt", written.cert, "sslserver").returncode != 0


def test_an_expired_client_cert_can_be_made_and_openssl_rejects_it(ca_dir: Path, tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    written = ca.issue_client(ca_dir, "old", "user", tmp_path / "old", not_after=now - datetime.timedelta(days=1))
    cert = _cert(written.cert)
    assert cert.not_valid_after_utc < now
    assert cert.not_valid_before_utc < cert.not_valid_after_utc
    result = _openssl_verify(ca_dir / "ca.crt", written.cert, "sslclient")
    assert result.returncode != 0
    assert "certificate has expired" in result.stdout + result.stderr


def test_keys_are_never_world_readable_even_with_umask_zero(ca_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    renamed: dict[str, int] = {}
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        renamed[Path(dst).name] = _mode(Path(src))  # mode of the temp file just before it appears
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    old_umask = os.umask(0)
    try:
        written = ca.issue_client(ca_dir, "carol", "user", tmp_path / "out" / "carol")
    finally:
        os.umask(old_umask)
    assert renamed == {"carol.key": 0o600, "carol.crt": 0o644}
    assert _mode(written.key) == 0o600 and _mode(tmp_path / "out") == 0o700
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["carol.crt", "carol.key"]  # no temp left


def test_bad_inputs_raise_ca_errors(ca_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ca.CAError, match="unknown role 'root'"):
        ca.issue_client(ca_dir, "x", "root", tmp_path / "x")
    with pytest.raises(ca.CAError, match="at least one --host"):
        ca.issue_server(ca_dir, [], tmp_path / "s")
    with pytest.raises(ca.CAError, match="no CA in"):
        ca.issue_client(tmp_path / "nowhere", "x", "user", tmp_path / "x")
    with pytest.raises(ca.CAError, match="--days"):
        ca.issue_client(ca_dir, "x", "user", tmp_path / "x", days=0)
    assert not list(tmp_path.glob("x*")) and not list(tmp_path.glob("s*"))


def test_cli_init_and_issue_write_the_files(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    assert _cli("init", "--dir", str(directory)).returncode == 0
    client = _cli("issue", "--dir", str(directory), "--name", "root", "--role", "admin",
                  "--out", str(tmp_path / "c" / "root"))
    assert client.returncode == 0, client.stderr
    server = _cli("issue", "--dir", str(directory), "--server", "--host", "localhost", "--host", "127.0.0.1",
                  "--out", str(tmp_path / "server"))
    assert server.returncode == 0, server.stderr
    assert _cert(tmp_path / "c" / "root.crt").subject.rfc4514_string() == "OU=admin,CN=root"
    assert _openssl_verify(directory / "ca.crt", tmp_path / "server.crt", "sslserver").returncode == 0


@pytest.mark.parametrize("args, message", [
    (["issue", "--name", "eve", "--role", "root", "--out", "{tmp}/eve"], "unknown role 'root': use one of admin, user"),
    (["issue", "--server", "--out", "{tmp}/srv"], "needs at least one --host"),
    (["issue", "--name", "eve", "--out", "{tmp}/eve"], "needs --name and --role"),
    (["issue", "--server", "--host", "bücher.example", "--out", "{tmp}/srv"], "bad --host"),
    (["issue", "--name", "x" * 65, "--role", "user", "--out", "{tmp}/eve"], "use 1 to 64 characters"),
    (["issue", "--name", "eve", "--role", "user", "--out", "{tmp}/eve", "--days", "0"], "--days must be at least 1"),
    (["issue", "--name", "eve", "--role", "user", "--out", "{tmp}/file/eve"], "File exists"),
    (["init"], "already exists"),
])
def test_cli_errors_are_one_line_and_exit_1(ca_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "file").write_text("not a directory")
    result = _cli(*[a.format(tmp=tmp_path) for a in args], "--dir", str(ca_dir))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobworkerd: ca: ")
    assert message in lines[0]
    assert not list(tmp_path.glob("eve*")) and not list(tmp_path.glob("srv*"))


def test_cli_without_a_ca_says_to_run_init(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = _cli("issue", "--dir", str(missing), "--name", "a", "--role", "user", "--out", str(tmp_path / "a"))
    assert result.returncode == 1
    assert result.stderr == f"jobworkerd: ca: no CA in {missing}: run `jobworkerd ca init --dir {missing}` first\n"


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    assert _cli("issue", "--dir", str(tmp_path)).returncode == 2  # no --out
    assert _cli("init").returncode == 2  # no --dir
