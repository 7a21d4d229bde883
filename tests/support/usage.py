"""Usage as the tests read it: a tenant's events in the USAGE stream, settling the read models,
and made-up calls' events published straight to the stream with their totals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from democratic_ai.contracts.subjects import usage_subject
from democratic_ai.contracts.usage_events import CallMetered, Outcome, decode_usage_event, encode_event, message_id

from support.gateway import Gateway
from support.projections import caught_up


async def usage_events(nc: NATS, tenant: str) -> list[CallMetered]:
    """Every usage event of ``tenant`` in the USAGE stream."""
    subscription = await nc.jetstream().pull_subscribe(
        f"usage.{tenant}.>",
        stream="USAGE",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy="none"),
    )
    events = []
    try:
        while True:
            try:
                batch = await subscription.fetch(1000, timeout=0.5)
            except TimeoutError:
                break
            events += [decode_usage_event(m.data) for m in batch]
            if batch[-1].metadata.num_pending == 0:
                break
    finally:
        await subscription.unsubscribe()
    return events


async def usage_events_at_least(count: int, nc: NATS, tenant: str) -> list[CallMetered] | None:
    """Every usage event of ``tenant`` once there are ``count`` or more (``None`` before): for ``eventually``."""
    events = await usage_events(nc, tenant)
    return events if len(events) >= count else None


def by_call(events: list[CallMetered]) -> dict[str, dict[str, CallMetered]]:
    """Usage events by call id, then by metric."""
    calls: dict[str, dict[str, CallMetered]] = {}
    for event in events:
        calls.setdefault(event.call_id, {})[event.metric] = event
    return calls


async def settled(gateway: Gateway, nc: NATS, pool: asyncpg.Pool) -> None:
    """Everything the gateway metered is published and folded into the read models."""
    assert await gateway.metering.publisher.flush(), "JetStream did not acknowledge the gateway's usage in time"
    await caught_up(nc, pool, "usage")


async def forget_usage(nc: NATS, tenant: str) -> None:
    """Purge a bulk test's usage events from the shared USAGE stream, and its calls' records from MCP.

    Every test's fresh database folds the whole stream from the start; a test that publishes
    a hundred thousand events would otherwise slow down every test after it. The MCP records
    go too: a later test's recovery sweep would find their usage missing and publish it again.
    """
    js = nc.jetstream()
    await js.purge_stream("USAGE", subject=f"usage.{tenant}.>")
    await js.purge_stream("MCP", subject=f"mcp.*.{tenant}.>")


_AGGREGATES = ("usage_daily", "usage_hourly")


def call_events(tenant: str, count: int, *, start: datetime | None = None) -> list[CallMetered]:
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


async def publish_usage(nc: NATS, events: list[CallMetered], *, with_ids: bool = True) -> int:
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


async def usage_snapshot(pool: asyncpg.Pool, tenant: str) -> dict[str, list[tuple]]:
    async with pool.acquire() as conn:
        snapshot = {
            table: [
                tuple(r)
                for r in await conn.fetch(
                    f"SELECT * FROM {table} WHERE tenant_id = $1 ORDER BY 1, 2, 3, 4, 5, 6", tenant
                )
            ]
            for table in _AGGREGATES
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


async def usage_totals(pool: asyncpg.Pool, tenant: str) -> dict[tuple[str, str], int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT metric, outcome, sum(value)::bigint AS v FROM usage_daily WHERE tenant_id = $1 GROUP BY 1, 2",
            tenant,
        )
    return {(r["metric"], r["outcome"]): r["v"] for r in rows}


def expected_totals(events: list[CallMetered]) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    for e in events:
        totals[(e.metric, e.outcome)] = totals.get((e.metric, e.outcome), 0) + e.value
    return totals
