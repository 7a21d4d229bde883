"""Billing settings: the tax rate, when a month may be closed, the seller, and Stripe (off
unless configured).

Every setting is checked when a process starts (:meth:`BillingConfig.from_env`,
:func:`check_environment`): a wrong one is an :class:`InvalidBillingConfig` whose message is
one sentence naming the variable, which ``dai`` prints as its one line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from democratic_ai.contracts.billing_events import Seller
from democratic_ai.services.plans import InvalidPlans, load_plans

from .seller import DEFAULT_SELLER, InvalidSeller, check_seller, load_seller

__all__ = ["BillingConfig", "InvalidBillingConfig", "StripeConfig", "check_environment"]


class InvalidBillingConfig(ValueError):
    """A billing setting (variable, plans, pricing or seller file) is wrong; the message says which."""


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
    seller: Seller = field(default=DEFAULT_SELLER)  # printed on every invoice, recorded in its event

    def __post_init__(self) -> None:
        if not self.tax_rate.is_finite() or not Decimal(0) <= self.tax_rate < Decimal(1):
            raise InvalidBillingConfig(
                f"DAI_TAX_RATE must be at least 0 and below 1 (0.10 is 10 %), not {self.tax_rate}."
            )
        if self.close_grace_seconds < 0:
            raise InvalidBillingConfig(
                f"DAI_BILLING_GRACE_SECONDS must not be negative, not {self.close_grace_seconds}."
            )
        try:
            check_seller(self.seller)
        except InvalidSeller as exc:
            raise InvalidBillingConfig(str(exc)) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BillingConfig:
        """``DAI_TAX_RATE``, ``DAI_BILLING_GRACE_SECONDS``, the seller (:mod:`.seller`); Stripe
        when ``STRIPE_API_KEY`` is set (with ``STRIPE_WEBHOOK_SECRET``, ``STRIPE_API_BASE``,
        ``DAI_BILLING_SUCCESS_URL``, ``DAI_BILLING_CANCEL_URL``). Raises
        :class:`InvalidBillingConfig`."""
        env = os.environ if env is None else env
        text = env.get("DAI_TAX_RATE", "0.10").strip()
        try:
            tax_rate = Decimal(text)
        except InvalidOperation:
            raise InvalidBillingConfig(f"DAI_TAX_RATE must be a decimal such as 0.10, not {text!r}.") from None
        grace = env.get("DAI_BILLING_GRACE_SECONDS", "3600").strip()
        if not grace.lstrip("-").isdigit():
            raise InvalidBillingConfig(
                f"DAI_BILLING_GRACE_SECONDS must be a whole number of seconds such as 3600, not {grace!r}."
            )
        try:
            seller = load_seller(env)
        except InvalidSeller as exc:
            raise InvalidBillingConfig(str(exc)) from None
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
        return cls(tax_rate=tax_rate, close_grace_seconds=int(grace), stripe=stripe, seller=seller)


def check_environment(env: Mapping[str, str] | None = None) -> BillingConfig:
    """The billing configuration of ``env``, with the plan catalogue it names (``DAI_PLANS_FILE``,
    ``DAI_PRICING_FILE``) loaded and checked, so that a process refuses to start on any bad setting
    instead of failing at its first invoice or its first call."""
    env = os.environ if env is None else env
    config = BillingConfig.from_env(env)
    try:
        load_plans(env=env)
    except InvalidPlans as exc:
        raise InvalidBillingConfig(str(exc)) from None
    return config
