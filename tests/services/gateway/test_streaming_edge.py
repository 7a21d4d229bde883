"""Streaming at the HTTP edge: SSE on the invoke endpoint, the WebSocket, cancel by hanging up, backpressure."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from democratic_ai.contracts import MessageType, decode
from democratic_ai.sdk import CallError, Chunk, HttpClient
from democratic_ai.sdk.sse import read_events

from support.gateway import Gateway
from support.streamer import Streamer
from support.streaming import SSE, frames_until_ends, invoke_url, sse
from support.waiting import eventually

# --- SSE ------------------------------------------------------------------------------------


async def test_sse_sends_one_event_per_chunk_then_done(gateway: Gateway, streamer: Streamer) -> None:
    status, events = await sse(gateway, "test.count", b'{"n": 3}')
    assert status == 200
    assert [name for name, _ in events] == ["chunk", "chunk", "chunk", "done"]
    assert [doc["data"] for _, doc in events[:3]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [doc["sequence"] for _, doc in events[:3]] == [0, 1, 2]
    assert events[1][1]["progress"] == {"fraction": 2 / 3, "message": "2 of 3"}
    done = events[-1][1]
    assert done["chunks"] == 3 and done["module_id"] == "streamer-test" and done["compute_ms"] >= 0


async def test_sse_of_a_capability_that_does_not_stream_is_one_chunk(gateway: Gateway, streamer: Streamer) -> None:
    status, events = await sse(gateway, "test.once", b'{"text": "hi"}')
    assert status == 200
    assert events == [("chunk", {"sequence": 0, "data": {"echo": "hi"}}), ("done", events[1][1])]
    assert events[1][1]["chunks"] == 1


@pytest.mark.parametrize(
    ("capability", "body", "status", "code"),
    [
        ("test.nothing-here", b"{}", 404, "CAPABILITY_NOT_FOUND"),
        ("test.count", b'{"n": 2, "unknown": 1}', 422, "VALIDATION_FAILED"),
    ],
)
async def test_sse_refused_before_any_chunk_is_a_plain_json_error(
    gateway: Gateway, streamer: Streamer, capability: str, body: bytes, status: int, code: str
) -> None:
    got_status, events = await sse(gateway, capability, body)
    assert got_status == status, events
    assert events[0][0] == "json" and events[0][1]["error"]["code"] == code


async def test_sse_failure_after_a_chunk_is_an_error_event(gateway: Gateway, streamer: Streamer) -> None:
    status, events = await sse(gateway, "test.broken", b'{"fail_after": 1}')
    assert status == 200
    assert [name for name, _ in events] == ["chunk", "error"]
    assert events[1][1]["error"]["code"] == "MODULE_ERROR"


async def test_http_client_streams_over_sse(gateway: Gateway, streamer: Streamer) -> None:
    async with HttpClient(gateway.url, gateway.api_key) as client:
        chunks = [chunk async for chunk in client.stream("test.count", {"n": 2})]
        assert chunks == [Chunk({"i": 0}, 0.5, "1 of 2"), Chunk({"i": 1}, 1.0, "2 of 2")]
        with pytest.raises(CallError) as caught:
            async for _ in client.stream("test.broken", {"fail_after": 1, "how": "call_error"}):
                pass
        assert caught.value.code == "RATE_LIMITED"


async def test_hanging_up_an_sse_stream_cancels_the_handler_within_100_ms(
    gateway: Gateway, streamer: Streamer, nc: NATS
) -> None:
    async with aiohttp.ClientSession() as session:
        response = await session.post(invoke_url(gateway, "test.hang"), data=b"{}", headers={**gateway.headers, **SSE})
        assert response.status == 200
        call_id = response.headers["X-Call-Id"]
        first = await response.content.readuntil(b"\n\n")
        assert first.startswith(b"event: chunk")
        await streamer.started.wait()
        hung_up = time.monotonic()
        response.close()
        await eventually(lambda: streamer.cancelled_at, "the handler to see its cancel", timeout=1.0, interval=0.002)
    assert streamer.cancelled_at, "the handler was never cancelled"
    assert streamer.cancelled_at[0] - hung_up < 0.1

    # The log shows the cancel and the compute time the handler used until then (what metering reads).
    subscription = await nc.jetstream().pull_subscribe(
        f"mcp.*.{gateway.tenant}.test.hang",
        stream="MCP",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy="none"),
    )
    records = [(m.subject.split(".")[1], decode(m.data)) for m in await subscription.fetch(4, timeout=2)]
    assert sorted((kind, MessageType.Name(r.type)) for kind, r in records) == [
        ("req", "CANCEL"),
        ("req", "REQUEST"),
        ("res", "ERROR"),
        ("res", "STREAM_CHUNK"),
    ]
    assert {r.correlation_id for _, r in records} == {call_id}
    error = next(r for _, r in records if r.type == MessageType.ERROR)
    assert error.error.code == "CANCELLED" and float(error.headers["compute_ms"]) >= 0


async def test_sse_to_a_capability_whose_modules_are_gone_is_503_at_once(gateway: Gateway, streamer: Streamer) -> None:
    await streamer.stop(grace=1.0)
    started = time.monotonic()
    status, events = await sse(gateway, "test.count", b"{}")
    assert (status, events[0][1]["error"]["code"]) == (503, "CAPABILITY_UNAVAILABLE")
    assert time.monotonic() - started < 0.3


async def _stops_growing(count: Callable[[], int], quiet: float = 0.5, timeout: float = 15.0) -> int:
    """``count()`` once it has not changed for ``quiet`` seconds (however slow the host)."""
    deadline = time.monotonic() + timeout
    last = count()
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)  # a window for what must not happen once the buffers are full
        if (now := count()) == last:
            return now
        last = now
    raise AssertionError(f"the module kept producing for a client that reads nothing: {last} chunks")


async def test_a_slow_sse_reader_holds_the_module_back(gateway: Gateway, streamer: Streamer) -> None:
    """Backpressure: the module stays a bounded number of chunks ahead of what the client read.

    What may be ahead: the stream's window (8) in the gateway, one event in its write buffer, and
    what the kernel holds for the connection — the client's receive buffer, pinned small here
    (Linux would otherwise grow it to tcp_rmem's 32 MB), and the gateway's send buffer (at most
    tcp_wmem's maximum). Everything else the module produced must wait for the reader.
    """
    total, size, receive_buffer = 200, 128 * 1024, 128 * 1024

    def small_receive_buffer(addr_info: Any) -> socket.socket:
        family, kind, proto, _, _ = addr_info
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        return sock

    kernel = _max_send_buffer() + 2 * receive_buffer  # Linux books twice SO_RCVBUF
    bound = 8 + 2 + (kernel + 512 * 1024) // size  # + aiohttp's own read and write buffers
    assert bound < total / 2  # else the test could not tell a bounded stream from an unbounded one
    connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            invoke_url(gateway, "test.flood"),
            data=msgspec.json.encode({"n": total, "size": size}),
            headers={**gateway.headers, **SSE},
        ) as response,
    ):
        assert response.status == 200
        events = read_events(response.content)
        name, _ = await anext(events)
        assert name == "chunk"
        # The client reads nothing; the module fills every buffer it can, then must stop. An
        # unbounded stream stops only at its end (200 chunks), above the bound.
        ahead = await _stops_growing(lambda: streamer.produced)
        assert ahead <= bound, (ahead, bound)
        received = 1
        async for name, data in events:
            if name == "chunk":
                assert msgspec.json.decode(data)["data"]["i"] == received
                received += 1
            else:
                assert name == "done"
    assert received == total == streamer.produced


def _max_send_buffer() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024  # the usual default where /proc does not say


# --- WebSocket ------------------------------------------------------------------------------


async def test_websocket_multiplexes_concurrent_streams(gateway: Gateway, streamer: Streamer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{gateway.url}/v1/ws", headers={"X-API-Key": gateway.api_key}) as ws,
    ):
        ready = await ws.receive_json(timeout=5)
        assert ready == {"type": "READY", "tenant_id": gateway.tenant}
        for cid, n in (("a", 5), ("b", 3), ("c", 4)):
            await ws.send_json(
                {
                    "type": "REQUEST",
                    "correlation_id": cid,
                    "action": "test.count",
                    "payload": {"n": n, "delay": 0.005},
                    "priority": 7,
                }
            )
        await ws.send_json({"type": "REQUEST", "correlation_id": "d", "action": "test.once", "payload": {"text": "x"}})
        frames = await frames_until_ends(ws, {"a", "b", "c", "d"})
    for cid, n in (("a", 5), ("b", 3), ("c", 4)):
        kinds = [f["type"] for f in frames[cid]]
        assert kinds == ["ACCEPTED"] + ["STREAM_CHUNK"] * (n + 1), (cid, kinds)
        chunks = frames[cid][1:]
        assert [c["sequence"] for c in chunks] == list(range(n + 1))
        assert [c["payload"] for c in chunks[:-1]] == [{"i": i} for i in range(n)]
        assert chunks[-1]["final"] is True and float(chunks[-1]["headers"]["compute_ms"]) >= 0
        assert len({c["call_id"] for c in frames[cid]}) == 1
    assert [f["type"] for f in frames["d"]] == ["ACCEPTED", "RESPONSE"]
    assert frames["d"][1]["payload"] == {"echo": "x"}


async def test_websocket_takes_the_key_as_its_first_message(gateway: Gateway, streamer: Streamer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{gateway.url}/v1/ws") as ws:
            await ws.send_json({"type": "AUTH", "api_key": gateway.api_key})
            assert (await ws.receive_json(timeout=5))["type"] == "READY"
            await ws.send_json({"type": "REQUEST", "correlation_id": "1", "action": "test.once", "payload": {}})
            assert [f["type"] for f in (await frames_until_ends(ws, {"1"}))["1"]] == ["ACCEPTED", "RESPONSE"]
        for first in (
            {"type": "AUTH", "api_key": "dai_0000_wrong"},
            {"type": "REQUEST", "correlation_id": "1", "action": "test.once"},
        ):
            async with session.ws_connect(f"{gateway.url}/v1/ws") as ws:
                await ws.send_json(first)
                refusal = await ws.receive_json(timeout=5)
                assert refusal["type"] == "ERROR" and refusal["error"]["code"] == "UNAUTHENTICATED"
                closing = await ws.receive(timeout=5)
                assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1008


async def test_websocket_with_a_bad_header_key_is_401(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(f"{gateway.url}/v1/ws", headers={"X-API-Key": "dai_0000_wrong"})
    assert caught.value.status == 401


async def test_websocket_answers_bad_frames_and_stays_open(gateway: Gateway, streamer: Streamer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{gateway.url}/v1/ws", headers={"X-API-Key": gateway.api_key}) as ws,
    ):
        await ws.receive_json(timeout=5)
        for frame in (
            '{"type": "NOPE"}',
            "not json",
            '{"type": "REQUEST", "correlation_id": "x", "action": "Bad Name"}',
            '{"type": "REQUEST", "correlation_id": "y", "action": "test.once", "priority": 10}',
            '{"type": "CANCEL", "correlation_id": "never-started"}',
        ):
            await ws.send_str(frame)
            answer = await ws.receive_json(timeout=5)
            assert answer["type"] == "ERROR" and answer["error"]["code"] == "BAD_REQUEST", (frame, answer)
        await ws.send_json({"type": "REQUEST", "correlation_id": "ok", "action": "test.once", "payload": {}})
        frames = (await frames_until_ends(ws, {"ok"}))["ok"]
        assert [f["type"] for f in frames] == ["ACCEPTED", "RESPONSE"], frames


async def test_websocket_cancel_reaches_the_handler_within_100_ms(gateway: Gateway, streamer: Streamer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{gateway.url}/v1/ws", headers={"X-API-Key": gateway.api_key}) as ws,
    ):
        await ws.receive_json(timeout=5)
        await ws.send_json({"type": "REQUEST", "correlation_id": "long", "action": "test.hang"})
        assert (await ws.receive_json(timeout=5))["type"] == "ACCEPTED"
        assert (await ws.receive_json(timeout=5))["payload"] == {"i": 0}
        await streamer.started.wait()
        cancelled = time.monotonic()
        await ws.send_json({"type": "CANCEL", "correlation_id": "long"})
        answer = await ws.receive_json(timeout=5)
        await eventually(lambda: streamer.cancelled_at, "the handler to see its cancel", timeout=1.0, interval=0.002)
    assert answer["type"] == "ERROR" and answer["error"]["code"] == "CANCELLED"
    assert streamer.cancelled_at and streamer.cancelled_at[0] - cancelled < 0.1


async def test_a_cancel_right_behind_its_request_ends_the_call_once(gateway: Gateway, streamer: Streamer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{gateway.url}/v1/ws", headers={"X-API-Key": gateway.api_key}) as ws,
    ):
        await ws.receive_json(timeout=5)
        await ws.send_str('{"type": "REQUEST", "correlation_id": "quick", "action": "test.hang"}')
        await ws.send_str('{"type": "CANCEL", "correlation_id": "quick"}')
        frames = (await frames_until_ends(ws, {"quick"}))["quick"]
        assert frames[-1]["type"] == "ERROR" and frames[-1]["error"]["code"] == "CANCELLED"
        assert frames[-1]["call_id"]
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.3)  # nothing follows the call's one end
    await eventually(lambda: not streamer._streams, "the module to end every stream", timeout=1.0, interval=0.002)
    assert not streamer._streams  # nothing left running at the module


async def test_closing_the_websocket_cancels_its_calls(gateway: Gateway, streamer: Streamer) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{gateway.url}/v1/ws", headers={"X-API-Key": gateway.api_key})
        await ws.receive_json(timeout=5)
        await ws.send_json({"type": "REQUEST", "correlation_id": "long", "action": "test.hang"})
        await streamer.started.wait()
        closed = time.monotonic()
        await ws.close()
        await eventually(lambda: streamer.cancelled_at, "the handler to see its cancel", timeout=1.0, interval=0.002)
    assert streamer.cancelled_at and streamer.cancelled_at[0] - closed < 0.1
