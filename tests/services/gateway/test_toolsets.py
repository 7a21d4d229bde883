"""Toolsets per API key: a key limited to some capabilities calls only those, on every transport,
and lists only those; the limit is in the key's event, so it survives a restart and a rebuild."""

from __future__ import annotations

import aiohttp
import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts.toolsets import MAX_TOOLSET_ENTRIES, check_toolset, outside_of, toolset_allows

from support.client import http
from support.gateway import Gateway, issue_key
from support.modules import Echo
from support.names import unique
from support.projections import caught_up
from support.streamer import Streamer
from support.waiting import eventually

# --- the rule ----------------------------------------------------------------------------------


def test_an_entry_is_a_capability_or_a_family() -> None:
    assert check_toolset(["text.summarize", "image.*", "text.summarize"]) == ("image.*", "text.summarize")
    for bad in ("Text.Summarize", "*", "text.*.x", "text.", "", "a b"):
        with pytest.raises(ValueError, match="toolset entry"):
            check_toolset([bad])
    with pytest.raises(ValueError, match=f"at most {MAX_TOOLSET_ENTRIES}"):
        check_toolset([f"t.c{i}" for i in range(MAX_TOOLSET_ENTRIES + 1)])


def test_a_toolset_allows_its_names_and_families_and_an_empty_one_everything() -> None:
    toolset = ("image.*", "text.summarize")
    assert toolset_allows(toolset, "text.summarize")
    assert toolset_allows(toolset, "image.upscale") and toolset_allows(toolset, "image.color.fix")
    assert not toolset_allows(toolset, "text.translate")
    assert not toolset_allows(toolset, "imagery.x")  # a family is a whole word
    assert not toolset_allows(toolset, "image")
    assert toolset_allows((), "anything.at_all")


def test_a_key_hands_on_no_more_than_it_may_call() -> None:
    outer = ("image.*", "text.summarize")
    assert outside_of(("image.upscale", "image.color.*", "text.summarize"), outer) == []
    assert outside_of(("text.*", "video.cut", "image.*"), outer) == ["text.*", "video.cut"]
    assert outside_of(("anything.*",), ()) == []  # an issuer without a toolset limits nothing


# --- every transport ------------------------------------------------------------------------------


async def _limited_key(gateway: Gateway, capabilities: list[str]) -> dict:
    status, key = await http(
        "POST",
        f"{gateway.url}/v1/tenants/{gateway.tenant}/api-keys",
        json={"name": "limited", "capabilities": capabilities},
        credential=gateway.api_key,
    )
    assert status == 201, key
    return key


async def test_a_limited_key_calls_and_lists_only_its_toolset(
    gateway: Gateway, echo: Echo, streamer: Streamer, pool: asyncpg.Pool, nc: NATS
) -> None:
    key = await _limited_key(gateway, ["test.echo", "test.count"])
    assert key["capabilities"] == ["test.count", "test.echo"]
    secret = key["api_key"]
    invoke = f"{gateway.url}/v1/capabilities/{{}}/invoke"

    status, body = await http("POST", invoke.format("test.echo"), json={"text": "hi"}, credential=secret)
    assert status == 200 and body["result"] == {"text": "hi"}, body
    status, body = await http("POST", invoke.format("test.hang"), json={}, credential=secret)
    assert status == 403 and body["error"]["code"] == "FORBIDDEN", body
    assert body["error"]["details"] == {"capability": "test.hang", "toolset": ["test.count", "test.echo"]}

    async with aiohttp.ClientSession() as session:  # SSE: refused before the stream starts
        async with session.post(
            invoke.format("test.broken"),
            data=b"{}",
            headers={
                "Authorization": f"Bearer {secret}",
                "Content-Type": "application/json",
                "Accept": "text/event-stream",
            },
        ) as response:
            assert response.status == 403 and (await response.json())["error"]["code"] == "FORBIDDEN"
        async with session.ws_connect(f"{gateway.url}/v1/ws", headers={"Authorization": f"Bearer {secret}"}) as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "READY"
            await ws.send_json({"type": "REQUEST", "correlation_id": "no", "action": "test.hang", "payload": {}})
            refused = await ws.receive_json(timeout=5)
            assert refused["type"] == "ERROR" and refused["correlation_id"] == "no", refused
            assert refused["error"]["code"] == "FORBIDDEN" and refused["error"]["details"]["capability"] == "test.hang"
            await ws.send_json(
                {"type": "REQUEST", "correlation_id": "yes", "action": "test.count", "payload": {"n": 1}}
            )
            frames = [await ws.receive_json(timeout=5)]
            while not (frames[-1].get("final") or frames[-1]["type"] in ("RESPONSE", "ERROR")):
                frames.append(await ws.receive_json(timeout=5))
            assert frames[0]["type"] == "ACCEPTED" and frames[-1]["type"] != "ERROR", frames

    status, listed = await http("GET", f"{gateway.url}/v1/capabilities", credential=secret)
    assert status == 200, listed
    status, everything = await http("GET", f"{gateway.url}/v1/capabilities", credential=gateway.api_key)
    registered = {c["action"] for c in everything["capabilities"]}
    assert {"test.count", "test.hang", "test.broken"} <= registered  # the streamer's, registered by the hub
    assert {c["action"] for c in listed["capabilities"]} == registered & {"test.echo", "test.count"}

    await caught_up(nc, pool, "identity")
    status, keys = await http("GET", f"{gateway.url}/v1/tenants/{gateway.tenant}/api-keys", credential=gateway.api_key)
    assert status == 200, keys
    assert next(k for k in keys["api_keys"] if k["key_id"] == key["key_id"])["capabilities"] == [
        "test.count",
        "test.echo",
    ]


