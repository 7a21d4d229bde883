"""Streamed calls as a client makes them: SSE on the invoke endpoint, frames of the WebSocket."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

from democratic_ai.sdk.sse import read_events

from support.gateway import Gateway

SSE = {"Accept": "text/event-stream"}


def invoke_url(gateway: Gateway, capability: str) -> str:
    return f"{gateway.url}/v1/capabilities/{capability}/invoke"


async def sse(gateway: Gateway, capability: str, body: bytes) -> tuple[int, list[tuple[str, Any]]]:
    """Invoke ``capability`` asking for SSE; returns the status and the events (name, decoded data),
    or one ``("json", body)`` when the gateway answered in JSON instead."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(invoke_url(gateway, capability), data=body, headers={**gateway.headers, **SSE}) as response,
    ):
        if response.headers["Content-Type"].startswith("application/json"):
            return response.status, [("json", await response.json())]
        assert response.headers["Content-Type"] == "text/event-stream", response.headers["Content-Type"]
        events = [(name, msgspec.json.decode(data)) async for name, data in read_events(response.content)]
        return response.status, events


async def frames_until_ends(ws: aiohttp.ClientWebSocketResponse, calls: set[str]) -> dict[str, list[dict]]:
    """Collect WebSocket frames by correlation id until each of ``calls`` has ended."""
    frames: dict[str, list[dict]] = {cid: [] for cid in calls}
    open_calls = set(calls)
    while open_calls:
        frame = msgspec.json.decode((await ws.receive(timeout=5)).data)
        cid = frame["correlation_id"]
        frames[cid].append(frame)
        if frame["type"] in ("RESPONSE", "ERROR") or frame.get("final"):
            open_calls.discard(cid)
    return frames
