"""Streamed calls are admitted and metered like any other: over SSE and the WebSocket, when they
end well, fail, are cancelled, or are refused — and the recovery sweeper derives the same usage
from a stream's last record."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ErrorCode, error_reply, new_request, streaming
from democratic_ai.contracts.call_usage import GATEWAY, is_metered, usage_of
from democratic_ai.hub import Router
from democratic_ai.projections import RecoveryConfig, UsageRecovery

from support.gateway import Gateway, gateway_ready, issue_key
from support.modules import Echo
from support.names import unique
from support.records import last_answer
from support.streamer import Streamer
from support.streaming import SSE, frames_until_ends, invoke_url, sse
from support.usage import by_call, settled, usage_events, usage_events_at_least
from support.waiting import eventually

CHUNK = len(b'{"i":0}')  # one chunk of test.count as the module encodes it


def test_a_stream_is_metered_from_its_last_message_alone() -> None:
    request = new_request("text.summarize", b'{"text": "abc"}', tenant_id="t1", source_module_id=GATEWAY)
    chunk = streaming.chunk(request, 0, b'{"i":0}', source_module_id="m1")
    final = streaming.chunk(request, 1, b"", source_module_id="m1", final=True)
    final.headers.update({"compute_ms": "12.001", "bytes_in": "15", "bytes_out": "7"})
    assert not is_metered(chunk) and is_metered(final)
    assert {e.metric: (e.value, e.outcome) for e in usage_of(final)} == {
        "api_calls": (1, "success"),
        "compute_ms": (13, "success"),
        "bytes_in": (15, "success"),
        "bytes_out": (7, "success"),
    }
    failed = error_reply(request, ErrorCode.RATE_LIMITED, "upstream throttled", source_module_id="m1")
    failed.headers.update({"bytes_out": "nonsense", "compute_ms": "inf"})
    assert {e.metric: (e.value, e.outcome) for e in usage_of(failed)} == {"api_calls": (1, "failed")}
    nested = new_request("text.summarize", b"{}", tenant_id="t1", source_module_id="m2")
    assert not is_metered(streaming.chunk(nested, 0, b"", source_module_id="m1", final=True))


async def test_sse_calls_are_metered_when_they_end(
    gateway: Gateway, streamer: Streamer, nc: NATS, pool: asyncpg.Pool
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            invoke_url(gateway, "test.count"), data=b'{"n": 3}', headers={**gateway.headers, **SSE}
        ) as response,
    ):
        assert response.status == 200
        streamed = response.headers["X-Call-Id"]
        assert '"calls"' in response.headers["RateLimit-Policy"] and response.headers["RateLimit"]
        await response.read()
    status, events = await sse(gateway, "test.once", b'{"text": "hi"}')
    assert status == 200 and events[-1][0] == "done"
    once = events[-1][1]["call_id"]
    status, events = await sse(gateway, "test.broken", b'{"fail_after": 1}')
    assert [name for name, _ in events] == ["chunk", "error"]
    broken = events[-1][1]["call_id"]
    await settled(gateway, nc, pool)

    calls = by_call(await usage_events(nc, gateway.tenant))
    assert set(calls) == {streamed, once, broken}
    count = calls[streamed]
    assert count["api_calls"].outcome == "success" and count["api_calls"].module_id == streamer.module_id
    assert count["api_calls"].capability == "test.count" and count["api_calls"].api_key_id
    assert count["bytes_in"].value == len(b'{"n": 3}')
    assert count["bytes_out"].value == 3 * CHUNK  # every chunk's payload, counted by the module
    assert count["compute_ms"].value >= 1
    assert calls[once]["api_calls"].outcome == "success" and calls[once]["bytes_out"].value == len(b'{"echo":"hi"}')
    assert calls[broken]["api_calls"].outcome == "failed"
    assert calls[broken]["bytes_out"].value == CHUNK  # the chunk the client got before the failure


async def test_a_cancelled_stream_is_metered_with_the_compute_it_used(
    gateway: Gateway, streamer: Streamer, nc: NATS, pool: asyncpg.Pool
) -> None:
    async with aiohttp.ClientSession() as session:
        response = await session.post(invoke_url(gateway, "test.hang"), data=b"{}", headers={**gateway.headers, **SSE})
        hung_up = response.headers["X-Call-Id"]
        await response.content.readuntil(b"\n\n")
        await streamer.started.wait()
        response.close()
        streamer.started.clear()
        async with session.ws_connect(f"{gateway.url}/v1/ws", headers={"X-API-Key": gateway.api_key}) as ws:
            await ws.receive_json(timeout=5)
            await ws.send_json({"type": "REQUEST", "correlation_id": "c", "action": "test.hang"})
            accepted = await ws.receive_json(timeout=5)
            await streamer.started.wait()
            await ws.send_json({"type": "CANCEL", "correlation_id": "c"})
            frames = (await frames_until_ends(ws, {"c"}))["c"]
    assert frames[-1]["error"]["code"] == "CANCELLED"
    cancelled = accepted["call_id"]
    await eventually(lambda: len(streamer.cancelled_at) >= 2, "both handlers to be cancelled", timeout=5)

    async def confirmed() -> bool:  # the gateway meters the module's confirmation of each cancel
        await gateway.metering.publisher.flush()
        calls = by_call(await usage_events(nc, gateway.tenant))
        return all("compute_ms" in calls.get(call, {}) for call in (hung_up, cancelled))

    await eventually(confirmed, "the module's confirmations of the cancels metered", timeout=5, interval=0.05)
    await settled(gateway, nc, pool)

    calls = by_call(await usage_events(nc, gateway.tenant))
    assert set(calls) == {hung_up, cancelled}
    for call in (hung_up, cancelled):
        metrics = calls[call]
        assert {m.outcome for m in metrics.values()} == {"cancelled"}  # its compute_ms alone billable
        assert metrics["api_calls"].module_id == streamer.module_id  # the module's own answer to the cancel
        assert metrics["compute_ms"].value >= 1 and metrics["bytes_out"].value == CHUNK


async def test_websocket_calls_are_rate_limited_and_metered(
    gateway: Gateway, streamer: Streamer, nc: NATS, pool: asyncpg.Pool
) -> None:
    key = await issue_key(nc, gateway.tenant, rate_limit=2)
    await gateway_ready(gateway.url, key)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{gateway.url}/v1/ws", headers={"X-API-Key": key}) as ws,
    ):
        await ws.receive_json(timeout=5)
        for cid in ("a", "b", "c"):
            await ws.send_json({"type": "REQUEST", "correlation_id": cid, "action": "test.count", "payload": {"n": 2}})
        frames = await frames_until_ends(ws, {"a", "b", "c"})
    ends = {cid: f[-1] for cid, f in frames.items()}
    refused = [cid for cid, end in ends.items() if end["type"] == "ERROR"]
    assert len(refused) == 1, ends
    refusal = ends[refused[0]]
    assert [f["type"] for f in frames[refused[0]]] == ["ERROR"]  # never accepted, never routed
    assert refusal["error"]["code"] == "RATE_LIMITED" and refusal["call_id"]
    assert refusal["error"]["details"]["policy"] == "key-calls" and refusal["error"]["details"]["retry_after"] >= 1
    assert all(end.get("final") for cid, end in ends.items() if cid not in refused)
    await settled(gateway, nc, pool)

    calls = by_call(await usage_events(nc, gateway.tenant))
    outcomes = sorted(c["api_calls"].outcome for c in calls.values())
    assert outcomes == ["rate_limited", "success", "success"]
    for metrics in calls.values():
        if metrics["api_calls"].outcome == "success":
            assert metrics["bytes_out"].value == 2 * CHUNK
            assert metrics["bytes_in"].value == len(b'{"n": 2}')  # the payload as the client sent it
        else:
            assert set(metrics) == {"api_calls"}  # a refusal used nothing but itself
    async with pool.acquire() as conn:
        assert (
            await conn.fetchval(
                "SELECT sum(value) FROM usage_daily"
                " WHERE tenant_id = $1 AND metric = 'api_calls' AND outcome = 'success'",
                gateway.tenant,
            )
            == 2
        )


async def test_recovery_meters_a_stream_from_its_final_chunk(
    nc: NATS, pool: asyncpg.Pool, streamer: Streamer, projections: None
) -> None:
    """A gateway that died before publishing a streamed call's usage: the sweeper finds the final
    chunk in the MCP log and publishes what the gateway would have."""
    tenant = unique("tenant")
    router = Router(nc, source_id=GATEWAY)  # a gateway's router that meters nothing
    request = new_request("test.count", b'{"n": 4}', tenant_id=tenant, source_module_id=GATEWAY, api_key_id="k1")
    async with await router.open_stream(request) as stream:
        ended = [message async for message in stream][-1]
    assert ended.final and stream.end is ended

    stop = asyncio.Event()
    recovery = UsageRecovery(nc.jetstream(), pool, RecoveryConfig(grace=0.2, initial_lookback=30))
    task = asyncio.create_task(recovery.run(stop))
    try:
        events = await eventually(
            lambda: usage_events_at_least(4, nc, tenant), "the four usage events recovered", timeout=20, interval=0.1
        )
    finally:
        stop.set()
        await task
    metrics = by_call(events)[request.correlation_id]
    assert metrics["api_calls"].outcome == "success" and metrics["api_calls"].api_key_id == "k1"
    assert metrics["bytes_out"].value == 4 * CHUNK and metrics["bytes_in"].value == len(b'{"n": 4}')
    assert metrics["compute_ms"].value >= 1


async def test_a_plain_call_whose_client_hung_up_is_metered_from_the_modules_record(
    gateway: Gateway, echo: Echo, nc: NATS, pool: asyncpg.Pool
) -> None:
    with pytest.raises(TimeoutError):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.1)) as session:
            await session.post(invoke_url(gateway, "test.echo"), json={"sleep_ms": 400}, headers=gateway.headers)

    async def answered() -> bool:  # the module finished the call and recorded its answer
        answer = await last_answer(nc, gateway.tenant, "test.echo")
        return answer is not None and answer.source_module_id == echo.module_id

    await eventually(answered, "the module's record of its answer", timeout=5, interval=0.05)
    await settled(gateway, nc, pool)
    # The gateway had stopped waiting: it metered the hang-up, which is all it saw.
    assert {(e.metric, e.outcome) for e in await usage_events(nc, gateway.tenant)} == {
        ("api_calls", "cancelled"),
        ("bytes_in", "cancelled"),
    }

    stop = asyncio.Event()
    recovery = UsageRecovery(nc.jetstream(), pool, RecoveryConfig(grace=0.2, initial_lookback=30))
    task = asyncio.create_task(recovery.run(stop))
    try:
        events = await eventually(
            lambda: usage_events_at_least(4, nc, gateway.tenant),
            "the four usage events recovered",
            timeout=20,
            interval=0.1,
        )
    finally:
        stop.set()
        await task
    calls = by_call(events)
    assert len(calls) == 1
    metrics = next(iter(calls.values()))
    assert {m.outcome for m in metrics.values()} == {"cancelled"}
    # The work was done: the module's record brings the compute time it took (billable) and the bytes.
    assert metrics["compute_ms"].value >= 400 and metrics["compute_ms"].module_id == "echo-test"
    assert metrics["bytes_out"].value > 0
