import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jobworkerd.authz import (
    Identity, Role, check_access, check_run_as_group, identity_from_auth_context, list_owner, may_access, run_as_user,
)
from jobworkerd.config import RunAsConfig
from jobworkerd.errors import NotFound, PermissionDenied, Unauthenticated
from jobworkerd.worker.models import JobRecord, JobSpec, Limits

ALICE = Identity("alice", Role.USER)
BOB = Identity("bob", Role.USER)
ADMIN = Identity("root", Role.ADMIN)


def record(owner: str) -> JobRecord:
    return JobRecord(id="0123456789ab", owner=owner, spec=JobSpec(command="true"), limits=Limits())


def pem(attributes: list[x509.NameAttribute]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name(attributes)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_owner_and_admin_may_access_others_get_not_found():
    assert check_access(ALICE, record("alice")).owner == "alice"
    assert check_access(ADMIN, record("alice")).owner == "alice"
    with pytest.raises(NotFound, match="no job with id '0123456789ab'"):
        check_access(BOB, record("alice"))


def test_listing_scope():
    assert list_owner(ALICE) == "alice"
    assert list_owner(ADMIN) is None


def test_run_as_policy():
    policy = RunAsConfig(default_user="nobody", allowed_users=("nobody", "daemon"), admin_default_user="root")
    assert run_as_user(ALICE, "", policy) == "nobody"
    assert run_as_user(ALICE, "daemon", policy) == "daemon"
    assert run_as_user(ADMIN, "", policy) == "root"
    assert run_as_user(ADMIN, "daemon", policy) == "daemon"
    with pytest.raises(PermissionDenied, match=r"may run jobs only as: dynamic \(a uid of its own\), nobody, daemon; "
                                               r"not as 'root'"):
        run_as_user(ALICE, "root", policy)


def test_dynamic_is_the_users_default_and_always_theirs_to_name():
    policy = RunAsConfig()  # the shipped defaults
    assert (policy.default_user, policy.allowed_users, policy.admin_default_user) == ("dynamic", ("nobody",), "root")
    assert run_as_user(ALICE, "", policy) == "dynamic"
    assert run_as_user(ALICE, "dynamic", policy) == "dynamic"
    assert run_as_user(ALICE, "nobody", policy) == "nobody"
    # Not listed in allowed_users, still allowed; and named accounts only as listed.
    strict = RunAsConfig(default_user="nobody", allowed_users=())
    assert run_as_user(ALICE, "dynamic", strict) == "dynamic"
    for user in ("nobody", "daemon", "dynamic:61184", "61184"):
        with pytest.raises(PermissionDenied, match=r"may run jobs only as: dynamic \(a uid of its own\); not as"):
            run_as_user(ALICE, user, strict)


def test_admins_default_to_root_and_may_ask_for_their_own_dynamic_uid():
    policy = RunAsConfig()
    assert run_as_user(ADMIN, "", policy) == "root"
    assert run_as_user(ADMIN, "dynamic", policy) == "dynamic"
    assert run_as_user(ADMIN, "", RunAsConfig(admin_default_user="dynamic")) == "dynamic"


def test_a_group_with_a_dynamic_user_is_refused_to_users_and_allowed_to_admins():
    check_run_as_group(ALICE, "dynamic", "")
    for group in ("nogroup", "65534", "61184", "root"):
        with pytest.raises(PermissionDenied, match="may not name a group for a job run as 'dynamic'"):
            check_run_as_group(ALICE, "dynamic", group)
    check_run_as_group(ADMIN, "dynamic", "root")
    check_run_as_group(ALICE, "nobody", "nogroup")  # named accounts: their own groups, as before
    with pytest.raises(PermissionDenied, match="only in that user's own groups"):
        check_run_as_group(ALICE, "nobody", "root")


def test_root_is_refused_to_users_even_when_configured():
    policy = RunAsConfig(default_user="root", allowed_users=("root", "0"), admin_default_user="root")
    for user in ("", "root", "0"):
        with pytest.raises(PermissionDenied, match="UID 0"):
            run_as_user(ALICE, user, policy)


def test_identity_from_certificate():
    cert = pem([x509.NameAttribute(NameOID.COMMON_NAME, "alice"), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "user")])
    assert identity_from_auth_context({"x509_pem_cert": [cert]}) == ALICE
    admin = pem([x509.NameAttribute(NameOID.COMMON_NAME, "root"), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin")])
    assert identity_from_auth_context({"x509_pem_cert": [admin]}).is_admin


@pytest.mark.parametrize("attributes, message", [
    ([x509.NameAttribute(NameOID.COMMON_NAME, "eve")], "carries no role"),
    ([x509.NameAttribute(NameOID.COMMON_NAME, "eve"), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "root")],
     "carries no role"),
    ([x509.NameAttribute(NameOID.COMMON_NAME, "eve"), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin"),
      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "user")], "carries no role"),
    ([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin")], "exactly one common name"),
])
def test_bad_identities(attributes, message):
    with pytest.raises(Unauthenticated, match=message):
        identity_from_auth_context({"x509_pem_cert": [pem(attributes)]})


def test_no_certificate():
    with pytest.raises(Unauthenticated, match="no client certificate"):
        identity_from_auth_context({})


# -- ownership is by name and role --------------------------------------------------------------------------------

ALICE_ADMIN = Identity("alice", Role.ADMIN)


def test_an_admin_and_a_user_with_the_same_cn_are_two_owners():
    assert ALICE.owner == "alice"
    assert ALICE_ADMIN.owner == "admin:alice"
    assert list_owner(ALICE) == "alice"  # a user's listing and events: its own jobs only


def test_a_user_never_sees_the_jobs_of_an_admin_with_its_cn():
    admins_job = record(ALICE_ADMIN.owner)
    with pytest.raises(NotFound, match="no job with id '0123456789ab'"):  # as for an id that does not exist
        check_access(ALICE, admins_job)
    assert not may_access(ALICE, admins_job)
    assert may_access(ALICE, record(ALICE.owner))


def test_admins_still_see_every_job():
    for owner in ("alice", "admin:alice", "admin:root", "bob"):
        assert may_access(ALICE_ADMIN, record(owner))
        assert may_access(ADMIN, record(owner))


def test_a_user_certificate_whose_cn_takes_the_admin_prefix_is_refused():
    cert = pem([x509.NameAttribute(NameOID.COMMON_NAME, "admin:alice"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "user")])
    with pytest.raises(Unauthenticated, match="may not begin with 'admin:'"):
        identity_from_auth_context({"x509_pem_cert": [cert]})
    # Other CNs with a colon, or that merely resemble it, are ordinary users; an admin may be called anything.
    for name in ("Admin:alice", "alice:admin", "admin", "administrator"):
        cert = pem([x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "user")])
        assert identity_from_auth_context({"x509_pem_cert": [cert]}).owner == name
    cert = pem([x509.NameAttribute(NameOID.COMMON_NAME, "admin:x"), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin")])
    assert identity_from_auth_context({"x509_pem_cert": [cert]}).owner == "admin:admin:x"


def test_the_ca_and_the_daemon_reserve_the_same_prefix():
    from jobworkerd import ca
    from jobworkerd.worker.models import ADMIN_OWNER_PREFIX

    assert ca.RESERVED_USER_PREFIX == ADMIN_OWNER_PREFIX
