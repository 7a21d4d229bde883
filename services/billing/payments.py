"""Payments: push issued invoices to Stripe, send tenants to Checkout, and record Stripe's webhooks.

Stripe is off unless ``STRIPE_API_KEY`` is set; then every method here raises
:class:`StripeDisabled` and invoices simply stay ``open`` in our read model.

A webhook is recorded as one event on ``billing.<tenant>.stripe_event.<hash of its id>`` with
expected last subject sequence 0: Stripe delivers at least once (and retries for days), and
the fifth delivery of an event finds its subject taken and changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Literal

from democratic_ai.contracts.billing_events import (
    CustomerLinked,
    InvoiceIssued,
    InvoicePushed,
    PaymentFailed,
    PaymentMethodAttached,
    PaymentSucceeded,
)
from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.subjects import (
    InvalidSubjectToken,
    customer_subject,
    invoice_subject,
    stripe_event_subject,
    validate_token,
)

from .errors import Conflict, StripeDisabled
from .eventlog import BillingLog
from .stripe_gateway import CheckoutSession, StripeBilling

__all__ = ["Payments", "WebhookOutcome"]

log = logging.getLogger(__name__)

WebhookOutcome = Literal["recorded", "duplicate", "ignored"]


class Payments:
    def __init__(self, log: BillingLog, stripe: StripeBilling | None) -> None:
        self.log = log
        self.stripe = stripe

    @property
    def enabled(self) -> bool:
        return self.stripe is not None

    def _stripe(self) -> StripeBilling:
        if self.stripe is None:
            raise StripeDisabled("Stripe is off: set STRIPE_API_KEY to take payments")
        return self.stripe

    async def customer(self, meta: Meta, tenant_id: str, name: str = "") -> str:
        """The tenant's Stripe customer id, created (once) on first use."""
        subject = customer_subject(tenant_id)
        linked = await self._linked(subject)
        if linked:
            return linked
        customer_id = await self._stripe().create_customer(tenant_id, name or tenant_id)
        try:
            await self.log.append(
                subject, CustomerLinked(tenant_id=tenant_id, meta=meta, stripe_customer_id=customer_id), expected=0
            )
        except Conflict:
            return await self._linked(subject) or customer_id
        return customer_id

    async def _linked(self, subject: str) -> str:
        return next(
            (e.stripe_customer_id for _, e in await self.log.read(subject) if isinstance(e, CustomerLinked)), ""
        )

    async def push(self, meta: Meta, invoice: InvoiceIssued) -> str:
        """Send an issued invoice to Stripe, once; returns the Stripe invoice id ("" for a zero invoice)."""
        subject = invoice_subject(invoice.tenant_id, invoice.period)
        events = await self.log.read(subject)
        pushed = next((e for _, e in events if isinstance(e, InvoicePushed)), None)
        if pushed is not None:
            return pushed.stripe_invoice_id
        if invoice.total <= 0:
            return ""  # nothing to collect
        customer_id = await self.customer(meta, invoice.tenant_id)
        stripe_invoice_id = await self._stripe().push_invoice(customer_id, invoice)
        try:
            await self.log.append(
                subject,
                InvoicePushed(
                    tenant_id=invoice.tenant_id,
                    meta=meta,
                    invoice_id=invoice.invoice_id,
                    stripe_invoice_id=stripe_invoice_id,
                    stripe_customer_id=customer_id,
                ),
                expected=events[-1][0] if events else 0,
            )
        except Conflict:
            pass  # a concurrent push recorded it; the idempotency keys made it the same Stripe invoice
        return stripe_invoice_id

    async def checkout(self, meta: Meta, tenant_id: str, name: str, currency: str) -> CheckoutSession:
        customer_id = await self.customer(meta, tenant_id, name)
        return await self._stripe().checkout_setup(tenant_id, customer_id, currency)

    async def webhook(self, meta: Meta, payload: bytes, signature: str | None) -> WebhookOutcome:
        """Verify a Stripe webhook and record what it says, at most once per Stripe event."""
        event = self._stripe().verify_webhook(payload, signature)
        event_id, kind = str(event.get("id", "")), str(event.get("type", ""))
        obj: dict[str, Any] = (event.get("data") or {}).get("object") or {}
        metadata: dict[str, Any] = obj.get("metadata") or {}
        tenant_id = str(metadata.get("tenant_id", ""))
        try:
            validate_token(tenant_id, "tenant")
        except InvalidSubjectToken:
            log.info("ignored Stripe event %s (%s): no tenant of ours in its metadata", event_id, kind)
            return "ignored"
        recorded: PaymentSucceeded | PaymentFailed | PaymentMethodAttached
        if kind in ("invoice.paid", "invoice.payment_failed"):
            invoice_id = str(metadata.get("invoice_id", ""))
            if not invoice_id:
                return "ignored"
            common = {
                "tenant_id": tenant_id,
                "meta": meta,
                "invoice_id": invoice_id,
                "stripe_event_id": event_id,
                "stripe_invoice_id": str(obj.get("id", "")),
                "currency": str(obj.get("currency", "")).upper(),
            }
            if kind == "invoice.paid":
                recorded = PaymentSucceeded(amount=int(obj.get("amount_paid") or 0), **common)
            else:
                error = (obj.get("last_finalization_error") or {}).get("message", "")
                recorded = PaymentFailed(amount=int(obj.get("amount_due") or 0), reason=str(error), **common)
        elif kind == "checkout.session.completed" and obj.get("mode") == "setup":
            subject = stripe_event_subject(tenant_id, _hash(event_id))
            if await self.log.read(subject):
                return "duplicate"
            customer_id, intent = str(obj.get("customer", "")), str(obj.get("setup_intent", ""))
            payment_method = await self._stripe().make_default_payment_method(event_id, customer_id, intent)
            recorded = PaymentMethodAttached(
                tenant_id=tenant_id,
                meta=meta,
                stripe_event_id=event_id,
                stripe_customer_id=customer_id,
                setup_intent_id=intent,
                payment_method_id=payment_method,
            )
        else:
            return "ignored"
        try:
            await self.log.append(stripe_event_subject(tenant_id, _hash(event_id)), recorded, expected=0)
        except Conflict:
            return "duplicate"
        return "recorded"


def _hash(stripe_event_id: str) -> str:
    """Stripe ids mix cases; subjects are lower case, so the subject holds a hash of the id."""
    return hashlib.sha256(stripe_event_id.encode()).hexdigest()[:32]
