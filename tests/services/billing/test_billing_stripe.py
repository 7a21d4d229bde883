"""Stripe through its SDK, against an HTTP endpoint this test serves on 127.0.0.1: the requests
the SDK sends (with their idempotency keys), Checkout in setup mode, and signed webhooks —
attacks refused, a redelivered event recorded once, payments turned into invoice status."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from democratic_ai.contracts.envelope import Meta
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.services.billing import BillingConfig, StripeConfig

from support.billing import TableUsageTotals, billing_gateway, billing_service, new_billing_tenant
from support.client import http
from support.gateway import Gateway, issue_key
from support.names import unique
from support.projections import caught_up

SECRET = "whsec_test_secret"
JAN_START = datetime(2024, 12, 31, 15, 0, tzinfo=UTC)  # 2025-01-01 00:00 in Tokyo


@dataclass
class FakeStripe:
    """Answers the few Stripe API calls billing makes, and remembers every request.

    Like Stripe, a repeated idempotency key gets the first answer and creates nothing.
    """

    url: str = ""
    requests: list[tuple[str, str, str, dict[str, str]]] = field(default_factory=list)  # method, path, key, form
    answers: dict[str, dict] = field(default_factory=dict)
    created: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post()) if request.method == "POST" else {}
        key = request.headers.get("Idempotency-Key", "")
        assert request.headers["Authorization"] == "Bearer sk_test_fake"
        self.requests.append((request.method, request.path, key, {k: str(v) for k, v in form.items()}))
        if key and key in self.answers:
            return web.json_response(self.answers[key])
        self.created += 1
        path = request.path
        if path == "/v1/customers":
            answer = {"id": f"cus_{self.created}", "object": "customer"}
        elif path == "/v1/invoices":
            answer = {"id": f"in_{self.created}", "object": "invoice", "status": "draft"}
        elif path == "/v1/invoiceitems":
            answer = {"id": f"ii_{self.created}", "object": "invoiceitem", "amount": int(form["amount"])}
        elif path.endswith("/finalize"):
            answer = {"id": path.split("/")[3], "object": "invoice", "status": "open"}
        elif path == "/v1/checkout/sessions":
            answer = {
                "id": f"cs_{self.created}",
                "object": "checkout.session",
                "url": f"https://checkout.stripe.test/c/pay/cs_{self.created}",
            }
        elif path.startswith("/v1/setup_intents/"):
            answer = {"id": path.rsplit("/", 1)[1], "object": "setup_intent", "payment_method": "pm_card_visa"}
        elif path.startswith("/v1/customers/"):
            answer = {"id": path.rsplit("/", 1)[1], "object": "customer"}
        else:
            return web.json_response(
                {"error": {"type": "invalid_request_error", "message": "no such route"}}, status=404
            )
        if key:
            self.answers[key] = answer
        return web.json_response(answer)

    def posted(self, path: str) -> list[tuple[str, dict[str, str]]]:
        return [(key, form) for method, p, key, form in self.requests if method == "POST" and p == path]


@pytest.fixture
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    fake = FakeStripe()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


@pytest.fixture
def billing_config(fake_stripe: FakeStripe) -> BillingConfig:
    stripe = StripeConfig(api_key="sk_test_fake", webhook_secret=SECRET, api_base=fake_stripe.url)
    return BillingConfig(close_grace_seconds=0, stripe=stripe)


def sign(payload: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    """Stripe's v1 scheme, computed here rather than by the SDK: HMAC-SHA256 of "<t>.<body>"."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def stripe_event(event_id: str, kind: str, obj: dict) -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": kind,
            "api_version": "2024-06-20",
            "created": int(time.time()),
            "data": {"object": obj},
        }
    ).encode()


def invoice_event(event_id: str, kind: str, tenant: str, invoice_id: str, amount: int) -> bytes:
    return stripe_event(
        event_id,
        kind,
        {
            "id": "in_x",
            "object": "invoice",
            "currency": "jpy",
            "amount_paid": amount if kind == "invoice.paid" else 0,
            "amount_due": amount,
            "metadata": {"tenant_id": tenant, "invoice_id": invoice_id, "period": "2025-01"},
        },
    )


async def deliver(gateway: Gateway, payload: bytes, signature: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway.url}/v1/billing/stripe/webhook", data=payload, headers=headers) as response,
    ):
        return response.status, await response.json()


