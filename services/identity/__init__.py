"""Identity as events: tenants, users, roles, API keys, sessions, JWTs and module credentials.

Commands (:class:`IdentityService`) append IDENTITY events; every gateway folds them into an
:class:`IdentityIndex` and authenticates from it without touching the database. Secrets at rest
(JWT signing keys, password hashes) are sealed under the platform's key-encryption key
(:mod:`.sealing`, :class:`UserKeyStore`).
"""

from __future__ import annotations

from .bootstrap import ensure_bootstrap
from .errors import Conflict, Forbidden, IdentityError, Invalid, NotFound, Throttled, Unauthenticated, Unavailable
from .index import IdentityIndex, ModuleState
from .module_credentials import new_module_credential, parse_module_credential
from .permissions import ROLE_PERMISSIONS, Role, allows, permissions_of
from .principal import Principal, authenticate, expiry_of, recheck
from .sealing import CannotUnseal, KekUnavailable, KeyEncryptionKey, SealingError, generate_kek_file, load_kek
from .service import IdentityService, IssuedKey, ModuleCredential, Tokens
from .tokens import KeyRing, check_kek, rotate_signing_key, signing_key_bucket
from .user_keys import UserKeyStore, user_key_bucket

__all__ = [
    "ROLE_PERMISSIONS",
    "CannotUnseal",
    "Conflict",
    "Forbidden",
    "IdentityError",
    "IdentityIndex",
    "IdentityService",
    "Invalid",
    "IssuedKey",
    "KekUnavailable",
    "KeyEncryptionKey",
    "KeyRing",
    "ModuleCredential",
    "ModuleState",
    "NotFound",
    "Principal",
    "Role",
    "SealingError",
    "Throttled",
    "Tokens",
    "Unauthenticated",
    "Unavailable",
    "UserKeyStore",
    "allows",
    "authenticate",
    "check_kek",
    "ensure_bootstrap",
    "expiry_of",
    "generate_kek_file",
    "load_kek",
    "new_module_credential",
    "parse_module_credential",
    "permissions_of",
    "recheck",
    "rotate_signing_key",
    "signing_key_bucket",
    "user_key_bucket",
]
