"""Credentials are re-checked where they are used (issue 12, item 8), against real servers.

An open WebSocket refuses the next call and closes with 1008 within 1 s of its key's revocation
or expiry, its access token's expiry or its session's end, its user's deactivation or role
change, or its tenant's suspension; refresh is refused for a suspended tenant; a password change
or reset ends every other session of the user; reuse of a refresh token refuses that session's
access tokens too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import msgspec

from democratic_ai.services.gateway.state import CREDENTIALS, KEY_RING

from support.client import http
from support.gateway import Gateway, StartGateway
from support.identity import PASSWORD, login, new_tenant, new_user
from support.streamer import Streamer
from support.waiting import eventually

WS_CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


async def _open(session: aiohttp.ClientSession, gateway: Gateway, credential: str) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(f"{gateway.url}/v1/ws", headers={"Authorization": f"Bearer {credential}"})
    ready = await ws.receive_json(timeout=5)
    assert ready["type"] == "READY", ready
    return ws


async def _call(ws: aiohttp.ClientWebSocketResponse, correlation_id: str) -> list[str]:
    """One call's frame types, up to its end."""
    await ws.send_json(
        {"type": "REQUEST", "correlation_id": correlation_id, "action": "test.once", "payload": {"text": "hi"}}
    )
    kinds = []
    while True:
        frame = msgspec.json.decode((await ws.receive(timeout=5)).data)
        assert frame["correlation_id"] == correlation_id, frame
        kinds.append(frame["type"])
        if frame["type"] in ("RESPONSE", "ERROR"):
            return kinds


