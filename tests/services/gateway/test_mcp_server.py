"""``/mcp``: the official ``mcp`` client (no code of ours) against a running gateway.

Both protocol revisions: 2025-11-25 (``mode="legacy"``: the initialize handshake) and 2026-07-28
(``mode="auto"`` probes ``server/discover``; stateless requests with ``Mcp-Method``/``Mcp-Name``).
Tools are the registry's capabilities; calls go through the call gate, so they are refused,
metered and recorded like an invoke.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import asyncpg
import httpx2
import jsonschema
import msgspec
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from nats.aio.client import Client as NATS

from democratic_ai.hub import Hub
from democratic_ai.sdk import Module, capability
from democratic_ai.sdk.examples import TextTools
from democratic_ai.services.gateway.mcp_tools import PROTOCOL_CODES

from support.client import http
from support.gateway import Gateway, issue_key
from support.modules import registered
from support.names import unique
from support.streamer import Streamer
from support.usage import by_call, settled, usage_events
from support.waiting import eventually

TEXT = (
    "NATS is a messaging system built for speed. JetStream adds persistence to NATS. "
    "Streams store messages on disk. Consumers read them back at their own pace."
)
LEGACY, MODERN = "legacy", "2026-07-28"
BOTH = pytest.mark.parametrize("mode", [LEGACY, "auto"])


@asynccontextmanager
async def mcp_client(gateway: Gateway, mode: str = "auto", key: str | None = None) -> AsyncIterator[Client]:
    http_client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key or gateway.api_key}"}, timeout=30)
    async with (
        http_client,
        Client(streamable_http_client(f"{gateway.url}/mcp", http_client=http_client), mode=mode, cache=None) as client,
    ):
        yield client


@pytest.fixture
async def text_tools(nc: NATS, hub: Hub) -> AsyncIterator[TextTools]:
    module = TextTools()
    await module.start(nc)
    await registered(hub, module)
    yield module
    await module.stop()


async def _registry(gateway: Gateway) -> dict[str, dict]:
    status, body = await http("GET", f"{gateway.url}/v1/capabilities", credential=gateway.api_key)
    assert status == 200, body
    return {entry["action"]: entry for entry in body["capabilities"]}


@BOTH
async def test_both_revisions_connect_and_list_the_registry(
    gateway: Gateway, text_tools: TextTools, streamer: Streamer, mode: str
) -> None:
    async with mcp_client(gateway, mode) as client:
        assert client.protocol_version == ("2025-11-25" if mode == LEGACY else MODERN)
        assert client.server_capabilities.tools is not None
        listed = await client.list_tools()
    registry = await _registry(gateway)
    names = [tool.name for tool in listed.tools]
    assert names == sorted(registry)  # every registered capability, in name order
    for tool in listed.tools:
        entry = registry[tool.name]
        assert tool.input_schema == {"type": "object", **entry["input_schema"]}
        if entry["streaming"]:
            assert tool.output_schema["properties"]["chunks"]["items"] == entry["output_schema"]
        elif entry["output_schema"].get("type") == "object":
            assert tool.output_schema == entry["output_schema"]
        else:  # MCP results are objects: any other output is wrapped
            assert tool.output_schema["properties"]["result"] == entry["output_schema"]
        assert (tool.description or "") == entry["description"]
    if mode != LEGACY:
        assert listed.ttl_ms is not None and listed.cache_scope == "private"  # cached per credential


@BOTH
async def test_a_tool_call_returns_structured_content_matching_the_output_schema(
    gateway: Gateway, text_tools: TextTools, mode: str
) -> None:
    async with mcp_client(gateway, mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        result = await client.call_tool("text.summarize", {"text": TEXT, "max_length": 90})
    assert not result.is_error
    jsonschema.validate(result.structured_content, tools["text.summarize"].output_schema)
    assert result.structured_content["summary"]
    assert msgspec.json.decode(result.content[0].text) == result.structured_content  # the text form


async def known_key(gateway: Gateway, key: str, path: str) -> tuple[int, dict]:
    """The answer to GET ``path`` with ``key``, once the gateway's identity index has heard of the key."""

    async def answer() -> tuple[int, dict] | None:
        found = await http("GET", f"{gateway.url}{path}", credential=key)
        return None if found[0] == 401 else found

    return await eventually(answer, "the gateway to know the key", timeout=10, interval=0.05)


