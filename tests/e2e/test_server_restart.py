"""A nats-server killed (-9) and started again on the same store and port, under load: every
follower resumes where it stopped, so a rate-limited tenant is served again within seconds and
a key revoked right after the restart is refused by every gateway within a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.bus import connect
from democratic_ai.hub import Hub
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.projections import PROJECTIONS, ProjectionRunner
from democratic_ai.schemas import app_dsn
from democratic_ai.services.gateway import GatewayConfig, create_app
from democratic_ai.services.identity import KeyEncryptionKey

from support.gateway import TEST_METERING, issue_key
from support.modules import Echo, registered
from support.names import unique
from support.projections import caught_up
from support.waiting import eventually

pytestmark = pytest.mark.slow

LIMIT = 550  # the key's calls per minute (its tenant, on the free plan, has 600): never reached here,
# but every call takes quota from a lease both gateways share
PACE = 0.03  # seconds between calls: about 25 a second


@dataclass
class Platform:
    server: NatsServer
    nc: NATS
    pool: asyncpg.Pool
    gateways: list[str]
    projections: list[asyncio.Task[None]] = field(default_factory=list)
    runners: list[web.AppRunner] = field(default_factory=list)


@pytest.fixture
async def platform(
    tmp_path: Path, database_url: str, pool: asyncpg.Pool, kek: KeyEncryptionKey
) -> AsyncIterator[Platform]:
    """A nats-server of this test's own on a fixed port, a hub, the echo module, every
    projection and two in-process gateways, all connected to it."""
    server = NatsServer(tmp_path / "platform", port=free_port())
    server.start()
    nc = await connect(server.bus("operator"), "restart-test", max_reconnect_attempts=-1)
    await ensure_streams(nc.jetstream())
    hub, echo = Hub(), Echo()
    await hub.start(nc)
    await echo.start(nc)
    await registered(hub, echo)
    stop = asyncio.Event()
    projections = [
        asyncio.create_task(ProjectionRunner(nc.jetstream(), pool, p, batch=256).run(stop))
        for p in PROJECTIONS.values()
    ]
    platform = Platform(server, nc, pool, [], projections)
    for _ in range(2):
        port = free_port()
        config = GatewayConfig(
            bus=server.bus("gateway"), database_url=app_dsn(database_url), port=port, metering=TEST_METERING, kek=kek
        )
        runner = web.AppRunner(create_app(config), handler_cancellation=True)
        await runner.setup()
        platform.runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        platform.gateways.append(f"http://127.0.0.1:{port}")
    try:
        yield platform
    finally:
        for runner in reversed(platform.runners):
            await runner.cleanup()
        stop.set()
        await asyncio.gather(*projections, return_exceptions=True)
        await echo.stop()
        await hub.stop()
        await nc.close()
        server.stop()


async def _status(session: aiohttp.ClientSession, method: str, url: str, key: str) -> int:
    try:
        async with session.request(
            method, url, headers={"X-API-Key": key}, json={"text": "hi"}, timeout=aiohttp.ClientTimeout(total=5)
        ) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def _load(gateways: list[str], key: str, until: asyncio.Event, calls: list[tuple[float, int, int]]) -> None:
    """Call test.echo through each gateway in turn until ``until``; record (start, gateway, status)."""
    async with aiohttp.ClientSession() as session:
        n = 0
        while not until.is_set():
            index = n % len(gateways)
            started = time.monotonic()
            status = await _status(session, "POST", f"{gateways[index]}/v1/capabilities/test.echo/invoke", key)
            calls.append((started, index, status))
            n += 1
            await asyncio.sleep(PACE)  # paces the load


async def _revoke_when_possible(gateway: str, admin: str, tenant: str, key_id: str, timeout: float) -> float:
    """Revoke ``key_id`` through ``gateway`` as soon as it accepts; returns when it answered."""
    async with aiohttp.ClientSession() as session:

        async def revoked() -> bool:
            return await _status(session, "DELETE", f"{gateway}/v1/tenants/{tenant}/api-keys/{key_id}", admin) == 204

        await eventually(revoked, "the revocation to be accepted", timeout=timeout, interval=0.02)
    return time.monotonic()


async def _refused_everywhere(gateways: list[str], key: str, timeout: float) -> float:
    """Seconds until every gateway answers ``key`` with 401."""
    started = time.monotonic()
    pending = set(gateways)
    async with aiohttp.ClientSession() as session:

        async def refused() -> bool:
            for url in list(pending):
                if await _status(session, "GET", f"{url}/v1/usage/limits", key) == 401:
                    pending.discard(url)
            return not pending

        await eventually(
            refused,
            lambda: f"every gateway to refuse the revoked key; {sorted(pending)} still accept it",
            timeout=timeout,
        )
    return time.monotonic() - started


async def test_followers_resume_after_nats_server_is_killed_and_started_again(platform: Platform) -> None:
    async def scenario() -> None:
        tenant = unique("restart")
        admin = await issue_key(platform.nc, tenant)
        limited = await issue_key(platform.nc, tenant, rate_limit=LIMIT)
        doomed = await issue_key(platform.nc, tenant)
        doomed_id = doomed.split("_", 2)[1]
        async with aiohttp.ClientSession() as session:
            for url in platform.gateways:  # both know both keys, and the limited key holds leases
                for key in (limited, doomed):

                    async def served(url: str = url, key: str = key) -> bool:
                        return await _status(session, "POST", f"{url}/v1/capabilities/test.echo/invoke", key) == 200

                    await eventually(served, f"{url} to serve the test's keys", timeout=10, interval=0.05)

        calls: list[tuple[float, int, int]] = []
        done = asyncio.Event()
        load = asyncio.create_task(_load(platform.gateways, limited, done, calls))
        await asyncio.sleep(1.0)  # a second of calls before the kill
        killed = time.monotonic()
        platform.server.kill()
        await asyncio.sleep(0.5)  # the outage
        platform.server.start()
        back = time.monotonic()

        revoked = await _revoke_when_possible(platform.gateways[0], admin, tenant, doomed_id, timeout=10)
        refused_after = await _refused_everywhere(platform.gateways, doomed, timeout=1.0)
        await asyncio.sleep(max(0.0, back + 8 - time.monotonic()))  # eight seconds of calls after the restart
        done.set()
        await load

        before = [status for started, _, status in calls if started < killed - 0.1]
        assert before and set(before) == {200}, "calls failed before the server was killed"
        for index in range(len(platform.gateways)):
            after = [(started, status) for started, gateway, status in calls if gateway == index and started >= back]
            failures = [started for started, status in after if status != 200]
            last_failure = max(failures, default=back)
            served = [started for started, status in after if status == 200 and started > last_failure]
            assert last_failure - back < 5.0, (
                f"gateway {index} failed calls {last_failure - back:.1f} s after the restart"
            )
            assert len(served) >= 20, f"gateway {index} served only {len(served)} calls after its last failure"
        assert refused_after < 1.0
        assert revoked - back < 5.0
        # The projections (durable consumers, checkpoints in Postgres) came through it too.
        assert not any(task.done() for task in platform.projections)
        for name in PROJECTIONS:
            await caught_up(platform.nc, platform.pool, name)

    await asyncio.wait_for(scenario(), 60)
