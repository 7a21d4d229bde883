"""Billing end to end against real NATS and PostgreSQL: plan → usage → close → invoice event →
read model → HTTP, with permissions, tenant isolation, idempotent closing and rebuilds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import msgspec
from nats.aio.client import Client as NATS

from democratic_ai.contracts.billing_events import PaymentFailed, PaymentSucceeded
from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.subjects import stripe_event_subject
from democratic_ai.projections import BillingProjection, rebuild
from democratic_ai.services.billing import BillingConfig, BillingLog, build_invoice

from support.billing import TableUsageTotals, billing_service, new_billing_tenant
from support.client import http
from support.gateway import Gateway
from support.projections import caught_up

JAN_START = datetime(2024, 12, 31, 15, 0, tzinfo=UTC)  # 2025-01-01 00:00 in Tokyo
JAN_END = datetime(2025, 1, 31, 15, 0, tzinfo=UTC)


async def a_month_of_calls(usage: TableUsageTotals, tenant: str) -> None:
    """150,000 successful calls in Tokyo's January 2025, and some on either side of it."""
    rows = [("api_calls", JAN_START + timedelta(hours=5 * n), 1000) for n in range(149)]
    rows += [("api_calls", JAN_END - timedelta(microseconds=1), 1000)]  # the month's last instant counts
    rows += [
        ("api_calls", JAN_START - timedelta(microseconds=1), 777),  # Tokyo's December
        ("api_calls", JAN_END, 555),
    ]  # Tokyo's February
    await usage.add(tenant, rows)


async def test_a_month_of_calls_becomes_an_invoice_over_http(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, usage: TableUsageTotals
) -> None:
    tenant = await new_billing_tenant(gateway)
    await billing_service(nc, usage).set_plan(Meta(at=JAN_START), tenant.tenant_id, "starter")
    await a_month_of_calls(usage, tenant.tenant_id)

    status, body = await http(
        "POST",
        f"{gateway.url}/v1/billing/close-period",
        json={"tenant_id": tenant.tenant_id, "period": "2025-01"},
        credential=gateway.api_key,
    )
    assert status == 200, body
    [closed] = body["closed"]
    assert closed["created"] is True
    assert (closed["invoice"]["subtotal"], closed["invoice"]["tax"], closed["invoice"]["total"]) == (7400, 740, 8140)
    await caught_up(nc, pool, "billing")

    status, listing = await http("GET", f"{gateway.url}/v1/invoices", credential=tenant.admin_token)
    assert status == 200 and [i["invoice_id"] for i in listing["invoices"]] == [f"{tenant.tenant_id}-2025-01"]
    url = f"{gateway.url}/v1/invoices/{tenant.tenant_id}-2025-01"
    status, invoice = await http("GET", url, credential=tenant.admin_token)
    assert status == 200 and invoice["status"] == "open" and invoice["currency"] == "JPY"
    assert invoice["usage"]["api_calls"] == 150_000
    assert [(line["kind"], line["quantity"], line["unit_price"], line["amount"]) for line in invoice["lines"]] == [
        ("base_fee", "1", "4900", 4900),
        ("overage", "50000", "0.05", 2500),
        ("overage", "0", "50", 0),
        ("overage", "0", "10", 0),
    ]
    assert [(line["used"], line["included"]) for line in invoice["lines"]] == [
        (None, None),
        ("150000", 100_000),
        ("0", 100),
        ("0", 50),
    ]
    assert invoice["seller"] == {"name": "Democratic_AI", "address": "", "registration_number": ""}
    assert (invoice["subtotal"], invoice["tax_rate"], invoice["tax"], invoice["total"]) == (7400, "0.10", 740, 8140)

    status, plan = await http("GET", f"{gateway.url}/v1/billing/plan", credential=tenant.viewer_token)
    assert status == 403 and plan["error"]["details"]["needed"] == ["billing:read"]
    status, plan = await http("GET", f"{gateway.url}/v1/billing/plan", credential=tenant.admin_token)
    assert status == 200 and plan["subscription"]["plan_id"] == "starter"
    assert {p["plan_id"] for p in plan["plans"]} == {"free", "starter", "pro", "enterprise"}


