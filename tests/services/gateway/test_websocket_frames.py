"""A WebSocket frame that is too large or cannot be read fails alone: it gets an ERROR, and the
socket and the calls already running on it go on."""

from __future__ import annotations

import json

import aiohttp
import msgspec

from democratic_ai.services.gateway.state import CONFIG

from support.gateway import Gateway
from support.streamer import Streamer


async def _open(session: aiohttp.ClientSession, gateway: Gateway) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(
        f"{gateway.url}/v1/ws", headers={"X-API-Key": gateway.api_key}, max_msg_size=64 * 1024 * 1024
    )
    assert (await ws.receive_json(timeout=5))["type"] == "READY"
    return ws


async def _start_a_long_call(ws: aiohttp.ClientWebSocketResponse, streamer: Streamer) -> None:
    await ws.send_json({"type": "REQUEST", "correlation_id": "long", "action": "test.hang"})
    assert (await ws.receive_json(timeout=5))["type"] == "ACCEPTED"
    assert (await ws.receive_json(timeout=5))["payload"] == {"i": 0}
    await streamer.started.wait()


async def _the_long_call_is_still_running(ws: aiohttp.ClientWebSocketResponse, streamer: Streamer) -> None:
    """Nothing has ended it: the module has not seen a cancel, and a CANCEL now finds it in flight."""
    assert streamer.cancelled_at == []
    await ws.send_json({"type": "CANCEL", "correlation_id": "long"})
    answer = await ws.receive_json(timeout=5)
    assert (answer["correlation_id"], answer["error"]["code"]) == ("long", "CANCELLED"), answer
    await ws.send_json({"type": "REQUEST", "correlation_id": "after", "action": "test.once", "payload": {"text": "x"}})
    frames = [await ws.receive_json(timeout=5) for _ in range(2)]
    assert [(f["correlation_id"], f["type"]) for f in frames] == [("after", "ACCEPTED"), ("after", "RESPONSE")]


async def test_an_oversized_frame_gets_an_error_and_the_other_call_lives_on(
    gateway: Gateway, streamer: Streamer
) -> None:
    limit = gateway.app[CONFIG].max_body_bytes
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, gateway)
        await _start_a_long_call(ws, streamer)
        big = {"type": "REQUEST", "correlation_id": "big", "action": "test.once", "payload": {"text": "x" * limit}}
        await ws.send_str(json.dumps(big))
        answer = await ws.receive_json(timeout=5)
        assert answer["type"] == "ERROR" and answer["correlation_id"] == "big"
        # test.once declares no limit: the default, max_body_bytes, is its limit.
        assert answer["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert answer["error"]["details"] == {"max_bytes": limit, "capability": "test.once"}
        # Counted in bytes, not characters: 'é' takes two.
        await ws.send_str(
            json.dumps({**big, "correlation_id": "wide", "payload": {"text": "é" * (limit // 2)}}, ensure_ascii=False)
        )
        answer = await ws.receive_json(timeout=5)
        assert (answer["correlation_id"], answer["error"]["code"]) == ("wide", "PAYLOAD_TOO_LARGE")
        await _the_long_call_is_still_running(ws, streamer)
        await ws.close()


async def test_malformed_frames_get_errors_and_the_other_call_lives_on(gateway: Gateway, streamer: Streamer) -> None:
    deep = (
        '{"type": "REQUEST", "correlation_id": "deep", "action": "test.once", "payload": '
        + "[" * 10_000
        + "]" * 10_000
        + "}"
    )
    frames = [
        ("not json", ""),
        ('{"type": "REQUEST", "correlation_id": "m1", "action": "test.once", "priority": "high"}', "m1"),
        ('{"type": "REQUEST", "correlation_id": "m2", "action": "test.once", "ttl": 10e30}', "m2"),
        ('{"type": "REQUEST", "correlation_id": "m3"}', "m3"),
        ('{"type": "REQUEST", "correlation_id": "m4", "action": "test.once", "payload": {"a": }}', ""),
        ('{"type": "REQUEST", "correlation_id": ' + json.dumps("c" * 129) + ', "action": "test.once"}', ""),
        ("[" * 10_000 + "]" * 10_000, ""),
        (deep, ""),  # too deep to look for its correlation id either
        ('"a string"', ""),
        ("null", ""),
    ]
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, gateway)
        await _start_a_long_call(ws, streamer)
        for frame, correlation_id in frames:
            await ws.send_str(frame)
            answer = await ws.receive_json(timeout=5)
            assert answer["type"] == "ERROR" and answer["error"]["code"] == "BAD_REQUEST", (frame[:80], answer)
            assert answer.get("correlation_id", "") == correlation_id, (frame[:80], answer)
        # A broken frame naming the call in flight must not look like that call's end.
        await ws.send_str('{"type": "REQUEST", "correlation_id": "long", "action": "test.once", "priority": 99}')
        answer = await ws.receive_json(timeout=5)
        assert answer.get("correlation_id", "") == "" and answer["error"]["details"]["correlation_id"] == "long"
        await ws.send_bytes(b"\x00\x01")
        answer = await ws.receive_json(timeout=5)
        assert answer["error"]["code"] == "BAD_REQUEST"
        await _the_long_call_is_still_running(ws, streamer)
        await ws.close()


async def test_a_frame_beyond_the_read_limit_closes_the_socket(gateway: Gateway) -> None:
    """The documented exception: a frame the gateway will not hold in memory."""
    limit = gateway.app[CONFIG].ws_read_limit_bytes
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, gateway)
        try:
            await ws.send_str('{"type": "CANCEL", "correlation_id": "' + "x" * limit + '"}')
        except ConnectionError:
            pass  # the gateway closed before the client had sent it all
        closing = await ws.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closing
        # 1009 is what the gateway sends; a client still writing the frame may see the reset (1006) first.
        assert ws.close_code in (1009, 1006)
        await ws.close()


def test_an_envelope_is_read_only_for_its_correlation_id() -> None:
    from democratic_ai.services.gateway.wire import correlation_id_of

    assert correlation_id_of(msgspec.json.encode({"correlation_id": "a", "junk": [1, {"x": None}]})) == "a"
    assert correlation_id_of('{"correlation_id": 5}') == ""
    assert correlation_id_of("[1, 2]") == ""
    assert correlation_id_of('{"correlation_id": ""}') == ""


async def test_a_first_message_with_a_non_ascii_key_is_refused_not_crashed(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        for key in ("dai_é_ünïcode", "dai_\x00", "e\u2028y.a.b", "x" * 100_000):
            async with session.ws_connect(f"{gateway.url}/v1/ws") as ws:
                await ws.send_json({"type": "AUTH", "api_key": key})
                refusal = await ws.receive_json(timeout=5)
                assert refusal["error"]["code"] == "UNAUTHENTICATED", refusal
                closing = await ws.receive(timeout=5)
                assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1008
