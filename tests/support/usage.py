"""Usage as the tests read it: a tenant's events in the USAGE stream, and settling the read models."""

from __future__ import annotations

import asyncpg
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from democratic_ai.contracts.usage_events import CallMetered, decode_usage_event

from support.gateway import Gateway
from support.projections import caught_up


async def usage_events(nc: NATS, tenant: str) -> list[CallMetered]:
    """Every usage event of ``tenant`` in the USAGE stream."""
    subscription = await nc.jetstream().pull_subscribe(
        f"usage.{tenant}.*",
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
