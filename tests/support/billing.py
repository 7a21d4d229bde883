"""Shared by the billing tests: a usage read model the test fills, a gateway that reads it, and
a tenant with an administrator.

Until metering (issue 4) is merged, the usage read model is a stand-in table, ``test_usage``,
behind the same :class:`UsageTotals` port the real one implements; test_billing_usage_e2e.py
runs the same flow against the real usage projection once it is there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS

from democratic_ai.contracts.bus import BusOptions
from democratic_ai.ops.ports import free_port
from democratic_ai.schemas import app_dsn
from democratic_ai.services.billing import BillingConfig, BillingService
from democratic_ai.services.gateway import GatewayConfig, create_app
from democratic_ai.services.plans import load_plans

from support.client import http
from support.gateway import Gateway
from support.identity import login, new_user
from support.names import unique


class TableUsageTotals:
    """:class:`UsageTotals` over ``test_usage (tenant_id, metric, at, value)``, filled by the test."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS test_usage (tenant_id text NOT NULL, metric text NOT NULL,"
                " at timestamptz NOT NULL, value bigint NOT NULL)"
            )

    async def add(self, tenant_id: str, rows: Iterable[tuple[str, datetime, int]]) -> None:
        async with self.pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO test_usage (tenant_id, metric, at, value) VALUES ($1, $2, $3, $4)",
                [(tenant_id, metric, at, value) for metric, at, value in rows],
            )

    async def totals(self, tenant_id: str, start: datetime, end: datetime) -> dict[str, int]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT metric, sum(value)::bigint AS total FROM test_usage WHERE tenant_id = $1 AND at < $3"
                " AND (at >= $2 OR metric = 'storage_bytes') GROUP BY metric",
                tenant_id,
                start,
                end,
            )
        return {r["metric"]: int(r["total"]) for r in rows}


@asynccontextmanager
async def billing_gateway(
    bus: BusOptions,
    database_url: str,
    api_key: str,
    tenant: str,
    usage: TableUsageTotals,
    billing: BillingConfig | None = None,
) -> AsyncIterator[Gateway]:
    port = free_port()
    config = GatewayConfig(
        bus=bus, database_url=app_dsn(database_url), port=port, billing=billing or BillingConfig(close_grace_seconds=0)
    )
    runner = web.AppRunner(create_app(config, usage=usage))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Gateway(url=f"http://127.0.0.1:{port}", api_key=api_key, tenant=tenant)
    finally:
        await runner.cleanup()


def billing_service(nc: NATS, usage: TableUsageTotals, config: BillingConfig | None = None) -> BillingService:
    """The command side, for tests that record subscriptions at chosen times in the past."""
    return BillingService(nc.jetstream(), load_plans(), usage, config or BillingConfig(close_grace_seconds=0))


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    admin_token: str
    viewer_token: str


async def new_billing_tenant(gateway: Gateway, name: str = "Acme") -> Tenant:
    tenant_id = unique("acme")
    status, body = await http(
        "POST", f"{gateway.url}/v1/tenants", json={"tenant_id": tenant_id, "name": name}, credential=gateway.api_key
    )
    assert status == 201, (status, body)
    admin = await new_user(gateway, tenant_id, "tenant_admin")
    viewer = await new_user(gateway, tenant_id, "viewer")
    return Tenant(
        tenant_id,
        (await login(gateway, tenant_id, admin))["access_token"],
        (await login(gateway, tenant_id, viewer))["access_token"],
    )
