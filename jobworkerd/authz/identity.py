"""Who is calling: the verified TLS client certificate's CN is the user name, its OU the role."""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..errors import Unauthenticated


class Role(str, enum.Enum):
    ADMIN = "admin"
    USER = "user"


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@functools.lru_cache(maxsize=1024)
def identity_from_pem(pem: bytes) -> Identity:
    """Parse the (already verified) client certificate. Cached: the same client presents the same PEM."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise Unauthenticated(f"unreadable client certificate: {exc}") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(names) != 1 or not str(names[0].value):
        raise Unauthenticated("the client certificate must carry exactly one common name (CN = user name)")
    name = str(names[0].value)
    roles = {str(u.value) for u in units} & {r.value for r in Role}
    if len(roles) != 1:
        raise Unauthenticated(
            f"the client certificate of {name!r} carries no role: its OU must be 'admin' or 'user' "
            "(issue one with `jobworkerd ca issue --role ...`)"
        )
    return Identity(name, Role(roles.pop()))


def identity_from_auth_context(auth_context: dict[str, list[bytes]]) -> Identity:
    """From grpc's auth_context(): the peer certificate the TLS layer verified against our CA."""
    pems = auth_context.get("x509_pem_cert") or []
    if not pems:
        raise Unauthenticated("no client certificate: connect with a certificate issued by this server's CA")
    return identity_from_pem(pems[0])
