"""Events of the IDENTITY stream: tenants, users, API keys, sessions and token revocations.

Subjects name the aggregate: ``iam.<tenant>.<aggregate>.<id>`` (:func:`.subjects.identity_subject`).

    iam.<t>.tenant.<t>             tenant.created, tenant.updated, tenant.suspended, tenant.reinstated
    iam.<t>.email.<sha256(email)>  user.registered — one per e-mail and tenant, ever (unique e-mail)
    iam.<t>.user.<user id>         user.role_changed, user.deactivated, user.password_changed
    iam.<t>.api_key.<key id>       api_key.issued, api_key.revoked
    iam.<t>.toolset.<name>         toolset.defined, toolset.deleted — a named set of capabilities keys may call
    iam.<t>.session.<family id>    session.started, session.refreshed, session.revoked
    iam.<t>.token.<jti>            token.revoked
    iam.<t>.login.<sha256(email)>  login.attempted (success or failure; feeds login throttling)
    iam.<t>.module.<module id>     module.registered, module.updated, module.credential_rotated,
                                   module.revoked — a module id is registered once, ever, platform-wide

Commands append with ``Nats-Expected-Last-Subject-Sequence`` on the aggregate's subject, so
two concurrent commands on one aggregate cannot both succeed. Secrets never enter the log:
passwords as argon2id hashes sealed with the user's data key (``dai-se1.…``, see
``services/identity/sealing.py``; events older than sealing hold the hash in clear), API keys,
refresh tokens and module credentials as SHA-256 of 256-bit random values.
Every event carries :class:`~.envelope.Meta` (who, from where) for the audit log. Fields are typed with
the limits of the read models (:mod:`.fields`); :func:`encode_event` refuses an event that
breaks them with :class:`~.fields.EventRejected`, so no command appends what a reader refuses.

Module events check their names when built *and* when decoded (``__post_init__``): the module
id and capabilities become bus permissions, so an event carrying a wildcard or a malformed name
is refused by every reader, whoever managed to append it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

import msgspec

from .envelope import Meta
from .fields import Email, Id, Name, PositiveInt32, TenantId, Text, checked_encoder
from .subjects import validate_capability, validate_token
from .toolsets import check_toolset

__all__ = [
    "MAX_MODULE_CAPABILITIES",
    "MAX_MODULE_NAME_LENGTH",
    "AccessTokenRevoked",
    "ApiKeyIssued",
    "ApiKeyRevoked",
    "IdentityEvent",
    "LoginAttempted",
    "ModuleCredentialRotated",
    "ModuleRegistered",
    "ModuleRevoked",
    "ModuleUpdated",
    "PasswordChanged",
    "SessionRefreshed",
    "SessionRevoked",
    "SessionStarted",
    "TenantCreated",
    "TenantReinstated",
    "TenantSuspended",
    "TenantUpdated",
    "ToolsetDefined",
    "ToolsetDeleted",
    "UserDeactivated",
    "UserRegistered",
    "UserRoleChanged",
    "check_module_capabilities",
    "check_module_name",
    "decode_event",
    "encode_event",
]

MAX_MODULE_NAME_LENGTH = 200
MAX_MODULE_CAPABILITIES = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # C0, DEL, C1 and lone surrogates


def check_module_name(name: str) -> str:
    """``name`` if it may name a module: at most 200 characters, no control characters; else ``ValueError``."""
    if len(name) > MAX_MODULE_NAME_LENGTH:
        raise ValueError(f"name is longer than {MAX_MODULE_NAME_LENGTH} characters")
    if _CONTROL.search(name):
        raise ValueError("name must not contain control characters")
    return name


def check_module_capabilities(capabilities: Iterable[str]) -> tuple[str, ...]:
    """``capabilities`` as a tuple if each is a capability name and there are at most 64; else ``ValueError``."""
    names = tuple(capabilities)
    if len(names) > MAX_MODULE_CAPABILITIES:
        raise ValueError(f"a module registers at most {MAX_MODULE_CAPABILITIES} capabilities")
    for name in names:
        validate_capability(name)
    return names


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    tenant_id: TenantId
    meta: Meta


class TenantCreated(_Event, tag="tenant.created", frozen=True):
    name: Name


class TenantUpdated(_Event, tag="tenant.updated", frozen=True):
    """A new name for the tenant (its id never changes)."""

    name: Name


class TenantSuspended(_Event, tag="tenant.suspended", frozen=True):
    """Every credential of the tenant is refused (calls, logins, refreshes, modules) until reinstated."""

    reason: Text = ""


class TenantReinstated(_Event, tag="tenant.reinstated", frozen=True):
    """A suspended tenant's credentials work again; nothing was revoked by the suspension."""

    reason: Text = ""


class UserRegistered(_Event, tag="user.registered", frozen=True):
    user_id: Id
    email: Email
    role: Id
    password_hash: Text  # sealed (``dai-se1.…``); in clear only in events written before sealing


class UserRoleChanged(_Event, tag="user.role_changed", frozen=True):
    user_id: Id
    role: Id


class UserDeactivated(_Event, tag="user.deactivated", frozen=True):
    user_id: Id


