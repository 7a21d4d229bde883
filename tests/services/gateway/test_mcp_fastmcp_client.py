"""``/mcp`` against a second off-the-shelf client: ``fastmcp``'s, which no one here wrote either.

The official SDK's client is the subject of ``test_mcp_server.py``; this one negotiates, lists,
calls and reports errors its own way, over both protocol revisions (``mode="legacy"``: the
2025-11-25 initialize handshake; ``mode="auto"``: ``server/discover`` and 2026-07-28).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import jsonschema
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from mcp import MCPError
from nats.aio.client import Client as NATS

from democratic_ai.hub import Hub
from democratic_ai.sdk.examples import TextTools
from democratic_ai.services.gateway.mcp_tools import PROTOCOL_CODES

from support.client import http
from support.gateway import Gateway, issue_key
from support.modules import registered
from support.streamer import Streamer
from support.usage import by_call, settled, usage_events
from support.waiting import eventually

TEXT = "NATS is a messaging system built for speed. JetStream adds persistence to NATS. Streams store messages."
BOTH = pytest.mark.parametrize("mode", ["legacy", "auto"])


def fastmcp_client(gateway: Gateway, mode: str, key: str | None = None) -> Client:
    return Client(f"{gateway.url}/mcp", auth=key or gateway.api_key, mode=mode, timeout=30, cache=False)


@pytest.fixture
async def text_tools(nc: NATS, hub: Hub) -> AsyncIterator[TextTools]:
    module = TextTools()
    await module.start(nc)
    await registered(hub, module)
    yield module
    await module.stop()


async def _known(gateway: Gateway, key: str) -> set[str]:
    """The capabilities GET /v1/capabilities lists for ``key``, once the gateway knows the key."""

    async def listed() -> set[str] | None:
        status, body = await http("GET", f"{gateway.url}/v1/capabilities", credential=key)
        return None if status == 401 else {entry["action"] for entry in body["capabilities"]}

    return await eventually(listed, "the gateway to know the key", timeout=10, interval=0.05)


@BOTH
async def test_lists_the_registry_and_calls_a_tool(
    gateway: Gateway, text_tools: TextTools, streamer: Streamer, mode: str
) -> None:
    async with fastmcp_client(gateway, mode) as client:
        tools = {tool.name: tool for tool in await client.list_tools()}
        result = await client.call_tool("text.summarize", {"text": TEXT, "max_length": 60})
    assert list(tools) == sorted(await _known(gateway, gateway.api_key))
    assert not result.is_error and result.structured_content["summary"]
    jsonschema.validate(result.structured_content, tools["text.summarize"].output_schema)


@BOTH
async def test_a_limited_key_sees_and_calls_only_its_toolset(
    gateway: Gateway, text_tools: TextTools, mode: str
) -> None:
    status, issued = await http(
        "POST",
        f"{gateway.url}/v1/tenants/{gateway.tenant}/api-keys",
        credential=gateway.api_key,
        json={"name": "analyze-only", "capabilities": ["text.analyze"]},
    )
    assert status == 201, issued
    assert await _known(gateway, issued["api_key"]) == {"text.analyze"}
    async with fastmcp_client(gateway, mode, issued["api_key"]) as client:
        assert [tool.name for tool in await client.list_tools()] == ["text.analyze"]
        assert not (await client.call_tool("text.analyze", {"text": TEXT})).is_error
        with pytest.raises(MCPError) as raised:
            await client.call_tool("text.summarize", {"text": TEXT})
    assert raised.value.code == PROTOCOL_CODES["FORBIDDEN"] and raised.value.data["code"] == "FORBIDDEN"


@BOTH
async def test_progress_and_tool_errors(gateway: Gateway, streamer: Streamer, mode: str) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with fastmcp_client(gateway, mode) as client:
        counted = await client.call_tool("test.count", {"n": 2}, progress_handler=on_progress)
        with pytest.raises(ToolError, match="MODULE_ERROR"):  # a module's failure is the tool's error
            await client.call_tool("test.broken", {"fail_after": 0})
    assert counted.structured_content == {"chunks": [{"i": 0}, {"i": 1}]}
    assert seen == [1, 2]


async def test_a_rate_limited_key_is_told_when_to_retry(gateway: Gateway, text_tools: TextTools, nc: NATS) -> None:
    key = await issue_key(nc, gateway.tenant, rate_limit=1)
    await _known(gateway, key)
    async with fastmcp_client(gateway, "auto", key) as client:
        await client.call_tool("text.summarize", {"text": TEXT})
        with pytest.raises(MCPError) as raised:
            await client.call_tool("text.summarize", {"text": TEXT})
    assert raised.value.code == PROTOCOL_CODES["RATE_LIMITED"]
    assert raised.value.data["details"]["retry_after"] >= 1


@BOTH
async def test_a_bogus_key_is_told_why_it_cannot_connect(gateway: Gateway, mode: str) -> None:
    with pytest.raises(MCPError) as raised:
        async with fastmcp_client(gateway, mode, "dai_not_a_key") as client:
            await client.list_tools()
    assert raised.value.code == PROTOCOL_CODES["UNAUTHENTICATED"] and raised.value.data["code"] == "UNAUTHENTICATED"


async def test_each_call_is_metered_once(gateway: Gateway, text_tools: TextTools, nc: NATS, pool: asyncpg.Pool) -> None:
    for mode in ("legacy", "auto"):
        async with fastmcp_client(gateway, mode) as client:
            await client.call_tool("text.summarize", {"text": TEXT})
    async with asyncio.timeout(10):
        while len(calls := by_call(await usage_events(nc, gateway.tenant))) < 2:
            await settled(gateway, nc, pool)
    await asyncio.sleep(0.3)  # a window for what must not come: a second metering of either call
    events = [e for e in await usage_events(nc, gateway.tenant) if e.metric == "api_calls"]
    assert len(calls) == 2 and [e.outcome for e in events] == ["success", "success"]
