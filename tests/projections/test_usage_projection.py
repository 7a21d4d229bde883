"""The usage read models: exactly once across a kill -9 of the worker, unchanged by republished
events, partitioned by month on demand, and confined to one tenant for the app role."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.bus import connect
from democratic_ai.contracts.subjects import usage_subject
from democratic_ai.contracts.usage_events import CallMetered, Outcome, encode_event, message_id
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.projections import UsageProjection, rebuild
from democratic_ai.schemas import app_dsn, tenant_transaction

from support.names import unique
from support.projections import caught_up, kill_9_mid_batch
from support.usage import forget_usage

AGGREGATES = ("usage_daily", "usage_hourly")


def _events(tenant: str, count: int, *, start: datetime | None = None) -> list[CallMetered]:
    """``count`` calls' worth of events (api_calls and bytes_in), half of them a month earlier."""
    start = start or datetime.now(UTC).replace(microsecond=0)
    events = []
    for i in range(count):
        at = start - timedelta(days=31 if i % 2 else 0, seconds=i)
        common = {
            "tenant_id": tenant,
            "at": at,
            "call_id": f"{tenant}-{start:%Y%m%d}-{i}",
            "capability": f"cap.c{i % 3}",
            "module_id": f"m{i % 2}",
            "outcome": Outcome.FAILED if i % 10 == 0 else Outcome.SUCCESS,
        }
        events.append(CallMetered(metric="api_calls", value=1, **common))
        events.append(CallMetered(metric="bytes_in", value=100 + i % 7, **common))
    return events


async def _publish(nc: NATS, events: list[CallMetered], *, with_ids: bool = True) -> int:
    js = nc.jetstream()
    acks = [
        await js.publish_async(
            usage_subject(e.tenant_id, e.metric),
            encode_event(e),
            headers={"Nats-Msg-Id": message_id(e)} if with_ids else None,
        )
        for e in events
    ]
    await js.publish_async_completed()
    return max(a.result().seq for a in acks)


async def _snapshot(pool: asyncpg.Pool, tenant: str) -> dict[str, list[tuple]]:
    async with pool.acquire() as conn:
        snapshot = {
            table: [
                tuple(r)
                for r in await conn.fetch(
                    f"SELECT * FROM {table} WHERE tenant_id = $1 ORDER BY 1, 2, 3, 4, 5, 6", tenant
                )
            ]
            for table in AGGREGATES
        }
        snapshot["raw"] = [
            tuple(r)
            for r in await conn.fetch(
                "SELECT call_id, metric, at, value, outcome, capability, module_id FROM usage_events"
                " WHERE tenant_id = $1 ORDER BY 1, 2",
                tenant,
            )
        ]
    return snapshot


async def _totals(pool: asyncpg.Pool, tenant: str) -> dict[tuple[str, str], int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT metric, outcome, sum(value)::bigint AS v FROM usage_daily WHERE tenant_id = $1 GROUP BY 1, 2",
            tenant,
        )
    return {(r["metric"], r["outcome"]): r["v"] for r in rows}


def _expected(events: list[CallMetered]) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    for e in events:
        totals[(e.metric, e.outcome)] = totals.get((e.metric, e.outcome), 0) + e.value
    return totals


@pytest.mark.slow
async def test_kill_9_of_the_worker_mid_batch_and_a_restart_equal_a_fresh_rebuild(
    nc: NATS, pool: asyncpg.Pool, nats_server: object, database_url: str
) -> None:
    tenant = unique("bulk")
    events = _events(tenant, 10_000)
    last = await _publish(nc, events)
    env = {
        **os.environ,
        **nats_server.environment("projections"),
        "DATABASE_URL": database_url,
        "DAI_LOG_LEVEL": "WARNING",
    }
    await kill_9_mid_batch(pool, "usage", env, last)
    live = await _snapshot(pool, tenant)
    assert await _totals(pool, tenant) == _expected(events)
    assert len(live["raw"]) == len(events)
    await rebuild(nc.jetstream(), pool, UsageProjection())
    assert await _snapshot(pool, tenant) == live
    await forget_usage(nc, tenant)


async def test_republishing_the_same_events_leaves_totals_unchanged(
    nc: NATS, pool: asyncpg.Pool, projections: None
) -> None:
    tenant = unique("again")
    events = _events(tenant, 200)
    await _publish(nc, events)
    await caught_up(nc, pool, "usage")
    before = await _snapshot(pool, tenant)
    assert await _totals(pool, tenant) == _expected(events)
    stream = (await nc.jetstream().stream_info("USAGE")).state.messages
    # With their message ids, JetStream drops the copies within its duplicate window…
    await _publish(nc, events)
    assert (await nc.jetstream().stream_info("USAGE")).state.messages == stream
    # …and without them (a republish after the window, by hand), the read model's keys do.
    await _publish(nc, events, with_ids=False)
    assert (await nc.jetstream().stream_info("USAGE")).state.messages == stream + len(events)
    await caught_up(nc, pool, "usage")
    assert await _snapshot(pool, tenant) == before


async def test_months_get_partitions_on_demand_and_the_app_role_sees_one_tenant(
    nc: NATS, pool: asyncpg.Pool, database_url: str, projections: None
) -> None:
    mine, theirs = unique("mine"), unique("theirs")
    old = datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)  # the last instant of a February
    await _publish(nc, _events(mine, 4) + _events(theirs, 4) + _events(mine, 1, start=old))
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
    events = _events(tenant, 20, start=datetime(2024, 7, 3, tzinfo=UTC))  # July and June 2024
    with NatsServer(tmp_path / "bus", port=free_port()) as server:
        nc = await connect(server.bus("operator"), "rebuild-test")
        try:
            await ensure_streams(nc.jetstream())
            await _publish(nc, events)
            assert await rebuild(nc.jetstream(), pool, UsageProjection()) == len(events)
        finally:
            await nc.close()
    async with pool.acquire() as conn:
        partitions = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'usage_events'::regclass ORDER BY 1"
        )
    assert [p["relname"] for p in partitions] == ["usage_events_2024_06", "usage_events_2024_07"]
    assert await _totals(pool, tenant) == _expected(events)
