"""Roles and keys that do what a user expects, and a tenant's lifecycle: rename, suspend, reinstate.

A developer can call capabilities (the module they wrote among them); a key created without
``scopes`` may call and list capabilities and nothing more. A tenant is renamed, suspended and
reinstated by events on its own IDENTITY subject, each with its row in ``identity_audit``;
suspending and reinstating need no body, and each answers 409 when the tenant is already so.
"""

from __future__ import annotations

import aiohttp
import asyncpg
from nats.aio.client import Client as NATS

from democratic_ai.contracts.identity_events import TenantReinstated, TenantUpdated, decode_event
from democratic_ai.services.identity import ROLE_PERMISSIONS, Role

from support.client import http
from support.gateway import Gateway
from support.identity import login, new_tenant, new_user
from support.projections import caught_up
from support.streamer import Streamer


async def _call(gateway: Gateway, credential: str) -> tuple[int, dict]:
    return await http("POST", f"{gateway.url}/v1/capabilities/test.count/invoke", json={"n": 1}, credential=credential)


async def _post_without_body(url: str, credential: str) -> tuple[int, dict]:
    """A POST with no body and no Content-Type, as ``curl -X POST`` sends it."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, headers={"Authorization": f"Bearer {credential}"}) as response,
    ):
        body = await response.read()
        return response.status, (await response.json() if body else {})


def test_developers_hold_module_use() -> None:
    assert "module:use" in ROLE_PERMISSIONS[Role.DEVELOPER]


async def test_a_developer_can_call_a_capability(gateway: Gateway, streamer: Streamer) -> None:
    tenant = await new_tenant(gateway)
    developer = await new_user(gateway, tenant, "developer")
    tokens = await login(gateway, tenant, developer)
    status, body = await _call(gateway, tokens["access_token"])
    assert status == 200, body
    assert body["result"] == {"i": 0}


async def test_a_key_without_scopes_can_call_but_not_manage_users(gateway: Gateway, streamer: Streamer) -> None:
    tenant = await new_tenant(gateway)
    admin = await new_user(gateway, tenant, "tenant_admin")
    tokens = await login(gateway, tenant, admin)
    status, key = await http(
        "POST", f"{gateway.url}/v1/tenants/{tenant}/api-keys", json={"name": "ci"}, credential=tokens["access_token"]
    )
    assert status == 201, key
    assert key["scopes"] == ["module:read", "module:use"]
    status, body = await _call(gateway, key["api_key"])
    assert status == 200, body
    status, body = await http("GET", f"{gateway.url}/v1/capabilities", credential=key["api_key"])
    assert status == 200, body
    # Its owner may create users; the key may not.
    status, body = await http(
        "POST",
        f"{gateway.url}/v1/tenants/{tenant}/users",
        credential=key["api_key"],
        json={"email": "someone@example.com", "password": "a long passphrase 42"},
    )
    assert status == 403 and body["error"]["code"] == "FORBIDDEN", body


async def test_default_scopes_are_only_those_the_owner_holds(gateway: Gateway) -> None:
    tenant = await new_tenant(gateway)
    viewer = await new_user(gateway, tenant, "viewer")
    tokens = await login(gateway, tenant, viewer)
    # A viewer may not create keys at all; a developer may, and gets both (it holds module:use now).
    status, body = await http(
        "POST", f"{gateway.url}/v1/tenants/{tenant}/api-keys", json={}, credential=tokens["access_token"]
    )
    assert status == 403, body
    developer = await new_user(gateway, tenant, "developer")
    tokens = await login(gateway, tenant, developer)
    status, key = await http(
        "POST", f"{gateway.url}/v1/tenants/{tenant}/api-keys", json={}, credential=tokens["access_token"]
    )
    assert status == 201 and key["scopes"] == ["module:read", "module:use"], key


async def test_an_empty_scope_list_is_refused(gateway: Gateway) -> None:
    tenant = await new_tenant(gateway)
    admin = await new_user(gateway, tenant, "tenant_admin")
    tokens = await login(gateway, tenant, admin)
    status, body = await http(
        "POST", f"{gateway.url}/v1/tenants/{tenant}/api-keys", json={"scopes": []}, credential=tokens["access_token"]
    )
    assert status == 422 and body["error"]["details"]["field"] == "scopes", body


async def test_a_scoped_key_cannot_issue_a_wider_key(gateway: Gateway) -> None:
    tenant = await new_tenant(gateway)
    admin = await new_user(gateway, tenant, "tenant_admin")
    tokens = await login(gateway, tenant, admin)
    status, narrow = await http(
        "POST",
        f"{gateway.url}/v1/tenants/{tenant}/api-keys",
        json={"scopes": ["api_key:create", "module:use"]},
        credential=tokens["access_token"],
    )
    assert status == 201, narrow
    status, body = await http(
        "POST",
        f"{gateway.url}/v1/tenants/{tenant}/api-keys",
        json={"scopes": ["user:create"]},
        credential=narrow["api_key"],
    )
    assert status == 403 and body["error"]["details"]["scopes"] == ["user:create"], body
    # Without scopes it gets what it holds of the defaults: module:use, not module:read.
    status, key = await http(
        "POST", f"{gateway.url}/v1/tenants/{tenant}/api-keys", json={}, credential=narrow["api_key"]
    )
    assert status == 201 and key["scopes"] == ["module:use"], key


async def _audit(pool: asyncpg.Pool, tenant: str) -> list[str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT event_type FROM identity_audit WHERE tenant_id = $1 AND subject = $2 ORDER BY sequence",
            tenant,
            f"iam.{tenant}.tenant.{tenant}",
        )
    return [r["event_type"] for r in rows]


async def test_renaming_a_tenant(gateway: Gateway, nc: NATS, pool: asyncpg.Pool) -> None:
    tenant = await new_tenant(gateway)
    admin = await new_user(gateway, tenant, "tenant_admin")
    tokens = await login(gateway, tenant, admin)
    # A tenant admin renames its own tenant (tenant:update); the answer is the tenant as read back.
    status, body = await http(
        "PATCH", f"{gateway.url}/v1/tenants/{tenant}", json={"name": "  Acme Ltd. "}, credential=tokens["access_token"]
    )
    assert status == 200, body
    assert (body["tenant_id"], body["name"], body["suspended"]) == (tenant, "Acme Ltd.", False)
    status, body = await http("GET", f"{gateway.url}/v1/tenants/{tenant}", credential=tokens["access_token"])
    assert body["name"] == "Acme Ltd."
    # The same name again appends nothing; a blank one, NUL, or an unknown field is a 422.
    for bad in ({"name": " "}, {"name": "a\u0000b"}, {"nom": "x"}):
        status, body = await http("PATCH", f"{gateway.url}/v1/tenants/{tenant}", json=bad, credential=gateway.api_key)
        assert status == 422, (bad, body)
    status, _ = await http(
        "PATCH", f"{gateway.url}/v1/tenants/{tenant}", json={"name": "Acme Ltd."}, credential=gateway.api_key
    )
    assert status == 200
    # A user (no tenant:update) may not; another tenant's admin does not even see it.
    user = await new_user(gateway, tenant, "user")
    user_tokens = await login(gateway, tenant, user)
    status, _ = await http(
        "PATCH", f"{gateway.url}/v1/tenants/{tenant}", json={"name": "Mine"}, credential=user_tokens["access_token"]
    )
    assert status == 403
    await caught_up(nc, pool, "identity")
    assert await _audit(pool, tenant) == ["tenant.created", "tenant.updated"]
    last = await nc.jetstream().get_last_msg("IDENTITY", f"iam.{tenant}.tenant.{tenant}")
    event = decode_event(last.data)
    assert isinstance(event, TenantUpdated) and event.name == "Acme Ltd." and event.meta.actor.startswith("user:")


async def test_suspend_and_reinstate_without_a_body(
    gateway: Gateway, streamer: Streamer, nc: NATS, pool: asyncpg.Pool
) -> None:
    tenant = await new_tenant(gateway)
    admin = await new_user(gateway, tenant, "tenant_admin")
    tokens = await login(gateway, tenant, admin)
    status, key = await http(
        "POST", f"{gateway.url}/v1/tenants/{tenant}/api-keys", json={}, credential=tokens["access_token"]
    )
    assert status == 201, key
    assert (await _call(gateway, key["api_key"]))[0] == 200

    status, body = await _post_without_body(f"{gateway.url}/v1/tenants/{tenant}/suspend", gateway.api_key)
    assert status == 204, body
    status, body = await _call(gateway, key["api_key"])
    assert status == 401 and body["error"]["code"] == "UNAUTHENTICATED", body
    status, body = await http("POST", f"{gateway.url}/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert status == 401 and body["error"]["details"] == {"reason": "tenant_suspended"}, body
    status, body = await _post_without_body(f"{gateway.url}/v1/tenants/{tenant}/suspend", gateway.api_key)
    assert status == 409 and body["error"]["code"] == "CONFLICT", body

    status, body = await _post_without_body(f"{gateway.url}/v1/tenants/{tenant}/reinstate", gateway.api_key)
    assert status == 204, body
    # Calls, refresh and logins work again: the suspension revoked nothing.
    status, body = await _call(gateway, key["api_key"])
    assert status == 200, body
    status, refreshed = await http(
        "POST", f"{gateway.url}/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert status == 200, refreshed
    await login(gateway, tenant, admin)
    status, body = await _post_without_body(f"{gateway.url}/v1/tenants/{tenant}/reinstate", gateway.api_key)
    assert status == 409 and body["error"]["code"] == "CONFLICT", body

    # A reason may still be sent.
    status, body = await http(
        "POST", f"{gateway.url}/v1/tenants/{tenant}/suspend", json={"reason": "unpaid"}, credential=gateway.api_key
    )
    assert status == 204, body
    status, body = await http(
        "POST", f"{gateway.url}/v1/tenants/{tenant}/reinstate", json={"reason": "paid"}, credential=gateway.api_key
    )
    assert status == 204, body
    last = await nc.jetstream().get_last_msg("IDENTITY", f"iam.{tenant}.tenant.{tenant}")
    event = decode_event(last.data)
    assert isinstance(event, TenantReinstated) and event.reason == "paid"

    await caught_up(nc, pool, "identity")
    assert await _audit(pool, tenant) == [
        "tenant.created",
        "tenant.suspended",
        "tenant.reinstated",
        "tenant.suspended",
        "tenant.reinstated",
    ]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT suspended FROM tenants WHERE tenant_id = $1", tenant) is False


async def test_only_super_admins_suspend_and_never_their_own_tenant(gateway: Gateway) -> None:
    tenant = await new_tenant(gateway)
    admin = await new_user(gateway, tenant, "tenant_admin")
    tokens = await login(gateway, tenant, admin)
    for action in ("suspend", "reinstate"):
        status, body = await _post_without_body(f"{gateway.url}/v1/tenants/{tenant}/{action}", tokens["access_token"])
        assert status == 403, (action, body)
        status, body = await _post_without_body(f"{gateway.url}/v1/tenants/{gateway.tenant}/{action}", gateway.api_key)
        assert status == 403 and body["error"]["details"] == {"tenant_id": gateway.tenant}, (action, body)
        status, body = await _post_without_body(f"{gateway.url}/v1/tenants/no-such-tenant/{action}", gateway.api_key)
        assert status == 404, (action, body)
