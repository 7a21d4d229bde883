"""One outcome per call, the same over every transport: each metric of a call — metered by the
gateway when the call ends, or completed by the recovery sweep from the module's late answer —
carries the call's one outcome, and billing counts exactly what that outcome makes billable.

For plain JSON invoke, SSE and the WebSocket: a call that succeeds, one the caller cancels (hangs
up; sends CANCEL), one whose ttl is shorter than its handler, and one whose module fails.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ErrorCode, MCPMessage, error_reply, new_request, reply, streaming
from democratic_ai.contracts.call_usage import GATEWAY, outcome_of, usage_of
from democratic_ai.contracts.usage_events import BILLABLE, CallMetered, Metric, Outcome, is_billable
from democratic_ai.projections import RecoveryConfig, UsageRecovery
from democratic_ai.services.billing.usage import PostgresUsageTotals

from support.client import http
from support.gateway import Gateway
from support.modules import Echo
from support.projections import caught_up
from support.streamer import Streamer
from support.streaming import SSE, frames_until_ends, invoke_url, sse
from support.usage import by_call, settled, usage_events
from support.waiting import eventually

# --- the rule, without servers ------------------------------------------------------------------


def _request() -> MCPMessage:
    return new_request("test.echo", b'{"text": "abc"}', tenant_id="t1", source_module_id=GATEWAY)


def test_one_function_decides_the_outcome_of_every_end() -> None:
    request = _request()
    ends = {
        "a response": (streaming.chunk(request, 0, b"{}", source_module_id="m1", final=True), Outcome.SUCCESS),
        "the module's cancel": (
            error_reply(request, ErrorCode.CANCELLED, "c", source_module_id="m1"),
            Outcome.CANCELLED,
        ),
        "the gateway's cancel": (
            error_reply(request, ErrorCode.CANCELLED, "c", source_module_id=GATEWAY),
            Outcome.CANCELLED,
        ),
        "the gateway's timeout": (
            error_reply(request, ErrorCode.TIMEOUT, "t", source_module_id=GATEWAY),
            Outcome.TIMEOUT,
        ),
        "a module's timeout (no slot in time)": (
            error_reply(request, ErrorCode.TIMEOUT, "t", source_module_id="m1"),
            Outcome.TIMEOUT,
        ),
        "the gateway's refusal": (
            error_reply(request, ErrorCode.RATE_LIMITED, "r", source_module_id=GATEWAY),
            Outcome.RATE_LIMITED,
        ),
        "a module's RATE_LIMITED": (
            error_reply(request, ErrorCode.RATE_LIMITED, "r", source_module_id="m1"),
            Outcome.FAILED,
        ),
        "a module error": (error_reply(request, ErrorCode.MODULE_ERROR, "e", source_module_id="m1"), Outcome.FAILED),
        "no module": (
            error_reply(request, ErrorCode.CAPABILITY_UNAVAILABLE, "n", source_module_id=GATEWAY),
            Outcome.FAILED,
        ),
    }
    for name, (end, outcome) in ends.items():
        end.headers.update({"compute_ms": "5", "bytes_in": "15"})
        assert outcome_of(end) is outcome, name
        assert {e.outcome for e in usage_of(end)} == {outcome.value}, name


def test_a_late_answer_adds_its_measures_under_the_outcome_the_client_got() -> None:
    """The gateway timed out; the module's answer came later: every metric is ``timeout``."""
    request = _request()
    timed_out = error_reply(request, ErrorCode.TIMEOUT, "no answer", source_module_id=GATEWAY)
    timed_out.headers["bytes_in"] = "15"
    late = reply(request, b'{"text": "abc"}', source_module_id="m1")
    late.headers.update({"compute_ms": "2500.2", "bytes_in": "15"})
    events = {e.metric: e for e in usage_of(timed_out, late)}
    assert {m: (e.value, e.outcome) for m, e in events.items()} == {
        "api_calls": (1, "timeout"),
        "bytes_in": (15, "timeout"),
        "compute_ms": (2501, "timeout"),
        "bytes_out": (len(b'{"text": "abc"}'), "timeout"),
    }
    assert events["api_calls"].module_id == "" and events["compute_ms"].module_id == "m1"
    # Told the outcome the call was metered with already, the late answer alone says the same.
    assert {e.outcome for e in usage_of(late, outcome=Outcome.TIMEOUT)} == {"timeout"}
    assert {e.outcome for e in usage_of(late)} == {"success"}  # on its own it would be a success