async def issued_invoice(gateway: Gateway, nc: NATS, usage: TableUsageTotals) -> tuple[str, str]:
    """A Starter tenant with 150,000 calls in January 2025, closed over HTTP (and so pushed)."""
    tenant = await new_billing_tenant(gateway)
    await billing_service(nc, usage).set_plan(Meta(at=JAN_START), tenant.tenant_id, "starter")
    await usage.add(tenant.tenant_id, [("api_calls", JAN_START + timedelta(days=1), 150_000)])
    status, body = await http(
        "POST",
        f"{gateway.url}/v1/billing/close-period",
        json={"tenant_id": tenant.tenant_id, "period": "2025-01"},
        credential=gateway.api_key,
    )
    assert status == 200, body
    return tenant.tenant_id, body["closed"][0]["invoice"]["invoice_id"]


async def test_closing_pushes_the_invoice_to_stripe_once_with_idempotency_keys(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, usage: TableUsageTotals, fake_stripe: FakeStripe
) -> None:
    tenant, invoice_id = await issued_invoice(gateway, nc, usage)
    [(key, customer)] = fake_stripe.posted("/v1/customers")
    assert key == f"dai-customer-{tenant}" and customer["metadata[tenant_id]"] == tenant
    [(key, draft)] = fake_stripe.posted("/v1/invoices")
    assert key == f"{invoice_id}:invoice"
    assert (
        draft["customer"],
        draft["currency"],
        draft["metadata[invoice_id]"],
        draft["pending_invoice_items_behavior"],
    ) == ("cus_1", "jpy", invoice_id, "exclude")
    items = fake_stripe.posted("/v1/invoiceitems")
    assert [(k, form["amount"], form["invoice"]) for k, form in items] == [
        (f"{invoice_id}:line-0", "4900", "in_2"),
        (f"{invoice_id}:line-1", "2500", "in_2"),
        # The usage lines within their allowance, at ¥0: Stripe's invoice says what ours says.
        (f"{invoice_id}:line-2", "0", "in_2"),
        (f"{invoice_id}:line-3", "0", "in_2"),
        (f"{invoice_id}:tax", "740", "in_2"),
    ]
    assert sum(int(form["amount"]) for _, form in items) == 8140
    [(key, _)] = fake_stripe.posted("/v1/invoices/in_2/finalize")
    assert key == f"{invoice_id}:finalize"
    # Closing again sends nothing: the push is recorded in the log.
    before = len(fake_stripe.requests)
    status, body = await http(
        "POST",
        f"{gateway.url}/v1/billing/close-period",
        json={"tenant_id": tenant, "period": "2025-01"},
        credential=gateway.api_key,
    )
    assert status == 200 and body["closed"][0]["created"] is False and body["closed"][0]["stripe_invoice_id"] == "in_2"
    assert len(fake_stripe.requests) == before
    await caught_up(nc, pool, "billing")
    async with pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT stripe_invoice_id FROM billing_invoices WHERE invoice_id = $1", invoice_id)
            == "in_2"
        )


async def test_payment_method_goes_through_checkout_in_setup_mode(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, fake_stripe: FakeStripe
) -> None:
    tenant = await new_billing_tenant(gateway, name="Card Holder")
    status, body = await http("POST", f"{gateway.url}/v1/billing/payment-method", credential=tenant.viewer_token)
    assert status == 403
    status, body = await http("POST", f"{gateway.url}/v1/billing/payment-method", credential=tenant.admin_token)
    assert status == 201 and body["url"].startswith("https://checkout.stripe.test/")
    [(_, session)] = fake_stripe.posted("/v1/checkout/sessions")
    assert (session["mode"], session["currency"], session["payment_method_types[0]"]) == ("setup", "jpy", "card")
    assert not any("card[" in name or "number" in name for *_, form in fake_stripe.requests for name in form)
    # Stripe reports the finished Checkout; the saved card becomes the customer's default.
    payload = stripe_event(
        "evt_Checkout1",
        "checkout.session.completed",
        {
            "id": body["session_id"],
            "object": "checkout.session",
            "mode": "setup",
            "customer": session["customer"],
            "setup_intent": "seti_123",
            "metadata": {"tenant_id": tenant.tenant_id},
        },
    )
    assert await deliver(gateway, payload, sign(payload)) == (200, {"received": True, "outcome": "recorded"})
    [(key, update)] = fake_stripe.posted(f"/v1/customers/{session['customer']}")
    assert update["invoice_settings[default_payment_method]"] == "pm_card_visa"
    assert key == "evt_Checkout1:default-payment-method"
    await caught_up(nc, pool, "billing")
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT stripe_customer_id, default_payment_method_id FROM billing_customers WHERE tenant_id = $1",
            tenant.tenant_id,
        )
    assert tuple(row) == (session["customer"], "pm_card_visa")


