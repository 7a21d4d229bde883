"""Identity end to end: tenants, users, login, refresh rotation, logout, API keys, key rotation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from argon2 import PasswordHasher
from nats.aio.client import Client as NATS

from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.identity_events import UserRegistered, encode_event
from democratic_ai.services.gateway.state import IDENTITY
from democratic_ai.services.identity import KeyEncryptionKey, rotate_signing_key

from support.client import http
from support.gateway import Gateway
from support.identity import PASSWORD, login, new_tenant, new_user
from support.names import unique
from support.projections import caught_up
from support.waiting import eventually


async def test_tenant_user_login_and_calls_with_token_and_key(gateway: Gateway) -> None:
    tenant = await new_tenant(gateway)
    admin = await new_user(gateway, tenant, "tenant_admin")
    tokens = await login(gateway, tenant, admin)
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 900
    status, me = await http("GET", f"{gateway.url}/v1/tenants/{tenant}", credential=tokens["access_token"])
    assert status == 200 and me["tenant_id"] == tenant
    status, key = await http(
        "POST",
        f"{gateway.url}/v1/tenants/{tenant}/api-keys",
        json={"name": "ci", "scopes": ["module:use", "module:read"]},
        credential=tokens["access_token"],
    )
    assert status == 201, key
    assert key["api_key"].startswith(key["prefix"]) and key["scopes"] == ["module:read", "module:use"]
    status, listing = await http("GET", f"{gateway.url}/v1/capabilities", headers={"X-API-Key": key["api_key"]})
    assert status == 200 and "capabilities" in listing
    # The key is scoped to modules: it cannot manage users, though its owner can.
    status, body = await http("GET", f"{gateway.url}/v1/tenants/{tenant}/users", credential=key["api_key"])
    assert status == 403 and body["error"]["code"] == "FORBIDDEN"


async def test_refresh_rotates_and_a_reused_token_ends_the_session(gateway: Gateway) -> None:
    tenant = await new_tenant(gateway)
    user = await new_user(gateway, tenant, "user")
    first = await login(gateway, tenant, user)
    status, second = await http(
        "POST", f"{gateway.url}/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert status == 200 and second["refresh_token"] != first["refresh_token"]
    # The first refresh token comes back: reuse. The whole family is revoked, the newest token too.
    status, body = await http("POST", f"{gateway.url}/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert status == 401 and "already used" in body["error"]["message"]
    status, _ = await http("POST", f"{gateway.url}/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert status == 401


async def test_logout_revokes_the_access_token_and_the_session(gateway: Gateway) -> None:
    tenant = await new_tenant(gateway)
    user = await new_user(gateway, tenant, "viewer")
    tokens = await login(gateway, tenant, user)
    me = f"{gateway.url}/v1/tenants/{tenant}/users/{user['user_id']}"
    assert (await http("GET", me, credential=tokens["access_token"]))[0] == 200
    status, _ = await http(
        "POST",
        f"{gateway.url}/v1/auth/logout",
        json={"refresh_token": tokens["refresh_token"]},
        credential=tokens["access_token"],
    )
    assert status == 204
    status, body = await http("GET", me, credential=tokens["access_token"])
    assert status == 401 and "revoked" in body["error"]["message"]
    status, _ = await http("POST", f"{gateway.url}/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert status == 401


async def test_failed_logins_do_not_reveal_the_email_and_are_throttled(gateway: Gateway) -> None:
    tenant = await new_tenant(gateway)
    user = await new_user(gateway, tenant, "user")
    wrong = {"tenant_id": tenant, "email": user["email"], "password": "not the password at all"}
    unknown = {"tenant_id": tenant, "email": "nobody@example.com", "password": "not the password at all"}
    answers = [await http("POST", f"{gateway.url}/v1/auth/login", json=body) for body in (wrong, unknown)]
    assert answers[0] == answers[1]
    assert answers[0][0] == 401
    for _ in range(4):
        await http("POST", f"{gateway.url}/v1/auth/login", json=wrong)
    status, body = await http("POST", f"{gateway.url}/v1/auth/login", json={**wrong, "password": PASSWORD})
    assert status == 429 and body["error"]["code"] == "RATE_LIMITED"  # even the right password, for now


@pytest.mark.parametrize(
    ("password", "rule"),
    [("short", "min_length"), ("x" * 129, "max_length"), ("aaaaaaaaaaaaaaaa", "too_simple")],
)
async def test_password_policy_errors_are_clear(gateway: Gateway, password: str, rule: str) -> None:
    tenant = await new_tenant(gateway)
    status, body = await http(
        "POST",
        f"{gateway.url}/v1/tenants/{tenant}/users",
        json={"email": "p@example.com", "password": password, "role": "user"},
        credential=gateway.api_key,
    )
    assert status == 422
    assert body["error"]["details"] == {"field": "password", "rule": rule}


async def test_login_rehashes_a_password_hashed_with_weaker_parameters(gateway: Gateway, nc: NATS) -> None:
    tenant = await new_tenant(gateway)
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    email, user_id = f"{unique('old')}@example.com", unique("u")
    await nc.jetstream().publish(
        f"iam.{tenant}.email.legacy-{unique('x')}",
        encode_event(
            UserRegistered(
                tenant_id=tenant,
                meta=Meta(at=datetime.now(UTC)),
                user_id=user_id,
                email=email,
                role="user",
                password_hash=weak,
            )
        ),
    )
    assert gateway.app is not None
    await eventually(lambda: user_id in gateway.app[IDENTITY].users, "the gateway to know the user", timeout=2.0)
    await login(gateway, tenant, {"email": email, "password": PASSWORD})
    info = await nc.jetstream().stream_info("IDENTITY", subjects_filter=f"iam.{tenant}.user.>")
    assert info.state.subjects, "no password.changed event was appended"
    await login(gateway, tenant, {"email": email, "password": PASSWORD})  # the new hash verifies


async def test_key_rotation_keeps_old_tokens_valid_and_is_published(
    gateway: Gateway, nc: NATS, kek: KeyEncryptionKey
) -> None:
    tenant = await new_tenant(gateway)
    user = await new_user(gateway, tenant, "viewer")
    before = await login(gateway, tenant, user)
    status, jwks = await http("GET", f"{gateway.url}/.well-known/jwks.json")
    assert status == 200 and all(k["kty"] == "OKP" and k["alg"] == "EdDSA" for k in jwks["keys"])
    kid = await rotate_signing_key(nc.jetstream(), kek)

    async def published() -> bool:
        _, jwks = await http("GET", f"{gateway.url}/.well-known/jwks.json")
        return kid in {k["kid"] for k in jwks["keys"]}

    await eventually(published, f"the JWKS to publish the new key {kid}", timeout=2.0, interval=0.02)
    after = await login(gateway, tenant, user)
    me = f"{gateway.url}/v1/tenants/{tenant}/users/{user['user_id']}"
    assert (await http("GET", me, credential=before["access_token"]))[0] == 200
    assert (await http("GET", me, credential=after["access_token"]))[0] == 200


async def test_api_key_options_expiry_and_revoke_once(gateway: Gateway) -> None:
    tenant = await new_tenant(gateway)
    admin = await new_user(gateway, tenant, "tenant_admin")
    token = (await login(gateway, tenant, admin))["access_token"]
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    status, key = await http(
        "POST",
        f"{gateway.url}/v1/tenants/{tenant}/api-keys",
        json={"name": "short", "expires_at": soon, "rate_limit": 60},
        credential=token,
    )
    assert status == 201 and key["rate_limit"] == 60
    assert (await http("GET", f"{gateway.url}/v1/capabilities", credential=key["api_key"]))[0] == 200
    await asyncio.sleep(1.2)  # the key's expiry passes: what the test is about
    status, body = await http("GET", f"{gateway.url}/v1/capabilities", credential=key["api_key"])
    assert status == 401 and "expired" in body["error"]["message"]
    status, other = await http("POST", f"{gateway.url}/v1/tenants/{tenant}/api-keys", json={}, credential=token)
    revoke = f"{gateway.url}/v1/tenants/{tenant}/api-keys/{other['key_id']}"
    results = await asyncio.gather(*(http("DELETE", revoke, credential=token) for _ in range(5)))
    assert sorted(status for status, _ in results) == [204, 409, 409, 409, 409]
    assert (await http("GET", f"{gateway.url}/v1/capabilities", credential=other["api_key"]))[0] == 401
    status, body = await http(
        "POST", f"{gateway.url}/v1/tenants/{tenant}/api-keys", json={"scopes": ["tenant:create"]}, credential=token
    )
    assert status == 403 and body["error"]["details"]["scopes"] == ["tenant:create"]


async def test_concurrent_duplicate_user_creation_has_one_winner(gateway: Gateway) -> None:
    tenant = await new_tenant(gateway)
    body = {"email": "twin@example.com", "password": PASSWORD, "role": "user"}
    results = await asyncio.gather(
        *(
            http("POST", f"{gateway.url}/v1/tenants/{tenant}/users", json=body, credential=gateway.api_key)
            for _ in range(8)
        )
    )
    assert sorted(status for status, _ in results) == [201] + [409] * 7
    # Case and spaces do not make a second account.
    status, _ = await http(
        "POST",
        f"{gateway.url}/v1/tenants/{tenant}/users",
        json={**body, "email": " Twin@Example.com "},
        credential=gateway.api_key,
    )
    assert status == 409


async def test_read_models_list_and_rebuild_identically(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, projections: None
) -> None:
    from democratic_ai.projections import IdentityProjection, rebuild

    tenant = await new_tenant(gateway)
    admin = await new_user(gateway, tenant, "tenant_admin")
    viewer = await new_user(gateway, tenant, "viewer")
    token = (await login(gateway, tenant, admin))["access_token"]
    await http("POST", f"{gateway.url}/v1/tenants/{tenant}/api-keys", json={"name": "k"}, credential=token)
    await http(
        "PATCH", f"{gateway.url}/v1/tenants/{tenant}/users/{viewer['user_id']}", json={"role": "user"}, credential=token
    )
    await http("POST", f"{gateway.url}/v1/tenants/{tenant}/users/{viewer['user_id']}/deactivate", credential=token)
    await caught_up(nc, pool, "identity")
    status, users = await http("GET", f"{gateway.url}/v1/tenants/{tenant}/users", credential=token)
    assert status == 200
    by_id = {u["user_id"]: u for u in users["users"]}
    assert set(by_id) == {admin["user_id"], viewer["user_id"]}
    assert by_id[viewer["user_id"]]["role"] == "user" and by_id[viewer["user_id"]]["active"] is False
    status, keys = await http("GET", f"{gateway.url}/v1/tenants/{tenant}/api-keys", credential=token)
    assert status == 200 and [k["name"] for k in keys["api_keys"]] == ["k"]
    assert "sha256" not in keys["api_keys"][0] and "api_key" not in keys["api_keys"][0]

    tables = IdentityProjection.tables

    async def snapshot() -> dict[str, list]:
        async with pool.acquire() as conn:
            return {t: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY 1, 2")] for t in tables}

    live = await snapshot()
    assert live["identity_audit"]
    await rebuild(nc.jetstream(), pool, IdentityProjection())
    assert await snapshot() == live
