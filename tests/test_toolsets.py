"""Toolsets per API key: a key limited to some capabilities calls only those, on every transport,
and lists only those; the limit is in the key's event, so it survives a restart and a rebuild."""

from __future__ import annotations

import aiohttp
import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts.toolsets import MAX_TOOLSET_ENTRIES, check_toolset, outside_of, toolset_allows

from conftest import Echo, Gateway, caught_up, http
from streaming_modules import Streamer

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
    status, key = await http("POST", f"{gateway.url}/v1/tenants/{gateway.tenant}/api-keys",
                             json={"name": "limited", "capabilities": capabilities}, credential=gateway.api_key)
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
        async with session.post(invoke.format("test.broken"), data=b"{}", headers={
            "Authorization": f"Bearer {secret}", "Content-Type": "application/json", "Accept": "text/event-stream",
        }) as response:
            assert response.status == 403 and (await response.json())["error"]["code"] == "FORBIDDEN"
        async with session.ws_connect(f"{gateway.url}/v1/ws", headers={"Authorization": f"Bearer {secret}"}) as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "READY"
            await ws.send_json({"type": "REQUEST", "correlation_id": "no", "action": "test.hang", "payload": {}})
            refused = await ws.receive_json(timeout=5)
            assert refused["type"] == "ERROR" and refused["correlation_id"] == "no", refused
            assert refused["error"]["code"] == "FORBIDDEN" and refused["error"]["details"]["capability"] == "test.hang"
            await ws.send_json({"type": "REQUEST", "correlation_id": "yes", "action": "test.count",
                                "payload": {"n": 1}})
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
    assert next(k for k in keys["api_keys"] if k["key_id"] == key["key_id"])["capabilities"] == ["test.count",
                                                                                                  "test.echo"]


async def test_a_family_and_a_key_issued_by_a_limited_key(gateway: Gateway, echo: Echo) -> None:
    family = await _limited_key(gateway, ["test.*"])
    status, body = await http("POST", f"{gateway.url}/v1/capabilities/test.echo/invoke", json={},
                              credential=family["api_key"])
    assert status == 200, body

    # Keys issued by a limited key: within its toolset (inherited when not named), never wider.
    issuer = (await http("POST", f"{gateway.url}/v1/tenants/{gateway.tenant}/api-keys", credential=gateway.api_key,
                         json={"capabilities": ["test.echo"], "scopes": ["api_key:create", "module:use"]}))[1]
    keys = f"{gateway.url}/v1/tenants/{gateway.tenant}/api-keys"
    status, inherited = await http("POST", keys, json={"scopes": ["module:use"]}, credential=issuer["api_key"])
    assert status == 201 and inherited["capabilities"] == ["test.echo"], inherited
    status, wider = await http("POST", keys, json={"scopes": ["module:use"], "capabilities": ["test.*"]},
                               credential=issuer["api_key"])
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
