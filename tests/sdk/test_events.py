"""Broadcast events: published once on mcp.evt.<tenant>.<topic>, recorded, delivered to every subscribing module
entitled to them: a module owned by a tenant hears that tenant's, a ``system`` module everyone's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from democratic_ai.contracts import MessageType, decode, new_event, subjects
from democratic_ai.sdk import Client, Event, Module, ModuleConfig, event_handler

from support.names import unique
from support.waiting import eventually


class Orders(Module):
    module_id = "orders-listener-test"

    def __init__(self) -> None:
        super().__init__()
        self.created: list[Event] = []
        self.any_order: list[str] = []

    @event_handler("orders.created")
    async def on_created(self, event: Event) -> None:
        self.created.append(event)

    @event_handler("orders.*")
    async def on_any(self, event: Event) -> None:
        if event.data == {"fail": True}:
            raise RuntimeError("a failing handler must not stop the module")
        self.any_order.append(event.topic)


class Audit(Module):
    module_id = "audit-listener-test"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    @event_handler(">")
    async def on_everything(self, event: Event) -> None:
        self.seen.append(f"{event.tenant_id}:{event.topic}")


@pytest.fixture
async def listeners(nc: NATS) -> AsyncIterator[tuple[Orders, Audit]]:
    modules = (Orders(), Audit())
    for module in modules:
        await module.start(nc)
    yield modules
    for module in modules:
        await module.stop(grace=1.0)


async def test_every_subscribing_module_gets_the_event_and_the_log_records_it(
    nc: NATS, listeners: tuple[Orders, Audit]
) -> None:
    orders, audit = listeners
    tenant = unique("tenant")
    client = Client(nc, source_id="shop", tenant=tenant)
    await client.publish_event("orders.created", {"order_id": 7})
    await client.publish_event("orders.shipped", {"order_id": 7})
    await client.publish_event("orders.created", {"fail": True})
    await client.publish_event("orders.created", {"order_id": 8})
    await eventually(
        lambda: len(orders.created) == 3 and len(audit.seen) == 4 and len(orders.any_order) == 3,
        "every subscriber to get its events",
        timeout=2.0,
        interval=0.005,
    )

    first = orders.created[0]
    assert (first.topic, first.tenant_id, first.data, first.source_module_id) == (
        "orders.created",
        tenant,
        {"order_id": 7},
        "shop",
    )
    assert orders.any_order == ["orders.created", "orders.shipped", "orders.created"]
    assert audit.seen == [f"{tenant}:orders.created", f"{tenant}:orders.shipped"] + [f"{tenant}:orders.created"] * 2

    subscription = await nc.jetstream().pull_subscribe(
        subjects.event(tenant, ">"),
        stream="MCP",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy="none"),
    )
    records = [decode(m.data) for m in await subscription.fetch(4, timeout=2)]
    assert [r.type for r in records] == [MessageType.EVENT] * 4
    assert records[0].id == first.id and records[0].action == "orders.created"


def test_event_topics_are_checked() -> None:
    with pytest.raises(subjects.InvalidSubjectToken):
        event_handler("Orders.Created")
    with pytest.raises(subjects.InvalidSubjectToken):
        event_handler("orders.>.created")


async def test_publishing_needs_a_concrete_topic(nc: NATS) -> None:
    with pytest.raises(subjects.InvalidSubjectToken):
        await Client(nc).publish_event("orders.*", {})


class Shipping(Module):
    """Hears order events; whose, depends on the tenant that owns it."""

    module_id = "shipping-listener-test"

    def __init__(self, config: ModuleConfig) -> None:
        super().__init__(config)
        self.seen: list[tuple[str, int]] = []

    @event_handler("orders.>")
    async def on_order(self, event: Event) -> None:
        self.seen.append((event.tenant_id, event.data["n"]))


class PlatformShipping(Shipping):
    module_id = "platform-shipping-listener-test"


async def test_a_tenant_module_hears_its_tenant_only_and_a_system_module_every_tenant(nc: NATS) -> None:
    acme, globex = unique("acme"), unique("globex")
    own, platform = Shipping(ModuleConfig(tenant=acme)), PlatformShipping(ModuleConfig())
    assert (own.tenant, platform.tenant) == (acme, "system")
    await own.start(nc)
    await platform.start(nc)
    try:
        for n, tenant in enumerate((acme, globex, acme, globex)):
            await Client(nc, source_id="shop", tenant=tenant).publish_event("orders.created", {"n": n})
        await eventually(
            lambda: len(platform.seen) == 4 and len(own.seen) == 2,
            "both modules to get their events",
            timeout=2.0,
            interval=0.005,
        )
        await asyncio.sleep(0.1)  # a window for an event that must not come
        assert own.seen == [(acme, 0), (acme, 2)]
        assert platform.seen == [(acme, 0), (globex, 1), (acme, 2), (globex, 3)]
    finally:
        await own.stop(grace=1.0)
        await platform.stop(grace=1.0)


async def test_an_event_whose_body_names_another_tenant_than_its_subject_is_dropped(nc: NATS) -> None:
    acme = unique("acme")
    module = Shipping(ModuleConfig(tenant=acme))
    await module.start(nc)
    try:
        forged = new_event("orders.created", b'{"n": 1}', tenant_id=unique("globex"), source_module_id="x")
        await nc.publish(subjects.event(acme, "orders.created"), forged.SerializeToString())
        await Client(nc, source_id="shop", tenant=acme).publish_event("orders.created", {"n": 2})
        await eventually(lambda: module.seen, "the genuine event", timeout=2.0, interval=0.005)
        await asyncio.sleep(0.05)  # a window for the forged event, which must not come
        assert module.seen == [(acme, 2)]
    finally:
        await module.stop(grace=1.0)
