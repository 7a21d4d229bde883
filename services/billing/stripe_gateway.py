"""Stripe, through its SDK: customers, invoices, Checkout in setup mode, and signed webhooks.

Every write carries an idempotency key derived from our own ids (the tenant for a customer,
the invoice id for an invoice and each of its items), so a push that is retried — after a
crash, a timeout, or a second ``close-period`` — creates nothing twice at Stripe.

No card data ever reaches the platform: a tenant enters its card on Stripe's Checkout page
(``mode=setup``); we keep only the ids Stripe gives back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import stripe

from democratic_ai.contracts.billing_events import InvoiceIssued

from .config import StripeConfig
from .errors import BadSignature, StripeFailed
from .money import format_money

__all__ = ["CheckoutSession", "StripeBilling"]


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    """Where to send the tenant to enter a card (on Stripe's page, not ours)."""

    session_id: str
    url: str


class StripeBilling:
    def __init__(self, config: StripeConfig) -> None:
        self.config = config
        self._http = stripe.AIOHTTPClient()
        self._client = stripe.StripeClient(
            config.api_key,
            http_client=self._http,
            base_addresses={"api": config.api_base} if config.api_base else None,
            max_network_retries=2,
        )

    async def close(self) -> None:
        await self._http.close_async()

    async def create_customer(self, tenant_id: str, name: str) -> str:
        """The tenant's customer; one per tenant even when two requests race (same key)."""
        customer = await self._call(
            self._client.v1.customers.create_async(
                params={"name": name, "metadata": {"tenant_id": tenant_id}},
                options={"idempotency_key": f"dai-customer-{tenant_id}"},
            )
        )
        return str(customer.id)

    async def push_invoice(self, customer_id: str, invoice: InvoiceIssued) -> str:
        """Create the invoice as a draft, add our lines (and the tax) to it, and finalize it.

        Items are attached to this invoice by id rather than collected from the customer's
        pending items, so two invoices pushed at once cannot take each other's lines. Returns
        the Stripe invoice id.
        """
        key = invoice.invoice_id
        metadata = {"tenant_id": invoice.tenant_id, "invoice_id": invoice.invoice_id, "period": invoice.period}
        currency = invoice.currency.lower()
        invoices, items = self._client.v1.invoices, self._client.v1.invoice_items
        draft = await self._call(
            invoices.create_async(
                params={
                    "customer": customer_id,
                    "currency": currency,
                    "collection_method": "charge_automatically",
                    "auto_advance": False,
                    "pending_invoice_items_behavior": "exclude",
                    "metadata": metadata,
                    "description": f"Democratic_AI {invoice.period}",
                },
                options={"idempotency_key": f"{key}:invoice"},
            )
        )
        lines = [(f"line-{n}", line.description, line.amount) for n, line in enumerate(invoice.lines)]
        if invoice.tax:
            lines.append(
                (
                    "tax",
                    (
                        f"Consumption tax {invoice.tax_rate * 100:.0f}% on "
                        f"{format_money(invoice.subtotal, invoice.currency)}"
                    ),
                    invoice.tax,
                )
            )
        for name, description, amount in lines:
            await self._call(
                items.create_async(
                    params={
                        "customer": customer_id,
                        "invoice": draft.id,
                        "currency": currency,
                        "amount": amount,
                        "description": description,
                        "metadata": metadata,
                    },
                    options={"idempotency_key": f"{key}:{name}"},
                )
            )
        await self._call(
            invoices.finalize_invoice_async(
                draft.id,
                params={"auto_advance": True},
                options={"idempotency_key": f"{key}:finalize"},
            )
        )
        return str(draft.id)

    async def checkout_setup(self, tenant_id: str, customer_id: str, currency: str) -> CheckoutSession:
        """A Checkout session in setup mode: Stripe's page collects the card, we never see it."""
        session = await self._call(
            self._client.v1.checkout.sessions.create_async(
                params={
                    "mode": "setup",
                    "customer": customer_id,
                    "currency": currency.lower(),
                    "payment_method_types": ["card"],
                    "success_url": self.config.success_url,
                    "cancel_url": self.config.cancel_url,
                    "metadata": {"tenant_id": tenant_id},
                    "setup_intent_data": {"metadata": {"tenant_id": tenant_id}},
                }
            )
        )
        return CheckoutSession(session_id=str(session.id), url=str(session.url))

    async def make_default_payment_method(self, event_id: str, customer_id: str, setup_intent_id: str) -> str:
        """Use the card a finished Checkout saved for the customer's invoices; returns its id."""
        intent = await self._call(self._client.v1.setup_intents.retrieve_async(setup_intent_id))
        payment_method = str(intent.payment_method)
        await self._call(
            self._client.v1.customers.update_async(
                customer_id,
                params={"invoice_settings": {"default_payment_method": payment_method}},
                options={"idempotency_key": f"{event_id}:default-payment-method"},
            )
        )
        return payment_method

    def verify_webhook(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """The event a webhook carries, if its ``Stripe-Signature`` is valid and recent.

        Refused: no header, a signature made with another secret or over another body, and a
        timestamp older than the tolerance (a replayed request).
        """
        if not self.config.webhook_secret:
            raise BadSignature("webhooks are refused: STRIPE_WEBHOOK_SECRET is not set")
        if not signature:
            raise BadSignature("the Stripe-Signature header is missing")
        if not signature.isascii():  # Stripe's comparison raises TypeError on anything else
            raise BadSignature("the Stripe-Signature header is not ASCII")
        try:
            event = stripe.Webhook.construct_event(
                payload,
                signature,
                self.config.webhook_secret,
                tolerance=self.config.webhook_tolerance,
                api_key=self.config.api_key,
            )
        except stripe.SignatureVerificationError as exc:
            raise BadSignature(f"the Stripe-Signature does not verify: {exc.user_message or exc}") from None
        except ValueError as exc:  # the body is not JSON (checked after the signature)
            raise BadSignature(f"the webhook body is not a Stripe event: {exc}") from None
        return event.to_dict()

    async def _call(self, request: Any) -> Any:
        try:
            return await request
        except stripe.StripeError as exc:
            raise StripeFailed(
                f"Stripe refused the request: {exc.user_message or exc}", stripe_code=exc.code or ""
            ) from None