class PasswordChanged(_Event, tag="user.password_changed", frozen=True):
    user_id: Id
    password_hash: Text  # sealed (``dai-se1.…``); in clear only in events written before sealing
    rehash: bool = False  # True when only the hashing or its sealing changed, at login


class ApiKeyIssued(_Event, tag="api_key.issued", frozen=True):
    key_id: Id
    prefix: Id
    sha256: Id
    role: Id  # the role of the key's owner when issued ("super_admin" for the bootstrap key)
    user_id: Id = ""  # owner; empty for the bootstrap key
    name: Name = ""
    # Empty: every permission of the owner — only the bootstrap key and keys issued before keys
    # got default scopes; the identity service never issues an empty set any more.
    scopes: tuple[Id, ...] = ()
    expires_at: datetime | None = None
    rate_limit: PositiveInt32 | None = None  # calls per minute, enforced by metering; api_keys.rate_limit is integer
    # The key's toolset (contracts/toolsets.py): what it may call; empty, every capability.
    capabilities: tuple[str, ...] = ()
    toolset: Id = ""  # or the name of one of its tenant's toolsets (ToolsetDefined), followed as it changes

    def __post_init__(self) -> None:
        check_toolset(self.capabilities)
        if self.toolset:
            validate_token(self.toolset, "toolset")
            if self.capabilities:
                raise ValueError("a key names its capabilities or a toolset, not both")


class ToolsetDefined(_Event, frozen=True, tag="toolset.defined"):
    """A named toolset of the tenant (defined anew or replaced): its keys may call ``capabilities``."""

    name: Id
    capabilities: tuple[str, ...]

    def __post_init__(self) -> None:
        validate_token(self.name, "toolset")
        if not check_toolset(self.capabilities):
            raise ValueError("a toolset names at least one capability")


class ToolsetDeleted(_Event, frozen=True, tag="toolset.deleted"):
    """The named toolset is gone; a key issued with it is refused from then on."""

    name: Id

    def __post_init__(self) -> None:
        validate_token(self.name, "toolset")


class ApiKeyRevoked(_Event, tag="api_key.revoked", frozen=True):
    key_id: Id


class SessionStarted(_Event, tag="session.started", frozen=True):
    family_id: Id
    user_id: Id
    refresh_sha256: Id
    expires_at: datetime


class SessionRefreshed(_Event, tag="session.refreshed", frozen=True):
    family_id: Id
    refresh_sha256: Id


class SessionRevoked(_Event, tag="session.revoked", frozen=True):
    """Ends a session: its refresh tokens, and every access token whose ``sid`` names it, are refused."""

    family_id: Id
    reason: Id  # "logout", "reuse_detected", "user_deactivated", "password_changed"


class AccessTokenRevoked(_Event, tag="token.revoked", frozen=True):
    jti: Id
    expires_at: datetime


class LoginAttempted(_Event, tag="login.attempted", frozen=True):
    email_sha256: Id
    success: bool
    user_id: Id = ""


class _ModuleEvent(_Event, frozen=True, kw_only=True):
    module_id: str

    def __post_init__(self) -> None:
        validate_token(self.tenant_id, "tenant")
        validate_token(self.module_id, "module_id")


class ModuleRegistered(_ModuleEvent, tag="module.registered", frozen=True):
    """A module's registration by a user of its tenant; the credential itself is never stored."""

    owner_user_id: str  # empty when an owner-less (bootstrap) key registered it
    credential_sha256: str
    credential_prefix: str  # "dai-module.<tenant>.<module id>." and the secret's first characters
    name: str = ""
    capabilities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_module_name(self.name)
        check_module_capabilities(self.capabilities)


class ModuleUpdated(_ModuleEvent, tag="module.updated", frozen=True):
    """A change of name and/or capabilities; a field left ``None`` keeps its value."""

    name: str | None = None
    capabilities: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name is not None:
            check_module_name(self.name)
        if self.capabilities is not None:
            check_module_capabilities(self.capabilities)


class ModuleCredentialRotated(_ModuleEvent, tag="module.credential_rotated", frozen=True):
    """A new credential replaces the old one, which is refused from now on."""

    credential_sha256: str
    credential_prefix: str


class ModuleRevoked(_ModuleEvent, tag="module.revoked", frozen=True):
    """The module's credential is refused from now on; the module id stays taken."""


IdentityEvent = (
    TenantCreated
    | TenantUpdated
    | TenantSuspended
    | TenantReinstated
    | UserRegistered
    | UserRoleChanged
    | UserDeactivated
    | PasswordChanged
    | ApiKeyIssued
    | ApiKeyRevoked
    | ToolsetDefined
    | ToolsetDeleted
    | SessionStarted
    | SessionRefreshed
    | SessionRevoked
    | AccessTokenRevoked
    | LoginAttempted
    | ModuleRegistered
    | ModuleUpdated
    | ModuleCredentialRotated
    | ModuleRevoked
)

_decoder = msgspec.json.Decoder(IdentityEvent)
encode_event = checked_encoder(IdentityEvent)


def decode_event(data: bytes) -> IdentityEvent:
    """Decode an IDENTITY event; raises ``msgspec.DecodeError`` (``ValidationError``, its
    subclass, for valid JSON of the wrong shape) for a malformed one."""
    return _decoder.decode(data)
