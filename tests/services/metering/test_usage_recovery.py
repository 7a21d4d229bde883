"""A gateway killed with usage events still in its buffer: recovery re-derives exactly those from
the MCP log, and the totals come out exact."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import aiohttp
import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.ops.ports import free_port
from democratic_ai.projections import RecoveryConfig, UsageRecovery
from democratic_ai.schemas import app_dsn

from support.gateway import gateway_ready, issue_key
from support.modules import Echo
from support.names import unique
from support.projections import caught_up
from support.usage import usage_events
from support.waiting import eventually

CALLS = 300  # 1,200 usage events: a full batch of 1,000 goes out at once, the last ones stay buffered


@pytest.mark.slow
async def test_usage_buffered_by_a_killed_gateway_is_recovered_exactly(
    nats_server: object, database_url: str, pool: asyncpg.Pool, nc: NATS, echo: Echo, projections: None
) -> None:
    tenant = unique("tenant")
    key = await issue_key(nc, tenant)
    port = free_port()
    env = {
        **os.environ,
        **nats_server.environment("gateway"),
        "DATABASE_APP_URL": app_dsn(database_url),
        "DAI_LOG_LEVEL": "WARNING",
        "DAI_USAGE_FLUSH_SECONDS": "600",
    }
    gateway = subprocess.Popen([sys.executable, "-m", "democratic_ai.ops.cli", "gateway", "--port", str(port)], env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        await gateway_ready(url, key)
        slots = asyncio.Semaphore(16)

        async def call(session: aiohttp.ClientSession, i: int) -> int:
            async with (
                slots,
                session.post(
                    f"{url}/v1/capabilities/test.echo/invoke", json={"text": f"call {i}"}, headers={"X-API-Key": key}
                ) as response,
            ):
                return response.status

        async with aiohttp.ClientSession() as session:
            statuses = await asyncio.gather(*(call(session, i) for i in range(CALLS)))
        assert statuses == [200] * CALLS

        async def batch_out() -> bool:  # the full batch reaches the stream; the rest waits 600 s
            info = await nc.jetstream().stream_info("USAGE", subjects_filter=f"usage.{tenant}.>")
            return sum((info.state.subjects or {}).values()) >= 1000

        await eventually(batch_out, "the gateway's first full batch in the stream", timeout=10, interval=0.05)
    finally:
        gateway.send_signal(signal.SIGKILL)
        gateway.wait()
    published = len(await usage_events(nc, tenant))
    assert 1000 <= published < 4 * CALLS, "the killed gateway held the last events"
    missing = 4 * CALLS - published

    stop = asyncio.Event()
    recovery = UsageRecovery(nc.jetstream(), pool, RecoveryConfig(grace=0.5, initial_lookback=60))
    task = asyncio.create_task(recovery.run(stop))
    try:
        await eventually(
            lambda: recovery.recovered >= missing, f"the sweep to recover {missing} events", timeout=30, interval=0.05
        )
        # A window for what must not happen: a second sweep of the same calls publishing more.
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await task
    # Other tests' calls in the lookback window may be recovered too (the MCP stream is shared);
    # this tenant's exact totals below are what must hold.
    assert recovery.recovered >= missing

    await caught_up(nc, pool, "usage")
    events = await usage_events(nc, tenant)
    assert len(events) == 4 * CALLS
    assert len({(e.call_id, e.metric) for e in events}) == 4 * CALLS
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT metric, outcome, sum(value)::bigint AS value FROM usage_daily WHERE tenant_id = $1 GROUP BY 1, 2",
            tenant,
        )
    totals = {(r["metric"], r["outcome"]): r["value"] for r in rows}
    assert totals[("api_calls", "success")] == CALLS
    assert totals[("bytes_in", "success")] == sum(e.value for e in events if e.metric == "bytes_in")
    assert set(totals) == {(m, "success") for m in ("api_calls", "compute_ms", "bytes_in", "bytes_out")}
