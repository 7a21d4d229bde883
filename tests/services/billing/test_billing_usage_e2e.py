"""The whole chain with metering's real parts: usage events (issue 4's contract) → the usage
projection → ``PostgresUsageTotals`` → close over HTTP → invoice event → read model → HTTP; then
a rebuild of the usage read model and an identical regenerated invoice.

It runs once metering (issue 4) is in the tree — ``contracts/usage_events.py`` and
``projections/usage.py`` with ``UsageProjection`` registered in ``PROJECTIONS`` — and is
skipped before that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from democratic_ai.contracts import subjects
from democratic_ai.contracts.envelope import Meta
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.projections import PROJECTIONS, rebuild
from democratic_ai.schemas import app_dsn
from democratic_ai.services.billing import BillingConfig, BillingService, PostgresUsageTotals, build_invoice
from democratic_ai.services.gateway import GatewayConfig, create_app
from democratic_ai.services.plans import load_plans

from support.billing import new_billing_tenant
from support.client import http
from support.gateway import Gateway, issue_key
from support.names import unique
from support.projections import caught_up
from support.usage import forget_usage

usage_events = pytest.importorskip("democratic_ai.contracts.usage_events", reason="metering (issue 4) is not merged")
pytest.importorskip("democratic_ai.projections.usage", reason="metering (issue 4) is not merged")

pytestmark = pytest.mark.slow

JAN_START = datetime(2024, 12, 31, 15, 0, tzinfo=UTC)  # 2025-01-01 00:00 in Tokyo
JAN_END = datetime(2025, 1, 31, 15, 0, tzinfo=UTC)
CALLS = 150_000


@pytest.fixture
async def gateway(
    nats_server: NatsServer, database_url: str, pool: asyncpg.Pool, nc: NATS, projections: None
) -> AsyncIterator[Gateway]:
    """A gateway with the real usage read model (the default of ``create_app``)."""
    tenant = unique("tenant")
    key = await issue_key(nc, tenant)
    port = free_port()
    config = GatewayConfig(
        bus=nats_server.bus("gateway"),
        database_url=app_dsn(database_url),
        port=port,
        billing=BillingConfig(close_grace_seconds=0),
    )
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield Gateway(url=f"http://127.0.0.1:{port}", api_key=key, tenant=tenant)
    await runner.cleanup()


async def publish_calls(nc: NATS, tenant: str) -> None:
    """A month of successful calls (the last at the month's last microsecond), some failed ones,
    one on each side of the month, and a republished duplicate — as metering records them."""
    js = nc.jetstream()
    step = (JAN_END - JAN_START) / CALLS
    events = [(f"call-{tenant}-{n}", JAN_START + step * n, "success") for n in range(CALLS - 1)]
    events += [
        (f"call-{tenant}-last", JAN_END - timedelta(microseconds=1), "success"),
        (f"call-{tenant}-failed", JAN_START + timedelta(days=3), "failed"),
        (f"call-{tenant}-before", JAN_START - timedelta(microseconds=1), "success"),
        (f"call-{tenant}-after", JAN_END, "success"),
        (f"call-{tenant}-0", JAN_START, "success"),
    ]  # the first call again: dropped, not counted
    for start in range(0, len(events), 1000):
        for call_id, at, outcome in events[start : start + 1000]:
            event = usage_events.CallMetered(
                tenant_id=tenant,
                metric="api_calls",
                value=1,
                at=at,
                call_id=call_id,
                capability="text.summarize",
                module_id="text-tools",
                outcome=outcome,
            )
            await js.publish_async(
                subjects.usage_subject(tenant, "api_calls"),
                usage_events.encode_event(event),
                headers={"Nats-Msg-Id": usage_events.message_id(event)},
            )
        await js.publish_async_completed()


async def test_a_month_of_usage_events_becomes_the_seeds_invoice(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool
) -> None:
    assert "usage" in PROJECTIONS, "register UsageProjection in projections/__init__.py"
    tenant = await new_billing_tenant(gateway)
    service = BillingService(
        nc.jetstream(), load_plans(), PostgresUsageTotals(pool, nc.jetstream()), BillingConfig(close_grace_seconds=0)
    )
    await service.set_plan(Meta(at=JAN_START), tenant.tenant_id, "starter")
    try:
        await _a_month_becomes_the_invoice(gateway, nc, pool, service, tenant)
    finally:
        await forget_usage(nc, tenant.tenant_id)


async def _a_month_becomes_the_invoice(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, service: BillingService, tenant: Any
) -> None:
    await publish_calls(nc, tenant.tenant_id)
    await caught_up(nc, pool, "usage", timeout=120.0)

    status, body = await http(
        "POST",
        f"{gateway.url}/v1/billing/close-period",
        json={"tenant_id": tenant.tenant_id, "period": "2025-01"},
        credential=gateway.api_key,
    )
    assert status == 200, body
    await caught_up(nc, pool, "billing")
    status, invoice = await http(
        "GET", f"{gateway.url}/v1/invoices/{tenant.tenant_id}-2025-01", credential=tenant.admin_token
    )
    assert status == 200 and invoice["usage"]["api_calls"] == CALLS
    assert [(line["quantity"], line["amount"]) for line in invoice["lines"]] == [
        ("1", 4900),
        ("50000", 2500),
        ("0", 0),
        ("0", 0),
    ]
    assert (invoice["subtotal"], invoice["tax"], invoice["total"]) == (7400, 740, 8140)

    # Rebuild the usage read model from the log: the month recomputes to the same invoice.
    await rebuild(nc.jetstream(), pool, PROJECTIONS["usage"])
    issued, _ = await service.invoice(tenant.tenant_id, "2025-01")
    assert issued is not None
    usage = await PostgresUsageTotals(pool).totals(tenant.tenant_id, JAN_START, JAN_END)
    regenerated = build_invoice(
        await service.subscription(tenant.tenant_id), (2025, 1), usage, BillingConfig().tax_rate, issued.meta
    )
    assert regenerated == issued
