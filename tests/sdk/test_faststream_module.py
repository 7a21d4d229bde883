"""A module served from a FastStream app (``democratic_ai.sdk.faststream``), end to end.

The module runs as a real author would run it: its credential issued by ``POST /v1/modules``, its
``NatsBroker`` connecting with it through the bus's auth callout, a ``FastStream`` app holding one
handler of the author's own besides the module's. Calls go in over HTTP through the real gateway
(with the hub, the projections and PostgreSQL) and come back answered, validated, recorded and
metered — the same contract ``dai module run`` meets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from faststream import FastStream
from faststream.nats import NatsBroker, NatsToken, NatsUserPassword
from nats.aio.client import Client as NATS

from democratic_ai.contracts import MessageType, decode, new_event, subjects
from democratic_ai.contracts.bus import BusOptions
from democratic_ai.contracts.headers import MCP_BYTES_IN, MCP_COMPUTE_MS
from democratic_ai.contracts.usage_events import CallMetered
from democratic_ai.hub import Hub
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.sdk import CallError, Chunk, Event, Module, capability, event_handler
from democratic_ai.sdk.errors import CredentialError
from democratic_ai.sdk.faststream import FastStreamModule, broker_arguments, serve

from support.bus import Violations, register
from support.client import http
from support.gateway import Gateway
from support.modules import registered
from support.names import unique
from support.streaming import frames_until_ends, invoke_url, sse
from support.usage import settled, usage_events
from support.waiting import eventually

TEXT = {"type": "object", "properties": {"text": {"type": "string"}, "fail": {"type": "string"}}, "required": ["text"]}
CAPABILITIES = ["fs.stamp", "fs.count", "fs.hang"]


class Stamp(Module):
    """Upper-cases a text, fails on request, counts, and hangs until cancelled."""

    module_id = "fs-stamp"  # each test serves a copy under a module id of its own

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cancelled = asyncio.Event()
        self.noted: list[Any] = []

    @event_handler("fs.noted")
    async def on_noted(self, event: Event) -> None:
        self.noted.append((event.tenant_id, event.data))

    @capability("fs.stamp", TEXT, {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
    async def stamp(self, text: str, fail: str = "") -> dict:
        if fail == "bug":
            raise RuntimeError("a bug in the handler")
        if fail == "refuse":
            raise CallError("RATE_LIMITED", "the upstream quota is spent", {"retry_after": 60})
        if fail == "output":
            return {"txt": text}
        await asyncio.sleep(0.02)  # measurable compute
        return {"text": text.upper()}

    @capability(
        "fs.count",
        {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
        {"type": "object", "properties": {"i": {"type": "integer"}}},
    )
    async def count(self, n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            yield Chunk({"i": i}, progress=(i + 1) / n)

    @capability("fs.hang", {"type": "object"}, {"type": "object"})
    async def hang(self):  # type: ignore[no-untyped-def]
        yield {"started": True}
        try:
            await asyncio.sleep(60)  # the work that only a cancel ends
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@dataclass
class Served:
    module: Stamp
    broker: NatsBroker
    app: FastStream
    served: FastStreamModule
    credential: str
    violations: Violations
    heard: list[Any]


@pytest.fixture
async def served(nats_server: NatsServer, gateway: Gateway, hub: Hub, bus_authorizer: None) -> AsyncIterator[Served]:
    """A FastStream app serving a registered module under its own credential, plus a handler of its author's."""
    module_id = unique("fs-stamp")
    credential = await register(gateway, module_id, CAPABILITIES)
    module_class = type("Stamp", (Stamp,), {"module_id": module_id})
    module = module_class(module_class.config_for_credential(credential))
    violations = Violations()
    broker = NatsBroker(
        **broker_arguments(BusOptions(url=nats_server.url, credential=credential)), error_cb=violations.record
    )
    app = FastStream(broker)
    heard: list[Any] = []

    # The author's own handler, on a subject the module's credential may read: its tenant's events.
    @broker.subscriber(subjects.event(gateway.tenant, "fs.audit"))
    async def audit(body: dict) -> None:
        heard.append(body)

    fast = serve(app, module, grace=1.0)
    await app.start()
    try:
        await registered(hub, module)
        yield Served(module, broker, app, fast, credential, violations, heard)
    finally:
        if broker.connection.is_connected:
            await app.stop()
        else:  # revoked: FastStream's broker.stop() would drain a connection the bus no longer takes
            await fast.stop(grace=1.0)
            await broker.connection.close()


async def invoke(gateway: Gateway, capability: str, body: dict) -> tuple[int, dict]:
    return await http("POST", invoke_url(gateway, capability), json=body, headers={"X-API-Key": gateway.api_key})


