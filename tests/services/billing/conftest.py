"""Fixtures of the billing API tests: a gateway whose usage totals come from a table the test
fills (``usage``), billing as ``billing_config`` says — a test module overrides that fixture for
other settings (a seller, Stripe)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.services.billing import BillingConfig

from support.billing import TableUsageTotals, billing_gateway
from support.gateway import Gateway, issue_key
from support.names import unique


@pytest.fixture
def billing_config() -> BillingConfig:
    return BillingConfig(close_grace_seconds=0)


@pytest.fixture
async def usage(pool: asyncpg.Pool) -> TableUsageTotals:
    table = TableUsageTotals(pool)
    await table.create()
    return table


@pytest.fixture
async def gateway(
    nats_server: NatsServer,
    database_url: str,
    nc: NATS,
    projections: None,
    usage: TableUsageTotals,
    billing_config: BillingConfig,
) -> AsyncIterator[Gateway]:
    tenant = unique("tenant")
    key = await issue_key(nc, tenant)
    async with billing_gateway(nats_server.bus("gateway"), database_url, key, tenant, usage, billing_config) as gw:
        yield gw
