"""A tenant's HTTP call reaches a module through the router, and every message lands in the log."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from democratic_ai.contracts import MessageType, decode
from democratic_ai.contracts.bus import connect
from democratic_ai.hub import Hub
from democratic_ai.sdk import Module, capability
from democratic_ai.sdk.examples import TextTools

from support.gateway import Gateway
from support.modules import registered

TEXT = (
    "NATS is a messaging system built for speed. JetStream adds persistence to NATS. "
    "Streams store messages on disk. Consumers read them back at their own pace. "
    "The weather was pleasant yesterday."
)


async def _post(gateway: Gateway, capability: str, body: bytes | str, **kw: object) -> tuple[int, dict]:
    headers = kw.pop("headers", gateway.headers)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/capabilities/{capability}/invoke", data=body, headers=headers, **kw
        ) as response,
    ):
        return response.status, await response.json()


@pytest.fixture
async def text_tools(nc: NATS, hub: Hub) -> object:
    module = TextTools()
    await module.start(nc)
    await registered(hub, module)
    yield module
    await module.stop()


async def test_http_call_is_answered_by_the_example_module(gateway: Gateway, text_tools: TextTools) -> None:
    status, body = await _post(gateway, "text.summarize", f'{{"text": "{TEXT}", "max_length": 90}}')
    assert status == 200, body
    assert body["module_id"] == "text-tools"
    summary = body["result"]["summary"]
    assert 0 < len(summary) <= 90
    assert summary in TEXT.replace("  ", " ") or summary.split(". ")[0] in TEXT
    assert 0 < body["result"]["compression_ratio"] < 1


async def test_request_and_response_are_recorded_under_one_correlation_id(
    gateway: Gateway, text_tools: TextTools, nc: NATS
) -> None:
    status, body = await _post(gateway, "text.analyze", '{"text": "One sentence here. And another one."}')
    assert status == 200, body
    js = nc.jetstream()
    subscription = await js.pull_subscribe(
        f"mcp.*.{gateway.tenant}.text.analyze",
        stream="MCP",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy="none"),
    )
    records = await subscription.fetch(10, timeout=2)
    by_subject = {m.subject: decode(m.data) for m in records}
    request = by_subject[f"mcp.req.{gateway.tenant}.text.analyze"]
    response = by_subject[f"mcp.res.{gateway.tenant}.text.analyze"]
    assert request.type == MessageType.REQUEST and response.type == MessageType.RESPONSE
    assert request.correlation_id == response.correlation_id == body["call_id"]
    assert request.context.tenant_id == response.context.tenant_id == gateway.tenant


async def test_bad_payload_is_422_with_the_field_path(gateway: Gateway, text_tools: TextTools) -> None:
    status, body = await _post(gateway, "text.summarize", '{"text": "ok text", "max_length": "long"}')
    assert status == 422
    assert body["error"]["code"] == "VALIDATION_FAILED"
    assert body["error"]["details"]["path"] == "$.max_length"
    status, body = await _post(gateway, "text.summarize", '{"max_length": 50}')
    assert status == 422 and body["error"]["details"]["path"] in ("$", "$.text")


async def test_unknown_capability_is_404(gateway: Gateway) -> None:
    status, body = await _post(gateway, "nothing.here", "{}")
    assert status == 404
    assert body["error"]["code"] == "CAPABILITY_NOT_FOUND"


class Flaky(Module):
    """Fails on request, to show a handler's exception does not stop the module."""

    module_id = "flaky-test"

    @capability("test.flaky", {"type": "object", "properties": {"fail": {"type": "boolean"}}})
    async def flaky(self, fail: bool = False) -> dict:
        if fail:
            raise RuntimeError("boom")
        return {"ok": True}

    @capability("test.sleepy", {"type": "object"})
    async def sleepy(self, seconds: float = 0) -> dict:
        await asyncio.sleep(seconds)  # a handler that takes as long as the test asks
        return {"slept": seconds}


async def test_handler_exception_is_module_error_and_module_keeps_serving(gateway: Gateway, nc: NATS, hub: Hub) -> None:
    module = Flaky()
    await module.start(nc)
    await registered(hub, module)
    try:
        status, body = await _post(gateway, "test.flaky", '{"fail": true}')
        assert status == 502 and body["error"]["code"] == "MODULE_ERROR"
        assert "boom" not in body["error"]["message"]  # internals stay in the module's log
        status, body = await _post(gateway, "test.flaky", '{"fail": false}')
        assert status == 200 and body["result"] == {"ok": True}
    finally:
        await module.stop()


async def test_ttl_passing_gives_timeout_504(gateway: Gateway, nc: NATS, hub: Hub) -> None:
    module = Flaky()
    await module.start(nc)
    await registered(hub, module)
    try:
        started = time.monotonic()
        status, body = await _post(gateway, "test.sleepy", '{"seconds": 3}', params={"ttl": "1"})
        assert status == 504 and body["error"]["code"] == "TIMEOUT"
        assert time.monotonic() - started < 2.5
    finally:
        await module.stop()


async def test_two_replicas_share_the_calls(gateway: Gateway, nats_server: object, hub: Hub) -> None:
    connections = [await connect(nats_server.bus(), "test") for _ in range(2)]
    replicas = [TextTools(), TextTools()]
    served: dict[str, int] = {}
    for replica in replicas:
        original = replica.analyze

        async def counting(text: str, top_k: int = 5, *, _replica=replica, _original=original) -> dict:
            served[_replica.instance_id] = served.get(_replica.instance_id, 0) + 1
            return await _original(text=text, top_k=top_k)

        replica.analyze = counting  # type: ignore[method-assign]
    for replica, connection in zip(replicas, connections, strict=True):
        await replica.start(connection)
    await registered(hub, replicas[0])
    try:
        results = await asyncio.gather(*(_post(gateway, "text.analyze", '{"text": "Hello there."}') for _ in range(60)))
        assert all(status == 200 for status, _ in results)
        assert sum(served.values()) == 60
        assert set(served) == {r.instance_id for r in replicas}, served
    finally:
        for replica, connection in zip(replicas, connections, strict=True):
            await replica.stop()
            await connection.close()


async def test_stopping_the_module_gives_capability_unavailable_at_once(
    gateway: Gateway, nats_server: object, hub: Hub
) -> None:
    connection = await connect(nats_server.bus(), "test")
    module = TextTools()
    await module.start(connection)
    await registered(hub, module)
    status, _ = await _post(gateway, "text.analyze", '{"text": "Hi."}')
    assert status == 200
    # Not a graceful stop: the process is gone, as after kill -9.
    await connection.close()
    started = time.monotonic()
    status, body = await _post(gateway, "text.analyze", '{"text": "Hi."}')
    elapsed = time.monotonic() - started
    assert status == 503 and body["error"]["code"] == "CAPABILITY_UNAVAILABLE"
    assert elapsed < 0.3


async def test_direct_routing_and_module_not_found(gateway: Gateway, text_tools: TextTools) -> None:
    status, body = await _post(gateway, "text.analyze", '{"text": "Direct."}', params={"module": "text-tools"})
    assert status == 200 and body["module_id"] == "text-tools"
    status, body = await _post(gateway, "text.analyze", '{"text": "Direct."}', params={"module": "no-such-module"})
    assert status == 404 and body["error"]["code"] == "MODULE_NOT_FOUND"