async def _until_closed(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> tuple[float, list[dict]]:
    """Read until the server closes the socket; returns when (``time.monotonic()``) and the frames before."""
    frames = []
    while True:
        message = await ws.receive(timeout=timeout)
        if message.type in WS_CLOSED:
            return time.monotonic(), frames
        frames.append(msgspec.json.decode(message.data))


def _assert_closed_within_1_s(
    ws: aiohttp.ClientWebSocketResponse, frames: list[dict], changed: float, closed: float
) -> None:
    """An idle socket: one ERROR UNAUTHENTICATED saying why, then close 1008, within 1 s of the change."""
    assert ws.close_code == 1008, ws.close_code
    assert closed - changed < 1.0, f"closed {closed - changed:.3f} s after the change"
    assert [(f["type"], f["error"]["code"]) for f in frames] == [("ERROR", "UNAUTHENTICATED")], frames


async def _admin(gateway: Gateway) -> tuple[str, dict, str]:
    """A new tenant, a tenant admin of it, and an API key of theirs (module:use among its scopes)."""
    tenant = await new_tenant(gateway)
    admin = await new_user(gateway, tenant, "tenant_admin")
    tokens = await login(gateway, tenant, admin)
    status, key = await http(
        "POST", f"{gateway.url}/v1/tenants/{tenant}/api-keys", json={"name": "ws"}, credential=tokens["access_token"]
    )
    assert status == 201, key
    return tenant, {**admin, "key_id": key["key_id"]}, key["api_key"]


Change = Callable[[Gateway, str, dict], Awaitable[None]]


async def _revoke_key(gateway: Gateway, tenant: str, admin: dict) -> None:
    status, body = await http(
        "DELETE", f"{gateway.url}/v1/tenants/{tenant}/api-keys/{admin['key_id']}", credential=gateway.api_key
    )
    assert status == 204, body


async def _deactivate(gateway: Gateway, tenant: str, admin: dict) -> None:
    status, body = await http(
        "POST", f"{gateway.url}/v1/tenants/{tenant}/users/{admin['user_id']}/deactivate", credential=gateway.api_key
    )
    assert status == 204, body


async def _change_role(gateway: Gateway, tenant: str, admin: dict) -> None:
    # To a role that may still use modules: what ends the socket is that its permissions changed.
    status, body = await http(
        "PATCH",
        f"{gateway.url}/v1/tenants/{tenant}/users/{admin['user_id']}",
        json={"role": "user"},
        credential=gateway.api_key,
    )
    assert status == 200 and body["role"] == "user", body


async def _suspend(gateway: Gateway, tenant: str, admin: dict) -> None:
    status, body = await http(
        "POST", f"{gateway.url}/v1/tenants/{tenant}/suspend", json={"reason": "test"}, credential=gateway.api_key
    )
    assert status == 204, body


CHANGES: list[Change] = [_revoke_key, _deactivate, _change_role, _suspend]


async def test_an_idle_websocket_on_a_key_closes_within_1_s_of_each_change(
    gateway: Gateway, streamer: Streamer
) -> None:
    for change in CHANGES:
        tenant, admin, key = await _admin(gateway)
        async with aiohttp.ClientSession() as session:
            ws = await _open(session, gateway, key)
            assert await _call(ws, "before") == ["ACCEPTED", "RESPONSE"]
            changed = time.monotonic()
            await change(gateway, tenant, admin)
            closed, frames = await _until_closed(ws)
            _assert_closed_within_1_s(ws, frames, changed, closed)
        assert gateway.app is not None and gateway.app[CREDENTIALS].watching(tenant) == 0, change.__name__


async def _logout(gateway: Gateway, tenant: str, admin: dict) -> None:
    status, _ = await http(
        "POST",
        f"{gateway.url}/v1/auth/logout",
        json={"refresh_token": admin["refresh_token"]},
        credential=admin["access_token"],
    )
    assert status == 204


async def test_an_idle_websocket_on_an_access_token_closes_within_1_s_of_each_change(
    gateway: Gateway, streamer: Streamer
) -> None:
    for change in [_deactivate, _change_role, _suspend, _logout]:
        tenant, admin, _ = await _admin(gateway)
        tokens = await login(gateway, tenant, admin)
        async with aiohttp.ClientSession() as session:
            ws = await _open(session, gateway, tokens["access_token"])
            assert await _call(ws, "before") == ["ACCEPTED", "RESPONSE"]
            changed = time.monotonic()
            await change(gateway, tenant, {**admin, **tokens})
            closed, frames = await _until_closed(ws)
            _assert_closed_within_1_s(ws, frames, changed, closed)


async def test_after_each_change_the_next_call_is_refused_even_without_the_watch(
    gateway: Gateway, streamer: Streamer
) -> None:
    """Each call re-checks the credential itself: with the watch stopped (as if the change had
    not reached it yet), a call after the change is refused and the socket closed."""
    assert gateway.app is not None
    gateway.app[CREDENTIALS].close()
    for change in CHANGES:
        tenant, admin, key = await _admin(gateway)
        async with aiohttp.ClientSession() as session:
            ws = await _open(session, gateway, key)
            assert await _call(ws, "before") == ["ACCEPTED", "RESPONSE"]
            await change(gateway, tenant, admin)
            await ws.send_json({"type": "REQUEST", "correlation_id": "after", "action": "test.once", "payload": {}})
            _, frames = await _until_closed(ws)
        assert ws.close_code == 1008, change.__name__
        # The call's one end, then the socket's: both UNAUTHENTICATED.
        assert [(f["type"], f.get("correlation_id", ""), f["error"]["code"]) for f in frames] == [
            ("ERROR", "after", "UNAUTHENTICATED"),
            ("ERROR", "", "UNAUTHENTICATED"),
        ], change.__name__


async def test_revoking_the_key_of_a_busy_websocket_cancels_its_calls(gateway: Gateway, streamer: Streamer) -> None:
    tenant, admin, key = await _admin(gateway)
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, gateway, key)
        await ws.send_json({"type": "REQUEST", "correlation_id": "long", "action": "test.hang"})
        assert (await ws.receive_json(timeout=5))["type"] == "ACCEPTED"
        await streamer.started.wait()
        changed = time.monotonic()
        await _revoke_key(gateway, tenant, admin)
        closed, frames = await _until_closed(ws)
        await eventually(lambda: streamer.cancelled_at, "the handler to see its cancel", timeout=1.0, interval=0.005)
    assert ws.close_code == 1008 and closed - changed < 1.0
    assert frames[-1]["type"] == "ERROR" and frames[-1]["error"]["code"] == "UNAUTHENTICATED", frames
    assert streamer.cancelled_at and streamer.cancelled_at[0] - changed < 1.0  # the module stopped working


async def test_a_websocket_closes_when_its_key_expires(gateway: Gateway, streamer: Streamer) -> None:
    tenant = await new_tenant(gateway)
    admin = await new_user(gateway, tenant, "tenant_admin")
    tokens = await login(gateway, tenant, admin)
    expires_at = datetime.now(UTC) + timedelta(seconds=1.5)
    status, key = await http(
        "POST",
        f"{gateway.url}/v1/tenants/{tenant}/api-keys",
        json={"expires_at": expires_at.isoformat()},
        credential=tokens["access_token"],
    )
    assert status == 201, key
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, gateway, key["api_key"])
        assert await _call(ws, "before") == ["ACCEPTED", "RESPONSE"]
        _, frames = await _until_closed(ws)  # idle: nothing but the expiry closes it
        late = (datetime.now(UTC) - expires_at).total_seconds()
    assert ws.close_code == 1008
    assert 0 <= late < 1.0, late
    assert [f["error"]["code"] for f in frames] == ["UNAUTHENTICATED"] and "expired" in frames[0]["error"]["message"]


