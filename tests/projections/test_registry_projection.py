"""The registry read model: folded live, exactly once across crashes, identical after a rebuild."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import UTC, datetime

import aiohttp
import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from democratic_ai.contracts.registry_events import CapabilitySpec, ModuleManifest, ModuleRegistered, encode_event
from democratic_ai.hub import Hub
from democratic_ai.projections import ProjectionRunner, RegistryProjection, rebuild
from democratic_ai.sdk.examples import TextTools

from support.gateway import Gateway
from support.modules import registered
from support.names import unique
from support.projections import caught_up, kill_9_mid_batch


async def _rows(pool: asyncpg.Pool) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    async with pool.acquire() as conn:
        modules = await conn.fetch("SELECT * FROM registry_modules ORDER BY module_id")
        capabilities = await conn.fetch("SELECT * FROM registry_capabilities ORDER BY module_id, action")
    return modules, capabilities


async def _publish_manifests(nc: NATS, count: int) -> tuple[list[str], int]:
    js = nc.jetstream()
    prefix = unique("bulk")
    ids = [f"{prefix}-{i}" for i in range(count)]
    acks = []
    for module_id in ids:
        manifest = ModuleManifest(
            module_id=module_id,
            capabilities=(CapabilitySpec(action=f"bulk.op{len(module_id) % 7}", input_schema={"type": "object"}),),
        )
        event = ModuleRegistered(manifest=manifest, digest=manifest.digest(), at=datetime.now(UTC))
        acks.append(await js.publish_async(f"registry.{module_id}.registered", encode_event(event)))
    await js.publish_async_completed()
    last = max(a.result().seq for a in acks)
    return ids, last


async def test_live_registry_rows_and_capability_listing(
    nc: NATS, hub: Hub, pool: asyncpg.Pool, gateway: Gateway
) -> None:
    # The gateway fixture runs every projection already: a second registry runner here would
    # recreate the durable consumer under the first one's feet.
    module = TextTools()
    await module.start(nc)
    try:
        await registered(hub, module)
        await caught_up(nc, pool, "registry", timeout=30)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{gateway.url}/v1/capabilities", headers=gateway.headers) as response,
        ):
            assert response.status == 200
            listing = (await response.json())["capabilities"]
        summarize = next(c for c in listing if c["action"] == "text.summarize" and c["module_id"] == "text-tools")
        assert summarize["input_schema"]["required"] == ["text"]
        assert summarize["output_schema"]["properties"]["summary"] == {"type": "string"}
        assert summarize["instances"] >= 1
    finally:
        await module.stop()


class CountingProjection:
    """Inserts one row per applied event with no uniqueness, so a double application shows."""

    name = "counting-test"
    stream = "REGISTRY"
    filter_subject = "registry.>"
    partitions = None
    tables = ("counting_test",)

    async def apply(self, conn: asyncpg.Connection, events: Sequence[Msg]) -> None:
        await conn.executemany(
            "INSERT INTO counting_test (seq) VALUES ($1)", [(m.metadata.sequence.stream,) for m in events]
        )


async def test_redelivered_events_are_applied_once(nc: NATS, pool: asyncpg.Pool) -> None:
    await _publish_manifests(nc, 50)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE counting_test (seq bigint NOT NULL)")
    subscription = await nc.jetstream().pull_subscribe(
        "registry.>", stream="REGISTRY", config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy="none")
    )
    messages = []
    while True:
        batch = await subscription.fetch(500, timeout=2)
        messages += batch
        if batch[-1].metadata.num_pending == 0:
            break
    runner = ProjectionRunner(nc.jetstream(), pool, CountingProjection())
    half = len(messages) // 2
    await runner.apply(messages[:half])
    await runner.apply(messages[: half + 10])  # a redelivery overlapping the applied part
    await runner.apply(messages)
    await runner.apply(messages)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT seq, count(*) AS n FROM counting_test GROUP BY seq")
    assert len(rows) == len(messages)
    assert all(row["n"] == 1 for row in rows)


@pytest.mark.slow
async def test_kill_9_of_the_worker_mid_batch_loses_and_repeats_nothing(
    nc: NATS, pool: asyncpg.Pool, nats_server: object, database_url: str
) -> None:
    ids, last = await _publish_manifests(nc, 20_000)
    env = {
        **os.environ,
        **nats_server.environment("projections"),
        "DATABASE_URL": database_url,
        "DAI_LOG_LEVEL": "WARNING",
    }
    await kill_9_mid_batch(pool, "registry", env, last)
    modules, _capabilities = await _rows(pool)
    present = {row["module_id"] for row in modules}
    assert set(ids) <= present
    assert len(present) == len(modules)
    live = await _rows(pool)
    await rebuild(nc.jetstream(), pool, RegistryProjection())
    assert await _rows(pool) == live


async def test_rebuild_yields_identical_rows(nc: NATS, pool: asyncpg.Pool) -> None:
    await _publish_manifests(nc, 300)
    stop = asyncio.Event()
    task = asyncio.create_task(ProjectionRunner(nc.jetstream(), pool, RegistryProjection(), batch=64).run(stop))
    await caught_up(nc, pool, "registry", timeout=30)
    stop.set()
    await task
    live = await _rows(pool)
    assert live[0] and live[1]
    async with pool.acquire() as conn:
        await conn.execute("UPDATE registry_modules SET description = 'tampered'")
    replayed = await rebuild(nc.jetstream(), pool, RegistryProjection())
    assert replayed >= 300
    assert await _rows(pool) == live
