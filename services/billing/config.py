"""Billing settings: the tax rate, when a month may be closed, and Stripe (off unless configured)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

__all__ = ["BillingConfig", "StripeConfig"]


@dataclass(frozen=True, slots=True)
class StripeConfig:
    api_key: str
    webhook_secret: str = ""  # without it every webhook is refused
    api_base: str | None = None  # another Stripe API endpoint (stripe-mock, a test server)
    success_url: str = "http://127.0.0.1:8080/v1/billing/plan"  # where Checkout sends the tenant back
    cancel_url: str = "http://127.0.0.1:8080/v1/billing/plan"
    webhook_tolerance: int = 300  # seconds a signed webhook stays acceptable (replay window)

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("StripeConfig needs an API key; leave Stripe unconfigured to turn it off.")
        if self.webhook_tolerance <= 0:
            raise ValueError("webhook_tolerance must be a positive number of seconds.")


@dataclass(frozen=True, slots=True)
class BillingConfig:
    # Japanese consumption tax (消費税), 10 %; rounded down per invoice (services/billing/money.py).
    tax_rate: Decimal = Decimal("0.10")
    # A month is closed only this long after it ended, so that usage events still in flight
    # (metering batches them for seconds, and recovers a crashed gateway's on restart) are in.
    close_grace_seconds: int = 3600
    stripe: StripeConfig | None = None

    def __post_init__(self) -> None:
        if not Decimal(0) <= self.tax_rate < Decimal(1):
            raise ValueError(f"tax_rate must be at least 0 and below 1 (0.10 is 10 %), not {self.tax_rate}.")
        if self.close_grace_seconds < 0:
            raise ValueError("close_grace_seconds must not be negative.")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BillingConfig:
        """``DAI_TAX_RATE``, ``DAI_BILLING_GRACE_SECONDS``; Stripe when ``STRIPE_API_KEY`` is set
        (with ``STRIPE_WEBHOOK_SECRET``, ``STRIPE_API_BASE``, ``DAI_BILLING_SUCCESS_URL``,
        ``DAI_BILLING_CANCEL_URL``)."""
        env = os.environ if env is None else env
        try:
            tax_rate = Decimal(env.get("DAI_TAX_RATE", "0.10"))
        except InvalidOperation:
            raise ValueError(f"DAI_TAX_RATE must be a decimal such as 0.10, not {env['DAI_TAX_RATE']!r}.") from None
        stripe = None
        if env.get("STRIPE_API_KEY"):
            defaults = StripeConfig(api_key=env["STRIPE_API_KEY"])
            stripe = StripeConfig(
                api_key=env["STRIPE_API_KEY"],
                webhook_secret=env.get("STRIPE_WEBHOOK_SECRET", ""),
                api_base=env.get("STRIPE_API_BASE") or None,
                success_url=env.get("DAI_BILLING_SUCCESS_URL", defaults.success_url),
                cancel_url=env.get("DAI_BILLING_CANCEL_URL", defaults.cancel_url),
            )
        return cls(tax_rate=tax_rate, close_grace_seconds=int(env.get("DAI_BILLING_GRACE_SECONDS", "3600")),
                   stripe=stripe)
