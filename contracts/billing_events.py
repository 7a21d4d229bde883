"""Events of the BILLING stream: subscriptions, invoices, payments and the Stripe customer.

Subjects name the aggregate: ``billing.<tenant>.<aggregate>.<id>``.

    billing.<t>.subscription.<t>      subscription.started, subscription.plan_changed, subscription.cancelled
    billing.<t>.customer.<t>          customer.linked — the tenant's Stripe customer, once
    billing.<t>.invoice.<YYYY-MM>     invoice.issued — one per tenant and month, ever; then invoice.pushed
    billing.<t>.stripe_event.<h>      payment.succeeded, payment.failed, payment_method.attached — one per
                                      Stripe event (h: the first 32 hex digits of SHA-256 of its id)

Commands append with ``Nats-Expected-Last-Subject-Sequence``: 0 on an invoice's subject makes
"one invoice per period" a property of the log, and 0 on a Stripe event's subject makes a
webhook delivered five times one event. Money is integer minor units of ``currency`` (yen for
JPY); prices that are not whole minor units (¥0.05 a call) are ``Decimal``, which msgspec
writes as a JSON string, so no float ever holds money. Time is UTC.

A subscription event carries the plan's whole price list (:class:`PlanTerms`): an invoice is
computed from the log alone, so a later change of the price list does not change an invoice
that is regenerated for an earlier month.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec

from .identity_events import Meta

__all__ = [
    "BillingEvent",
    "CustomerLinked",
    "InvoiceIssued",
    "InvoiceLine",
    "InvoicePushed",
    "MeteredPrice",
    "PaymentFailed",
    "PaymentMethodAttached",
    "PaymentSucceeded",
    "PlanChanged",
    "PlanTerms",
    "SubscriptionCancelled",
    "SubscriptionStarted",
    "customer_subject",
    "decode_event",
    "encode_event",
    "invoice_subject",
    "stripe_event_subject",
    "subscription_subject",
]


class MeteredPrice(msgspec.Struct, frozen=True, kw_only=True):
    """How one metric is billed: ``included`` billing units a month, then ``overage_price`` per unit.

    A billing unit is ``unit_size`` metered units: an hour is 3,600,000 compute milliseconds,
    a GB is 1,073,741,824 bytes (the seed's ``50 * 1024**3``). ``overage_price`` ``None``: usage
    past the allowance is not billed (the plan's rate limits cap it instead).
    """

    unit: str  # "call", "hour", "GB"
    unit_size: int = 1
    included: int = 0
    overage_price: Decimal | None = None


class PlanTerms(msgspec.Struct, frozen=True, kw_only=True):
    plan_id: str  # the same ids as the rate limits of schemas/json/plans.json
    name: str
    currency: str  # ISO 4217, upper case
    monthly_price: Decimal
    yearly_price: Decimal
    usage: dict[str, MeteredPrice] = {}  # metric (api_calls, compute_ms, storage_bytes) → price
    features: tuple[str, ...] = ()


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    tenant_id: str
    meta: Meta


class SubscriptionStarted(_Event, tag="subscription.started"):
    terms: PlanTerms
    interval: str  # "month" or "year"
    time_zone: str  # IANA name; the tenant's months and years begin at its midnight


class PlanChanged(_Event, tag="subscription.plan_changed"):
    terms: PlanTerms
    interval: str


class SubscriptionCancelled(_Event, tag="subscription.cancelled"):
    reason: str = ""


class CustomerLinked(_Event, tag="customer.linked"):
    stripe_customer_id: str


class InvoiceLine(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # "base_fee" or "overage"
    description: str
    quantity: Decimal  # billing units: 1 for a fee, 50000 calls, 3.5 hours
    unit: str
    unit_price: Decimal
    amount: int  # minor units, rounded half up from quantity × unit_price (see services/billing/money.py)
    metric: str = ""
    plan_id: str = ""
    service_start: datetime | None = None  # what a base fee pays for
    service_end: datetime | None = None


class InvoiceIssued(_Event, tag="invoice.issued"):
    invoice_id: str
    period: str  # "YYYY-MM" in time_zone
    period_start: datetime
    period_end: datetime
    time_zone: str
    currency: str
    lines: tuple[InvoiceLine, ...]
    subtotal: int
    tax_rate: Decimal
    tax: int
    total: int
    usage: dict[str, int] = {}  # metered totals the overage lines were computed from


class InvoicePushed(_Event, tag="invoice.pushed"):
    invoice_id: str
    stripe_invoice_id: str
    stripe_customer_id: str


class PaymentSucceeded(_Event, tag="payment.succeeded"):
    invoice_id: str
    stripe_event_id: str
    stripe_invoice_id: str
    amount: int
    currency: str


class PaymentFailed(_Event, tag="payment.failed"):
    invoice_id: str
    stripe_event_id: str
    stripe_invoice_id: str
    amount: int
    currency: str
    reason: str = ""


class PaymentMethodAttached(_Event, tag="payment_method.attached"):
    stripe_event_id: str
    stripe_customer_id: str
    setup_intent_id: str  # the card itself stays with Stripe; we keep only its references
    payment_method_id: str


BillingEvent = (
    SubscriptionStarted
    | PlanChanged
    | SubscriptionCancelled
    | CustomerLinked
    | InvoiceIssued
    | InvoicePushed
    | PaymentSucceeded
    | PaymentFailed
    | PaymentMethodAttached
)

_decoder = msgspec.json.Decoder(BillingEvent)
encode_event = msgspec.json.Encoder().encode


def decode_event(data: bytes) -> BillingEvent:
    """Decode a BILLING event; raises ``msgspec.ValidationError`` for a malformed one."""
    return _decoder.decode(data)


def subscription_subject(tenant_id: str) -> str:
    return f"billing.{tenant_id}.subscription.{tenant_id}"


def customer_subject(tenant_id: str) -> str:
    return f"billing.{tenant_id}.customer.{tenant_id}"


def invoice_subject(tenant_id: str, period: str) -> str:
    return f"billing.{tenant_id}.invoice.{period}"


def stripe_event_subject(tenant_id: str, event_hash: str) -> str:
    return f"billing.{tenant_id}.stripe_event.{event_hash}"
