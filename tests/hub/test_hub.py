"""The hub: announcements become REGISTRY events once; presence follows heartbeats and leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts import presence, subjects
from democratic_ai.contracts.bus import connect
from democratic_ai.contracts.registry_events import CapabilitySpec, ModuleManifest
from democratic_ai.hub import Hub
from democratic_ai.sdk import Module, ModuleConfig, capability

from support.modules import registered
from support.names import unique
from support.waiting import eventually


def _module_class(module_id: str, version: str = "1.0.0") -> type[Module]:
    class Probe(Module):
        @capability("probe.ping", {"type": "object"})
        async def ping(self) -> dict:
            return {"pong": True}

    Probe.module_id = module_id
    Probe.version = version
    return Probe


async def _registry_subjects(nc: NATS, module_id: str) -> list[str]:
    info = await nc.jetstream().stream_info("REGISTRY", subjects_filter=f"registry.{module_id}.>")
    return sorted((info.state.subjects or {}).items())


async def test_announcement_is_recorded_once_and_changes_as_updates(nc: NATS, hub: Hub) -> None:
    module_id = unique("probe")
    first = _module_class(module_id)()
    await first.start(nc)
    await registered(hub, first)
    await first.stop()
    again = _module_class(module_id)()  # a restart with the same manifest appends nothing
    await again.start(nc)
    await registered(hub, again)
    await again.stop()
    assert await _registry_subjects(nc, module_id) == [(f"registry.{module_id}.registered", 1)]
    newer = _module_class(module_id, version="2.0.0")()
    await newer.start(nc)
    await registered(hub, newer)
    await newer.stop()
    assert await _registry_subjects(nc, module_id) == [
        (f"registry.{module_id}.registered", 1),
        (f"registry.{module_id}.updated", 1),
    ]
    assert hub.registry.manifests[module_id].version == "2.0.0"


@pytest.mark.parametrize(
    "manifest",
    [
        b"not json",
        msgspec.json.encode(ModuleManifest(module_id="Bad Id", capabilities=(CapabilitySpec(action="a.b"),))),
        msgspec.json.encode(ModuleManifest(module_id="ok-id", capabilities=())),
        msgspec.json.encode(
            ModuleManifest(module_id="ok-id", capabilities=(CapabilitySpec(action="a.b", input_schema={"type": 5}),))
        ),
        # What the registry read model could not store: NUL anywhere (schemas are jsonb), too long.
        msgspec.json.encode(
            ModuleManifest(module_id="ok-id", name="a\x00b", capabilities=(CapabilitySpec(action="a.b"),))
        ),
        msgspec.json.encode(
            ModuleManifest(
                module_id="ok-id",
                capabilities=(
                    CapabilitySpec(action="a.b", input_schema={"properties": {"x\x00": {"type": "string"}}}),
                ),
            )
        ),
        msgspec.json.encode(
            ModuleManifest(module_id="ok-id", capabilities=(CapabilitySpec(action="a.b", description="d" * 10_001),))
        ),
    ],
)
async def test_bad_announcements_are_refused(nc: NATS, hub: Hub, manifest: bytes) -> None:
    answer = await nc.request(subjects.announce("ok-id"), manifest, timeout=2)
    assert answer.data.startswith(b"refused: ")


async def test_an_announcement_for_another_module_id_is_refused(nc: NATS, hub: Hub) -> None:
    """The subject names who speaks (the bus lets a module publish only its own): the body must agree."""
    victim, impostor = unique("victim"), unique("impostor")
    manifest = msgspec.json.encode(ModuleManifest(module_id=victim, capabilities=(CapabilitySpec(action="a.b"),)))
    answer = await nc.request(subjects.announce(impostor), manifest, timeout=2)
    assert answer.data.startswith(b"refused: ") and victim.encode() in answer.data
    assert victim not in hub.registry.manifests
    assert await _registry_subjects(nc, victim) == []
    answer = await nc.request(subjects.announce(victim), manifest, timeout=2)  # the same, under its own id
    assert answer.data == b"ok" and victim in hub.registry.manifests


async def test_presence_ignores_a_heartbeat_or_leave_for_another_module(nc: NATS, hub: Hub) -> None:
    module_id, impostor = unique("probe"), unique("impostor")
    module = _module_class(module_id)(ModuleConfig(heartbeat_interval=0.2))
    await module.start(nc)
    try:
        forged = presence.Heartbeat(
            module_id=module_id, instance_id=f"{module_id}-forged", capabilities=("probe.ping",), interval=5.0
        )
        await nc.publish(subjects.heartbeat(impostor), presence.encode(forged))
        # Under its own id, with the module's instance id: its own presence, not the module's.
        claim = presence.Heartbeat(module_id=impostor, instance_id=module.instance_id, capabilities=(), interval=5.0)
        await nc.publish(subjects.heartbeat(impostor), presence.encode(claim))
        # A leave naming the module, on the impostor's subject; and the impostor leaving under that instance id.
        for body in (
            presence.Leave(module_id=module_id, instance_id=module.instance_id),
            presence.Leave(module_id=impostor, instance_id=module.instance_id),
        ):
            await nc.publish(subjects.leave(impostor), presence.encode(body))
        await nc.flush()
        # Nothing to wait for: the forgeries must change nothing, over two of the module's own heartbeats.
        await asyncio.sleep(0.5)

        def live() -> set[tuple[str, str]]:
            return {(beat.module_id, beat.instance_id) for beat in hub.presence.instances()}

        assert (module_id, module.instance_id) in live()
        assert (module_id, f"{module_id}-forged") not in live()
        assert hub.presence.serving("probe.ping") >= 1
    finally:
        await module.stop()
    # Its own leave counts, once the hub has read it.
    await eventually(
        lambda: (module_id, module.instance_id) not in live(),
        "the module's own leave to count",
        timeout=2.0,
        interval=0.02,
    )


async def test_presence_follows_heartbeats_leaves_and_silence(nats_server: object, hub: Hub) -> None:
    module_id = unique("probe")
    config = ModuleConfig(heartbeat_interval=0.2)
    leaver, silent = _module_class(module_id)(config), _module_class(module_id)(config)
    connections = [await connect(nats_server.bus(), "test") for _ in range(2)]
    await leaver.start(connections[0])
    await silent.start(connections[1])

    def live() -> set[str]:
        return {beat.instance_id for beat in hub.presence.instances() if beat.module_id == module_id}

    async def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
        start = asyncio.get_running_loop().time()
        await eventually(condition, what, timeout=timeout, interval=0.02)
        return asyncio.get_running_loop().time() - start

    await until(lambda: live() == {leaver.instance_id, silent.instance_id}, 2.0, "both instances live")
    answer = await connections[0].request(subjects.MODULES, b"", timeout=2)
    listed = msgspec.json.decode(answer.data, type=list[presence.Heartbeat])
    assert {leaver.instance_id, silent.instance_id} <= {beat.instance_id for beat in listed}

    await leaver.stop()  # says goodbye: gone at once
    assert (
        await until(
            lambda: silent.instance_id in live() and leaver.instance_id not in live(),
            0.5,
            "the leaver gone, the other still live",
        )
        < 0.5
    )
    await connections[1].close()  # dies without a word: gone after three missed heartbeats
    assert await until(lambda: not live(), 2.0, "the silent instance gone") < 2.0
    await connections[0].close()