async def test_a_family_and_a_key_issued_by_a_limited_key(gateway: Gateway, echo: Echo) -> None:
    family = await _limited_key(gateway, ["test.*"])
    status, body = await http(
        "POST", f"{gateway.url}/v1/capabilities/test.echo/invoke", json={}, credential=family["api_key"]
    )
    assert status == 200, body

    # Keys issued by a limited key: within its toolset (inherited when not named), never wider.
    issuer = (
        await http(
            "POST",
            f"{gateway.url}/v1/tenants/{gateway.tenant}/api-keys",
            credential=gateway.api_key,
            json={"capabilities": ["test.echo"], "scopes": ["api_key:create", "module:use"]},
        )
    )[1]
    keys = f"{gateway.url}/v1/tenants/{gateway.tenant}/api-keys"
    status, inherited = await http("POST", keys, json={"scopes": ["module:use"]}, credential=issuer["api_key"])
    assert status == 201 and inherited["capabilities"] == ["test.echo"], inherited
    status, wider = await http(
        "POST", keys, json={"scopes": ["module:use"], "capabilities": ["test.*"]}, credential=issuer["api_key"]
    )
    assert status == 403 and wider["error"]["details"] == {"capabilities": ["test.*"]}, wider


async def test_a_bad_toolset_is_refused_and_nothing_is_issued(gateway: Gateway, nc: NATS, pool: asyncpg.Pool) -> None:
    keys = f"{gateway.url}/v1/tenants/{gateway.tenant}/api-keys"
    await caught_up(nc, pool, "identity")
    status, before = await http("GET", keys, credential=gateway.api_key)
    for capabilities in (["Not A Name"], ["text.*.more"], [f"t.c{i}" for i in range(MAX_TOOLSET_ENTRIES + 1)]):
        status, body = await http("POST", keys, json={"capabilities": capabilities}, credential=gateway.api_key)
        assert status in (400, 422), body
        assert body["error"]["code"] in ("VALIDATION_FAILED", "BAD_REQUEST"), body
    status, body = await http("POST", keys, json={"capabilities": "text.summarize"}, credential=gateway.api_key)
    assert 400 <= status < 500, body
    await caught_up(nc, pool, "identity")
    status, after = await http("GET", keys, credential=gateway.api_key)
    assert len(after["api_keys"]) == len(before["api_keys"])


