"""A bus that stalls mid-request: the gateway answers 503 NOT_READY with Retry-After, never a 500,
and serves again as soon as the bus does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.bus import connect
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.schemas import app_dsn
from democratic_ai.services.gateway import GatewayConfig, create_app
from democratic_ai.services.identity import KeyEncryptionKey

from support.gateway import TEST_METERING, issue_key
from support.names import unique

pytestmark = pytest.mark.slow


@pytest.fixture
async def stalling(
    tmp_path: Path, database_url: str, pool: asyncpg.Pool, kek: KeyEncryptionKey
) -> AsyncIterator[tuple[NatsServer, str, str]]:
    """A nats-server of this test's own, a super-admin key and a gateway on it: (server, url, key).
    (``pool`` migrates the test's database, which the gateway reads as ``dai_app``.)"""
    server = NatsServer(tmp_path / "bus", port=free_port())
    server.start()
    nc = await connect(server.bus("operator"), "stall-test")
    await ensure_streams(nc.jetstream())
    key = await issue_key(nc, unique("ops"))
    port = free_port()
    config = GatewayConfig(
        bus=server.bus("gateway"), database_url=app_dsn(database_url), port=port, metering=TEST_METERING, kek=kek
    )
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield server, f"http://127.0.0.1:{port}", key
    finally:
        server.resume()
        await runner.cleanup()
        await nc.close()
        server.stop()


async def test_a_stalled_bus_answers_503_not_ready_and_the_gateway_recovers(
    stalling: tuple[NatsServer, str, str],
) -> None:
    server, url, key = stalling
    headers = {"X-API-Key": key}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        server.pause()
        try:
            async with session.post(f"{url}/v1/tenants", json={"tenant_id": unique("stalled")}) as response:
                body = await response.json()
                assert response.status == 503, body
                assert body["error"]["code"] == "NOT_READY"
                assert response.headers["Retry-After"] == "1"
        finally:
            server.resume()
        tenant = unique("after")
        async with session.post(f"{url}/v1/tenants", json={"tenant_id": tenant}) as response:
            assert response.status == 201, await response.text()
