"""Rate limits at the edge: exact call limits on one gateway and across two processes, buckets
for compute and bandwidth, and what a refusal looks like (429, headers, a usage event)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter

import aiohttp
import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.ops.ports import free_port
from democratic_ai.schemas import app_dsn
from democratic_ai.services.metering import MeteringConfig, Plan, PlanBook
from democratic_ai.services.plans import BandwidthLimit, CallLimit, ComputeLimit

from support.client import http
from support.gateway import TEST_METERING, Gateway, StartGateway, flood, gateway_ready, issue_key
from support.modules import Echo
from support.usage import settled, usage_events
from support.waiting import eventually

LIMIT = 100  # the API key's calls per minute


async def test_one_gateway_admits_exactly_the_limit_of_five_times_as_many_concurrent_calls(
    gateway: Gateway, echo: Echo, nc: NATS, pool: asyncpg.Pool
) -> None:
    key = await issue_key(nc, gateway.tenant, rate_limit=LIMIT)
    await gateway_ready(gateway.url, key)
    results = await flood([gateway.url], key, 5 * LIMIT)
    statuses = Counter(status for _, status, _, _ in results)
    assert statuses == {200: LIMIT, 429: 4 * LIMIT}

    _, _, headers, body = next(r for r in results if r[1] == 429)
    assert body["error"]["code"] == "RATE_LIMITED" and body["error"]["details"]["policy"] == "key-calls"
    retry = int(headers["Retry-After"])
    assert 1 <= retry <= 61
    assert f'"key-calls";q={LIMIT};w=60' in headers["RateLimit-Policy"]
    assert f'"key-calls";r=0;t={retry}' in headers["RateLimit"]
    assert re.fullmatch(
        r'("[a-z-]+";(q=\d+;w=\d+|r=\d+;t=\d+)(;[a-z-]+="[a-z-]+")?(, )?)+',
        headers["RateLimit"] + ", " + headers["RateLimit-Policy"],
    )

    # Refusals are usage too: recorded as rate_limited, never as billable calls.
    await settled(gateway, nc, pool)
    events = await usage_events(nc, gateway.tenant)
    outcomes = Counter(e.outcome for e in events if e.metric == "api_calls")
    assert outcomes == {"success": LIMIT, "rate_limited": 4 * LIMIT}
    refused_ids = {e.call_id for e in events if e.outcome == "rate_limited"}
    assert all(e.metric == "api_calls" for e in events if e.call_id in refused_ids)


@pytest.mark.slow
async def test_two_gateway_processes_share_one_exact_limit(
    gateway: Gateway, echo: Echo, nc: NATS, nats_server: object, database_url: str
) -> None:
    """The bound is the limit itself: leases are appended with an expected last subject
    sequence, so each is granted knowing every earlier one (services/metering/admission.py)."""
    key = await issue_key(nc, gateway.tenant, rate_limit=LIMIT)
    paced = await issue_key(nc, gateway.tenant, rate_limit=LIMIT)
    port = free_port()
    env = {
        **os.environ,
        **nats_server.environment("gateway"),
        "DATABASE_APP_URL": app_dsn(database_url),
        "DAI_LOG_LEVEL": "WARNING",
        "DAI_USAGE_FLUSH_SECONDS": "0.05",
    }
    second = subprocess.Popen([sys.executable, "-m", "democratic_ai.ops.cli", "gateway", "--port", str(port)], env=env)
    try:
        other = f"http://127.0.0.1:{port}"
        await gateway_ready(other, key)
        await gateway_ready(gateway.url, key)
        results = await flood([gateway.url, other], key, 5 * LIMIT)
        # The same load in waves, so that both replicas keep leasing until the limit is reached.
        await gateway_ready(other, paced)
        waves = [r for _ in range(10) for r in await flood([gateway.url, other], paced, LIMIT // 2)]
    finally:
        second.terminate()
        second.wait(timeout=15)
    statuses = Counter(status for _, status, _, _ in results)
    admitted = statuses[200]
    served = Counter(url for url, status, _, _ in results if status == 200)
    print(
        f"\ntwo gateways, limit {LIMIT}, {5 * LIMIT} concurrent calls: {admitted} admitted"
        f" ({served[gateway.url]} + {served[other]}), {statuses[429]} refused;"
        f" the in-process one lost {gateway.metering.admission.conflicts} lease races"
    )
    assert set(statuses) <= {200, 429}
    assert admitted <= LIMIT  # exact: never over the limit, whatever the interleaving
    assert admitted >= 0.9 * LIMIT  # and not far under it
    served = Counter(url for url, status, _, _ in waves if status == 200)
    print(f"in waves of {LIMIT // 2}: {served.total()} admitted ({served[gateway.url]} + {served[other]})")
    assert 0.9 * LIMIT <= served.total() <= LIMIT
    assert served[gateway.url] and served[other]


TIGHT = PlanBook(
    {
        "tight": Plan(
            api_calls=CallLimit(limit=600),
            compute_ms=ComputeLimit(capacity=50, refill_per_second=0.5),
            bandwidth_bytes=BandwidthLimit(capacity=2000, leak_per_second=1.0),
        ),
    },
    default_plan="tight",
)


async def test_compute_and_bandwidth_buckets_refuse_with_their_policy(start_gateway: StartGateway, echo: Echo) -> None:
    gateway = await start_gateway(MeteringConfig(plans=TIGHT, publisher=TEST_METERING.publisher))
    invoke = f"{gateway.url}/v1/capabilities/test.echo/invoke"
    # Compute is post-paid: a 60 ms call runs on a 50 ms budget, and the next one waits for the refill.
    status, _ = await http("POST", invoke, json={"sleep_ms": 60}, headers={"X-API-Key": gateway.api_key})
    assert status == 200
    async with (
        aiohttp.ClientSession() as session,
        session.post(invoke, json={"text": "x"}, headers={"X-API-Key": gateway.api_key}) as response,
    ):
        body = await response.json()
        assert response.status == 429 and body["error"]["details"]["policy"] == "compute"
        retry = int(response.headers["Retry-After"])
        assert retry >= 22  # at least (60 - 50 + 1) ms of debt, refilled at 0.5 ms per second
        assert f'"compute";r=0;t={retry}' in response.headers["RateLimit"]

    other = await start_gateway(
        MeteringConfig(
            plans=PlanBook(
                {"tight": Plan(bandwidth_bytes=BandwidthLimit(capacity=2000, leak_per_second=1.0))},
                default_plan="tight",
            ),
            publisher=TEST_METERING.publisher,
        )
    )
    invoke = f"{other.url}/v1/capabilities/test.echo/invoke"
    status, _ = await http("POST", invoke, json={"text": "y" * 900}, headers={"X-API-Key": other.api_key})
    assert status == 200  # 900 in and ~900 out: the bucket now holds ~1,800 of 2,000 bytes
    status, body = await http("POST", invoke, json={"text": "z" * 400}, headers={"X-API-Key": other.api_key})
    assert status == 429 and body["error"]["details"]["policy"] == "bandwidth"
    status, _ = await http("POST", invoke, json={"text": "z"}, headers={"X-API-Key": other.api_key})
    assert status == 200  # a small request still fits: the leaky bucket limits bytes, not calls


async def test_compute_used_through_one_replica_is_seen_by_another(start_gateway: StartGateway, echo: Echo) -> None:
    config = MeteringConfig(plans=TIGHT, publisher=TEST_METERING.publisher)
    first = await start_gateway(config)
    second = await start_gateway(config, tenant=first.tenant)
    status, _ = await http(
        "POST",
        f"{first.url}/v1/capabilities/test.echo/invoke",
        json={"sleep_ms": 60},
        headers={"X-API-Key": first.api_key},
    )
    assert status == 200
    # The first replica tells the others what the tenant used every 0.25 s. Until the second
    # hears of it, each of its own calls takes a millisecond of its 50: it would need about 50
    # calls to run dry alone.
    attempts = 0

    async def refused() -> dict | None:
        nonlocal attempts
        attempts += 1
        status, body = await http(
            "POST",
            f"{second.url}/v1/capabilities/test.echo/invoke",
            json={"text": "x"},
            headers={"X-API-Key": second.api_key},
        )
        return body if status == 429 else None

    # One call every 0.05 s: twenty of them span four of the first replica's reports.
    body = await eventually(refused, "the second replica to refuse for compute", timeout=5, interval=0.05)
    assert body["error"]["details"]["policy"] == "compute"
    assert attempts <= 20