@pytest.mark.parametrize(
    "attack",
    ["tampered body", "wrong secret", "stale timestamp", "missing header", "garbage header", "non-ASCII header"],
)
async def test_webhook_signature_attacks_are_refused(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, usage: TableUsageTotals, attack: str
) -> None:
    tenant, invoice_id = await issued_invoice(gateway, nc, usage)
    genuine = invoice_event(f"evt_{unique('a')}", "invoice.paid", tenant, invoice_id, 8140)
    payload, signature = genuine, sign(genuine)
    if attack == "tampered body":
        payload = genuine.replace(b'"amount_paid": 8140', b'"amount_paid": 1')
        assert payload != genuine
    elif attack == "wrong secret":
        signature = sign(genuine, secret="whsec_somebody_else")
    elif attack == "stale timestamp":
        signature = sign(genuine, timestamp=int(time.time()) - 301)
    elif attack == "missing header":
        signature = None
    elif attack == "non-ASCII header":
        signature = signature.replace("v1=", "v1=é")
    else:
        signature = "t=not-a-time,v1=00"
    status, body = await deliver(gateway, payload, signature)
    assert status == 400 and body["error"]["code"] == "BAD_REQUEST", body
    info = await nc.jetstream().stream_info("BILLING", subjects_filter=f"billing.{tenant}.stripe_event.>")
    assert not info.state.subjects
    # The genuine delivery, signed 299 s ago, is still accepted.
    status, body = await deliver(gateway, genuine, sign(genuine, timestamp=int(time.time()) - 299))
    assert (status, body["outcome"]) == (200, "recorded")


async def test_a_webhook_delivered_five_times_changes_state_once(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, usage: TableUsageTotals
) -> None:
    tenant, invoice_id = await issued_invoice(gateway, nc, usage)
    failed = invoice_event("evt_Failed1", "invoice.payment_failed", tenant, invoice_id, 8140)
    assert (await deliver(gateway, failed, sign(failed)))[1]["outcome"] == "recorded"
    await caught_up(nc, pool, "billing")
    status, body = await http(
        "GET", f"{gateway.url}/v1/invoices/{invoice_id}?tenant={tenant}", credential=gateway.api_key
    )
    assert body["status"] == "payment_failed"

    paid = invoice_event("evt_Paid1", "invoice.paid", tenant, invoice_id, 8140)
    answers = await asyncio.gather(*(deliver(gateway, paid, sign(paid)) for _ in range(5)))
    assert sorted(body["outcome"] for _, body in answers) == ["duplicate"] * 4 + ["recorded"]
    assert all(status == 200 for status, _ in answers)
    # A failure reported after the payment does not undo it.
    late = invoice_event("evt_Failed2", "invoice.payment_failed", tenant, invoice_id, 8140)
    assert (await deliver(gateway, late, sign(late)))[1]["outcome"] == "recorded"
    await caught_up(nc, pool, "billing")
    info = await nc.jetstream().stream_info("BILLING", subjects_filter=f"billing.{tenant}.stripe_event.>")
    assert sorted(info.state.subjects.values()) == [1, 1, 1]
    status, body = await http(
        "GET", f"{gateway.url}/v1/invoices/{invoice_id}?tenant={tenant}", credential=gateway.api_key
    )
    assert status == 200 and body["status"] == "paid"
    assert [(p["stripe_event_id"], p["outcome"]) for p in body["payments"]] == [
        ("evt_Failed1", "failed"),
        ("evt_Paid1", "succeeded"),
        ("evt_Failed2", "failed"),
    ]


async def test_events_of_no_tenant_of_ours_are_acknowledged_and_ignored(gateway: Gateway, nc: NATS) -> None:
    other = stripe_event("evt_Other", "customer.created", {"id": "cus_x", "object": "customer", "metadata": {}})
    assert await deliver(gateway, other, sign(other)) == (200, {"received": True, "outcome": "ignored"})


async def test_stripe_is_off_without_an_api_key(
    nats_server: NatsServer,
    database_url: str,
    pool: asyncpg.Pool,
    nc: NATS,
    projections: None,
    usage: TableUsageTotals,
) -> None:
    tenant = unique("tenant")
    key = await issue_key(nc, tenant)
    assert BillingConfig.from_env({}).stripe is None
    async with billing_gateway(nats_server.bus("gateway"), database_url, key, tenant, usage) as gateway:
        customer = await new_billing_tenant(gateway)
        status, body = await http("POST", f"{gateway.url}/v1/billing/payment-method", credential=customer.admin_token)
        assert status == 503 and body["error"]["code"] == "PAYMENT_PROVIDER_UNAVAILABLE"
        payload = stripe_event("evt_1", "invoice.paid", {"id": "in_1", "object": "invoice"})
        status, body = await deliver(gateway, payload, sign(payload))
        assert status == 503 and body["error"]["code"] == "PAYMENT_PROVIDER_UNAVAILABLE"
