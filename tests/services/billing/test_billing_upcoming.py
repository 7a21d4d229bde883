"""The invoice of the month so far, against real NATS and PostgreSQL: it is what closing the
month issues (the same code), it is served as JSON or HTML and nothing else (406), it names the
seller, and a super admin reads any tenant's invoices. Old (v1) invoice events still fold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import aiohttp
import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts.billing_events import Seller, decode_event
from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.subjects import invoice_subject
from democratic_ai.services.billing import BillingConfig
from democratic_ai.services.billing.periods import month_of, month_period, seconds

from support.billing import TableUsageTotals, billing_service, new_billing_tenant
from support.client import http
from support.gateway import Gateway
from support.projections import caught_up

JAN_START = datetime(2024, 12, 31, 15, 0, tzinfo=UTC)  # 2025-01-01 00:00 in Tokyo
JAN_END = datetime(2025, 1, 31, 15, 0, tzinfo=UTC)
SELLER = Seller(
    name="Democratic AI K.K.",
    address="1-2-3 Marunouchi\nChiyoda-ku, Tokyo 100-0005",
    registration_number="T1234567890123",
)
CONFIG = BillingConfig(close_grace_seconds=0, seller=SELLER)


@pytest.fixture
def billing_config() -> BillingConfig:
    return CONFIG


async def page(url: str, token: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={**(headers or {}), "Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status, response.content_type, await response.text()


async def test_the_upcoming_invoice_is_what_closing_the_month_issues(
    gateway: Gateway, nc: NATS, usage: TableUsageTotals
) -> None:
    """Starter from 1 January, Pro from the 16th, 1,150,000 calls; seen on 21 January 06:30 Tokyo.
    The month so far is exactly the invoice the month issues when the plan ends at that instant."""
    tenant = (await new_billing_tenant(gateway)).tenant_id
    service = billing_service(nc, usage, CONFIG)
    await service.set_plan(Meta(at=JAN_START), tenant, "starter")
    await service.set_plan(Meta(at=JAN_START + timedelta(days=15)), tenant, "pro")
    seen = JAN_START + timedelta(days=20, hours=6, minutes=30)
    await usage.add(tenant, [("api_calls", JAN_START + timedelta(hours=n), 50_000) for n in range(23)])
    await usage.add(tenant, [("compute_ms", JAN_START + timedelta(days=3), 7_200_000)])
    service.clock = lambda: seen
    upcoming = await service.upcoming(tenant)
    assert upcoming.meta.at == seen and upcoming.invoice_id == f"{tenant}-2025-01"
    # Starter 15 of 31 days (¥2,371); Pro 5 days 6 hours 30 minutes of 31 days: 19,800 × 455,400/2,678,400
    # = 3,366.53 → ¥3,367; 150,000 calls over Pro's 1,000,000 at ¥0.03 = ¥4,500.
    assert [(line.plan_id, line.metric, line.amount) for line in upcoming.lines] == [
        ("starter", "", 2371),
        ("pro", "", 3367),
        ("pro", "api_calls", 4500),
        ("pro", "compute_ms", 0),
        ("pro", "storage_bytes", 0),
    ]
    assert upcoming.lines[1].description == (
        "Pro plan (monthly), 2025-01-16 00:00 – 2025-01-21 06:30 (Asia/Tokyo), 5 days 6 hours of 31 days"
    )
    assert (upcoming.subtotal, upcoming.tax, upcoming.total) == (10238, 1023, 11261)
    assert upcoming.seller == SELLER

    # The month ends there for this tenant, and is closed after it is over: the same invoice.
    await service.cancel(Meta(at=seen), tenant)
    service.clock = lambda: JAN_END + timedelta(hours=2)
    closed = await service.close_period(tenant, "2025-01")
    assert closed.created and closed.invoice is not None
    assert msgspec.structs.replace(closed.invoice, meta=upcoming.meta) == upcoming


async def test_upcoming_over_http_in_json_and_html(gateway: Gateway, nc: NATS, usage: TableUsageTotals) -> None:
    tenant = await new_billing_tenant(gateway)
    url = f"{gateway.url}/v1/invoices/upcoming"
    status, body = await http("GET", url, credential=tenant.admin_token)
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"  # no plan yet: nothing accrues
    # Subscribed since the first instant of this month (in Tokyo), 120,000 calls since.
    month = month_period(month_of(datetime.now(UTC), "Asia/Tokyo"), "Asia/Tokyo")
    await billing_service(nc, usage).set_plan(Meta(at=month.start), tenant.tenant_id, "starter")
    await usage.add(tenant.tenant_id, [("api_calls", month.start, 120_000)])

    status, body = await http("GET", url, credential=tenant.viewer_token)
    assert status == 403 and body["error"]["details"]["needed"] == ["billing:read"]
    status, upcoming = await http("GET", url, credential=tenant.admin_token)
    assert status == 200, upcoming
    as_of = datetime.fromisoformat(upcoming["as_of"])
    assert month.start < as_of <= datetime.now(UTC) and upcoming["status"] == "upcoming"
    assert (upcoming["period_start"], upcoming["period_end"]) == (
        month.start.isoformat().replace("+00:00", "Z"),
        month.end.isoformat().replace("+00:00", "Z"),
    )
    fee, calls, compute, storage = upcoming["lines"]
    # The base fee to date: ¥4,900 × the share of the month gone by, rounded half up.
    share = seconds(as_of - month.start) / seconds(month.end - month.start)
    assert fee["amount"] == int((Decimal(4900) * share).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert fee["service_end"] == upcoming["as_of"]
    assert (calls["used"], calls["included"], calls["quantity"], calls["amount"]) == ("120000", 100_000, "20000", 1000)
    assert [(line["metric"], line["quantity"], line["amount"]) for line in (compute, storage)] == [
        ("compute_ms", "0", 0),
        ("storage_bytes", "0", 0),
    ]
    assert upcoming["subtotal"] == fee["amount"] + 1000
    assert upcoming["tax"] == upcoming["subtotal"] // 10 and upcoming["total"] == upcoming["subtotal"] + upcoming["tax"]
    assert upcoming["seller"] == msgspec.to_builtins(SELLER)

    for target, headers in ((f"{url}?format=html", {}), (url, {"Accept": "text/html,*/*;q=0.8"})):
        status, content_type, text = await page(target, tenant.admin_token, headers)
        assert status == 200 and content_type == "text/html"
        for shown in (
            "Upcoming invoice",
            "Democratic AI K.K.",
            "1-2-3 Marunouchi",
            "T1234567890123",
            "¥1,000",
            "120,000 calls used, 100,000 calls included, 20,000 calls over",
        ):
            assert shown in text, shown


@pytest.mark.parametrize(
    ("query", "accept"),
    [
        ("?format=pdf", None),
        ("?format=xml", None),
        ("", "application/pdf"),
        ("", "text/html;q=0, application/json;q=0"),
        ("", "image/*"),
    ],
)
async def test_a_format_that_is_not_offered_is_406(
    gateway: Gateway, nc: NATS, usage: TableUsageTotals, query: str, accept: str | None
) -> None:
    tenant = await new_billing_tenant(gateway)
    service = billing_service(nc, usage)
    await service.set_plan(Meta(at=JAN_START), tenant.tenant_id, "starter")
    await service.close_period(tenant.tenant_id, "2025-01")
    headers = {"Accept": accept} if accept else {}
    for path in ("upcoming", f"{tenant.tenant_id}-2025-01"):
        status, body = await http(
            "GET", f"{gateway.url}/v1/invoices/{path}{query}", credential=tenant.admin_token, headers=headers
        )
        assert status == 406 and body["error"]["code"] == "NOT_ACCEPTABLE", (path, body)
    # What is offered: JSON without an Accept, for */*, application/*, and on a tie; HTML when preferred.
    for accept_ok, wanted in (
        (None, "application/json"),
        ("*/*", "application/json"),
        ("application/*", "application/json"),
        ("application/json, text/html", "application/json"),
        ("text/*", "text/html"),
        ("application/json;q=0.5, text/html", "text/html"),
    ):
        status, content_type, _ = await page(
            f"{gateway.url}/v1/invoices/upcoming", tenant.admin_token, {"Accept": accept_ok} if accept_ok else {}
        )
        assert (status, content_type) == (200, wanted), accept_ok


async def test_a_super_admin_reads_any_tenants_invoices(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, usage: TableUsageTotals
) -> None:
    theirs, ours = await new_billing_tenant(gateway), await new_billing_tenant(gateway)
    service = billing_service(nc, usage, CONFIG)
    await service.set_plan(Meta(at=JAN_START), theirs.tenant_id, "starter")
    await service.close_period(theirs.tenant_id, "2025-01")
    await caught_up(nc, pool, "billing")
    invoice_id = f"{theirs.tenant_id}-2025-01"
    admin = gateway.api_key  # the bootstrap key: a super admin of the system tenant
    status, listing = await http("GET", f"{gateway.url}/v1/invoices?tenant_id={theirs.tenant_id}", credential=admin)
    assert status == 200 and [i["invoice_id"] for i in listing["invoices"]] == [invoice_id]
    assert listing["invoices"][0]["seller"] == msgspec.to_builtins(SELLER)
    for query in ("", f"?tenant_id={theirs.tenant_id}", f"?tenant={theirs.tenant_id}"):
        status, body = await http("GET", f"{gateway.url}/v1/invoices/{invoice_id}{query}", credential=admin)
        assert status == 200 and body["tenant_id"] == theirs.tenant_id and body["total"] == 5390, (query, body)
    status, content_type, text = await page(f"{gateway.url}/v1/invoices/{invoice_id}?format=html", admin)
    assert (status, content_type) == (200, "text/html") and "T1234567890123" in text
    status, body = await http(
        "GET", f"{gateway.url}/v1/invoices/upcoming?tenant_id={theirs.tenant_id}", credential=admin
    )
    assert status == 200 and body["tenant_id"] == theirs.tenant_id
    # Anyone else naming another tenant, or its invoice, finds nothing.
    for url in (
        f"{gateway.url}/v1/invoices?tenant_id={theirs.tenant_id}",
        f"{gateway.url}/v1/invoices/{invoice_id}",
        f"{gateway.url}/v1/invoices/upcoming?tenant_id={theirs.tenant_id}",
    ):
        status, body = await http("GET", url, credential=ours.admin_token)
        assert status == 404 and body["error"]["code"] == "NOT_FOUND", url
    status, body = await http("GET", f"{gateway.url}/v1/invoices/nobody-2025-01", credential=admin)
    assert status == 404


# An invoice.issued event as the v1 code wrote it (before sellers and usage lines within the
# allowance): the log keeps it for ever, so it must fold as it always did.
V1_INVOICE = (
    '{"type":"invoice.issued","invoice_id":"TENANT-2025-01","period":"2025-01","period_start":"2024-12-31T15:00:00Z",'
    '"period_end":"2025-01-31T15:00:00Z","time_zone":"Asia/Tokyo","currency":"JPY","lines":[{"kind":"base_fee",'
    '"description":"Starter plan (monthly), 2025-01-01 00:00 – 2025-01-16 00:00 (Asia/Tokyo), prorated 1,296,000 s'
    ' of 2,678,400 s","quantity":"0.483871","unit":"month","unit_price":"4900","amount":2371,"metric":"",'
    '"plan_id":"starter","service_start":"2024-12-31T15:00:00Z","service_end":"2025-01-15T15:00:00Z"},'
    '{"kind":"base_fee","description":"Pro plan (monthly), 2025-01-16 00:00 – 2025-02-01 00:00 (Asia/Tokyo),'
    ' prorated 1,382,400 s of 2,678,400 s","quantity":"0.516129","unit":"month","unit_price":"19800",'
    '"amount":10219,"metric":"","plan_id":"pro","service_start":"2025-01-15T15:00:00Z",'
    '"service_end":"2025-01-31T15:00:00Z"},{"kind":"overage","description":"API calls over the allowance:'
    ' 1,150,000 call used, 1,000,000 included, 150,000 × ¥0.03 per call","quantity":"150000","unit":"call",'
    '"unit_price":"0.03","amount":4500,"metric":"api_calls","plan_id":"pro","service_start":null,'
    '"service_end":null}],"subtotal":17090,"tax_rate":"0.10","tax":1709,"total":18799,"usage":{"api_calls":1150000,'
    '"compute_ms":0,"storage_bytes":0},"v":1,"tenant_id":"TENANT","meta":{"at":"2025-01-31T16:00:00Z",'
    '"actor":"system","ip":"","user_agent":""}}'
)


async def test_a_v1_invoice_event_still_folds_and_reads_as_it_was_issued(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool
) -> None:
    tenant = await new_billing_tenant(gateway)
    data = V1_INVOICE.replace("TENANT", tenant.tenant_id).encode()
    event = decode_event(data)
    assert (event.v, event.seller, event.lines[2].used, event.lines[2].included) == (1, None, None, None)
    await nc.jetstream().publish(invoice_subject(tenant.tenant_id, "2025-01"), data)
    await caught_up(nc, pool, "billing")
    status, invoice = await http(
        "GET", f"{gateway.url}/v1/invoices/{tenant.tenant_id}-2025-01", credential=tenant.admin_token
    )
    assert status == 200 and invoice["seller"] is None  # not recorded then; nothing is invented
    assert [(line["description"], line["amount"], line["used"]) for line in invoice["lines"]] == [
        (line.description, line.amount, None) for line in event.lines
    ]
    assert "prorated 1,296,000 s of 2,678,400 s" in invoice["lines"][0]["description"]  # as issued
    assert (invoice["subtotal"], invoice["tax"], invoice["total"]) == (17090, 1709, 18799)
    status, content_type, text = await page(
        f"{gateway.url}/v1/invoices/{tenant.tenant_id}-2025-01?format=html", tenant.admin_token
    )
    assert (status, content_type) == (200, "text/html") and "¥18,799" in text and "Democratic_AI" in text