async def test_a_websocket_closes_when_its_access_token_expires(gateway: Gateway, streamer: Streamer) -> None:
    tenant = await new_tenant(gateway)
    user = await new_user(gateway, tenant, "user")
    assert gateway.app is not None
    # A token like login's, but short-lived (the ring's exp has whole seconds).
    token, _, expires_at = gateway.app[KEY_RING].issue(
        {"sub": user["user_id"], "tenant_id": tenant, "role": "user"}, ttl=timedelta(seconds=2)
    )
    expires_at = expires_at.replace(microsecond=0)
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, gateway, token)
        assert await _call(ws, "before") == ["ACCEPTED", "RESPONSE"]
        _, frames = await _until_closed(ws, timeout=5)
        late = (datetime.now(UTC) - expires_at).total_seconds()
    assert ws.close_code == 1008
    assert 0 <= late < 1.0, late
    assert [f["error"]["code"] for f in frames] == ["UNAUTHENTICATED"]


async def test_a_revocation_through_one_gateway_closes_sockets_on_another(
    start_gateway: StartGateway, streamer: Streamer
) -> None:
    first, second = await start_gateway(), await start_gateway()
    tenant, admin, key = await _admin(first)
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, second, key)
        assert await _call(ws, "before") == ["ACCEPTED", "RESPONSE"]
        changed = time.monotonic()
        await _revoke_key(first, tenant, admin)
        closed, _ = await _until_closed(ws)
    assert ws.close_code == 1008 and closed - changed < 1.0


# --- Sessions over HTTP ------------------------------------------------------------------------


async def _works(gateway: Gateway, tenant: str, access_token: str) -> bool:
    status, _ = await http("GET", f"{gateway.url}/v1/tenants/{tenant}", credential=access_token)
    assert status in (200, 401), status
    return status == 200


async def _refresh(gateway: Gateway, refresh_token: str) -> tuple[int, dict]:
    return await http("POST", f"{gateway.url}/v1/auth/refresh", json={"refresh_token": refresh_token})


async def test_refresh_is_refused_for_a_suspended_tenant(gateway: Gateway) -> None:
    tenant = await new_tenant(gateway)
    user = await new_user(gateway, tenant, "user")
    tokens = await login(gateway, tenant, user)
    await _suspend(gateway, tenant, user)
    status, body = await _refresh(gateway, tokens["refresh_token"])
    assert status == 401, body
    assert body["error"]["code"] == "UNAUTHENTICATED" and body["error"]["details"] == {"reason": "tenant_suspended"}
    assert not await _works(gateway, tenant, tokens["access_token"])


async def test_a_password_change_ends_the_users_other_sessions(gateway: Gateway) -> None:
    tenant = await new_tenant(gateway)
    user = await new_user(gateway, tenant, "user")
    mine, other = await login(gateway, tenant, user), await login(gateway, tenant, user)
    status, body = await http(
        "PATCH",
        f"{gateway.url}/v1/tenants/{tenant}/users/{user['user_id']}",
        json={"password": PASSWORD + " again", "current_password": PASSWORD},
        credential=mine["access_token"],
    )
    assert status == 200, body
    # The other session: its access token and its refresh token are refused.
    assert not await _works(gateway, tenant, other["access_token"])
    status, body = await _refresh(gateway, other["refresh_token"])
    assert status == 401, body
    # The session that changed it lives on.
    assert await _works(gateway, tenant, mine["access_token"])
    status, refreshed = await _refresh(gateway, mine["refresh_token"])
    assert status == 200, refreshed
    assert await _works(gateway, tenant, refreshed["access_token"])


async def test_a_password_reset_by_an_admin_ends_every_session_of_the_user(gateway: Gateway) -> None:
    tenant = await new_tenant(gateway)
    user = await new_user(gateway, tenant, "user")
    sessions = [await login(gateway, tenant, user), await login(gateway, tenant, user)]
    status, body = await http(
        "PATCH",
        f"{gateway.url}/v1/tenants/{tenant}/users/{user['user_id']}",
        json={"password": PASSWORD + " reset"},
        credential=gateway.api_key,
    )
    assert status == 200, body
    for tokens in sessions:
        assert not await _works(gateway, tenant, tokens["access_token"])
        assert (await _refresh(gateway, tokens["refresh_token"]))[0] == 401
    fresh = await login(gateway, tenant, {**user, "password": PASSWORD + " reset"})
    assert await _works(gateway, tenant, fresh["access_token"])


async def test_reuse_of_a_refresh_token_refuses_the_sessions_access_tokens(gateway: Gateway) -> None:
    tenant = await new_tenant(gateway)
    user = await new_user(gateway, tenant, "user")
    first = await login(gateway, tenant, user)
    status, second = await _refresh(gateway, first["refresh_token"])
    assert status == 200 and await _works(gateway, tenant, second["access_token"])
    other = await login(gateway, tenant, user)  # another session of the same user: unaffected
    status, _ = await _refresh(gateway, first["refresh_token"])  # the replaced token comes back
    assert status == 401
    assert not await _works(gateway, tenant, second["access_token"])
    assert not await _works(gateway, tenant, first["access_token"])
    assert await _works(gateway, tenant, other["access_token"])
