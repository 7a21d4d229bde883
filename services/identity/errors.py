"""Errors of the identity commands, each with a stable code the gateway's table turns into a status.

IdentityError
├── Unauthenticated   bad credentials, expired or revoked tokens (401)
├── Forbidden         authenticated, but not allowed (403)
├── NotFound          no such tenant, user or key — in the caller's tenant (404)
├── Conflict          the e-mail is taken, the key already revoked, a concurrent change (409)
├── Invalid           input that breaks a rule, e.g. the password policy (422)
├── Throttled         too many failed logins (429)
└── Unavailable       the gateway cannot do it now, e.g. cannot open its password store (503)
"""

from __future__ import annotations

from typing import Any

from democratic_ai.contracts import ErrorCode, PlatformError

__all__ = [
    "Conflict",
    "Forbidden",
    "IdentityError",
    "Invalid",
    "NotFound",
    "Throttled",
    "Unauthenticated",
    "Unavailable",
]


class IdentityError(PlatformError):
    """The root of identity's errors."""


class Unauthenticated(IdentityError):
    code = ErrorCode.UNAUTHENTICATED


class Forbidden(IdentityError):
    code = ErrorCode.FORBIDDEN


class NotFound(IdentityError):
    code = ErrorCode.NOT_FOUND


class Conflict(IdentityError):
    code = ErrorCode.CONFLICT


class Invalid(IdentityError):
    code = ErrorCode.VALIDATION_FAILED


class Unavailable(IdentityError):
    code = ErrorCode.NOT_READY


class Throttled(IdentityError):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, retry_after: int, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after
