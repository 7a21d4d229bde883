"""A module that dies holding a call: its caller hears MODULE_UNAVAILABLE within three heartbeats, not at the ttl.

The module runs as ``dai module run`` with a credential of its own and is killed with SIGKILL
while its handler sleeps (30 s, ttl 60 s): nothing tells the gateway but its heartbeats stopping.
A live module's slow call — also one that goes on while the module stops — is never cut short.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from democratic_ai.contracts import MessageType, decode, new_request, presence, subjects
from democratic_ai.contracts.headers import MCP_ACCEPT_HELD, MCP_CONTROL
from democratic_ai.hub import PresenceIndex
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.sdk import Module, capability
from democratic_ai.sdk.sse import read_events
from democratic_ai.services.gateway.state import PRESENCE

from support.bus import Violations, module_connection, register
from support.client import http
from support.gateway import Gateway
from support.modules import Echo
from support.names import unique
from support.paths import TESTS
from support.streamer import Streamer
from support.usage import usage_events
from support.waiting import eventually

HEARTBEAT = 1.0  # the modules' default heartbeat interval
# Three missed heartbeats, plus room for a loaded machine; far below the 60 s ttl of the calls.
WITHIN = presence.MISSED_HEARTBEATS * HEARTBEAT + 1.5
SSE = {"Accept": "text/event-stream"}


@dataclass
class Sleeper:
    """The ``support.sleeper:Sleeper`` process."""

    module_id: str
    process: asyncio.subprocess.Process

    async def started(self) -> None:
        """Wait until one of its handlers has begun."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 10)
        assert line.strip() == b"started", line

    def kill(self) -> float:
        """SIGKILL: no leave, no last answer; returns when it happened (time.monotonic())."""
        self.process.send_signal(signal.SIGKILL)
        return time.monotonic()


@pytest.fixture
async def sleeper(nats_server: NatsServer, gateway: Gateway, bus_authorizer: None) -> AsyncIterator[Sleeper]:
    """``dai module run support.sleeper:Sleeper`` with its own module credential, heard by the gateway."""
    module_id = unique("sleeper")
    credential = await register(gateway, module_id, ["test.sleep", "test.drip"])
    env = {name: value for name, value in os.environ.items() if not name.startswith("DAI_BUS_")}
    env.update(
        NATS_URL=nats_server.url,
        DAI_BUS_CREDENTIAL=credential,
        DAI_TEST_MODULE_ID=module_id,
        PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")])),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "democratic_ai.ops.cli",
        "module",
        "run",
        "support.sleeper:Sleeper",
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        index = gateway.app[PRESENCE] if gateway.app is not None else None
        assert index is not None

        def heard() -> bool:
            assert process.returncode is None, "the module exited"
            return any(beat.module_id == module_id for beat in index.instances())

        await eventually(heard, "the gateway to hear the module's heartbeat", timeout=20, interval=0.05)
        yield Sleeper(module_id, process)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def accepted_by(nc: NATS, module_id: str) -> tuple[asyncio.Event, object]:
    """An event set once ``module_id`` says ACCEPTED to any caller (seen on every inbox, as the operator)."""
    seen = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        try:
            message = decode(msg.data)
        except Exception:  # other inboxes carry all sorts; only MCP ACCEPTED matters here
            return
        if message.type == MessageType.ACCEPTED and message.source_module_id == module_id:
            seen.set()

    return seen, await nc.subscribe("_INBOX.>", cb=on_reply)


async def failed_calls(gateway: Gateway, nc: NATS) -> list[tuple[str, str]]:
    """(capability, outcome) of every call metered for the gateway's tenant."""
    assert await gateway.metering.publisher.flush()
    return [(e.capability, e.outcome) for e in await usage_events(nc, gateway.tenant) if e.metric == "api_calls"]


async def test_a_plain_call_to_a_module_killed_mid_call_is_answered_within_three_heartbeats(
    gateway: Gateway, sleeper: Sleeper, nc: NATS
) -> None:
    accepted, subscription = await accepted_by(nc, sleeper.module_id)
    call = asyncio.create_task(
        http(
            "POST",
            f"{gateway.url}/v1/capabilities/test.sleep/invoke?ttl=60",
            json={"seconds": 30},
            headers=gateway.headers,
        )
    )
    await sleeper.started()
    await asyncio.wait_for(accepted.wait(), 5)  # after ACCEPT_AFTER: the gateway knows the instance now
    killed = sleeper.kill()
    status, body = await asyncio.wait_for(call, 30)
    waited = time.monotonic() - killed
    await subscription.unsubscribe()

    assert status == 502, body
    error = body["error"]
    assert error["code"] == "MODULE_UNAVAILABLE"
    assert error["details"]["module_id"] == sleeper.module_id
    assert error["details"]["instance_id"].startswith(sleeper.module_id)
    assert waited < WITHIN, f"answered {waited:.1f} s after the kill"
    assert await failed_calls(gateway, nc) == [("test.sleep", "failed")]


async def test_a_streamed_call_to_a_module_killed_mid_stream_ends_within_three_heartbeats(
    gateway: Gateway, sleeper: Sleeper, nc: NATS
) -> None:
    url = f"{gateway.url}/v1/capabilities/test.drip/invoke?ttl=60"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=b'{"seconds": 30}', headers={**gateway.headers, **SSE}) as response,
    ):
        assert response.status == 200
        events = read_events(response.content)
        name, data = await asyncio.wait_for(anext(events), 10)
        assert (name, msgspec.json.decode(data)["data"]) == ("chunk", {"i": 0})
        await sleeper.started()
        killed = sleeper.kill()
        name, data = await asyncio.wait_for(anext(events), 30)
        waited = time.monotonic() - killed

    assert name == "error"
    error = msgspec.json.decode(data)["error"]
    assert error["code"] == "MODULE_UNAVAILABLE" and error["details"]["module_id"] == sleeper.module_id
    assert waited < WITHIN, f"answered {waited:.1f} s after the kill"
    assert await failed_calls(gateway, nc) == [("test.drip", "failed")]


