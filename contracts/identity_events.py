"""Events of the IDENTITY stream: tenants, users, API keys, sessions and token revocations.

Subjects name the aggregate: ``iam.<tenant>.<aggregate>.<id>``.

    iam.<t>.tenant.<t>             tenant.created, tenant.suspended
    iam.<t>.email.<sha256(email)>  user.registered — one per e-mail and tenant, ever (unique e-mail)
    iam.<t>.user.<user id>         user.role_changed, user.deactivated, user.password_changed
    iam.<t>.api_key.<key id>       api_key.issued, api_key.revoked
    iam.<t>.session.<family id>    session.started, session.refreshed, session.revoked
    iam.<t>.token.<jti>            token.revoked
    iam.<t>.login.<sha256(email)>  login.attempted (success or failure; feeds login throttling)

Commands append with ``Nats-Expected-Last-Subject-Sequence`` on the aggregate's subject, so
two concurrent commands on one aggregate cannot both succeed. Secrets never enter the log:
passwords as argon2id hashes, API keys and refresh tokens as SHA-256 of 256-bit random values.
Every event carries :class:`Meta` (who, from where) for the audit log. Fields are typed with
the limits of the read models (:mod:`.fields`); :func:`encode_event` refuses an event that
breaks them with :class:`~.fields.EventRejected`, so no command appends what a reader refuses.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from .fields import Email, Id, Name, PositiveInt32, TenantId, Text, checked_encoder

__all__ = [
    "AccessTokenRevoked",
    "ApiKeyIssued",
    "ApiKeyRevoked",
    "IdentityEvent",
    "LoginAttempted",
    "Meta",
    "PasswordChanged",
    "SessionRefreshed",
    "SessionRevoked",
    "SessionStarted",
    "TenantCreated",
    "TenantSuspended",
    "UserDeactivated",
    "UserRegistered",
    "UserRoleChanged",
    "decode_event",
    "encode_event",
]


class Meta(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    actor: Id = "system"  # "user:<id>", "api_key:<id>" or "system"
    ip: Id = ""
    user_agent: Text = ""


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    tenant_id: TenantId
    meta: Meta


class TenantCreated(_Event, tag="tenant.created"):
    name: Name


class TenantSuspended(_Event, tag="tenant.suspended"):
    reason: Text = ""


class UserRegistered(_Event, tag="user.registered"):
    user_id: Id
    email: Email
    role: Id
    password_hash: Text


class UserRoleChanged(_Event, tag="user.role_changed"):
    user_id: Id
    role: Id


class UserDeactivated(_Event, tag="user.deactivated"):
    user_id: Id


class PasswordChanged(_Event, tag="user.password_changed"):
    user_id: Id
    password_hash: Text
    rehash: bool = False  # True when only the hashing parameters changed, at login


class ApiKeyIssued(_Event, tag="api_key.issued"):
    key_id: Id
    prefix: Id
    sha256: Id
    role: Id  # the role of the key's owner when issued ("super_admin" for the bootstrap key)
    user_id: Id = ""  # owner; empty for the bootstrap key
    name: Name = ""
    scopes: tuple[Id, ...] = ()  # empty: every permission of the owner
    expires_at: datetime | None = None
    rate_limit: PositiveInt32 | None = None  # calls per minute, enforced by metering; api_keys.rate_limit is integer


class ApiKeyRevoked(_Event, tag="api_key.revoked"):
    key_id: Id


class SessionStarted(_Event, tag="session.started"):
    family_id: Id
    user_id: Id
    refresh_sha256: Id
    expires_at: datetime


class SessionRefreshed(_Event, tag="session.refreshed"):
    family_id: Id
    refresh_sha256: Id


class SessionRevoked(_Event, tag="session.revoked"):
    family_id: Id
    reason: Id  # "logout", "reuse_detected", "user_deactivated"


class AccessTokenRevoked(_Event, tag="token.revoked"):
    jti: Id
    expires_at: datetime


class LoginAttempted(_Event, tag="login.attempted"):
    email_sha256: Id
    success: bool
    user_id: Id = ""


IdentityEvent = (
    TenantCreated
    | TenantSuspended
    | UserRegistered
    | UserRoleChanged
    | UserDeactivated
    | PasswordChanged
    | ApiKeyIssued
    | ApiKeyRevoked
    | SessionStarted
    | SessionRefreshed
    | SessionRevoked
    | AccessTokenRevoked
    | LoginAttempted
)

_decoder = msgspec.json.Decoder(IdentityEvent)
encode_event = checked_encoder(IdentityEvent)


def decode_event(data: bytes) -> IdentityEvent:
    """Decode an IDENTITY event; raises ``msgspec.DecodeError`` (``ValidationError``, its
    subclass, for valid JSON of the wrong shape) for a malformed one."""
    return _decoder.decode(data)
