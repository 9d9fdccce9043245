"""`jobworkerd ca ...`: a small certificate authority for mutual TLS.

    jobworkerd ca init  --dir DIR [--days 3650] [--name NAME] [--force]
    jobworkerd ca issue --dir DIR --name NAME --role admin|user --out PREFIX [--days 365]
    jobworkerd ca issue --dir DIR --server --host H [--host H ...] --out PREFIX [--days 365]

The CA lives in DIR/ca.crt (0644) and DIR/ca.key (0600). Every key is ECDSA P-256,
every signature SHA-256. A client certificate carries the caller's identity as
subject CN and its role as subject OU; the daemon reads both from there.
Keys are unencrypted PKCS8 PEM, written atomically with their final mode from the
first byte, so a key is never readable by anyone else, not even half-written.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("admin", "user")
# No user's CN begins with this: it names admins' jobs (worker.models.ADMIN_OWNER_PREFIX, which a unit test
# holds equal), and the daemon refuses such user certificates.
RESERVED_USER_PREFIX = "admin:"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CERT_MODE = 0o644
KEY_MODE = 0o600
DIR_MODE = 0o700
# Start validity slightly in the past so a client whose clock lags a little accepts it.
CLOCK_SKEW = datetime.timedelta(minutes=5)


class CAError(Exception):
    """A CA operation failed; the message says what to do about it."""


class Written(NamedTuple):
    cert: Path
    key: Path


def init_ca(directory: str | os.PathLike[str], name: str = "jobworkerd CA", days: int = 3650,
            force: bool = False) -> Written:
    """Create a self-signed CA in `directory`; refuse to replace one unless `force`."""
    ca_dir = Path(directory)
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    if not force and (cert_path.exists() or key_path.exists()):
        raise CAError(f"a CA already exists in {ca_dir}: pass --force to replace it "
                      "(certificates it issued will stop working)")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(name)
    not_before, not_after = _validity(days)
    cert = (
        _builder(subject, subject, key.public_key(), not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _write_pair(cert, key, cert_path, key_path)


def load_ca(directory: str | os.PathLike[str]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Read the CA certificate and key from `directory`."""
    ca_dir = Path(directory)
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    if not cert_path.is_file() or not key_path.is_file():
        raise CAError(f"no CA in {ca_dir}: run `jobworkerd ca init --dir {ca_dir}` first")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise CAError(f"cannot read the CA in {ca_dir} ({exc}): re-create it with `ca init --force`") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CAError(f"{key_path} is not the ECDSA key of {cert_path}: re-create the CA with `ca init --force`")
    return cert, key


def issue_client(ca_dir: str | os.PathLike[str], name: str, role: str, out_prefix: str | os.PathLike[str],
                 days: int = 365, not_before: datetime.datetime | None = None,
                 not_after: datetime.datetime | None = None) -> Written:
    """Issue a client certificate CN=name, OU=role; write PREFIX.crt and PREFIX.key."""
    if role not in ROLES:
        raise CAError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if not name:
        raise CAError("a client certificate needs --name (the user name it identifies)")
    if role == "user" and name.startswith(RESERVED_USER_PREFIX):
        raise CAError(f"a user's name may not begin with {RESERVED_USER_PREFIX!r}: that names admins' jobs, "
                      "and the daemon refuses such a user certificate")
    subject = _name(name, role)
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    return _issue(ca_dir, subject, [eku], out_prefix, _validity(days, not_before, not_after))


def issue_server(ca_dir: str | os.PathLike[str], hosts: list[str], out_prefix: str | os.PathLike[str],
                 days: int = 365) -> Written:
    """Issue a server certificate for `hosts` (DNS names or IP addresses); CN = first host."""
    if not hosts or not all(hosts):
        raise CAError("a server certificate needs at least one --host (a DNS name or IP address)")
    try:
        san = x509.SubjectAlternativeName([_general_name(host) for host in hosts])
    except ValueError as exc:
        raise CAError(f"bad --host ({exc}): give an ASCII DNS name or an IP address") from exc
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    return _issue(ca_dir, _name(hosts[0]), [san, eku], out_prefix, _validity(days))