async def test_a_slow_call_of_a_live_module_is_not_cut_short_even_while_the_module_stops(
    gateway: Gateway, nc: NATS
) -> None:
    module = Echo()
    await module.start(nc)
    try:
        # Longer than three heartbeats, and the module stops (leaves) a second into it.
        call = asyncio.create_task(
            http(
                "POST",
                f"{gateway.url}/v1/capabilities/test.echo/invoke?ttl=60",
                json={"text": "slow", "sleep_ms": 4500},
                headers=gateway.headers,
            )
        )
        await asyncio.sleep(1.0)
        await module.stop(grace=15)
        status, body = await asyncio.wait_for(call, 15)
    finally:
        await module.stop()
    assert status == 200, body
    assert body["result"] == {"text": "slow"}


async def test_a_silent_stream_of_a_live_module_is_not_cut_short(gateway: Gateway, streamer: Streamer) -> None:
    url = f"{gateway.url}/v1/capabilities/test.count/invoke?ttl=60"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=b'{"n": 2, "delay": 3.5}', headers={**gateway.headers, **SSE}) as response,
    ):
        assert response.status == 200
        names = [name async for name, _ in read_events(response.content)]
    assert names == ["chunk", "chunk", "done"]


async def test_only_a_call_held_past_accept_after_is_acknowledged_and_only_when_asked(nc: NATS, echo: Echo) -> None:
    """The hot path stays one message: a fast answer comes alone; a slow one after ACCEPTED naming
    the instance — if the caller asked, for a caller such as ``nats req`` takes the first message."""
    inbox = nc.new_inbox()
    received: dict[str, list[MessageType.ValueType]] = {"fast": [], "slow": [], "unasked": []}
    control: list[str] = []

    async def on_reply(msg: Msg) -> None:
        message = decode(msg.data)
        received[msg.subject.rsplit(".", 1)[1]].append(message.type)
        if message.type == MessageType.ACCEPTED:
            control.append(message.headers[MCP_CONTROL])

    subscription = await nc.subscribe(f"{inbox}.*", cb=on_reply)
    tenant = unique("tenant")
    slow = int(presence.ACCEPT_AFTER * 1000) + 300
    for name, sleep_ms, asks in (("fast", 0, True), ("slow", slow, True), ("unasked", slow, False)):
        request = new_request(
            "test.echo", msgspec.json.encode({"sleep_ms": sleep_ms}), tenant_id=tenant, source_module_id="test"
        )
        if asks:
            request.headers[MCP_ACCEPT_HELD] = "1"
        await nc.publish(subjects.call(tenant, "test.echo"), request.SerializeToString(), reply=f"{inbox}.{name}")
    await eventually(
        lambda: len(received["slow"]) >= 2 and received["unasked"], "the slow calls' answers", timeout=5, interval=0.02
    )
    await asyncio.sleep(0.1)  # a window for what must not come: anything more for the other calls
    await subscription.unsubscribe()
    assert received == {
        "fast": [MessageType.RESPONSE],
        "slow": [MessageType.ACCEPTED, MessageType.RESPONSE],
        "unasked": [MessageType.RESPONSE],
    }
    assert control == [subjects.control(echo.module_id, echo.instance_id)]


