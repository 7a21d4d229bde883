"""Errors of the SDK.

DaiError
├── CallError          a call answered with an error: ``code``, ``message``, ``details``
├── SchemaError        a capability declared a schema the SDK cannot use, or one its handler's
│                      parameters disagree with (raised when the module is constructed)
├── CredentialError    a module credential that is malformed, or is another module's
└── TenantError        a module named a tenant it may not act for
"""

from __future__ import annotations

from typing import Any

__all__ = ["CallError", "CredentialError", "DaiError", "SchemaError", "TenantError"]


class DaiError(Exception):
    """Root of every error the SDK raises."""


class CallError(DaiError):
    """A capability call failed; ``code`` is one of :class:`democratic_ai.contracts.ErrorCode`."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}


class SchemaError(DaiError, TypeError):
    """A schema that is neither a JSON Schema dict, a msgspec Struct nor a pydantic model, or that its
    handler cannot take (see :mod:`democratic_ai.sdk.signatures`)."""


class CredentialError(DaiError, ValueError):
    """A module credential that is not ``dai-module.<tenant>.<module_id>.<secret>``, or names another module."""


class TenantError(DaiError, ValueError):
    """A module owned by one tenant named another one for a call or an event (see :mod:`.tenancy`)."""
