"""Identity under attack: the role × endpoint matrix, tenant isolation, forged tokens, revocation
across gateway replicas, the database role, and bad credentials that must never cause a 500."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import jwt
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.ops.ports import free_port
from democratic_ai.schemas import APP_ROLE, UnsafeRole, app_dsn, check_app_role, tenant_transaction
from democratic_ai.services.identity import KeyEncryptionKey

from support.client import http
from support.gateway import Gateway
from support.identity import PASSWORD, login, new_tenant, new_user
from support.names import unique
from support.waiting import eventually

ROLES = ("super_admin", "tenant_admin", "developer", "user", "viewer")


class World:
    """A tenant with one user of every role, and a credential for each."""

    def __init__(self, gateway: Gateway, tenant: str) -> None:
        self.gateway, self.tenant = gateway, tenant
        self.users: dict[str, dict] = {}
        self.credentials: dict[str, str] = {"super_admin": gateway.api_key}

    @classmethod
    async def create(cls, gateway: Gateway) -> World:
        world = cls(gateway, await new_tenant(gateway))
        for role in ROLES[1:]:
            user = await new_user(gateway, world.tenant, role)
            world.users[role] = user
            world.credentials[role] = (await login(gateway, world.tenant, user))["access_token"]
        return world

    def url(self, path: str) -> str:
        return f"{self.gateway.url}{path.replace('{t}', self.tenant)}"


Call = Callable[[World, str], Awaitable[tuple[int, dict]]]


async def _victim(world: World) -> dict:
    return await new_user(world.gateway, world.tenant, "viewer")


async def _someone_elses_key(world: World) -> str:
    status, key = await http(
        "POST",
        world.url("/v1/tenants/{t}/api-keys"),
        json={"name": "victim"},
        credential=world.credentials["tenant_admin"],
    )
    assert status == 201
    return key["key_id"]


def _call(method: str, path: str, body: object = None) -> Call:
    async def call(world: World, role: str) -> tuple[int, dict]:
        return await http(method, world.url(path), json=body, credential=world.credentials[role])

    return call


async def _get_other_user(world: World, role: str) -> tuple[int, dict]:
    victim = await _victim(world)
    return await http(
        "GET", world.url(f"/v1/tenants/{{t}}/users/{victim['user_id']}"), credential=world.credentials[role]
    )


async def _get_self(world: World, role: str) -> tuple[int, dict]:
    user_id = world.users[role]["user_id"]
    return await http("GET", world.url(f"/v1/tenants/{{t}}/users/{user_id}"), credential=world.credentials[role])


async def _change_role(world: World, role: str) -> tuple[int, dict]:
    victim = await _victim(world)
    return await http(
        "PATCH",
        world.url(f"/v1/tenants/{{t}}/users/{victim['user_id']}"),
        json={"role": "user"},
        credential=world.credentials[role],
    )


async def _change_own_password(world: World, role: str) -> tuple[int, dict]:
    user = world.users[role]
    return await http(
        "PATCH",
        world.url(f"/v1/tenants/{{t}}/users/{user['user_id']}"),
        json={"password": PASSWORD + "!", "current_password": PASSWORD},
        credential=world.credentials[role],
    )


async def _deactivate(world: World, role: str) -> tuple[int, dict]:
    victim = await _victim(world)
    return await http(
        "POST", world.url(f"/v1/tenants/{{t}}/users/{victim['user_id']}/deactivate"), credential=world.credentials[role]
    )


async def _revoke_others_key(world: World, role: str) -> tuple[int, dict]:
    key_id = await _someone_elses_key(world)
    return await http("DELETE", world.url(f"/v1/tenants/{{t}}/api-keys/{key_id}"), credential=world.credentials[role])


async def _create_user(world: World, role: str) -> tuple[int, dict]:
    return await http(
        "POST",
        world.url("/v1/tenants/{t}/users"),
        credential=world.credentials[role],
        json={"email": f"{unique('n')}@example.com", "password": PASSWORD, "role": "viewer"},
    )


async def _someone_elses_module(world: World) -> str:
    status, module = await http(
        "POST",
        world.url("/v1/modules"),
        credential=world.credentials["tenant_admin"],
        json={"module_id": unique("victim"), "capabilities": ["text.summarize"]},
    )
    assert status == 201, module
    return module["module_id"]


async def _create_module(world: World, role: str) -> tuple[int, dict]:
    return await http(
        "POST",
        world.url("/v1/modules"),
        credential=world.credentials[role],
        json={"module_id": unique("m"), "capabilities": ["text.summarize"], "tenant_id": world.tenant},
    )


async def _change_module(world: World, role: str) -> tuple[int, dict]:
    module_id = await _someone_elses_module(world)
    return await http(
        "PATCH", world.url(f"/v1/modules/{module_id}"), json={"name": "renamed"}, credential=world.credentials[role]
    )


async def _rotate_module(world: World, role: str) -> tuple[int, dict]:
    module_id = await _someone_elses_module(world)
    return await http("POST", world.url(f"/v1/modules/{module_id}/credential"), credential=world.credentials[role])


async def _revoke_others_module(world: World, role: str) -> tuple[int, dict]:
    module_id = await _someone_elses_module(world)
    return await http("DELETE", world.url(f"/v1/modules/{module_id}"), credential=world.credentials[role])


# endpoint → the roles allowed (the seed's table); every other role must get 403.
MATRIX: list[tuple[str, Call, set[str]]] = [
    (
        "create tenant",
        lambda w, r: http("POST", w.url("/v1/tenants"), json={"tenant_id": unique("x")}, credential=w.credentials[r]),
        {"super_admin"},
    ),
    ("list tenants", _call("GET", "/v1/tenants"), {"super_admin"}),
    ("read tenant", _call("GET", "/v1/tenants/{t}"), set(ROLES)),
    ("suspend tenant", _call("POST", "/v1/tenants/nonexistent-tenant/suspend", {}), {"super_admin"}),
    ("reinstate tenant", _call("POST", "/v1/tenants/nonexistent-tenant/reinstate"), {"super_admin"}),
    ("rename tenant", _call("PATCH", "/v1/tenants/{t}", {"name": "Renamed"}), {"super_admin", "tenant_admin"}),
    ("create user", _create_user, {"super_admin", "tenant_admin"}),
    ("list users", _call("GET", "/v1/tenants/{t}/users"), set(ROLES)),
    ("read another user", _get_other_user, {"super_admin", "tenant_admin"}),
    ("read own user", _get_self, set(ROLES) - {"super_admin"}),
    ("change a role", _change_role, {"super_admin", "tenant_admin"}),
    ("change own password", _change_own_password, {"tenant_admin", "developer", "user"}),
    ("deactivate a user", _deactivate, {"super_admin", "tenant_admin"}),
    ("create API key", _call("POST", "/v1/tenants/{t}/api-keys", {}), {"tenant_admin", "developer"}),
    ("list API keys", _call("GET", "/v1/tenants/{t}/api-keys"), {"super_admin", "tenant_admin", "developer", "user"}),
    ("revoke another's key", _revoke_others_key, {"super_admin", "tenant_admin"}),
    (
        "invoke a capability",
        _call("POST", "/v1/capabilities/text.summarize/invoke", {"text": "x"}),
        {"super_admin", "tenant_admin", "developer", "user"},
    ),  # developer: a documented addition
    ("list capabilities", _call("GET", "/v1/capabilities"), set(ROLES)),
    ("register a module", _create_module, {"super_admin", "tenant_admin", "developer"}),
    ("list modules", _call("GET", "/v1/modules"), set(ROLES)),
    ("change a module", _change_module, {"super_admin", "tenant_admin", "developer"}),
    ("rotate a module's credential", _rotate_module, {"super_admin", "tenant_admin", "developer"}),
    ("revoke another's module", _revoke_others_module, {"super_admin", "tenant_admin"}),
]


USER_ONLY = {"read own user", "change own password"}


async def test_role_endpoint_matrix(gateway: Gateway) -> None:
    world = await World.create(gateway)
    wrong = []
    for name, call, allowed in MATRIX:
        for role in ROLES:
            if role == "super_admin" and name in USER_ONLY:
                continue  # the super admin here is an API key: it has no user of its own
            status, body = await call(world, role)
            denied = status == 403
            if (role in allowed) == denied or status in (401, 500):
                wrong.append(f"{name} as {role}: {status} {body.get('error', {}).get('message', '')}")
    assert not wrong, "\n".join(wrong)


async def test_self_scoped_reads_show_only_oneself(gateway: Gateway) -> None:
    world = await World.create(gateway)
    status, body = await http("GET", world.url("/v1/tenants/{t}/users"), credential=world.credentials["user"])
    assert status == 200 and [u["user_id"] for u in body["users"]] == [world.users["user"]["user_id"]]
    status, body = await http("GET", world.url("/v1/tenants/{t}/api-keys"), credential=world.credentials["user"])
    assert status == 200 and body["api_keys"] == []


async def test_tenant_isolation(gateway: Gateway, pool: asyncpg.Pool) -> None:
    a, b = await World.create(gateway), await World.create(gateway)
    _, b_key = await http(
        "POST", b.url("/v1/tenants/{t}/api-keys"), json={"name": "b"}, credential=b.credentials["tenant_admin"]
    )
    victim = b.users["viewer"]["user_id"]

    async def b_state() -> list:
        async with pool.acquire() as conn:
            return [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT 'u', user_id, role, active::text, updated_at::text FROM users WHERE tenant_id = $1"
                    " UNION ALL SELECT 'k', key_id, name, (revoked_at IS NULL)::text, created_at::text FROM api_keys"
                    " WHERE tenant_id = $1 ORDER BY 1, 2",
                    b.tenant,
                )
            ]

    before = await b_state()
    attempts = [
        ("GET", "/v1/tenants/{b}", None),
        ("GET", "/v1/tenants/{b}/users", None),
        ("GET", f"/v1/tenants/{{b}}/users/{victim}", None),
        ("PATCH", f"/v1/tenants/{{b}}/users/{victim}", {"role": "tenant_admin"}),
        ("POST", f"/v1/tenants/{{b}}/users/{victim}/deactivate", None),
        ("POST", "/v1/tenants/{b}/users", {"email": "intruder@example.com", "password": PASSWORD, "role": "user"}),
        ("GET", "/v1/tenants/{b}/api-keys", None),
        ("POST", "/v1/tenants/{b}/api-keys", {"name": "intruder"}),
        ("DELETE", f"/v1/tenants/{{b}}/api-keys/{b_key['key_id']}", None),
        # B's ids under A's own tenant path: object-level checks, not just the path.
        ("GET", f"/v1/tenants/{{a}}/users/{victim}", None),
        ("PATCH", f"/v1/tenants/{{a}}/users/{victim}", {"role": "tenant_admin"}),
        ("POST", f"/v1/tenants/{{a}}/users/{victim}/deactivate", None),
        ("DELETE", f"/v1/tenants/{{a}}/api-keys/{b_key['key_id']}", None),
    ]
    for method, path, body in attempts:
        url = gateway.url + path.replace("{a}", a.tenant).replace("{b}", b.tenant)
        status, answer = await http(method, url, json=body, credential=a.credentials["tenant_admin"])
        assert status == 404, f"{method} {path}: {status} {answer}"
    status, users = await http("GET", a.url("/v1/tenants/{t}/users"), credential=a.credentials["tenant_admin"])
    assert victim not in {u["user_id"] for u in users["users"]}
    assert await b_state() == before


async def test_row_level_security_confines_the_app_role(
    pool: asyncpg.Pool, database_url: str, gateway: Gateway
) -> None:
    a, _other = await World.create(gateway), await World.create(gateway)  # another tenant's rows exist
    app = await asyncpg.connect(app_dsn(database_url))
    try:
        await check_app_role(app)
        assert await app.fetchval("SELECT count(*) FROM users") == 0  # no tenant set: nothing
        async with tenant_transaction(app, a.tenant):
            tenants = {r["tenant_id"] for r in await app.fetch("SELECT tenant_id FROM users")}
        assert tenants == {a.tenant}
        assert await app.fetchval("SELECT count(*) FROM users") == 0  # SET LOCAL ended with the transaction
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("DELETE FROM users")
    finally:
        await app.close()
    async with pool.acquire() as owner:
        with pytest.raises(UnsafeRole, match="superuser"):
            await check_app_role(owner)
    assert APP_ROLE == "dai_app"


def _b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_forged_and_broken_tokens_are_401(gateway: Gateway) -> None:
    world = await World.create(gateway)
    good = world.credentials["viewer"]
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    kid = json.loads(base64.urlsafe_b64decode(header + "=="))["kid"]
    _, jwks = await http("GET", f"{gateway.url}/.well-known/jwks.json")
    public = base64.urlsafe_b64decode(next(k["x"] for k in jwks["keys"] if k["kid"] == kid) + "==")
    forged = {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{payload}.",
        "HS256 with the public key": jwt.encode(claims, public, algorithm="HS256", headers={"kid": kid}),
        "tampered payload": f"{header}.{_b64({**claims, 'role': 'super_admin'})}.{signature}",
        "unknown kid": f"{_b64({'alg': 'EdDSA', 'typ': 'JWT', 'kid': 'nope'})}.{payload}.{signature}",
        "garbage": "a.b.c",
        "not a jwt": "hello",
    }
    # Well-signed tokens with bad claims need the private key: those are checked against the
    # key ring itself in the next test.
    for name, token in forged.items():
        status, body = await http("GET", world.url("/v1/tenants/{t}"), credential=token)
        assert status == 401, f"{name}: {status} {body}"
    assert (await http("GET", world.url("/v1/tenants/{t}"), credential=good))[0] == 200


async def test_claim_checks_of_the_key_ring(nc: NATS, kek: KeyEncryptionKey) -> None:
    from democratic_ai.services.identity import KeyRing
    from democratic_ai.services.identity.tokens import AUDIENCE, ISSUER, InvalidToken

    ring = KeyRing(kek)
    await ring.start(nc.jetstream())
    try:
        key = max(ring._keys.values(), key=lambda k: k.created_at)
        now = datetime.now(UTC)
        base = {
            "sub": "u",
            "tenant_id": "t",
            "jti": "j",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + timedelta(minutes=5),
        }

        def signed(**changes: object) -> str:
            claims = {k: v for k, v in {**base, **changes}.items() if v is not None}
            return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid})

        assert ring.verify(signed()).sub == "u"
        for bad in (
            signed(aud="someone-else"),
            signed(iss="evil"),
            signed(exp=now - timedelta(seconds=5)),
            signed(exp=None),
            signed(jti=None),
        ):
            with pytest.raises(InvalidToken):
                ring.verify(bad)
    finally:
        await ring.stop()


async def test_a_revocation_reaches_a_second_gateway_process_within_a_second(
    gateway: Gateway, nats_server: object, database_url: str
) -> None:
    world = await World.create(gateway)
    _, key = await http(
        "POST",
        world.url("/v1/tenants/{t}/api-keys"),
        json={"name": "replica"},
        credential=world.credentials["tenant_admin"],
    )
    port = free_port()
    env = {
        **os.environ,
        **nats_server.environment("gateway"),
        "DATABASE_APP_URL": app_dsn(database_url),
        "DAI_LOG_LEVEL": "WARNING",
    }
    second = subprocess.Popen([sys.executable, "-m", "democratic_ai.ops.cli", "gateway", "--port", str(port)], env=env)
    try:
        other = f"http://127.0.0.1:{port}/v1/capabilities"

        async def up() -> bool:
            return (await http("GET", other, credential=key["api_key"]))[0] == 200

        await eventually(up, "the second gateway to come up", timeout=30, interval=0.1, ignoring=(OSError,))
        revoked_at = time.monotonic()
        status, _ = await http(
            "DELETE",
            world.url(f"/v1/tenants/{{t}}/api-keys/{key['key_id']}"),
            credential=world.credentials["tenant_admin"],
        )
        assert status == 204
        while (await http("GET", other, credential=key["api_key"]))[0] != 401:
            assert time.monotonic() - revoked_at < 1.0
        assert time.monotonic() - revoked_at < 1.0
    finally:
        second.terminate()
        second.wait(timeout=15)


BAD_HEADERS = [
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer " + "A" * 8000},
    {"Authorization": "Bearer dai_"},
    {"Authorization": "Bearer dai_x_y_z"},
    {"Authorization": "Bearer eyJ.eyJ.sig"},
    {"Authorization": "Bearer " + _b64(b"\xff\xfe") + "." + _b64(b"\x00") + ".x"},
    {"Authorization": "Basic Zm9vOmJhcg=="},
    {"X-API-Key": "dai_\u00e9\u00e9_x"},
    {"X-API-Key": " "},
    {"Authorization": "Bearer " + _b64({"alg": "EdDSA", "kid": ["list"]}) + "." + _b64({}) + ".x"},
    {"Authorization": "Bearer " + _b64({"alg": "EdDSA", "kid": None}) + "." + _b64([1, 2]) + ".x"},
]


@pytest.mark.parametrize("headers", BAD_HEADERS)
async def test_bad_or_missing_credentials_never_cause_a_500(gateway: Gateway, headers: dict[str, str]) -> None:
    for method, path, body in (
        ("GET", "/v1/capabilities", None),
        ("POST", "/v1/capabilities/text.summarize/invoke", {"text": "x"}),
        ("GET", f"/v1/tenants/{gateway.tenant}/users", None),
        ("GET", "/v1/modules", None),
        ("POST", "/v1/modules", {"module_id": "m", "capabilities": []}),
        ("POST", "/v1/auth/logout", None),
        ("POST", "/v1/auth/refresh", {"refresh_token": headers.get("Authorization", "x")}),
        ("POST", "/v1/auth/login", {"tenant_id": "../x", "email": "\x00", "password": "y"}),
    ):
        safe = {k: v.encode("utf-8", "surrogateescape").decode("latin-1") for k, v in headers.items()}
        status, answer = await http(method, gateway.url + path, json=body, headers=safe)
        assert status in (400, 401, 403, 404, 422, 429), f"{method} {path}: {status} {answer}"
