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
passwords as argon2id hashes sealed with the user's data key (``dai-se1.…``, see
``services/identity/sealing.py``; events older than sealing hold the hash in clear), API keys
and refresh tokens as SHA-256 of 256-bit random values.
Every event carries :class:`Meta` (who, from where) for the audit log.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

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
    actor: str = "system"  # "user:<id>", "api_key:<id>" or "system"
    ip: str = ""
    user_agent: str = ""


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    tenant_id: str
    meta: Meta


class TenantCreated(_Event, tag="tenant.created"):
    name: str


class TenantSuspended(_Event, tag="tenant.suspended"):
    reason: str = ""


class UserRegistered(_Event, tag="user.registered"):
    user_id: str
    email: str
    role: str
    password_hash: str  # sealed (``dai-se1.…``); in clear only in events written before sealing


class UserRoleChanged(_Event, tag="user.role_changed"):
    user_id: str
    role: str


class UserDeactivated(_Event, tag="user.deactivated"):
    user_id: str


class PasswordChanged(_Event, tag="user.password_changed"):
    user_id: str
    password_hash: str  # sealed (``dai-se1.…``); in clear only in events written before sealing
    rehash: bool = False  # True when only the hashing or its sealing changed, at login


class ApiKeyIssued(_Event, tag="api_key.issued"):
    key_id: str
    prefix: str
    sha256: str
    role: str  # the role of the key's owner when issued ("super_admin" for the bootstrap key)
    user_id: str = ""  # owner; empty for the bootstrap key
    name: str = ""
    scopes: tuple[str, ...] = ()  # empty: every permission of the owner
    expires_at: datetime | None = None
    rate_limit: int | None = None  # calls per minute, enforced by metering


class ApiKeyRevoked(_Event, tag="api_key.revoked"):
    key_id: str


class SessionStarted(_Event, tag="session.started"):
    family_id: str
    user_id: str
    refresh_sha256: str
    expires_at: datetime


class SessionRefreshed(_Event, tag="session.refreshed"):
    family_id: str
    refresh_sha256: str


class SessionRevoked(_Event, tag="session.revoked"):
    family_id: str
    reason: str  # "logout", "reuse_detected", "user_deactivated"


class AccessTokenRevoked(_Event, tag="token.revoked"):
    jti: str
    expires_at: datetime


class LoginAttempted(_Event, tag="login.attempted"):
    email_sha256: str
    success: bool
    user_id: str = ""


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
encode_event = msgspec.json.Encoder().encode


def decode_event(data: bytes) -> IdentityEvent:
    """Decode an IDENTITY event; raises ``msgspec.ValidationError`` for a malformed one."""
    return _decoder.decode(data)
