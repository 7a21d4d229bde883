"""After 10,000 calls the billable usage in Postgres equals the successful calls, exactly."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.services.metering import MeteringConfig, load_plans

from support.gateway import TEST_METERING, StartGateway
from support.modules import Echo
from support.names import unique
from support.projections import caught_up
from support.usage import forget_usage

CALLS = 10_000
CONCURRENCY = 64


@pytest.mark.slow
async def test_ten_thousand_calls_meter_exactly(
    start_gateway: StartGateway, echo: Echo, nc: NATS, pool: asyncpg.Pool
) -> None:
    tenant = unique("volume")
    plans = load_plans()
    plans.assign(tenant, "unlimited")
    gateway = await start_gateway(MeteringConfig(plans=plans, publisher=TEST_METERING.publisher), tenant=tenant)
    url = f"{gateway.url}/v1/capabilities/test.echo/invoke"
    headers = {"X-API-Key": gateway.api_key}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(CALLS):
        queue.put_nowait(i)
    statuses: Counter[int] = Counter()

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            # One call in a hundred fails in the module: recorded, and not billable.
            async with session.post(url, json={"text": "v", "fail": i % 100 == 0}, headers=headers) as response:
                await response.read()
                statuses[response.status] += 1

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    assert statuses == {200: CALLS - CALLS // 100, 502: CALLS // 100}

    assert await gateway.metering.publisher.flush(timeout=30)
    await caught_up(nc, pool, "usage", timeout=60)
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT metric, outcome, sum(value)::bigint AS value, sum(events)::bigint AS events"
            " FROM usage_daily WHERE tenant_id = $1 GROUP BY 1, 2",
            tenant,
        )
        raw = await conn.fetchval(
            "SELECT count(*) FROM usage_events WHERE tenant_id = $1 AND metric = 'api_calls'", tenant
        )
    totals = {(r["metric"], r["outcome"]): r["value"] for r in rows}
    print(f"\n{CALLS} calls in {elapsed:.1f} s ({CALLS / elapsed:.0f}/s, {CONCURRENCY} in flight)")
    assert totals[("api_calls", "success")] == statuses[200]
    assert totals[("api_calls", "failed")] == statuses[502]
    assert raw == CALLS
    await forget_usage(nc, tenant)
