"""The calls read model: every gateway call is one row with the outcome metering gives it, its
timing, chunks and MCP sequences; a malformed record is quarantined, not fatal; a rebuild (in any
batch size) gives the same rows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ErrorCode, decode, subjects
from democratic_ai.projections import PROJECTIONS, CallsProjection, rebuild, verify

from support.calls import (
    call_rows,
    ended_calls,
    error_record,
    publish_records,
    request_record,
    response_record,
)
from support.client import http
from support.gateway import Gateway, issue_key
from support.modules import Echo
from support.names import unique
from support.projections import caught_up
from support.streamer import Streamer
from support.streaming import SSE, invoke_url, sse
from support.waiting import eventually


async def _plain(gateway: Gateway, payload: dict, query: str = "", key: str | None = None) -> tuple[int, str]:
    headers = {**gateway.headers, "X-API-Key": key or gateway.api_key}
    async with (
        aiohttp.ClientSession() as session,
        session.post(invoke_url(gateway, "test.echo") + query, json=payload, headers=headers) as response,
    ):
        await response.read()
        return response.status, response.headers.get("X-Call-Id", "")


def test_the_projection_is_registered_with_the_others() -> None:
    assert isinstance(PROJECTIONS["calls"], CallsProjection)
    assert PROJECTIONS["calls"].stream == "MCP" and PROJECTIONS["calls"].tables == ("calls",)


async def test_plain_calls_get_their_outcome_duration_and_records(
    gateway: Gateway, echo: Echo, nc: NATS, pool: asyncpg.Pool
) -> None:
    expected = {}
    status, call = await _plain(gateway, {"text": "hi", "sleep_ms": 200})
    assert status == 200
    expected[call] = "success"
    status, call = await _plain(gateway, {"fail": True})
    assert status == 502
    expected[call] = "failed"
    status, call = await _plain(gateway, {"sleep_ms": 1500}, "?ttl=1")
    assert status == 504
    expected[call] = "timeout"
    rows = await ended_calls(nc, pool, gateway.tenant, 3)
    assert {c: rows[c]["outcome"] for c in expected} == expected

    ok = rows[next(c for c, o in expected.items() if o == "success")]
    assert ok["capability"] == "test.echo" and ok["module_id"] == "echo-test" and ok["transport"] == "http"
    assert ok["chunks"] == 0 and ok["error_code"] is None
    assert 200 <= ok["duration_ms"] < 2000
    assert ok["duration_ms"] == pytest.approx((ok["ended_at"] - ok["started_at"]).total_seconds() * 1000)
    assert ok["at"] == ok["started_at"]
    js = nc.jetstream()
    stored_request = await js.get_msg("MCP", seq=ok["request_seq"])
    stored_answer = await js.get_msg("MCP", seq=ok["answer_seq"])
    assert stored_request.subject == subjects.record_request(gateway.tenant, "test.echo")
    assert decode(stored_request.data).correlation_id == ok["call_id"]
    assert decode(stored_answer.data).payload == b'{"text":"hi"}'

    failed = rows[next(c for c, o in expected.items() if o == "failed")]
    assert failed["error_code"] == "MODULE_ERROR" and failed["module_id"] == "echo-test"
    # The gateway's TIMEOUT is what the client got; the module's late answer does not change it.
    timed_out = next(c for c, o in expected.items() if o == "timeout")
    await asyncio.sleep(0.7)  # the handler ends 1.5 s after the call began: its answer is recorded
    await caught_up(nc, pool, "calls")
    row = (await call_rows(pool, gateway.tenant))[timed_out]
    assert row["outcome"] == "timeout" and row["error_code"] == "TIMEOUT" and row["ended_by_gateway"]
    assert row["module_id"] == "echo-test"  # learnt from the late answer
    assert 900 <= row["duration_ms"] < 1400


async def test_streamed_cancelled_and_refused_calls(
    gateway: Gateway, streamer: Streamer, echo: Echo, nc: NATS, pool: asyncpg.Pool
) -> None:
    status, events = await sse(gateway, "test.count", b'{"n": 3}')
    assert status == 200
    counted = events[-1][1]["call_id"]
    status, events = await sse(gateway, "test.broken", b'{"fail_after": 2}')
    broken = events[-1][1]["call_id"]
    streamer.started.clear()
    async with aiohttp.ClientSession() as session:
        response = await session.post(invoke_url(gateway, "test.hang"), data=b"{}", headers={**gateway.headers, **SSE})
        hung_up = response.headers["X-Call-Id"]
        await response.content.readuntil(b"\n\n")
        await streamer.started.wait()
        response.close()
    # A key of one call a minute: its second call is refused by the gateway.
    key = await issue_key(nc, gateway.tenant, rate_limit=1)

    async def known() -> bool:
        return (await http("GET", f"{gateway.url}/v1/usage/limits", headers={"X-API-Key": key}))[0] == 200

    await eventually(known, "the gateway to know the new key", timeout=10)
    statuses = [(await _plain(gateway, {"text": "x"}, key=key))[0] for _ in range(3)]
    assert 429 in statuses

    rows = await ended_calls(nc, pool, gateway.tenant, 3 + len(statuses))
    assert rows[counted]["outcome"] == "success" and rows[counted]["chunks"] == 3
    assert rows[counted]["transport"] == "sse" and rows[counted]["module_id"] == "streamer-test"
    assert rows[broken]["outcome"] == "failed" and rows[broken]["chunks"] == 2
    assert rows[hung_up]["outcome"] == "cancelled" and rows[hung_up]["error_code"] == "CANCELLED"
    refused = [r for r in rows.values() if r["outcome"] == "rate_limited"]
    assert len(refused) == statuses.count(429)
    for row in refused:  # no request was recorded: it began when it was refused, duration unknown
        assert row["request_seq"] is None and row["started_at"] is None and row["duration_ms"] is None
        assert row["at"] == row["ended_at"] and row["transport"] == "http" and row["error_code"] == "RATE_LIMITED"


async def test_the_gateways_end_outranks_the_modules_and_the_first_end_stays(
    projections: None, nc: NATS, pool: asyncpg.Pool
) -> None:
    tenant = unique("calls")
    t0 = datetime.now(UTC) - timedelta(seconds=10)
    late = request_record(tenant, "test.synthetic", t0)
    twice = request_record(tenant, "test.synthetic", t0)
    await publish_records(
        nc,
        late,
        # The module's answer is recorded first, but the client got the gateway's timeout.
        response_record(late, t0 + timedelta(milliseconds=1500)),
        error_record(late, t0 + timedelta(milliseconds=1000), ErrorCode.TIMEOUT),
        twice,
        response_record(twice, t0 + timedelta(milliseconds=12.345)),
        response_record(twice, t0 + timedelta(milliseconds=50)),  # a second answer changes nothing
    )
    rows = await ended_calls(nc, pool, tenant, 2)
    assert rows[late.correlation_id]["outcome"] == "timeout"
    assert rows[late.correlation_id]["duration_ms"] == 1000.0
    assert rows[late.correlation_id]["module_id"] == "synthetic-module"
    assert rows[twice.correlation_id]["outcome"] == "success"
    assert rows[twice.correlation_id]["duration_ms"] == 12.345  # exact to the microsecond


async def test_a_malformed_record_is_quarantined_and_the_projection_goes_on(
    projections: None, nc: NATS, pool: asyncpg.Pool
) -> None:
    tenant = unique("calls")
    good = request_record(tenant, "test.synthetic", datetime.now(UTC))
    forged = request_record("someone-else", "test.synthetic", datetime.now(UTC))
    await nc.publish(subjects.record_response(tenant, "test.synthetic"), b"\xff\xfe not protobuf")
    # A record whose context names another tenant than its subject.
    await nc.publish(subjects.record_request(tenant, "test.synthetic"), forged.SerializeToString())
    await publish_records(nc, good, response_record(good, datetime.now(UTC)))
    rows = await ended_calls(nc, pool, tenant, 1)
    assert list(rows) == [good.correlation_id]
    async with pool.acquire() as conn:
        letters = await conn.fetch(
            "SELECT subject, error FROM projection_dead_letters WHERE projection = 'calls' AND subject LIKE $1",
            f"mcp.%.{tenant}.%",
        )
    assert sorted(letter["subject"].split(".")[1] for letter in letters) == ["req", "res"]
    assert {e for letter in letters for e in ("not an MCP message", "not those of its subject") if e in letter["error"]}


async def test_a_rebuild_in_any_batch_size_gives_the_same_rows(
    gateway: Gateway, echo: Echo, streamer: Streamer, nc: NATS, pool: asyncpg.Pool
) -> None:
    for payload in ({"text": "a"}, {"fail": True}, {"text": "b", "sleep_ms": 20}):
        await _plain(gateway, payload)
    await sse(gateway, "test.count", b'{"n": 4}')
    t0 = datetime.now(UTC)
    split = request_record(gateway.tenant, "test.synthetic", t0)
    await publish_records(
        nc,
        split,
        response_record(split, t0 + timedelta(milliseconds=30)),
        error_record(split, t0 + timedelta(milliseconds=20), ErrorCode.TIMEOUT),
    )
    await ended_calls(nc, pool, gateway.tenant, 5)
    projection = PROJECTIONS["calls"]
    # The test's live projection started at the stream's end (tests/conftest.py): fold all of it
    # once, so the live rows are what a fold from the start gives.
    await rebuild(nc.jetstream(), pool, projection, batch=1024)
    before = await call_rows(pool, gateway.tenant)
    assert len(before) == 5
    for batch in (1, 3, 1024):
        comparisons = await verify(nc.jetstream(), pool, projection, batch=batch)
        assert all(c.live == c.rebuilt for c in comparisons), (batch, comparisons)
    await rebuild(nc.jetstream(), pool, projection, batch=2)
    after = await call_rows(pool, gateway.tenant)
    assert {c: dict(r) for c, r in after.items()} == {c: dict(r) for c, r in before.items()}
