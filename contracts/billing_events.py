"""Events of the BILLING stream: subscriptions, invoices, payments and the Stripe customer.

Subjects name the aggregate: ``billing.<tenant>.<aggregate>.<id>`` (:mod:`.subjects` spells them).

    billing.<t>.subscription.<t>      subscription.started, subscription.plan_changed, subscription.cancelled
    billing.<t>.customer.<t>          customer.linked — the tenant's Stripe customer, once
    billing.<t>.invoice.<YYYY-MM>     invoice.issued — one per tenant and month, ever; then invoice.pushed
    billing.<t>.stripe_event.<h>      payment.succeeded, payment.failed, payment_method.attached — one per
                                      Stripe event (h: the first 32 hex digits of SHA-256 of its id)

Commands append with ``Nats-Expected-Last-Subject-Sequence``: 0 on an invoice's subject makes
"one invoice per period" a property of the log, and 0 on a Stripe event's subject makes a
webhook delivered five times one event. Fields carry the limits of the read models
(:mod:`.fields`; ``interval`` and a line's ``kind`` the same enumerations as their CHECKs), and
:func:`encode_event` refuses an event that breaks them. Money is integer minor units of ``currency`` (yen for
JPY); prices that are not whole minor units (¥0.05 a call) are ``Decimal``, which msgspec
writes as a JSON string, so no float ever holds money. Time is UTC.

A subscription event carries the plan's whole price list (:class:`PlanTerms`): an invoice is
computed from the log alone, so a later change of the price list does not change an invoice
that is regenerated for an earlier month.

An issued invoice is a document: what it says is fixed when it is issued, so its events carry
the text of every line and the seller as they were then. ``invoice.issued`` versions:

    v1  no seller, and the usage lines only of metrics over their allowance.
    v2  ``seller`` (who issued it: name, address, registration number) and, on each usage
        line, ``used`` and ``included`` — a line for every metric of the plan, 0 over or not.

A v1 event is read as it was written: its ``seller`` is ``None`` (not recorded) and its lines'
``used``/``included`` are ``None``; nothing of a v1 invoice is invented on read, so a replay
folds exactly the rows it always did.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from .envelope import Meta
from .fields import INT64_MAX, Count, Id, Int64, Name, TenantId, Text, checked_encoder

__all__ = [
    "INVOICE_VERSION",
    "MINOR_UNITS",
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
    "Seller",
    "SubscriptionCancelled",
    "SubscriptionStarted",
    "decode_event",
    "encode_event",
]


Interval = Literal["month", "year"]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
# ISO 4217 minor-unit exponents of the currencies a plan may be priced in: the amounts of these
# events are integers of these units (¥1, 1 cent), so a reader needs the exponent to read them.
MINOR_UNITS: dict[str, int] = {"JPY": 0, "USD": 2, "EUR": 2}


class MeteredPrice(msgspec.Struct, frozen=True, kw_only=True):
    """How one metric is billed: ``included`` billing units a month, then ``overage_price`` per unit.

    A billing unit is ``unit_size`` metered units: an hour is 3,600,000 compute milliseconds,
    a GB is 1,073,741,824 bytes (the seed's ``50 * 1024**3``). ``overage_price`` ``None``: usage
    past the allowance is not billed (the plan's rate limits cap it instead).
    """

    unit: Id  # "call", "hour", "GB"
    unit_size: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)] = 1
    included: Count = 0
    overage_price: Decimal | None = None


class PlanTerms(msgspec.Struct, frozen=True, kw_only=True):
    plan_id: Id  # the same ids as the rate limits of schemas/json/plans.json
    name: Name
    currency: Currency  # ISO 4217, upper case
    monthly_price: Decimal
    yearly_price: Decimal
    usage: dict[Id, MeteredPrice] = {}  # metric (api_calls, compute_ms, storage_bytes) → price
    features: tuple[Text, ...] = ()


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    tenant_id: TenantId
    meta: Meta


class SubscriptionStarted(_Event, tag="subscription.started", frozen=True):
    terms: PlanTerms
    interval: Interval  # billing_subscriptions.interval has the same CHECK
    time_zone: Id  # IANA name; the tenant's months and years begin at its midnight


class PlanChanged(_Event, tag="subscription.plan_changed", frozen=True):
    terms: PlanTerms
    interval: Interval


class SubscriptionCancelled(_Event, tag="subscription.cancelled", frozen=True):
    reason: Text = ""


class CustomerLinked(_Event, tag="customer.linked", frozen=True):
    stripe_customer_id: Id


INVOICE_VERSION = 2  # the version of invoice.issued this module writes


class Seller(msgspec.Struct, frozen=True, kw_only=True):
    """Who issues the invoice. In Japan a qualified invoice (適格請求書) names the issuer and its
    registration number, ``T`` and 13 digits (services/billing/seller.py checks it)."""

    name: Name
    address: Text = ""
    registration_number: Id = ""


class InvoiceLine(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["base_fee", "overage"]  # billing_invoice_lines.kind has the same CHECK
    description: Text
    quantity: Decimal  # billing units: 1 for a fee, 50000 calls, 3.5 hours (a usage line: over the allowance)
    unit: Id
    unit_price: Decimal
    amount: Int64  # minor units, rounded half up from quantity × unit_price (see services/billing/money.py)
    metric: Id = ""
    plan_id: Id = ""
    service_start: datetime | None = None  # what a base fee pays for
    service_end: datetime | None = None
    used: Decimal | None = None  # a usage line (v2): billing units used in the month …
    included: Count | None = None  # … and the plan's allowance of them


class InvoiceIssued(_Event, tag="invoice.issued", frozen=True, kw_only=True):
    v: int = INVOICE_VERSION
    invoice_id: Id
    period: Id  # "YYYY-MM" in time_zone
    period_start: datetime
    period_end: datetime
    time_zone: Id
    currency: Currency
    lines: tuple[InvoiceLine, ...]
    subtotal: Int64
    tax_rate: Decimal
    tax: Int64
    total: Int64
    usage: dict[Id, Int64] = {}  # metered totals the overage lines were computed from
    seller: Seller | None = None  # v2; None on a v1 invoice (not recorded then)


class InvoicePushed(_Event, tag="invoice.pushed", frozen=True):
    invoice_id: Id
    stripe_invoice_id: Id
    stripe_customer_id: Id


class PaymentSucceeded(_Event, tag="payment.succeeded", frozen=True):
    invoice_id: Id
    stripe_event_id: Id
    stripe_invoice_id: Id
    amount: Int64
    currency: Currency


class PaymentFailed(_Event, tag="payment.failed", frozen=True):
    invoice_id: Id
    stripe_event_id: Id
    stripe_invoice_id: Id
    amount: Int64
    currency: Currency
    reason: Text = ""


class PaymentMethodAttached(_Event, tag="payment_method.attached", frozen=True):
    stripe_event_id: Id
    stripe_customer_id: Id
    setup_intent_id: Id  # the card itself stays with Stripe; we keep only its references
    payment_method_id: Id


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
encode_event = checked_encoder(BillingEvent)


def decode_event(data: bytes) -> BillingEvent:
    """Decode a BILLING event; raises ``msgspec.DecodeError`` (``ValidationError`` for valid JSON
    of the wrong shape) for a malformed one."""
    return _decoder.decode(data)