def test_billable_is_success_for_every_metric_and_cancelled_for_compute() -> None:
    assert BILLABLE == {(m.value, "success") for m in Metric} | {("compute_ms", "cancelled")}
    assert is_billable("compute_ms", "cancelled") and not is_billable("api_calls", "cancelled")
    for outcome in ("timeout", "failed", "rate_limited"):
        assert not any(is_billable(m.value, outcome) for m in Metric)
    # Events written before cancelled and timeout existed decode and mean what they meant.
    for old in ("success", "failed", "rate_limited"):
        assert Outcome(old).value == old


# --- every transport, end to end --------------------------------------------------------------


async def _completed(nc: NATS, pool: asyncpg.Pool, tenant: str, calls: int) -> dict[str, dict[str, CallMetered]]:
    """The usage of ``calls`` calls of ``tenant``, once the recovery sweep has added what the
    modules' late answers measured (every call then has its compute time)."""
    stop = asyncio.Event()
    recovery = UsageRecovery(nc.jetstream(), pool, RecoveryConfig(grace=0.2, initial_lookback=60))
    task = asyncio.create_task(recovery.run(stop))

    async def measured() -> bool:
        metered = by_call(await usage_events(nc, tenant))
        return len(metered) == calls and all("compute_ms" in m for m in metered.values())

    try:
        await eventually(measured, f"the compute time of all {calls} calls metered", timeout=30, interval=0.1)
    finally:
        stop.set()
        await task
    await caught_up(nc, pool, "usage")
    return by_call(await usage_events(nc, tenant))


async def _check(gateway: Gateway, nc: NATS, pool: asyncpg.Pool, expected: dict[str, str], since: datetime) -> None:
    """Every metric of each call carries its expected outcome; billing and ``GET /v1/usage``
    count exactly the billable ones."""
    await settled(gateway, nc, pool)
    calls = await _completed(nc, pool, gateway.tenant, len(expected))
    assert set(calls) == set(expected)
    for call_id, outcome in expected.items():
        assert {m: e.outcome for m, e in calls[call_id].items()} == dict.fromkeys(calls[call_id], outcome), call_id
        assert {"api_calls", "compute_ms", "bytes_in"} <= set(calls[call_id]), call_id
    by_outcome = {outcome: calls[call_id] for call_id, outcome in expected.items()}
    billed_compute = by_outcome["success"]["compute_ms"].value + by_outcome["cancelled"]["compute_ms"].value
    totals = await PostgresUsageTotals(pool).totals(gateway.tenant, since, datetime.now(UTC) + timedelta(minutes=1))
    assert totals == {"api_calls": 1, "compute_ms": billed_compute}

    status, usage = await http(
        "GET", f"{gateway.url}/v1/usage?granularity=hour", headers={"X-API-Key": gateway.api_key}
    )
    assert status == 200, usage
    assert usage["totals"]["api_calls"] == {"success": 1, "cancelled": 1, "timeout": 1, "failed": 1}
    assert usage["billable"]["api_calls"] == 1 and usage["billable"]["compute_ms"] == billed_compute
    assert usage["billable"]["bytes_in"] == by_outcome["success"]["bytes_in"].value


async def _plain(gateway: Gateway, payload: dict, query: str = "") -> tuple[int, dict, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(invoke_url(gateway, "test.echo") + query, json=payload, headers=gateway.headers) as response,
    ):
        return response.status, await response.json(), response.headers["X-Call-Id"]


