"""A three-node JetStream cluster under load while the leaders of MCP, USAGE and RATELIMIT are
killed (-9) and started again: no acknowledged usage is lost, usage equals the successful calls
exactly, calls succeed again once the streams have new leaders, and a call limit shared by two
gateways is still never exceeded.

How soon calls succeed again is bounded by JetStream's Raft: the followers of a killed leader
wait 4–9 s (nats-server's election timeout, fixed in the server) before they elect another.
Meanwhile a call that needs a new quota lease is refused with 503 NOT_READY and Retry-After
(the limits fail closed, so they stay exact); calls covered by a lease in hand, and usage
(buffered by the gateway and sent again), go on."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.bus import BusOptions, connect
from democratic_ai.contracts.streams import MCP_STREAM, RATELIMIT_STREAM, REPLICAS_ENV, STREAMS, USAGE_STREAM
from democratic_ai.contracts.usage_events import CallMetered
from democratic_ai.hub import Hub
from democratic_ai.ops.nats_cluster import NatsCluster
from democratic_ai.ops.ports import free_port
from democratic_ai.projections import PROJECTIONS, ProjectionRunner
from democratic_ai.schemas import app_dsn
from democratic_ai.services.gateway import GatewayConfig, create_app
from democratic_ai.services.identity import KeyEncryptionKey

from support.gateway import TEST_METERING, flood, gateway_ready, issue_key
from support.modules import Echo, registered
from support.names import unique
from support.projections import caught_up
from support.usage import usage_events
from support.waiting import eventually

pytestmark = pytest.mark.slow

PACE = 0.1  # seconds between one caller's calls
CALLERS = 2  # concurrent callers, one starting on each gateway: ~18 calls/s, under the free plan's 600/min
RECOVERY = 10.0  # seconds within which calls succeed again after a kill: the longest election, and a second
LIMIT = 200  # the shared call limit checked after the kills


@dataclass
class Platform:
    cluster: NatsCluster
    nc: NATS
    pool: asyncpg.Pool
    gateways: list[str] = field(default_factory=list)
    runners: list[web.AppRunner] = field(default_factory=list)
    projections: list[asyncio.Task[None]] = field(default_factory=list)


@pytest.fixture
async def platform(
    tmp_path: Path, database_url: str, pool: asyncpg.Pool, kek: KeyEncryptionKey, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Platform]:
    """A cluster of this test's own, every stream and bucket on three replicas; a hub, the echo
    module, every projection and two in-process gateways, each process preferring another member."""
    monkeypatch.setenv(REPLICAS_ENV, "3")  # the identity service's key-value buckets too
    cluster = NatsCluster(tmp_path / "platform")
    cluster.start()
    nc = await connect(cluster.bus("operator"), "cluster-test", max_reconnect_attempts=-1)
    await ensure_streams(nc.jetstream())
    module_nc = await connect(
        BusOptions(cluster.url_for(1), cluster.credentials.credential("operator")),
        "cluster-test-module",
        max_reconnect_attempts=-1,
    )
    hub, echo = Hub(), Echo()
    await hub.start(nc)
    await echo.start(module_nc)
    await registered(hub, echo)
    stop = asyncio.Event()
    platform = Platform(cluster, nc, pool)
    platform.projections = [
        asyncio.create_task(ProjectionRunner(nc.jetstream(), pool, p, batch=256).run(stop))
        for p in PROJECTIONS.values()
    ]
    try:
        for index in range(2):
            port = free_port()
            bus = BusOptions(cluster.url_for(index + 1), cluster.credentials.credential("gateway"))
            config = GatewayConfig(
                bus=bus, database_url=app_dsn(database_url), port=port, metering=TEST_METERING, kek=kek
            )
            runner = web.AppRunner(create_app(config), handler_cancellation=True)
            await runner.setup()
            platform.runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", port).start()
            platform.gateways.append(f"http://127.0.0.1:{port}")
        yield platform
    finally:
        for runner in reversed(platform.runners):
            await runner.cleanup()
        stop.set()
        await asyncio.gather(*platform.projections, return_exceptions=True)
        await echo.stop()
        await hub.stop()
        await module_nc.close()
        await nc.close()
        cluster.stop()


async def _call(session: aiohttp.ClientSession, url: str, key: str) -> int:
    try:
        async with session.post(
            f"{url}/v1/capabilities/test.echo/invoke",
            headers={"X-API-Key": key},
            json={"text": "hi"},
            timeout=aiohttp.ClientTimeout(total=5),
        ) as response:
            body = await response.read()
            if response.status != 200:
                print(f"{time.monotonic():.1f} {url} {response.status} {body[:200]!r}")
            return response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"{time.monotonic():.1f} {url} {exc!r}")
        return 0


async def _load(
    gateways: list[str], key: str, caller: int, until: asyncio.Event, calls: list[tuple[float, int]]
) -> None:
    """Call test.echo through the gateways in turn until ``until``; record (start, status)."""
    async with aiohttp.ClientSession() as session:
        n = caller
        while not until.is_set():
            started = time.monotonic()
            calls.append((started, await _call(session, gateways[n % len(gateways)], key)))
            n += 1
            await asyncio.sleep(PACE)


def _recovered_after(calls: list[tuple[float, int]], killed: float) -> float:
    """Seconds from ``killed`` to the start of the first call after the last failure that followed it."""
    after = sorted(call for call in calls if call[0] >= killed)
    failures = [started for started, status in after if status != 200]
    last_failure = max(failures, default=killed)
    served = [started for started, status in after if status == 200 and started > last_failure]
    assert served, f"no call succeeded after the failure at {last_failure - killed:.1f} s"
    return served[0] - killed


async def test_calls_and_usage_survive_the_leaders_of_mcp_usage_and_ratelimit_killed(platform: Platform) -> None:
    replicas = {
        config.name: (await platform.nc.jetstream().stream_info(config.name)).config.num_replicas for config in STREAMS
    }
    assert set(replicas.values()) == {3}, replicas

    tenant = unique("cluster")
    key = await issue_key(platform.nc, tenant, rate_limit=100_000)
    for url in platform.gateways:
        await gateway_ready(url, key)

    calls: list[tuple[float, int]] = []
    done = asyncio.Event()
    load = [asyncio.create_task(_load(platform.gateways, key, n, done, calls)) for n in range(CALLERS)]
    recoveries: dict[str, float] = {}
    try:
        await asyncio.sleep(1.0)
        for stream in (MCP_STREAM, USAGE_STREAM, RATELIMIT_STREAM):
            leader = await platform.cluster.leader_of(platform.nc.jetstream(), stream)
            killed = time.monotonic()
            print(f"{killed:.1f} killing {leader.member.name if leader.member else '?'}, leader of {stream}")
            leader.kill()
            await asyncio.sleep(1.0)  # the member stays dead a while
            leader.start()
            await asyncio.to_thread(platform.cluster.wait_healthy, 30)
            await asyncio.sleep(max(0.0, killed + RECOVERY + 2 - time.monotonic()))
            recoveries[f"{stream} ({leader.member.name if leader.member else '?'})"] = _recovered_after(calls, killed)
    finally:
        done.set()
        await asyncio.gather(*load)

    statuses = Counter(status for _, status in calls)
    print(
        f"\n{len(calls)} calls: {dict(statuses)}; recovered after each kill: "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in recoveries.items())
    )
    assert all(seconds < RECOVERY for seconds in recoveries.values()), recoveries

    # No acknowledged usage lost, none doubled: exactly one success per call that answered 200.
    async def all_metered() -> list[CallMetered] | None:
        try:
            events = await usage_events(platform.nc, tenant)
        except NatsError:  # the cluster may still be settling its consumers' placement
            return None
        successes = sum(1 for e in events if e.metric == "api_calls" and e.outcome == "success")
        info = await platform.nc.jetstream().stream_info(USAGE_STREAM, subjects_filter=f"usage.{tenant}.>")
        print(f"{time.monotonic():.1f} metered {successes} of {statuses[200]}; stream {info.state.subjects}")
        return events if successes >= statuses[200] else None

    # The gateways send usage the stream could not take during an election again.
    events = await eventually(all_metered, "every successful call's usage in the stream", timeout=30, interval=1.0)
    await caught_up(platform.nc, platform.pool, "usage", timeout=30)
    metered = Counter(e.outcome for e in events if e.metric == "api_calls")
    async with platform.pool.acquire() as conn:
        folded = await conn.fetchval(
            "SELECT count(*) FROM usage_events WHERE tenant_id = $1 AND metric = 'api_calls' AND outcome = 'success'",
            tenant,
        )
    assert metered["success"] == statuses[200] == folded, (metered, statuses[200], folded)
    assert len({e.call_id for e in events if e.metric == "api_calls"}) == sum(metered.values())

    # The shared limit, right after the kills: never over it, across both gateways.
    limited = await issue_key(platform.nc, unique("cluster-limited"), rate_limit=LIMIT)
    for url in platform.gateways:
        await gateway_ready(url, limited)
    results = await flood(platform.gateways, limited, 3 * LIMIT)
    admitted = Counter(status for _, status, _, _ in results)
    assert set(admitted) <= {200, 429}, admitted
    assert 0.9 * LIMIT <= admitted[200] <= LIMIT, admitted
    assert not any(task.done() for task in platform.projections)
