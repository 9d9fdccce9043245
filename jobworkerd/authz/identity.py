"""Who is calling: the verified TLS client certificate's CN is the user name, its OU the role.

Jobs belong to the name *and* the role (Identity.owner): a user's jobs to its CN, an admin's to "admin:"
and its CN. A user certificate whose CN begins with "admin:" is refused, so it can never own, see or
control an admin's jobs by its name.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..errors import Unauthenticated
from ..worker.models import ADMIN_OWNER_PREFIX


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

    @property
    def owner(self) -> str:
        """The owner of the jobs it starts (JobRecord.owner): an admin "alice" and a user "alice" are two."""
        return ADMIN_OWNER_PREFIX + self.name if self.is_admin else self.name


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
    role = Role(roles.pop())
    if role is Role.USER and name.startswith(ADMIN_OWNER_PREFIX):
        raise Unauthenticated(
            f"the user certificate of {name!r} is refused: a user's CN may not begin with "
            f"{ADMIN_OWNER_PREFIX!r}, which names admins' jobs (issue it under another name)"
        )
    return Identity(name, role)


def identity_from_auth_context(auth_context: dict[str, list[bytes]]) -> Identity:
    """From grpc's auth_context(): the peer certificate the TLS layer verified against our CA."""
    pems = auth_context.get("x509_pem_cert") or []
    if not pems:
        raise Unauthenticated("no client certificate: connect with a certificate issued by this server's CA")
    return identity_from_pem(pems[0])