def _issue(ca_dir: str | os.PathLike[str], subject: x509.Name, extensions: list[x509.ExtensionType],
           out_prefix: str | os.PathLike[str], validity: tuple[datetime.datetime, datetime.datetime]) -> Written:
    """Sign a leaf certificate with the CA in `ca_dir` and write it beside its new key.

    `extensions` (EKU, SAN) are added non-critical after the ones every leaf has.
    """
    ca_cert, ca_key = load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), *validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    prefix = Path(out_prefix)
    return _write_pair(cert, key, Path(f"{prefix}.crt"), Path(f"{prefix}.key"))


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """Copy the CA's own key identifier (verifiers match on it); derive it if the CA has none."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _name(common_name: str, role: str | None = None) -> x509.Name:
    try:
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if role is not None:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
        return x509.Name(attributes)
    except ValueError as exc:
        raise CAError(f"bad name {common_name!r} ({exc}): use 1 to 64 characters") from exc


def _validity(days: int, not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None) -> tuple[datetime.datetime, datetime.datetime]:
    """Default: from a few minutes ago for `days` days; explicit bounds win (tests make expired certs)."""
    if days < 1:
        raise CAError(f"--days must be at least 1, not {days}")
    if not_before is None:
        now = datetime.datetime.now(datetime.timezone.utc)
        not_before = now - CLOCK_SKEW if not_after is None else not_after - datetime.timedelta(days=days)
    if not_after is None:
        not_after = not_before + datetime.timedelta(days=days)
    if not_after <= not_before:
        raise CAError("not_after must be later than not_before")
    return not_before, not_after


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             not_before: datetime.datetime, not_after: datetime.datetime) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign, crl_sign=crl_sign,
        encipher_only=False, decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _make_dir(directory: Path) -> None:
    """Create `directory` (and parents) as 0700 if missing; leave an existing one alone."""
    if not directory.is_dir():
        directory.mkdir(mode=DIR_MODE, parents=True)
        os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask


def _write_pair(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path) -> Written:
    """Create the directory if needed, then write the key first: a certificate always has its key beside it."""
    _make_dir(cert_path.parent)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_atomic(key_path, key_pem, KEY_MODE)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    return Written(cert=cert_path, key=key_path)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write a temp file in the same directory, give it `mode`, fsync, rename over `path`.

    mkstemp creates the file 0600 whatever the umask, so a key is private from its first byte;
    fchmod is not filtered by the umask, so a certificate gets exactly 0644.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `ca init` and `ca issue` to the `jobworkerd` subcommands."""
    ca = sub.add_parser("ca", help="create the CA and issue server and client certificates")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    init = ca_sub.add_parser("init", help="create a CA (DIR/ca.crt, DIR/ca.key)")
    init.add_argument("--dir", required=True, help="directory for ca.crt and ca.key (created 0700)")
    init.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    init.add_argument("--name", default="jobworkerd CA", help="CA common name (default 'jobworkerd CA')")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=_cmd_init)
    issue = ca_sub.add_parser("issue", help="issue a client (--name, --role) or server (--server, --host) certificate")
    issue.add_argument("--dir", required=True, help="directory of the CA made by `ca init`")
    issue.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.crt and PREFIX.key")
    issue.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    issue.add_argument("--name", help="client user name (certificate CN)")
    issue.add_argument("--role", help=f"client role (certificate OU): {' or '.join(ROLES)}")
    issue.add_argument("--server", action="store_true", help="issue a server certificate instead")
    issue.add_argument("--host", action="append", default=[], help="server DNS name or IP (repeatable)")
    issue.set_defaults(func=_cmd_issue)


def _cmd_init(args: argparse.Namespace) -> int:
    return _run(lambda: init_ca(args.dir, name=args.name, days=args.days, force=args.force))


def _cmd_issue(args: argparse.Namespace) -> int:
    def issue() -> Written:
        if args.server:
            if args.name or args.role:
                raise CAError("--name and --role are for client certificates: drop them with --server")
            return issue_server(args.dir, args.host, args.out, days=args.days)
        if args.host:
            raise CAError("--host is for server certificates: add --server")
        if not args.name or not args.role:
            raise CAError(f"a client certificate needs --name and --role ({' or '.join(ROLES)}); "
                          "for a server certificate use --server --host H")
        return issue_client(args.dir, args.name, args.role, args.out, days=args.days)

    return _run(issue)


def _run(action: Callable[[], Written]) -> int:
    """Run a CLI action: print what was written (exit 0) or one line saying what to fix (exit 1)."""
    try:
        written = action()
    except (CAError, OSError) as exc:
        message = str(exc)
        if isinstance(exc, OSError) and exc.filename:
            message = f"{exc.filename}: {exc.strerror} (check the path and its permissions; run as root?)"
        print(f"jobworkerd: ca: {message}", file=sys.stderr)
        return 1
    print(f"wrote {written.cert} and {written.key}")
    return 0
