"""The usage read models: exactly once across a kill -9 of the worker, unchanged by republished
events, partitioned by month on demand, and confined to one tenant for the app role."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.bus import connect
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.projections import UsageProjection, rebuild
from democratic_ai.schemas import app_dsn, tenant_transaction

from support.names import unique
from support.projections import caught_up, kill_9_mid_batch
from support.usage import (
    call_events,
    expected_totals,
    forget_usage,
    publish_usage,
    usage_snapshot,
    usage_totals,
)


@pytest.mark.slow
async def test_kill_9_of_the_worker_mid_batch_and_a_restart_equal_a_fresh_rebuild(
    nc: NATS, pool: asyncpg.Pool, nats_server: object, database_url: str
) -> None:
    tenant = unique("bulk")
    events = call_events(tenant, 10_000)
    last = await publish_usage(nc, events)
    env = {
        **os.environ,
        **nats_server.environment("projections"),
        "DATABASE_URL": database_url,
        "DAI_LOG_LEVEL": "WARNING",
    }
    await kill_9_mid_batch(pool, "usage", env, last)
    live = await usage_snapshot(pool, tenant)
    assert await usage_totals(pool, tenant) == expected_totals(events)
    assert len(live["raw"]) == len(events)
    await rebuild(nc.jetstream(), pool, UsageProjection())
    assert await usage_snapshot(pool, tenant) == live
    await forget_usage(nc, tenant)


async def test_republishing_the_same_events_leaves_totals_unchanged(
    nc: NATS, pool: asyncpg.Pool, projections: None
) -> None:
    tenant = unique("again")
    events = call_events(tenant, 200)
    await publish_usage(nc, events)
    await caught_up(nc, pool, "usage")
    before = await usage_snapshot(pool, tenant)
    assert await usage_totals(pool, tenant) == expected_totals(events)
    stream = (await nc.jetstream().stream_info("USAGE")).state.messages
    # With their message ids, JetStream drops the copies within its duplicate window…
    await publish_usage(nc, events)
    assert (await nc.jetstream().stream_info("USAGE")).state.messages == stream
    # …and without them (a republish after the window, by hand), the read model's keys do.
    await publish_usage(nc, events, with_ids=False)
    assert (await nc.jetstream().stream_info("USAGE")).state.messages == stream + len(events)
    await caught_up(nc, pool, "usage")
    assert await usage_snapshot(pool, tenant) == before


async def test_months_get_partitions_on_demand_and_the_app_role_sees_one_tenant(
    nc: NATS, pool: asyncpg.Pool, database_url: str, projections: None
) -> None:
    mine, theirs = unique("mine"), unique("theirs")
    old = datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)  # the last instant of a February
    await publish_usage(nc, call_events(mine, 4) + call_events(theirs, 4) + call_events(mine, 1, start=old))
    await caught_up(nc, pool, "usage")
    async with pool.acquire() as conn:
        partitions = {
            r["relname"]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'usage_events'::regclass"
            )
        }
        february = await conn.fetchval("SELECT count(*) FROM usage_partitions.usage_events_2024_02")
    now = datetime.now(UTC)
    assert {f"usage_events_{now:%Y_%m}", "usage_events_2024_02"} <= partitions
    assert february == 2  # the February event's api_calls and bytes_in, nothing of March

    app = await asyncpg.connect(app_dsn(database_url))
    try:
        assert await app.fetchval("SELECT count(*) FROM usage_events") == 0  # no tenant named: nothing
        async with tenant_transaction(app, mine):
            tenants = {r["tenant_id"] for r in await app.fetch("SELECT tenant_id FROM usage_events")}
            daily = {r["tenant_id"] for r in await app.fetch("SELECT tenant_id FROM usage_daily")}
        assert tenants == daily == {mine}
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.fetch(f"SELECT * FROM usage_partitions.usage_events_{now:%Y_%m}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("DELETE FROM usage_daily")
    finally:
        await app.close()


async def test_a_rebuild_in_a_database_that_never_folded_makes_the_months_partitions(
    tmp_path: Path, pool: asyncpg.Pool
) -> None:
    """``dai projections rebuild usage`` on a new database: the shadow it folds into is a plain
    table, and the live table it is copied into gets the months' partitions on the way. (A bus
    of its own: a rebuild folds the whole stream, which the session's holds every test's usage.)"""
    tenant = unique("fresh")
    events = call_events(tenant, 20, start=datetime(2024, 7, 3, tzinfo=UTC))  # July and June 2024
    with NatsServer(tmp_path / "bus", port=free_port()) as server:
        nc = await connect(server.bus("operator"), "rebuild-test")
        try:
            await ensure_streams(nc.jetstream())
            await publish_usage(nc, events)
            assert await rebuild(nc.jetstream(), pool, UsageProjection()) == len(events)
        finally:
            await nc.close()
    async with pool.acquire() as conn:
        partitions = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'usage_events'::regclass ORDER BY 1"
        )
    assert [p["relname"] for p in partitions] == ["usage_events_2024_06", "usage_events_2024_07"]
    assert await usage_totals(pool, tenant) == expected_totals(events)