async def test_a_named_toolset_is_followed_by_its_keys(gateway: Gateway, echo: Echo, streamer: Streamer) -> None:
    tenant_url = f"{gateway.url}/v1/tenants/{gateway.tenant}"
    invoke = f"{gateway.url}/v1/capabilities/{{}}/invoke"
    admin = gateway.api_key
    status, body = await http(
        "PUT", f"{tenant_url}/toolsets/echo-only", json={"capabilities": ["test.echo"]}, credential=admin
    )
    assert status == 200 and body == {"name": "echo-only", "capabilities": ["test.echo"]}, body
    status, key = await http("POST", f"{tenant_url}/api-keys", json={"toolset": "echo-only"}, credential=admin)
    assert status == 201 and key["toolset"] == "echo-only" and key["capabilities"] == [], key
    secret = key["api_key"]
    assert (await http("POST", invoke.format("test.echo"), json={}, credential=secret))[0] == 200
    status, body = await http("POST", invoke.format("test.count"), json={"n": 1}, credential=secret)
    assert status == 403 and body["error"]["details"]["toolset"] == ["test.echo"], body

    # Redefined: the key follows at its next call, on this gateway and any other.
    status, _ = await http(
        "PUT", f"{tenant_url}/toolsets/echo-only", json={"capabilities": ["test.count"]}, credential=admin
    )
    assert status == 200
    assert (await http("POST", invoke.format("test.count"), json={"n": 1}, credential=secret))[0] == 200
    assert (await http("POST", invoke.format("test.echo"), json={}, credential=secret))[0] == 403
    status, listed = await http("GET", f"{tenant_url}/toolsets", credential=admin)
    assert listed == {"toolsets": [{"name": "echo-only", "capabilities": ["test.count"]}]}

    # Not deleted while a live key follows it; once the key is revoked, it is.
    status, body = await http("DELETE", f"{tenant_url}/toolsets/echo-only", credential=admin)
    assert status == 409 and body["error"]["details"]["api_keys"] == [key["key_id"]], body
    assert (await http("DELETE", f"{tenant_url}/api-keys/{key['key_id']}", credential=admin))[0] == 204
    assert (await http("DELETE", f"{tenant_url}/toolsets/echo-only", credential=admin))[0] == 204
    status, body = await http("GET", f"{tenant_url}/toolsets/echo-only", credential=admin)
    assert status == 404 and body["error"]["code"] == "NOT_FOUND", body


async def test_named_toolsets_refuse_what_they_cannot_hold(gateway: Gateway, nc: NATS) -> None:
    tenant_url = f"{gateway.url}/v1/tenants/{gateway.tenant}"
    admin = gateway.api_key
    for name, body in (
        ("ok", {"capabilities": []}),
        ("ok", {"capabilities": ["Bad Name"]}),
        ("no.dots", {"capabilities": ["test.echo"]}),
        ("ok", {"capabilities": "test.echo"}),
        ("ok", {"capabilities": ["test.echo"], "extra": 1}),
    ):
        status, answer = await http("PUT", f"{tenant_url}/toolsets/{name}", json=body, credential=admin)
        assert status in (400, 422), (name, body, answer)
    status, answer = await http("POST", f"{tenant_url}/api-keys", json={"toolset": "missing"}, credential=admin)
    assert status == 404 and answer["error"]["details"] == {"toolset": "missing"}, answer
    await http("PUT", f"{tenant_url}/toolsets/ok", json={"capabilities": ["test.echo"]}, credential=admin)
    status, answer = await http(
        "POST", f"{tenant_url}/api-keys", credential=admin, json={"toolset": "ok", "capabilities": ["test.echo"]}
    )
    assert status == 422 and answer["error"]["details"]["field"] == "toolset", answer
    status, listed = await http("GET", f"{tenant_url}/toolsets", credential=admin)
    assert listed == {"toolsets": [{"name": "ok", "capabilities": ["test.echo"]}]}
    # Another tenant's toolsets are not there at all.
    other = await issue_key(nc, unique("other"), role="tenant_admin")
    await eventually_authenticated(gateway, other)
    status, answer = await http("GET", f"{tenant_url}/toolsets", credential=other)
    assert status == 404 and answer["error"]["code"] == "NOT_FOUND", answer


async def eventually_authenticated(gateway: Gateway, key: str) -> None:
    """Until the gateway's identity index holds ``key`` (published straight to the log)."""

    async def known() -> bool:
        return (await http("GET", f"{gateway.url}/v1/capabilities", credential=key))[0] != 401

    await eventually(known, "the gateway to know the key", timeout=10, interval=0.05)