async def metered(gateway: Gateway, nc: NATS, pool: asyncpg.Pool, call_id: str) -> dict[str, CallMetered]:
    """The usage of ``call_id`` by metric, once the gateway has metered it (a stream's, when its end arrived)."""

    async def of_the_call() -> dict[str, CallMetered] | None:
        await settled(gateway, nc, pool)
        metrics = {e.metric: e for e in await usage_events(nc, gateway.tenant) if e.call_id == call_id}
        return metrics if "api_calls" in metrics else None

    return await eventually(of_the_call, f"the usage of call {call_id}", timeout=5.0, interval=0.05)


async def test_a_call_through_the_gateway_is_answered_recorded_and_metered(
    served: Served, gateway: Gateway, hub: Hub, nc: NATS, pool: asyncpg.Pool
) -> None:
    module_id = served.module.module_id
    status, body = await invoke(gateway, "fs.stamp", {"text": "hi"})
    assert status == 200, body
    assert body["result"] == {"text": "HI"} and body["module_id"] == module_id

    # The module's answer is in the MCP log, with the measurements metering reads.
    record = await nc.jetstream().get_last_msg("MCP", subjects.record_response(gateway.tenant, "fs.stamp"))
    answer = decode(record.data)
    assert answer.type == MessageType.RESPONSE and answer.source_module_id == module_id
    assert float(answer.headers[MCP_COMPUTE_MS]) >= 20 and answer.headers[MCP_BYTES_IN] == str(len(b'{"text": "hi"}'))

    metrics = await metered(gateway, nc, pool, body["call_id"])
    assert set(metrics) == {"api_calls", "compute_ms", "bytes_in", "bytes_out"}
    assert {e.outcome for e in metrics.values()} == {"success"}
    assert metrics["api_calls"].module_id == module_id and metrics["api_calls"].capability == "fs.stamp"
    assert metrics["compute_ms"].value >= 20
    assert metrics["bytes_out"].value == len(b'{"text":"HI"}')
    usage_url = f"{gateway.url}/v1/usage?module={module_id}"
    status, usage = await http("GET", usage_url, headers={"X-API-Key": gateway.api_key})
    assert status == 200 and usage["totals"]["api_calls"] == {"success": 1}, usage

    # Present and registered like any module: heartbeats, the manifest, a NATS micro service.
    assert any(beat.instance_id == served.module.instance_id for beat in hub.presence.instances())
    assert hub.registry.digests[module_id] == served.module.manifest.digest()


async def test_input_and_output_are_held_to_their_schemas(served: Served, gateway: Gateway) -> None:
    status, body = await invoke(gateway, "fs.stamp", {})
    assert status == 422, body
    assert body["error"]["code"] == "VALIDATION_FAILED"
    assert body["error"]["details"] == {"where": "input", "path": "$.text", "validator": "required"}
    status, body = await invoke(gateway, "fs.stamp", {"text": 5})
    assert status == 422 and body["error"]["details"]["path"] == "$.text", body
    status, body = await invoke(gateway, "fs.stamp", {"text": "x", "fail": "output"})
    assert body["error"]["code"] == "VALIDATION_FAILED" and body["error"]["details"]["where"] == "output", body
    assert status != 422  # the module broke its promise, not the caller


async def test_a_failing_handler_answers_module_error_and_the_module_keeps_serving(
    served: Served, gateway: Gateway, nc: NATS, pool: asyncpg.Pool
) -> None:
    status, bug = await invoke(gateway, "fs.stamp", {"text": "x", "fail": "bug"})
    assert status == 502 and bug["error"]["code"] == "MODULE_ERROR", bug
    assert served.module.module_id in bug["error"]["message"]
    status, refused = await invoke(gateway, "fs.stamp", {"text": "x", "fail": "refuse"})
    assert status == 429 and refused["error"]["code"] == "RATE_LIMITED", refused
    assert refused["error"]["details"] == {"retry_after": 60}
    status, body = await invoke(gateway, "fs.stamp", {"text": "again"})
    assert status == 200 and body["result"] == {"text": "AGAIN"}

    assert (await metered(gateway, nc, pool, body["call_id"]))["api_calls"].outcome == "success"
    outcomes = [e.outcome for e in await usage_events(nc, gateway.tenant) if e.metric == "api_calls"]
    assert len(outcomes) == 3 and outcomes.count("success") == 1, outcomes  # the two errors are not billable


