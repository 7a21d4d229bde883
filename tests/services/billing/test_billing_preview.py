"""Previewing a change of plan, against real NATS and PostgreSQL: the month with the change is
exactly the invoice the month issues once the change is made at that instant (the same code),
nothing is appended, and the preview is refused as the change is (unknown plan, interval)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts.envelope import Meta
from democratic_ai.services.billing import BillingConfig, Invalid
from democratic_ai.services.billing.periods import month_of, month_period

from support.billing import TableUsageTotals, billing_service, new_billing_tenant
from support.client import http
from support.gateway import Gateway

JAN_START = datetime(2024, 12, 31, 15, 0, tzinfo=UTC)  # 2025-01-01 00:00 in Tokyo
JAN_16 = JAN_START + timedelta(days=15)
JAN_END = datetime(2025, 1, 31, 15, 0, tzinfo=UTC)
CONFIG = BillingConfig(close_grace_seconds=0)


@pytest.fixture
def billing_config() -> BillingConfig:
    return CONFIG


async def test_the_preview_is_the_invoice_the_change_issues(
    gateway: Gateway, nc: NATS, usage: TableUsageTotals
) -> None:
    """Starter from 1 January, 150,000 calls; on the 16th, Pro previewed, then chosen: the month
    with the change is the invoice closing January issues, to the line."""
    tenant = (await new_billing_tenant(gateway)).tenant_id
    service = billing_service(nc, usage, CONFIG)
    await service.set_plan(Meta(at=JAN_START), tenant, "starter")
    await usage.add(tenant, [("api_calls", JAN_START + timedelta(hours=n), 10_000) for n in range(15)])
    service.clock = lambda: JAN_16
    preview = await service.preview_plan(Meta(at=JAN_16, actor="user:ada"), tenant, "pro")
    assert preview.changes and preview.as_of == JAN_16
    assert preview.unchanged is not None and preview.changed is not None
    # Without the change: the whole month of Starter, 50,000 calls over its 100,000 at ¥0.05.
    assert [(line.plan_id, line.metric, line.amount) for line in preview.unchanged.lines] == [
        ("starter", "", 4900),
        ("starter", "api_calls", 2500),
        ("starter", "compute_ms", 0),
        ("starter", "storage_bytes", 0),
    ]
    # With it: 15/31 of Starter, 16/31 of Pro, the month's calls within Pro's 1,000,000.
    assert [(line.plan_id, line.metric, line.amount) for line in preview.changed.lines] == [
        ("starter", "", 2371),
        ("pro", "", 10219),
        ("pro", "api_calls", 0),
        ("pro", "compute_ms", 0),
        ("pro", "storage_bytes", 0),
    ]
    assert preview.changed.lines[1].description == (
        "Pro plan (monthly), 2025-01-16 00:00 – 2025-02-01 00:00 (Asia/Tokyo), 16 days of 31 days"
    )
    assert (preview.unchanged.total, preview.changed.total) == (8140, 13849)  # tax 10 %, rounded down
    assert preview.difference == 13849 - 8140
    assert (await service.subscription(tenant)).current.terms.plan_id == "starter"  # type: ignore[union-attr]

    await service.set_plan(Meta(at=JAN_16), tenant, "pro")
    service.clock = lambda: JAN_END + timedelta(hours=2)
    closed = await service.close_period(tenant, "2025-01")
    assert closed.created and closed.invoice is not None
    assert msgspec.structs.replace(closed.invoice, meta=preview.changed.meta) == preview.changed


async def test_previewing_the_current_plan_or_a_first_one(gateway: Gateway, nc: NATS, usage: TableUsageTotals) -> None:
    tenant = (await new_billing_tenant(gateway)).tenant_id
    service = billing_service(nc, usage, CONFIG)
    service.clock = lambda: JAN_16
    first = await service.preview_plan(Meta(at=JAN_16), tenant, "starter", time_zone="Europe/Paris")
    assert first.changes and first.unchanged is None and first.changed is not None
    assert first.changed.time_zone == "Europe/Paris"
    assert first.changed.lines[0].description.startswith("Starter plan (monthly), 2025-01-15 16:00 – 2025-02-01 00:00")
    await service.set_plan(Meta(at=JAN_START), tenant, "starter", time_zone="Europe/Paris")
    same = await service.preview_plan(Meta(at=JAN_16), tenant, "starter")
    assert not same.changes and same.unchanged == same.changed and same.difference == 0
    with pytest.raises(Invalid, match="there is no plan 'gold'"):
        await service.preview_plan(Meta(at=JAN_16), tenant, "gold")
    with pytest.raises(Invalid, match="the billing time zone is Europe/Paris"):
        await service.preview_plan(Meta(at=JAN_16), tenant, "pro", time_zone="Asia/Tokyo")


async def test_preview_over_http(gateway: Gateway, nc: NATS, usage: TableUsageTotals) -> None:
    tenant = await new_billing_tenant(gateway)
    month = month_period(month_of(datetime.now(UTC), "Asia/Tokyo"), "Asia/Tokyo")
    await billing_service(nc, usage).set_plan(Meta(at=month.start), tenant.tenant_id, "starter")
    url = f"{gateway.url}/v1/billing/plan/preview"

    status, body = await http("GET", f"{url}?plan=pro", credential=tenant.viewer_token)
    assert status == 403 and body["error"]["details"]["needed"] == ["billing:read"]
    status, preview = await http("GET", f"{url}?plan=pro&interval=month", credential=tenant.admin_token)
    assert status == 200, preview
    assert (preview["plan_id"], preview["interval"], preview["changes"]) == ("pro", "month", True)
    unchanged, changed = preview["unchanged"], preview["changed"]
    assert [line["plan_id"] for line in unchanged["lines"] if line["kind"] == "base_fee"] == ["starter"]
    assert [line["plan_id"] for line in changed["lines"] if line["kind"] == "base_fee"] == ["starter", "pro"]
    assert unchanged["lines"][0]["amount"] == 4900  # the whole month, as it will be billed without the change
    assert changed["lines"][1]["service_end"] == month.end.isoformat().replace("+00:00", "Z")
    assert preview["difference"] == changed["total"] - unchanged["total"]
    assert changed["invoice_id"] == f"{tenant.tenant_id}-{changed['period']}"

    for query, field in (("", "plan"), ("?plan=gold", "plan"), ("?plan=pro&interval=week", "interval")):
        status, body = await http("GET", f"{url}{query}", credential=tenant.admin_token)
        assert status == 422 and body["error"]["code"] == "VALIDATION_FAILED", (query, body)
        assert body["error"]["details"]["field"] == field, (query, body)
    status, body = await http("GET", f"{url}?plan={'x' * 200}", credential=tenant.admin_token)
    assert status == 422 and body["error"]["details"]["field"] == "plan", body

    # Nothing was changed.
    status, plan = await http("GET", f"{gateway.url}/v1/billing/plan", credential=tenant.admin_token)
    assert status == 200 and plan["subscription"]["plan_id"] == "starter"
