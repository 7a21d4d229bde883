"""Identity as events: tenants, users, roles, API keys, sessions and JWTs.

Commands (:class:`IdentityService`) append IDENTITY events; every gateway folds them into an
:class:`IdentityIndex` and authenticates from it without touching the database.
"""

from __future__ import annotations

from .bootstrap import ensure_bootstrap
from .errors import Conflict, Forbidden, IdentityError, Invalid, NotFound, Throttled, Unauthenticated
from .index import IdentityIndex
from .permissions import ROLE_PERMISSIONS, Role, allows, permissions_of
from .principal import Principal, authenticate
from .service import IdentityService, IssuedKey, Tokens
from .tokens import KeyRing, rotate_signing_key

__all__ = [
    "ROLE_PERMISSIONS",
    "Conflict",
    "Forbidden",
    "IdentityError",
    "IdentityIndex",
    "IdentityService",
    "Invalid",
    "IssuedKey",
    "KeyRing",
    "NotFound",
    "Principal",
    "Role",
    "Throttled",
    "Tokens",
    "Unauthenticated",
    "allows",
    "authenticate",
    "ensure_bootstrap",
    "permissions_of",
    "rotate_signing_key",
]