async def test_plain_calls_have_one_outcome_in_every_metric(
    gateway: Gateway, echo: Echo, nc: NATS, pool: asyncpg.Pool
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    expected: dict[str, str] = {}
    status, _, call = await _plain(gateway, {"text": "hi"})
    assert status == 200
    expected[call] = "success"
    status, body, call = await _plain(gateway, {"fail": True})
    assert status == 502 and body["error"]["code"] == "MODULE_ERROR", body
    expected[call] = "failed"
    status, body, call = await _plain(gateway, {"sleep_ms": 1500}, "?ttl=1")  # its handler outlives its ttl
    assert status == 504 and body["error"]["code"] == "TIMEOUT", body
    expected[call] = "timeout"
    with pytest.raises(TimeoutError):  # the client hangs up while the module works
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as session:
            await session.post(invoke_url(gateway, "test.echo"), json={"sleep_ms": 300}, headers=gateway.headers)
    async with asyncio.timeout(5):  # the gateway learns of the hang-up, and meters it
        while not (hung_up := {c for c in by_call(await usage_events(nc, gateway.tenant)) if c not in expected}):
            await settled(gateway, nc, pool)
    assert len(hung_up) == 1
    expected[hung_up.pop()] = "cancelled"
    await _check(gateway, nc, pool, expected, since)


async def test_sse_calls_have_one_outcome_in_every_metric(
    gateway: Gateway, streamer: Streamer, nc: NATS, pool: asyncpg.Pool
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    expected: dict[str, str] = {}
    status, events = await sse(gateway, "test.count", b'{"n": 2}')
    assert status == 200 and events[-1][0] == "done"
    expected[events[-1][1]["call_id"]] = "success"
    status, events = await sse(gateway, "test.broken", b'{"fail_after": 1}')
    assert [name for name, _ in events] == ["chunk", "error"]
    expected[events[-1][1]["call_id"]] = "failed"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            invoke_url(gateway, "test.hang") + "?ttl=1", data=b"{}", headers={**gateway.headers, **SSE}
        ) as response,
    ):
        body = await response.text()  # a chunk, then nothing for longer than the ttl
    assert "event: error" in body and '"TIMEOUT"' in body, body
    expected[response.headers["X-Call-Id"]] = "timeout"
    streamer.started.clear()
    async with aiohttp.ClientSession() as session:
        response = await session.post(invoke_url(gateway, "test.hang"), data=b"{}", headers={**gateway.headers, **SSE})
        expected[response.headers["X-Call-Id"]] = "cancelled"
        await response.content.readuntil(b"\n\n")
        await streamer.started.wait()
        response.close()  # hanging up cancels the call
    await _check(gateway, nc, pool, expected, since)


async def test_websocket_calls_have_one_outcome_in_every_metric(
    gateway: Gateway, streamer: Streamer, nc: NATS, pool: asyncpg.Pool
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    outcomes = {"ok": "success", "broken": "failed", "slow": "timeout", "stopped": "cancelled"}
    requests = {
        "ok": {"action": "test.count", "payload": {"n": 2}},
        "broken": {"action": "test.broken", "payload": {"fail_after": 1}},
        "slow": {"action": "test.hang", "ttl": 1},
    }
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{gateway.url}/v1/ws", headers={"X-API-Key": gateway.api_key}) as ws,
    ):
        await ws.receive_json(timeout=5)
        for cid, request in requests.items():
            await ws.send_json({"type": "REQUEST", "correlation_id": cid, **request})
        frames = await frames_until_ends(ws, set(requests))
        streamer.started.clear()
        await ws.send_json({"type": "REQUEST", "correlation_id": "stopped", "action": "test.hang"})
        await streamer.started.wait()
        await ws.send_json({"type": "CANCEL", "correlation_id": "stopped"})
        frames.update(await frames_until_ends(ws, {"stopped"}))
    assert frames["ok"][-1].get("final")
    assert frames["broken"][-1]["error"]["code"] == "MODULE_ERROR"
    assert frames["slow"][-1]["error"]["code"] == "TIMEOUT"
    assert frames["stopped"][-1]["error"]["code"] == "CANCELLED"
    call_ids = {cid: next(f["call_id"] for f in frames[cid] if f.get("call_id")) for cid in outcomes}

    async def confirmed() -> bool:  # the module's confirmation of the cancel, which the gateway meters
        await gateway.metering.publisher.flush()
        return "compute_ms" in by_call(await usage_events(nc, gateway.tenant)).get(call_ids["stopped"], {})

    await eventually(confirmed, "the module's confirmation of the cancel metered", timeout=5, interval=0.05)
    await _check(gateway, nc, pool, {call_ids[cid]: outcome for cid, outcome in outcomes.items()}, since)