async def test_a_spoofed_mcp_name_header_changes_nothing(gateway: Gateway, text_tools: TextTools) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "text.summarize",
            "arguments": {"text": TEXT},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        "Authorization": f"Bearer {gateway.api_key}",
        "Accept": "application/json, text/event-stream",
        "Mcp-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gateway.url}/mcp", json=body, headers={**headers, "Mcp-Name": "text.analyze"}) as r:
            spoofed = await r.json()
        async with session.post(
            f"{gateway.url}/mcp", json=body, headers={**headers, "Mcp-Name": "text.summarize"}
        ) as r:
            honest = await r.json()
    assert "error" in spoofed and "result" not in spoofed, spoofed  # refused: the header disagrees with the body
    assert "summary" in honest["result"]["structuredContent"], honest


@BOTH
async def test_a_module_error_is_a_tool_error(gateway: Gateway, streamer: Streamer, mode: str) -> None:
    async with mcp_client(gateway, mode) as client:
        result = await client.call_tool("test.broken", {"fail_after": 0})
    assert result.is_error
    assert msgspec.json.decode(result.content[0].text)["error"]["code"] == "MODULE_ERROR"


async def test_an_unknown_tool_is_a_protocol_error(gateway: Gateway, text_tools: TextTools) -> None:
    async with mcp_client(gateway) as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("no.such.tool", {})
    assert raised.value.code == PROTOCOL_CODES["CAPABILITY_NOT_FOUND"]
    assert raised.value.data["code"] == "CAPABILITY_NOT_FOUND"


@BOTH
async def test_a_streaming_capability_reports_progress(gateway: Gateway, streamer: Streamer, mode: str) -> None:
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    async with mcp_client(gateway, mode) as client:
        result = await client.call_tool("test.count", {"n": 3}, progress_callback=on_progress)
    assert result.structured_content == {"chunks": [{"i": 0}, {"i": 1}, {"i": 2}]}
    assert seen == [(1, "1 of 3"), (2, "2 of 3"), (3, "3 of 3")]


@pytest.mark.parametrize("mode", [LEGACY, MODERN])
async def test_closing_the_stream_cancels_at_the_module_within_a_second(
    gateway: Gateway, streamer: Streamer, nc: NATS, pool: asyncpg.Pool, mode: str
) -> None:
    streamer.started.clear()
    streamer.cancelled_at.clear()
    async with mcp_client(gateway, mode) as client:
        call = asyncio.create_task(client.call_tool("test.hang", {}))
        await asyncio.wait_for(streamer.started.wait(), 10)
        closed = time.monotonic()
        call.cancel()  # the client abandons the call: it closes the response stream
        with pytest.raises(asyncio.CancelledError):
            await call
    await eventually(lambda: streamer.cancelled_at, "the handler to be cancelled", timeout=5)
    assert streamer.cancelled_at[0] - closed < 1.0
    async with asyncio.timeout(10):  # metered once, as cancelled
        while not (calls := by_call(await usage_events(nc, gateway.tenant))):
            await settled(gateway, nc, pool)
    [metrics] = calls.values()
    assert metrics["api_calls"].outcome == "cancelled"


async def test_no_credential_is_a_401_with_the_challenge(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{gateway.url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "server/discover"},
            headers={"Accept": "application/json, text/event-stream"},
        ) as response:
            assert response.status == 401
            challenge = response.headers["WWW-Authenticate"]
            error = (await response.json())["error"]  # a JSON-RPC error, as clients show it
            assert (error["code"], error["data"]["code"]) == (PROTOCOL_CODES["UNAUTHENTICATED"], "UNAUTHENTICATED")
        assert challenge.startswith("Bearer ")
        metadata_url = challenge.split('resource_metadata="', 1)[1].split('"', 1)[0]
        async with session.get(metadata_url) as response:
            assert response.status == 200
            metadata = await response.json()
    assert metadata["resource"] == f"{gateway.url}/mcp"
    assert metadata["dai_login_endpoint"] == f"{gateway.url}/v1/auth/login"
    assert metadata["dai_refresh_endpoint"] == f"{gateway.url}/v1/auth/refresh"
    # The official client is refused too, before it can list anything.
    with pytest.raises((MCPError, ExceptionGroup)):  # the SDK may wrap it in its task groups' exception groups
        async with mcp_client(gateway, key="dai_not_a_key") as client:
            await client.list_tools()