async def test_streams_and_cancels_go_through_the_faststream_subscribers(
    served: Served, gateway: Gateway, nc: NATS, pool: asyncpg.Pool
) -> None:
    status, events = await sse(gateway, "fs.count", b'{"n": 3}')
    assert status == 200, events
    assert [data["data"] for name, data in events if name == "chunk"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert events[-1][0] == "done"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{gateway.url}/v1/ws", headers={"X-API-Key": gateway.api_key}) as ws,
    ):
        await ws.receive_json(timeout=5)
        await ws.send_json({"type": "REQUEST", "correlation_id": "c", "action": "fs.hang"})
        accepted = await ws.receive_json(timeout=5)
        first = await ws.receive_json(timeout=5)
        assert first["payload"] == {"started": True}, first
        await ws.send_json({"type": "CANCEL", "correlation_id": "c"})
        frames = (await frames_until_ends(ws, {"c"}))["c"]
    assert frames[-1]["error"]["code"] == "CANCELLED"
    await asyncio.wait_for(served.module.cancelled.wait(), 5)  # the CANCEL reached the handler on the control subject

    metrics = await metered(gateway, nc, pool, accepted["call_id"])
    assert {e.outcome for e in metrics.values()} == {"cancelled"} and metrics["compute_ms"].value >= 1


async def test_the_app_runs_under_the_modules_bus_credential(
    served: Served, gateway: Gateway, nc: NATS, nats_server: NatsServer
) -> None:
    connection = served.broker.connection
    assert connection._inbox_prefix == f"_INBOX.module.{served.module.module_id}".encode()  # the bus's rule
    # The author's own handler runs in the same app, on what the credential lets it read, and so
    # does the module's event handler, on its tenant's events.
    await nc.publish(subjects.event(gateway.tenant, "fs.audit"), msgspec.json.encode({"seen": 1}))
    await eventually(lambda: served.heard == [{"seen": 1}], "the app's own subscriber to hear the event")
    event = new_event("fs.noted", b'{"n": 1}', tenant_id=gateway.tenant, source_module_id="test")
    await nc.publish(subjects.event(gateway.tenant, "fs.noted"), event.SerializeToString())
    await eventually(
        lambda: served.module.noted == [(gateway.tenant, {"n": 1})], "the module's event handler to note the event"
    )
    # Outside its grants, the connection is refused like any module's: no other capability's calls,
    # no usage of its own making.
    await connection.subscribe(subjects.call("*", "text.summarize"), queue="text.summarize")
    await served.violations.wait_for('subscription to "mcp.call.*.text.summarize"')
    await connection.publish("usage.acme.api_calls", b"{}")
    await served.violations.wait_for('publish to "usage.acme.api_calls"')
    assert not [e for e in served.violations.errors if "mcp.call.*.fs." in e or "mcp.direct." in e]

    # Revoked, the credential is refused: the bus drops the app's connection.
    status, body = await http("DELETE", f"{gateway.url}/v1/modules/{served.module.module_id}", headers=gateway.headers)
    assert status in (200, 204), body
    await eventually(lambda: not connection.is_connected, "the connection to close")
    stranger = NatsBroker(
        nats_server.url, security=NatsToken(served.credential), allow_reconnect=False, connect_timeout=3
    )
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await stranger.connect()


async def test_a_stopping_module_leaves_and_finishes_its_calls(served: Served, gateway: Gateway, hub: Hub) -> None:
    calling = asyncio.create_task(invoke(gateway, "fs.stamp", {"text": "last"}))
    await eventually(lambda: served.module.calls_in_progress > 0, "a call in progress")
    await served.served.stop()  # what the app's shutdown runs first, before the broker drains
    status, body = await calling
    assert status == 200 and body["result"] == {"text": "LAST"}
    await eventually(
        lambda: not any(b.instance_id == served.module.instance_id for b in hub.presence.instances()),
        "the instance to leave the hub's presence",
    )
    status, body = await invoke(gateway, "fs.stamp", {"text": "gone"})
    assert status in (404, 503) and body["error"]["code"] in ("CAPABILITY_UNAVAILABLE", "MODULE_UNAVAILABLE"), body


def test_broker_arguments_present_a_module_credential_as_a_token_and_a_role_as_its_user(
    nats_server: NatsServer,
) -> None:
    credential = "dai-module.acme.fs-stamp." + "a" * 43
    arguments = broker_arguments(BusOptions(url="nats://127.0.0.1:4222", credential=credential))
    assert isinstance(arguments["security"], NatsToken) and arguments["security"].token == credential
    assert arguments["inbox_prefix"] == "_INBOX.module.fs-stamp" and arguments["servers"] == ["nats://127.0.0.1:4222"]
    assert arguments["max_reconnect_attempts"] == -1
    operator = broker_arguments(nats_server.bus("operator"))
    assert isinstance(operator["security"], NatsUserPassword) and operator["security"].username == "operator"
    assert operator["inbox_prefix"] == "_INBOX"
    with pytest.raises(CredentialError):
        broker_arguments(BusOptions(url="nats://127.0.0.1:4222", credential="dai-module.acme"))


def test_serve_needs_an_app_on_a_nats_broker() -> None:
    with pytest.raises(TypeError, match="NatsBroker"):
        serve(FastStream(), Stamp())
