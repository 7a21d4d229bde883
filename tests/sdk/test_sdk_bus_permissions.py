"""A module stays inside the bus permissions a module's connection is granted.

NATS refuses a subscription or a publish outside a connection's permissions (and tells the client
asynchronously, "Permissions Violation"), so an SDK that subscribed one subject too wide would
lose its events or calls silently. This runs a nats-server whose ``module`` user has exactly the
grants of a module owned by one tenant, serves calls (plain, streamed, direct, cancelled), nested
calls, events and NATS micro requests through it, and asserts that the server refused nothing.

The grants are those of ``module_permissions`` of the bus authorization (``services/busauth``,
the auth callout), written into the server's configuration as a static user.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ensure_streams
from democratic_ai.hub import Hub
from democratic_ai.ops import nats_server as nats_server_module
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.sdk import Client, Event, Module, ModuleConfig, capability, event_handler
from democratic_ai.services import busauth
from democratic_ai.services.busauth import inbox_prefix

from support.modules import registered
from support.waiting import eventually

TENANT = "acme"
ANY = {"type": "object"}


def module_permissions(module_id: str, tenant: str, capabilities: list[str]) -> dict[str, Any]:
    """What the auth callout grants this module, in nats.conf's spelling."""
    grant = SimpleNamespace(module_id=module_id, tenant_id=tenant, capabilities=capabilities)
    claims = busauth.module_permissions(grant)
    return {"publish": claims["pub"], "subscribe": claims["sub"]}


class Probe(Module):
    """A module owned by acme that does everything a module does on the bus."""

    module_id = "perm-probe"

    def __init__(self, config: ModuleConfig) -> None:
        super().__init__(config)
        self.heard: list[str] = []

    @capability("perm.work", ANY)
    async def work(self) -> dict:
        called = await self.client.call("perm.helper")
        streamed = [chunk.data async for chunk in self.client.stream("perm.helper")]
        await self.client.publish_event("perm.done", {"by": self.current_tenant})
        return {"called": called["tenant"], "streamed": streamed[0]["tenant"]}

    @capability("perm.count", ANY)
    async def count(self, n: int = 20) -> AsyncIterator[dict]:
        for i in range(n):
            yield {"i": i}

    @event_handler("orders.>")
    async def on_order(self, event: Event) -> None:
        self.heard.append(event.tenant_id)


class Helper(Module):
    module_id = "perm-helper"

    @capability("perm.helper", ANY)
    async def helper(self) -> dict:
        return {"tenant": self.current_tenant}


CAPABILITIES = sorted(Probe(ModuleConfig()).capabilities)


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A nats-server where user ``platform`` may do anything and user ``module`` only what a module may."""
    directory = tmp_path_factory.mktemp("nats-permissions")
    users = [
        {"user": "platform", "password": "platform-secret"},
        {
            "user": "module",
            "password": "module-secret",
            "permissions": module_permissions(Probe.module_id, TENANT, CAPABILITIES),
        },
    ]
    config = directory / "nats.conf"
    # JSON is valid NATS configuration syntax.
    config.write_text(f"authorization: {json.dumps({'users': users})}\n")
    patch = pytest.MonkeyPatch()
    patch.setattr(nats_server_module, "CONFIG_PATH", config)
    try:
        with NatsServer(directory, port=0) as server:
            yield server
    finally:
        patch.undo()


@pytest.fixture
async def platform(guarded_server: NatsServer) -> AsyncIterator[NATS]:
    connection = await nats.connect(guarded_server.url, user="platform", password="platform-secret")
    await ensure_streams(connection.jetstream())
    yield connection
    await connection.close()


async def _module_connection(server: NatsServer, refused: list[str]) -> NATS:
    async def on_error(error: Exception) -> None:
        refused.append(str(error))

    return await nats.connect(
        server.url,
        user="module",
        password="module-secret",
        error_cb=on_error,
        inbox_prefix=inbox_prefix(Probe.module_id),
    )


async def test_a_module_serves_calls_streams_nested_calls_events_and_micro_within_its_grants(
    guarded_server: NatsServer, platform: NATS
) -> None:
    refused: list[str] = []
    connection = await _module_connection(guarded_server, refused)
    hub, helper, probe = Hub(), Helper(), Probe(ModuleConfig(tenant=TENANT, heartbeat_interval=0.2))
    await hub.start(platform)
    await helper.start(platform)
    await probe.start(connection)
    try:
        await registered(hub, probe)  # announced on hub.announce.perm-probe, answered on its inbox
        globex = Client(platform, tenant="globex")
        assert await globex.call("perm.work") == {"called": "globex", "streamed": "globex"}
        assert await globex.call("perm.work", target_module_id=Probe.module_id) == {
            "called": "globex",
            "streamed": "globex",
        }
        # Twenty chunks through a window of eight: the caller's credit reaches mcp.ctl.<module>.<instance>.
        assert [chunk.data["i"] async for chunk in globex.stream("perm.count")] == list(range(20))
        async for _chunk in globex.stream("perm.count", {"n": 1000}):
            break  # leaving the loop sends CANCEL to the control subject
        for tenant in (TENANT, "globex", TENANT):
            await Client(platform, tenant=tenant).publish_event("orders.created", {})
        ping = await platform.request("$SRV.PING.perm-probe", b"", timeout=2)
        assert json.loads(ping.data)["id"] == probe.instance_id
        info = await platform.request(f"$SRV.INFO.perm-probe.{probe.instance_id}", b"", timeout=2)
        assert {e["subject"] for e in json.loads(info.data)["endpoints"]} >= {"mcp.call.*.perm.work"}
        await eventually(
            lambda: probe.heard == [TENANT, TENANT], lambda: f"the tenant's two events; heard {probe.heard}", timeout=2
        )
        assert any(beat.instance_id == probe.instance_id for beat in hub.presence.instances())
    finally:
        await probe.stop(grace=1.0)
        await connection.flush()
        await helper.stop(grace=1.0)
        await hub.stop()
    assert probe.instance_id not in {beat.instance_id for beat in hub.presence.instances()}  # its leave counted
    await connection.close()
    assert refused == []


async def test_a_module_subscribing_wider_than_its_grants_is_refused_by_the_server(
    guarded_server: NatsServer, platform: NATS
) -> None:
    """The check above can fail: acme's module, misconfigured as a platform module, asks for every tenant's events."""
    refused: list[str] = []
    connection = await _module_connection(guarded_server, refused)
    probe = Probe(ModuleConfig())  # owned by "system": subscribes mcp.evt.*.orders.>
    await probe.start(connection)
    try:
        await eventually(lambda: refused, "the server's permissions violation", timeout=2)
        assert "permissions violation" in refused[0].lower() and "mcp.evt.*.orders.>" in refused[0]
    finally:
        await probe.stop(grace=1.0)
        await connection.close()