async def test_a_refused_credential_says_invalid_token(gateway: Gateway) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway.url}/mcp", json={}, headers={"Authorization": "Bearer dai_bogus_key"}) as response,
    ):
        assert response.status == 401
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_a_rate_limited_key_gets_the_protocol_error_with_retry_after(
    gateway: Gateway, text_tools: TextTools, nc: NATS
) -> None:
    key = await issue_key(nc, gateway.tenant, rate_limit=1)
    await known_key(gateway, key, "/v1/capabilities")
    async with mcp_client(gateway, key=key) as client:
        first = await client.call_tool("text.summarize", {"text": TEXT})
        assert not first.is_error
        with pytest.raises(MCPError) as raised:
            await client.call_tool("text.summarize", {"text": TEXT})
    assert raised.value.code == PROTOCOL_CODES["RATE_LIMITED"]
    assert raised.value.data["code"] == "RATE_LIMITED"
    assert raised.value.data["details"]["retry_after"] >= 1


async def test_a_key_without_module_use_is_told_why_it_has_no_tools(
    gateway: Gateway, text_tools: TextTools, nc: NATS
) -> None:
    key = await issue_key(nc, gateway.tenant, role="viewer")
    await known_key(gateway, key, "/v1/usage")
    async with mcp_client(gateway, key=key) as client:
        with pytest.raises(MCPError) as raised:
            await client.list_tools()
    assert raised.value.data["code"] == "FORBIDDEN" and "module:use" in raised.value.message


async def test_every_tool_call_is_metered_once(
    gateway: Gateway, text_tools: TextTools, nc: NATS, pool: asyncpg.Pool
) -> None:
    for mode in (LEGACY, "auto"):
        async with mcp_client(gateway, mode) as client:
            for _ in range(2):
                assert not (await client.call_tool("text.summarize", {"text": TEXT})).is_error
    async with asyncio.timeout(10):
        while len(calls := by_call(await usage_events(nc, gateway.tenant))) < 4:
            await settled(gateway, nc, pool)
    await asyncio.sleep(0.3)  # a window for what must not come: a second metering of any call
    events = [e for e in await usage_events(nc, gateway.tenant) if e.metric == "api_calls"]
    assert len(calls) == 4 and len(events) == 4
    assert {e.outcome for e in events} == {"success"} and {e.value for e in events} == {1}
    status, usage = await http("GET", f"{gateway.url}/v1/usage?granularity=hour", credential=gateway.api_key)
    assert status == 200 and usage["totals"]["api_calls"] == {"success": 4}, usage
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {gateway.api_key}"}) as response,
    ):
        metrics = await response.text()
    assert 'dai_calls_total{capability="text.summarize",outcome="success",transport="mcp"} 4.0' in metrics


async def test_a_new_module_is_announced_on_subscriptions_listen(
    gateway: Gateway, text_tools: TextTools, nc: NATS, hub: Hub
) -> None:
    action = f"test.{unique('fresh')}"  # the REGISTRY stream is the session's: a name no test registered

    class Fresh(Module):
        module_id = unique("fresh")

        @capability(action, {"type": "object"}, {"type": "object"})
        async def fresh(self) -> dict:
            return {}

    async with mcp_client(gateway, MODERN) as client:
        before = [tool.name for tool in (await client.list_tools()).tools]
        async with client.listen(tools_list_changed=True) as subscription:
            module = Fresh()
            await module.start(nc)
            try:
                await registered(hub, module)
                async with asyncio.timeout(5):
                    event = await anext(aiter(subscription))
                after = [tool.name for tool in (await client.list_tools()).tools]
            finally:
                await module.stop()
    assert type(event).__name__ == "ToolsListChanged"
    assert action not in before and action in after