async def test_a_watcher_hears_of_an_instance_that_stops_heartbeating_but_not_of_one_that_leaves(nc: NATS) -> None:
    index = PresenceIndex()
    await index.start(nc)
    module_id = unique("ghost")
    instance_id = f"{module_id}-1"
    dead = asyncio.Event()
    unwatch = index.watch(module_id, instance_id, dead.set)

    async def beat(leaving: bool, times: int) -> None:
        for _ in range(times):
            message = presence.Heartbeat(
                module_id=module_id, instance_id=instance_id, capabilities=("x.y",), interval=0.1, leaving=leaving
            )
            await nc.publish(subjects.heartbeat(module_id), presence.encode(message))
            await asyncio.sleep(0.1)  # paced as a module with a 0.1 s interval beats

    try:
        await asyncio.sleep(0.5)  # five intervals in which nothing must happen
        assert not dead.is_set(), "an instance never heard is not judged"
        await beat(leaving=False, times=3)
        assert [b.instance_id for b in index.instances() if b.module_id == module_id] == [instance_id]
        await beat(leaving=True, times=8)  # longer than three intervals
        assert not dead.is_set(), "a leaving instance that still heartbeats is alive"
        assert not [b for b in index.instances() if b.module_id == module_id], "but no longer listed"
        stopped = time.monotonic()
        await asyncio.wait_for(dead.wait(), 2)
        assert time.monotonic() - stopped < 0.3 + 0.3
    finally:
        unwatch()
        await index.stop()


async def test_a_module_on_its_own_credential_takes_its_nested_answers_on_its_own_inbox(
    nats_server: NatsServer, gateway: Gateway, echo: Echo, bus_authorizer: None
) -> None:
    """A module's client reads its answers on the one inbox the bus lets it read, fast or slow."""

    class Relay(Module):
        module_id = unique("relay")

        @capability("test.relay", {"type": "object"}, {"type": "object"})
        async def relay(self, sleep_ms: int = 0) -> dict:
            return await self.client.call("test.echo", {"text": "via", "sleep_ms": sleep_ms})

    credential = await register(gateway, Relay.module_id, ["test.relay"])
    violations = Violations()
    connection = await module_connection(nats_server, credential, Relay.module_id, violations)
    module = Relay()
    await module.start(connection)
    try:
        for sleep_ms in (0, int(presence.ACCEPT_AFTER * 1000) + 300):
            status, body = await http(
                "POST",
                f"{gateway.url}/v1/capabilities/test.relay/invoke",
                json={"sleep_ms": sleep_ms},
                headers=gateway.headers,
            )
            assert (status, body.get("result")) == (200, {"text": "via"}), body
    finally:
        await module.stop(grace=1.0)
        await connection.close()
    assert violations.errors == []
