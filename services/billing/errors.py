"""Errors of billing, each with a stable code the gateway's table turns into a status.

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

from democratic_ai.contracts import ErrorCode, PlatformError

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


class BillingError(PlatformError):
    """The root of billing's errors."""


class NotFound(BillingError):
    code = ErrorCode.NOT_FOUND


class Conflict(BillingError):
    code = ErrorCode.CONFLICT


class Invalid(BillingError):
    code = ErrorCode.VALIDATION_FAILED


class UsageUnavailable(BillingError):
    code = ErrorCode.NOT_READY


class StripeDisabled(BillingError):
    code = ErrorCode.PAYMENT_PROVIDER_UNAVAILABLE


class StripeFailed(BillingError):
    code = ErrorCode.PAYMENT_PROVIDER_ERROR


class BadSignature(BillingError):
    code = ErrorCode.BAD_REQUEST
