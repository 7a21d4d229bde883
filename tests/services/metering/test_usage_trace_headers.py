"""The usage publisher sends each event with the trace context of its call, when it has one, beside
its message id; an event without one goes out as before, with its message id alone."""

from __future__ import annotations

from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from democratic_ai.contracts.headers import NATS_MSG_ID, TRACEPARENT
from democratic_ai.contracts.usage_events import CallMetered, message_id
from democratic_ai.services.metering import PublisherConfig, UsagePublisher

from support.names import unique


def call(tenant: str, call_id: str) -> list[CallMetered]:
    at = datetime.now(UTC)
    return [
        CallMetered(tenant_id=tenant, metric=metric, value=1, at=at, call_id=call_id, capability="test.echo")
        for metric in ("api_calls", "bytes_in")
    ]


async def test_a_traced_calls_events_carry_its_traceparent_and_an_untraced_calls_do_not(nc: NATS) -> None:
    tenant = unique("tenant")
    traced, untraced = call(tenant, f"{tenant}-traced"), call(tenant, f"{tenant}-untraced")
    context = {TRACEPARENT: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    publisher = UsagePublisher(nc, PublisherConfig(max_delay=0.05))
    await publisher.start()
    try:
        publisher.add(traced, context)
        publisher.add(untraced)
        assert await publisher.flush()
    finally:
        await publisher.stop()
    subscription = await nc.jetstream().pull_subscribe(
        f"usage.{tenant}.>", stream="USAGE", config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy="none")
    )
    try:
        messages = await subscription.fetch(4, timeout=5)
    finally:
        await subscription.unsubscribe()
    assert [m.headers for m in messages] == [
        *({**context, NATS_MSG_ID: message_id(e)} for e in traced),
        *({NATS_MSG_ID: message_id(e)} for e in untraced),
    ]