async def test_invoice_page_is_printable_html_with_everything_escaped(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, usage: TableUsageTotals
) -> None:
    tenant = await new_billing_tenant(gateway, name="<script>alert('x')</script> & Sons")
    await billing_service(nc, usage).set_plan(Meta(at=JAN_START), tenant.tenant_id, "starter")
    await a_month_of_calls(usage, tenant.tenant_id)
    await billing_service(nc, usage).close_period(tenant.tenant_id, "2025-01")
    await caught_up(nc, pool, "billing")
    url = f"{gateway.url}/v1/invoices/{tenant.tenant_id}-2025-01"
    pages = []
    async with aiohttp.ClientSession() as session:
        for target, headers in ((f"{url}?format=html", {}), (url, {"Accept": "text/html,*/*;q=0.8"})):
            async with session.get(target, headers={**headers, "Authorization": f"Bearer {tenant.admin_token}"}) as r:
                assert r.status == 200 and r.content_type == "text/html"
                pages.append(await r.text())
    assert pages[0] == pages[1]
    page = pages[0]
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; Sons" in page
    for text in ("¥4,900", "¥0.05", "¥2,500", "¥7,400", "¥740", "¥8,140", "50,000 call", "@media print"):
        assert text in page, text


async def test_plan_changes_over_http_need_billing_update(gateway: Gateway, nc: NATS, pool: asyncpg.Pool) -> None:
    tenant = await new_billing_tenant(gateway)
    plan_url = f"{gateway.url}/v1/billing/plan"
    status, body = await http("PUT", plan_url, json={"plan": "pro"}, credential=tenant.viewer_token)
    assert status == 403
    status, body = await http(
        "PUT",
        plan_url,
        json={"plan": "starter", "interval": "year", "time_zone": "Europe/Berlin"},
        credential=tenant.admin_token,
    )
    assert status == 200, body
    assert (body["subscription"]["plan_id"], body["subscription"]["interval"], body["subscription"]["time_zone"]) == (
        "starter",
        "year",
        "Europe/Berlin",
    )
    status, body = await http("PUT", plan_url, json={"plan": "pro", "interval": "year"}, credential=tenant.admin_token)
    assert status == 200 and body["subscription"]["plan_id"] == "pro"
    for bad, path in (
        ({"plan": "platinum"}, "plan"),
        ({"plan": "pro", "interval": "week"}, "interval"),
        ({"plan": "pro", "time_zone": "Mars/Olympus"}, "time_zone"),
        ({"plan": "pro", "time_zone": "Asia/Tokyo"}, "time_zone"),
    ):
        status, body = await http("PUT", plan_url, json=bad, credential=tenant.admin_token)
        assert status == 422 and body["error"]["details"]["field"] == path, (bad, body)
    status, body = await http("DELETE", plan_url, credential=tenant.admin_token)
    assert status == 200 and body["subscription"]["status"] == "cancelled"
    status, body = await http("DELETE", plan_url, credential=tenant.admin_token)
    assert status == 409
    # Closing months is for super admins; the current month cannot be closed before it ends.
    status, body = await http(
        "POST",
        f"{gateway.url}/v1/billing/close-period",
        json={"tenant_id": tenant.tenant_id},
        credential=tenant.admin_token,
    )
    assert status == 403
    this_month = datetime.now(UTC).strftime("%Y-%m")
    status, body = await http(
        "POST",
        f"{gateway.url}/v1/billing/close-period",
        json={"tenant_id": tenant.tenant_id, "period": this_month},
        credential=gateway.api_key,
    )
    assert status == 422 and "can be closed from" in body["error"]["message"]


async def test_another_tenants_invoice_is_not_found(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, usage: TableUsageTotals
) -> None:
    ours, theirs = await new_billing_tenant(gateway), await new_billing_tenant(gateway)
    service = billing_service(nc, usage)
    await service.set_plan(Meta(at=JAN_START), theirs.tenant_id, "starter")
    await service.close_period(theirs.tenant_id, "2025-01")
    await caught_up(nc, pool, "billing")
    url = f"{gateway.url}/v1/invoices/{theirs.tenant_id}-2025-01"
    assert (await http("GET", url, credential=theirs.admin_token))[0] == 200
    status, body = await http("GET", url, credential=ours.admin_token)
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    status, _ = await http("GET", f"{gateway.url}/v1/invoices?tenant={theirs.tenant_id}", credential=ours.admin_token)
    assert status == 404
    status, listing = await http("GET", f"{gateway.url}/v1/invoices", credential=ours.admin_token)
    assert status == 200 and listing["invoices"] == []
    # A super admin names the tenant.
    status, body = await http("GET", f"{url}?tenant={theirs.tenant_id}", credential=gateway.api_key)
    assert status == 200 and body["total"] == 4900 + 490


