"""``GET /metrics``: the gateway's Prometheus metrics parse, move with the calls of every
transport, keep their labels bounded, and are for ``metrics:read`` only."""

from __future__ import annotations

import asyncio

import aiohttp
from nats.aio.client import Client as NATS

from democratic_ai.services.gateway.state import REGISTRY

from support.client import http
from support.gateway import Gateway, issue_key
from support.metrics import Samples, samples, scrape_text
from support.modules import Echo
from support.waiting import eventually


async def _scrape(gateway: Gateway, credential: str) -> Samples:
    return samples(await scrape_text(f"{gateway.url}/metrics", credential))


def _label(gateway: Gateway, capability: str) -> str:
    """The ``capability`` label the gateway gives ``capability``'s calls."""
    assert gateway.app is not None
    return capability if gateway.app[REGISTRY].is_registered(capability) else "unregistered"


def _calls(samples: dict, capability: str, transport: str, outcome: str) -> float:
    labels = (("capability", capability), ("outcome", outcome), ("transport", transport))
    return samples.get(("dai_calls_total", labels), 0.0)


async def test_metrics_count_calls_by_capability_transport_and_outcome(gateway: Gateway, echo: Echo) -> None:
    invoke = f"{gateway.url}/v1/capabilities/{{}}/invoke"
    before = await _scrape(gateway, gateway.api_key)
    assert (await http("POST", invoke.format("test.echo"), json={"text": "a"}, credential=gateway.api_key))[0] == 200
    assert (await http("POST", invoke.format("test.echo"), json={"fail": True}, credential=gateway.api_key))[0] == 502
    assert (await http("POST", invoke.format("nobody.serves.this"), json={}, credential=gateway.api_key))[0] == 404
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{gateway.url}/v1/ws", headers={"X-API-Key": gateway.api_key}) as ws,
    ):
        await ws.receive_json(timeout=5)
        await ws.send_json({"type": "REQUEST", "correlation_id": "w", "action": "test.echo", "payload": {}})
        while (frame := await ws.receive_json(timeout=5))["type"] not in ("RESPONSE", "ERROR"):
            pass
        assert frame["type"] == "RESPONSE", frame
    after = await _scrape(gateway, gateway.api_key)

    # A capability is its own series once registered (the session's log may hold test.echo's
    # registration from an earlier test); a name nobody registered is "unregistered" — a caller
    # cannot add series by inventing names.
    echo = _label(gateway, "test.echo")

    def moved(capability: str, transport: str, outcome: str) -> float:
        return _calls(after, capability, transport, outcome) - _calls(before, capability, transport, outcome)

    assert moved(echo, "http", "success") == 1 and moved(echo, "websocket", "success") == 1
    # test.echo's failure and nobody.serves.this's: one series or two
    failed = {echo: 1, "unregistered": 1} if echo != "unregistered" else {"unregistered": 2}
    assert {capability: moved(capability, "http", "failed") for capability in failed} == failed
    assert not any(dict(labels).get("capability") == "nobody.serves.this" for _, labels in after)
    assert after[("dai_calls_in_flight", (("transport", "http"),))] == 0

    def durations(samples: dict) -> float:
        return sum(
            samples.get(("dai_call_duration_seconds_count", (("capability", c), ("transport", "http"))), 0)
            for c in {echo, "unregistered"}
        )

    assert durations(after) - durations(before) == 3
    assert after[("dai_follower_position", (("follower", "identity"),))] > 0
    assert ("dai_nats_reconnects_total", ()) in after


async def test_refusals_are_counted_by_policy(gateway: Gateway, echo: Echo, nc: NATS) -> None:
    limited = await issue_key(nc, gateway.tenant, rate_limit=1)  # one call a minute
    invoke = f"{gateway.url}/v1/capabilities/test.echo/invoke"
    statuses = set()
    while 429 not in statuses:
        status, _ = await http("POST", invoke, json={}, credential=limited)
        assert status in (200, 401, 429)  # 401 until the gateway's index has the new key
        statuses.add(status)
        if status == 401:
            await asyncio.sleep(0.05)  # paces the calls while the gateway's index has not the key yet
    samples = await _scrape(gateway, gateway.api_key)
    assert samples[("dai_rate_limit_refusals_total", (("policy", "key-calls"),))] >= 1
    assert _calls(samples, _label(gateway, "test.echo"), "http", "rate_limited") >= 1


async def test_metrics_need_metrics_read(gateway: Gateway, nc: NATS) -> None:
    status, body = await http("GET", f"{gateway.url}/metrics")
    assert status == 401 and body["error"]["code"] == "UNAUTHENTICATED", body
    tenant_admin = await issue_key(nc, gateway.tenant, role="tenant_admin")

    async def known() -> tuple[int, dict] | None:  # once the gateway's index has the key
        answer = await http("GET", f"{gateway.url}/metrics", credential=tenant_admin)
        return None if answer[0] == 401 else answer

    status, body = await eventually(known, "the gateway to know the key", timeout=10, interval=0.05)
    assert status == 403 and body["error"]["details"] == {"needed": ["metrics:read"]}, body
    status, key = await http(
        "POST",
        f"{gateway.url}/v1/tenants/{gateway.tenant}/api-keys",
        json={"name": "prometheus", "scopes": ["metrics:read"]},
        credential=gateway.api_key,
    )
    assert status == 201, key
    await _scrape(gateway, key["api_key"])
