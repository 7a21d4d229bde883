"""Identity as events: tenants, users, roles, API keys, sessions, JWTs and module credentials.

Commands (:class:`IdentityService`) append IDENTITY events; every gateway folds them into an
:class:`IdentityIndex` and authenticates from it without touching the database.
"""

from __future__ import annotations

from .bootstrap import ensure_bootstrap
from .errors import Conflict, Forbidden, IdentityError, Invalid, NotFound, Throttled, Unauthenticated
from .index import IdentityIndex, ModuleState
from .module_credentials import new_module_credential, parse_module_credential
from .permissions import ROLE_PERMISSIONS, Role, allows, permissions_of
from .principal import Principal, authenticate
from .service import IdentityService, IssuedKey, ModuleCredential, Tokens
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
    "ModuleCredential",
    "ModuleState",
    "NotFound",
    "Principal",
    "Role",
    "Throttled",
    "Tokens",
    "Unauthenticated",
    "allows",
    "authenticate",
    "ensure_bootstrap",
    "new_module_credential",
    "parse_module_credential",
    "permissions_of",
    "rotate_signing_key",
]
