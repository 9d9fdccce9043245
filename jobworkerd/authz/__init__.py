"""Authentication (identity from the client certificate) and authorization (a pure policy)."""

from .identity import Identity, Role, identity_from_auth_context, identity_from_pem
from .policy import check_access, check_run_as_group, list_owner, may_access, run_as_user

__all__ = [
    "Identity", "Role", "identity_from_auth_context", "identity_from_pem",
    "check_access", "check_run_as_group", "list_owner", "may_access", "run_as_user",
]
