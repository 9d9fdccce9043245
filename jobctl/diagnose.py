"""Why a connection failed, in words a person can act on.

grpc reports every failed connection as UNAVAILABLE "failed to connect to all addresses"; when
the server refuses our certificate during the handshake the details say only "Socket closed".
So, in this order:

    1. grpc's details, when they say that jobctl itself rejected the server (its certificate
       does not verify with --ca, or is not valid for the host name)
    2. the client's own files: CA file unparsable -> cert unparsable -> key unparsable
       -> key does not match the cert -> cert expired / not yet valid -> cert not for client
       use -> cert not issued by the CA in --ca
    3. the rest of grpc's details (connection refused, unknown host), else a general message.

Runs only on that error path, so `cryptography` is imported here and nowhere else.
"""

from __future__ import annotations

import datetime

from .settings import Settings


def diagnose_connect_failure(settings: Settings, pem: dict[str, bytes], details: str) -> str:
    return server_rejected(settings, details) or check_client_files(settings, pem) or explain_details(settings, details)


def check_client_files(
    settings: Settings, pem: dict[str, bytes], now: datetime.datetime | None = None
) -> str | None:
    """A message naming the file at fault, or None if the CA, certificate and key look right."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        cas = x509.load_pem_x509_certificates(pem["ca"])
    except ValueError:
        return f"{settings.describe('ca')} holds no PEM certificate"
    try:
        cert = x509.load_pem_x509_certificates(pem["cert"])[0]
    except ValueError:
        return f"{settings.describe('cert')} holds no PEM certificate"
    try:
        key = serialization.load_pem_private_key(pem["key"], password=None)
    except TypeError:
        return f"{settings.describe('key')} is encrypted; jobctl needs an unencrypted key"
    except (ValueError, UnsupportedAlgorithm):
        return f"{settings.describe('key')} holds no PEM private key"

    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        return f"{settings.describe('key')} does not belong to {settings.describe('cert')}"

    now = now or datetime.datetime.now(datetime.timezone.utc)
    if now < cert.not_valid_before_utc:
        return f"{settings.describe('cert')} is not valid yet: valid from {_date(cert.not_valid_before_utc)}"
    if now > cert.not_valid_after_utc:
        return f"{settings.describe('cert')} expired on {_date(cert.not_valid_after_utc)}: ask for a new one"

    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        return (
            f"{settings.describe('cert')} is not a client certificate "
            "(its extended key usage lacks clientAuth; is it the server's certificate?)"
        )

    issuers = [ca for ca in cas if ca.subject == cert.issuer]
    if not issuers:
        held = ", ".join(repr(ca.subject.rfc4514_string()) for ca in cas)
        return (
            f"{settings.describe('cert')} was issued by {cert.issuer.rfc4514_string()!r}, "
            f"not by the CA in {settings.describe('ca')} ({held}): "
            "the server accepts only certificates from its own CA"
        )
    for ca in issuers:
        try:
            cert.verify_directly_issued_by(ca)
            return None
        except (ValueError, TypeError, InvalidSignature):
            continue
    return (
        f"{settings.describe('cert')} names {cert.issuer.rfc4514_string()!r} as its issuer, but its "
        f"signature does not verify with the CA in {settings.describe('ca')} (a different CA of the same name?)"
    )


def server_rejected(settings: Settings, details: str) -> str | None:
    """The message when grpc's details say that jobctl rejected the server's certificate."""
    addr = settings.addr
    lowered = details.lower()
    if "hostname verification" in lowered:
        return (
            f"cannot connect to {addr}: the server's certificate is not valid for {host_of(addr)!r} "
            "(use a name or address it was issued for, e.g. localhost or 127.0.0.1)"
        )
    if "certificate_verify_failed" in lowered:
        reason = details.split("CERTIFICATE_VERIFY_FAILED:", 1)[-1].split(":")[0].strip()
        return (
            f"cannot connect to {addr}: the server's certificate does not verify with "
            f"{settings.describe('ca')} ({reason or 'verification failed'}): "
            "use the CA that issued the server's certificate"
        )
    return None


def explain_details(settings: Settings, details: str) -> str:
    """Read grpc's 'failed to connect' details once the client's files are known to be fine."""
    addr = settings.addr
    lowered = details.lower()
    if "connection refused" in lowered:
        return f"cannot connect to {addr}: connection refused (is jobworkerd running and listening there?)"
    if "dns resolution failed" in lowered or "name or service not known" in lowered:
        return f"cannot connect to {addr}: cannot resolve the host name"
    cause = last_error(details)
    return (
        f"cannot connect to {addr}: the server refused or is not reachable "
        f"(is jobworkerd running? does its CA match {_ca_option(settings)}?)"
        + (f" [{cause}]" if cause else "")
    )


def last_error(details: str) -> str:
    """'failed to connect ...; last error: UNAVAILABLE: ipv4:127.0.0.1:7443: Socket closed' -> 'Socket closed'."""
    _, found, cause = details.partition("last error: ")
    if not found:
        return ""
    parts = [p.strip() for p in cause.split(": ")]
    while parts and (parts[0].isupper() or parts[0].startswith(("ipv4:", "ipv6:", "unix:"))):
        parts.pop(0)
    return ": ".join(parts)


def host_of(addr: str) -> str:
    """'localhost:7443' -> 'localhost', '[::1]:7443' -> '::1', 'dns:///h:1' -> 'h'."""
    target = addr.rsplit("/", 1)[-1]
    host = target.rsplit(":", 1)[0] if target.count(":") == 1 or target.startswith("[") else target
    return host.strip("[]")


def _ca_option(settings: Settings) -> str:
    origin = settings.origin.get("ca")
    if origin == "--ca":
        return f"--ca {settings.ca}"
    return f"{settings.ca}" + (f" (from {origin})" if origin else "")


def _date(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
