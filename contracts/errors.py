"""Stable error codes, and the root of every error that carries one.

Clients switch on these strings, so a code is never renamed or reused. The HTTP status that
goes with each code is the gateway's business (``services/gateway/errors.py``, its ``STATUS``
table), not the contract's and not the error's: no error below carries a status.

    PlatformError                       code, message, details
    ├── IdentityError                   services/identity/errors.py
    ├── BillingError                    services/billing/errors.py
    ├── MeteringError                   services/metering/errors.py
    ├── ProjectionError                 projections/errors.py
    └── ApiError                        services/gateway/errors.py: the edge's own, its code per instance
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = ["ErrorCode", "PlatformError"]


class ErrorCode(StrEnum):
    VALIDATION_FAILED = "VALIDATION_FAILED"  # input or output does not match its schema
    BAD_REQUEST = "BAD_REQUEST"  # malformed JSON, wrong content type, bad parameter
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    NOT_ACCEPTABLE = "NOT_ACCEPTABLE"  # no format the caller accepts (Accept, ?format=)
    UNAUTHENTICATED = "UNAUTHENTICATED"  # no or bad credential
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"  # no such HTTP route
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    CONFLICT = "CONFLICT"  # e.g. the e-mail is taken, the key is already revoked
    CAPABILITY_NOT_FOUND = "CAPABILITY_NOT_FOUND"  # no module ever registered it
    CAPABILITY_UNAVAILABLE = "CAPABILITY_UNAVAILABLE"  # registered, but no module serves it now
    MODULE_NOT_FOUND = "MODULE_NOT_FOUND"  # direct call to a module that is not there
    MODULE_UNAVAILABLE = "MODULE_UNAVAILABLE"  # the instance running the call stopped heartbeating
    TIMEOUT = "TIMEOUT"  # the call's ttl passed
    CANCELLED = "CANCELLED"  # the caller cancelled the call (or hung up)
    MODULE_ERROR = "MODULE_ERROR"  # the handler raised
    RATE_LIMITED = "RATE_LIMITED"
    NOT_READY = "NOT_READY"
    PAYMENT_PROVIDER_UNAVAILABLE = "PAYMENT_PROVIDER_UNAVAILABLE"  # Stripe is off (no STRIPE_API_KEY)
    PAYMENT_PROVIDER_ERROR = "PAYMENT_PROVIDER_ERROR"  # Stripe answered with an error or not at all
    INTERNAL = "INTERNAL"  # a bug of ours; logged with its traceback


class PlatformError(Exception):
    """An error with a stable :class:`ErrorCode`, a message for people and details for programs.

    A subclass fixes its ``code``; the details are keyword arguments, answered as they are
    (``{"error": {"code", "message", "details"}}`` at the edge).
    """

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, /, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