async def test_closing_a_month_concurrently_issues_one_invoice(
    gateway: Gateway, nc: NATS, usage: TableUsageTotals
) -> None:
    tenant = await new_billing_tenant(gateway)
    await billing_service(nc, usage).set_plan(Meta(at=JAN_START), tenant.tenant_id, "starter")
    await a_month_of_calls(usage, tenant.tenant_id)
    # Eight closers, each with its own service (as separate processes would be), at once.
    results = await asyncio.gather(
        *(billing_service(nc, usage).close_period(tenant.tenant_id, "2025-01") for _ in range(8))
    )
    assert sum(r.created for r in results) == 1
    assert len({msgspec.json.encode(r.invoice) for r in results}) == 1
    info = await nc.jetstream().stream_info("BILLING", subjects_filter=f"billing.{tenant.tenant_id}.invoice.>")
    assert info.state.subjects == {f"billing.{tenant.tenant_id}.invoice.2025-01": 1}
    # And again later: the same invoice, nothing appended.
    again = await billing_service(nc, usage).close_due(tenant.tenant_id, "2025-01")
    assert [r.created for r in again] == [False] and again[0].invoice == results[0].invoice


async def test_close_due_catches_up_every_ended_month_once(gateway: Gateway, nc: NATS, usage: TableUsageTotals) -> None:
    tenant = await new_billing_tenant(gateway)
    service = billing_service(nc, usage)
    await service.set_plan(Meta(at=JAN_START + timedelta(days=10)), tenant.tenant_id, "starter")
    service.clock = lambda: datetime(2025, 4, 10, tzinfo=UTC)
    closed = await service.close_due(tenant.tenant_id)
    assert [(c.period, c.created) for c in closed] == [("2025-01", True), ("2025-02", True), ("2025-03", True)]
    assert closed[0].invoice is not None and closed[0].invoice.lines[0].amount == 3319  # 21/31 × 4,900 = 3,319.35
    assert await service.close_due(tenant.tenant_id) == []


async def test_regenerating_from_a_rebuilt_usage_read_model_gives_the_same_invoice(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, usage: TableUsageTotals
) -> None:
    tenant = await new_billing_tenant(gateway)
    service = billing_service(nc, usage)
    await service.set_plan(Meta(at=JAN_START), tenant.tenant_id, "starter")
    await a_month_of_calls(usage, tenant.tenant_id)
    issued = (await service.close_period(tenant.tenant_id, "2025-01")).invoice
    assert issued is not None
    # Rebuild the usage read model: empty it and fold the same usage again, in another order.
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT metric, at, value FROM test_usage WHERE tenant_id = $1 ORDER BY at DESC", tenant.tenant_id
        )
        await conn.execute("DELETE FROM test_usage WHERE tenant_id = $1", tenant.tenant_id)
    await usage.add(tenant.tenant_id, [(r["metric"], r["at"], r["value"]) for r in rows])
    subscription = await service.subscription(tenant.tenant_id)
    recomputed = build_invoice(
        subscription,
        (2025, 1),
        await usage.totals(tenant.tenant_id, JAN_START, JAN_END),
        BillingConfig().tax_rate,
        issued.meta,
    )
    assert recomputed == issued


async def test_every_billing_read_model_rebuilds_identically(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, usage: TableUsageTotals
) -> None:
    tenant = await new_billing_tenant(gateway)
    service = billing_service(nc, usage)
    t = tenant.tenant_id
    await service.set_plan(Meta(at=JAN_START), t, "starter")
    await service.set_plan(Meta(at=JAN_START + timedelta(days=15)), t, "pro")
    await a_month_of_calls(usage, t)
    for month in ("2025-01", "2025-02"):
        await service.close_period(t, month)
    await service.cancel(Meta(at=datetime(2025, 3, 3, tzinfo=UTC)), t)
    billing_log = BillingLog(nc.jetstream())
    common = {
        "tenant_id": t,
        "invoice_id": f"{t}-2025-01",
        "stripe_invoice_id": "in_1",
        "amount": 15_028,
        "currency": "JPY",
    }
    await billing_log.append(
        stripe_event_subject(t, "a" * 32),
        PaymentFailed(
            meta=Meta(at=datetime(2025, 2, 3, tzinfo=UTC)), stripe_event_id="evt_a", reason="card declined", **common
        ),
        expected=0,
    )
    await billing_log.append(
        stripe_event_subject(t, "b" * 32),
        PaymentSucceeded(meta=Meta(at=datetime(2025, 2, 5, tzinfo=UTC)), stripe_event_id="evt_b", **common),
        expected=0,
    )
    await caught_up(nc, pool, "billing")

    async def snapshot() -> dict[str, list[tuple]]:
        async with pool.acquire() as conn:
            return {
                table: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY 1, 2")]
                for table in BillingProjection.tables
            }

    live = await snapshot()
    assert all(live[table] for table in BillingProjection.tables if table != "billing_customers")
    statuses = {r[0]: (r[12], r[15]) for r in live["billing_invoices"] if r[1] == t}
    assert statuses[f"{t}-2025-01"] == ("paid", datetime(2025, 2, 5, tzinfo=UTC))
    assert statuses[f"{t}-2025-02"] == ("open", None)
    await rebuild(nc.jetstream(), pool, BillingProjection())
    assert await snapshot() == live
