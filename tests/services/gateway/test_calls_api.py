"""GET /v1/calls, /v1/calls/{call_id}, /v1/calls/stats and /v1/calls/live against real servers:
filters and their 400s, payloads and metering, exact percentiles, the live feed within 2 s, and
another tenant's calls answering 404 or nothing."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import aiohttp
import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.services.gateway import calls_live

from support.calls import ended_calls, publish_records, request_record, response_record
from support.client import http
from support.gateway import Gateway, gateway_ready, issue_key
from support.modules import Echo
from support.streamer import Streamer
from support.streaming import invoke_url, sse
from support.usage import settled


async def _call(gateway: Gateway, payload: dict, capability: str = "test.echo") -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(invoke_url(gateway, capability), json=payload, headers=gateway.headers) as response,
    ):
        await response.read()
        return response.headers["X-Call-Id"]


async def _get(gateway: Gateway, path: str, key: str | None = None) -> tuple[int, dict]:
    return await http("GET", f"{gateway.url}{path}", headers={"X-API-Key": key or gateway.api_key})


async def test_the_list_filters_and_refuses_bad_parameters(
    gateway: Gateway, echo: Echo, nc: NATS, pool: asyncpg.Pool
) -> None:
    ok = [await _call(gateway, {"text": str(i)}) for i in range(3)]
    failed = await _call(gateway, {"fail": True})
    await ended_calls(nc, pool, gateway.tenant, 4)

    status, body = await _get(gateway, "/v1/calls")
    assert status == 200 and body["tenant_id"] == gateway.tenant
    assert [c["call_id"] for c in body["calls"]] == [failed, *reversed(ok)]  # newest first
    first = body["calls"][-1]
    assert set(first) == {
        "call_id", "capability", "module_id", "transport", "user_id", "api_key_id", "at", "started_at",
        "ended_at", "duration_ms", "outcome", "error", "chunks", "request_seq", "answer_seq",
    }  # fmt: skip
    assert first["outcome"] == "success" and first["error"] is None and first["transport"] == "http"
    assert body["calls"][0]["error"]["code"] == "MODULE_ERROR"

    status, body = await _get(gateway, "/v1/calls?outcome=failed")
    assert [c["call_id"] for c in body["calls"]] == [failed]
    status, body = await _get(gateway, "/v1/calls?limit=2&capability=test.echo")
    assert len(body["calls"]) == 2
    status, body = await _get(gateway, "/v1/calls?capability=test.other")
    assert status == 200 and body["calls"] == []
    since = quote((datetime.now(UTC) + timedelta(minutes=1)).isoformat())
    status, body = await _get(gateway, f"/v1/calls?since={since}")
    assert status == 200 and body["calls"] == []

    for query, parameter in (
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("outcome=great", "outcome"),
        ("capability=Not..valid", "capability"),
        ("since=yesterday", "since"),
        ("since=2025-06-01T12:00:00", "since"),  # no time zone
        ("tenant=Bad Tenant", "tenant"),
    ):
        status, body = await _get(gateway, f"/v1/calls?{query}")
        assert status == 400 and body["error"]["code"] == "BAD_REQUEST", (query, body)
        assert body["error"]["details"]["parameter"] == parameter, query
    status, body = await _get(gateway, "/v1/calls/stats?minutes=1441")
    assert status == 400 and body["error"]["details"]["parameter"] == "minutes"
    status, body = await http(
        "GET", f"{gateway.url}/v1/calls/live", headers={"X-API-Key": gateway.api_key, "Last-Event-ID": "x"}
    )
    assert status == 400 and body["error"]["code"] == "BAD_REQUEST"


async def test_the_detail_has_the_payloads_and_the_metering(
    gateway: Gateway, echo: Echo, nc: NATS, pool: asyncpg.Pool
) -> None:
    call = await _call(gateway, {"text": "hello"})
    big = await _call(gateway, {"text": "x" * (70 * 1024)})
    await ended_calls(nc, pool, gateway.tenant, 2)
    await settled(gateway, nc, pool)

    status, body = await _get(gateway, f"/v1/calls/{call}")
    assert status == 200, body
    assert body["call"]["call_id"] == call and body["call"]["outcome"] == "success"
    assert body["request"]["type"] == "request" and body["request"]["data"] == {"text": "hello"}
    assert body["request"]["truncated"] is False and body["request"]["text"] is None
    assert body["answer"]["type"] == "response" and body["answer"]["data"] == {"text": "hello"}
    assert body["answer"]["sequence"] == body["call"]["answer_seq"]
    usage = {u["metric"]: u for u in body["usage"]}
    assert usage["api_calls"]["value"] == 1 and usage["api_calls"]["billable"] is True
    assert usage["bytes_in"]["value"] == body["request"]["size"] and usage["api_calls"]["outcome"] == "success"

    status, body = await _get(gateway, f"/v1/calls/{big}")
    assert status == 200
    assert body["request"]["truncated"] is True and body["request"]["data"] is None
    assert body["request"]["size"] > 70 * 1024 and len(body["request"]["text"]) == 64 * 1024

    assert body["chunks"] == [] and body["chunks_truncated"] is False

    status, body = await _get(gateway, "/v1/calls/no-such-call")
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"


async def test_the_detail_of_a_stream_has_its_chunks_within_64_kib(
    gateway: Gateway, streamer: Streamer, nc: NATS, pool: asyncpg.Pool
) -> None:
    status, events = await sse(gateway, "test.count", b'{"n": 3}')
    counted = events[-1][1]["call_id"]
    status, events = await sse(gateway, "test.flood", b'{"n": 3, "size": 40000}')
    flooded = events[-1][1]["call_id"]
    await ended_calls(nc, pool, gateway.tenant, 2)

    status, body = await _get(gateway, f"/v1/calls/{counted}")
    assert status == 200, body
    assert [c["data"] for c in body["chunks"]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [c["progress"]["fraction"] for c in body["chunks"]] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert body["chunks_truncated"] is False and body["call"]["chunks"] == 3
    assert body["answer"]["type"] == "stream_chunk" and body["answer"]["sequence"] == body["call"]["answer_seq"]

    status, body = await _get(gateway, f"/v1/calls/{flooded}")
    assert status == 200 and body["call"]["chunks"] == 3
    first, second = body["chunks"]  # 40 kB, then the rest of the 64 KiB, cut
    assert first["truncated"] is False and first["data"]["i"] == 0
    assert second["truncated"] is True and len(second["text"]) == 64 * 1024 - first["size"]
    assert body["chunks_truncated"] is True


async def test_stats_give_exact_percentiles_of_known_durations(gateway: Gateway, nc: NATS, pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC) - timedelta(seconds=5)
    records = []
    durations = [10.0 * i for i in range(1, 11)]  # 10, 20, … 100 ms
    for duration in durations:
        request = request_record(gateway.tenant, "test.timed", now)
        records += [request, response_record(request, now + timedelta(milliseconds=duration))]
    await publish_records(nc, *records)
    await ended_calls(nc, pool, gateway.tenant, len(durations))

    status, body = await _get(gateway, "/v1/calls/stats?minutes=5")
    assert status == 200, body
    assert body["minutes"] == 5 and len(body["per_minute"]) == 5
    assert sum(m["calls"] for m in body["per_minute"]) == 10 and sum(m["errors"] for m in body["per_minute"]) == 0
    (timed,) = body["capabilities"]
    assert timed["capability"] == "test.timed" and timed["calls"] == 10 and timed["success_rate"] == 1.0
    # percentile_cont: p50 halfway between 50 and 60; p95 at 0.55 of the way from 90 to 100.
    assert timed["p50_ms"] == pytest.approx(55.0) and timed["p95_ms"] == pytest.approx(95.5)
    assert body["total"]["calls"] == 10 and body["total"]["outcomes"] == {"success": 10}


async def test_the_live_feed_delivers_a_call_within_two_seconds_of_its_end(
    gateway: Gateway, echo: Echo, nc: NATS, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(calls_live, "KEEP_ALIVE_SECONDS", 0.3)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.url}/v1/calls/live", headers={"X-API-Key": gateway.api_key}) as response,
    ):
        assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
        assert await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5) == b": keep-alive\n\n"
        call = await _call(gateway, {"text": "live"})
        ended = time.monotonic()
        event = b""
        while b"event: call" not in event:
            event = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert time.monotonic() - ended < 2.0
    lines = dict(line.split(": ", 1) for line in event.decode().strip().split("\n"))
    item = msgspec.json.decode(lines["data"])
    assert item["call_id"] == call and item["outcome"] == "success"
    assert lines["id"] == str(item["answer_seq"])


async def test_another_tenant_sees_none_of_the_calls(
    gateway: Gateway, start_gateway, echo: Echo, nc: NATS, pool: asyncpg.Pool
) -> None:
    call = await _call(gateway, {"text": "mine"})
    await ended_calls(nc, pool, gateway.tenant, 1)
    other = await start_gateway()
    admin = await issue_key(nc, other.tenant, role="tenant_admin")
    await gateway_ready(gateway.url, admin)
    status, body = await _get(gateway, f"/v1/calls/{call}", key=admin)
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    status, body = await _get(gateway, "/v1/calls", key=admin)
    assert status == 200 and body["calls"] == []
    status, body = await _get(gateway, f"/v1/calls?tenant={gateway.tenant}", key=admin)
    assert status == 404
    # A super admin (of another tenant) may name the tenant.
    status, body = await _get(gateway, f"/v1/calls/{call}?tenant={gateway.tenant}", key=other.api_key)
    assert status == 200 and body["call"]["call_id"] == call
    # Who may call capabilities but not read the tenant's usage may not read its calls.
    user = await issue_key(nc, gateway.tenant, role="user")
    await gateway_ready(gateway.url, user)
    for path in ("/v1/calls", f"/v1/calls/{call}", "/v1/calls/stats", "/v1/calls/live"):
        status, body = await _get(gateway, path, key=user)
        assert status == 403 and body["error"]["details"]["needed"] == ["billing:read"], path