async def test_the_direct_path_answers_as_the_sdk_does(gateway: Gateway, text_tools: TextTools) -> None:
    """A plain 2026-07-28 tools/call is answered by the gateway's hot path (services/gateway/
    mcp_direct.py), anything else by the SDK: the result is the same."""
    arguments = {"text": TEXT, "max_length": 90}
    body = {
        "jsonrpc": "2.0",
        "id": "x1",
        "method": "tools/call",
        "params": {
            "name": "text.summarize",
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        "Authorization": f"Bearer {gateway.api_key}",
        "Accept": "application/json, text/event-stream",
        "Mcp-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "text.summarize",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway.url}/mcp", json=body, headers=headers) as response,
    ):
        assert response.status == 200 and response.content_type == "application/json"
        direct = await response.json()
    async with mcp_client(gateway, LEGACY) as client:  # the handshake era: always the SDK's dispatch
        through_sdk = await client.call_tool("text.summarize", arguments)
    assert direct["id"] == "x1" and direct["result"]["resultType"] == "complete"
    assert direct["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "democratic-ai"
    assert direct["result"]["structuredContent"] == through_sdk.structured_content
    assert msgspec.json.decode(direct["result"]["content"][0]["text"]) == through_sdk.structured_content
    assert direct["result"]["isError"] is False and not through_sdk.is_error


@BOTH
async def test_a_limited_key_lists_and_calls_exactly_its_toolset(
    gateway: Gateway, text_tools: TextTools, streamer: Streamer, mode: str
) -> None:
    status, issued = await http(
        "POST",
        f"{gateway.url}/v1/tenants/{gateway.tenant}/api-keys",
        credential=gateway.api_key,
        json={"name": "limited", "capabilities": ["text.analyze", "test.*"]},
    )
    assert status == 201, issued
    limited = issued["api_key"]
    found = await known_key(gateway, limited, "/v1/capabilities")
    allowed = {entry["action"] for entry in found[1]["capabilities"]}
    async with mcp_client(gateway, mode, key=limited) as client:
        listed = [tool.name for tool in (await client.list_tools()).tools]
        assert not (await client.call_tool("text.analyze", {"text": TEXT})).is_error
        with pytest.raises(MCPError) as raised:
            await client.call_tool("text.summarize", {"text": TEXT})
    assert listed == sorted(allowed) and "text.analyze" in listed and "test.count" in listed
    assert all(name == "text.analyze" or name.startswith("test.") for name in listed)
    assert raised.value.code == PROTOCOL_CODES["FORBIDDEN"] and raised.value.data["code"] == "FORBIDDEN"
    assert raised.value.data["details"]["capability"] == "text.summarize"


async def test_a_page_of_another_site_is_refused_and_clients_without_origin_are_not(
    gateway: Gateway, text_tools: TextTools
) -> None:
    """Against DNS rebinding: a browser's request whose ``Origin`` is another host is a 403, even
    with a valid credential; no ``Origin`` (desktop and command-line clients) or this gateway's own
    host (its scheme may differ behind a proxy) goes on to the protocol."""
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}}
    headers = {
        "Authorization": f"Bearer {gateway.api_key}",
        "Accept": "application/json, text/event-stream",
        "Mcp-Protocol-Version": MODERN,
        "Mcp-Method": "server/discover",
    }
    own = gateway.url.removeprefix("http://")
    async with aiohttp.ClientSession() as session:
        for origin in ("http://evil.example", f"http://{own}.evil.example", "null", ""):
            async with session.post(f"{gateway.url}/mcp", json=body, headers={**headers, "Origin": origin}) as r:
                answer = await r.json()
                assert r.status == 403 and answer["error"]["data"]["code"] == "FORBIDDEN", (origin, answer)
        for extra in ({}, {"Origin": f"http://{own}"}, {"Origin": f"https://{own}"}):
            async with session.post(f"{gateway.url}/mcp", json=body, headers={**headers, **extra}) as r:
                assert r.status == 200, (extra, await r.text())
