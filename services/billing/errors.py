"""Errors of billing, each with a stable code the gateway turns into a status.

    BillingError
    ├── NotFound              no such invoice or subscription — in the caller's tenant (404)
    ├── Conflict              already subscribed, not subscribed, a concurrent change won (409)
    ├── Invalid               an unknown plan, interval, time zone or month; a month not yet over (422)
    ├── UsageUnavailable      the usage read model is missing or behind (503)
    ├── StripeDisabled        a Stripe operation while STRIPE_API_KEY is unset (503)
    ├── StripeFailed          Stripe answered with an error or could not be reached (502)
    └── BadSignature          a webhook whose Stripe-Signature does not verify (400)
"""

from __future__ import annotations

from typing import Any, ClassVar

from democratic_ai.contracts import ErrorCode

__all__ = [
    "BadSignature",
    "BillingError",
    "Conflict",
    "Invalid",
    "NotFound",
    "StripeDisabled",
    "StripeFailed",
    "UsageUnavailable",
]


class BillingError(Exception):
    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(BillingError):
    code, status = ErrorCode.NOT_FOUND, 404


class Conflict(BillingError):
    code, status = ErrorCode.CONFLICT, 409


class Invalid(BillingError):
    code, status = ErrorCode.VALIDATION_FAILED, 422


class UsageUnavailable(BillingError):
    code, status = ErrorCode.NOT_READY, 503


class StripeDisabled(BillingError):
    code, status = ErrorCode.PAYMENT_PROVIDER_UNAVAILABLE, 503


class StripeFailed(BillingError):
    code, status = ErrorCode.PAYMENT_PROVIDER_ERROR, 502


class BadSignature(BillingError):
    code, status = ErrorCode.BAD_REQUEST, 400
