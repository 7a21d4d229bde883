"""Modules registered through the HTTP API: the credential shown once, rotation, revocation,
who may do what, tenant isolation, unique ids, input checks, and the read model."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.identity_events import (
    ModuleRegistered,
    ModuleRevoked,
    ModuleUpdated,
    TenantCreated,
    TenantSuspended,
    decode_event,
    encode_event,
)
from democratic_ai.hub import Hub
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.services.gateway.state import IDENTITY
from democratic_ai.services.identity import IdentityIndex, new_module_credential, parse_module_credential
from democratic_ai.services.identity.module_credentials import credential_prefix, credential_sha256

from support.client import http
from support.gateway import Gateway
from support.identity import login, new_tenant, new_user
from support.names import unique
from support.projections import caught_up
from support.readme import run_script, section_scripts


class Tenant:
    """A tenant with a user of each role that matters here, and their access tokens."""

    def __init__(self, gateway: Gateway, tenant: str) -> None:
        self.gateway, self.tenant = gateway, tenant
        self.tokens: dict[str, str] = {}
        self.users: dict[str, dict] = {}

    @classmethod
    async def create(cls, gateway: Gateway, *roles: str) -> Tenant:
        tenant = cls(gateway, await new_tenant(gateway))
        for role in roles or ("tenant_admin", "developer", "viewer"):
            user = await new_user(gateway, tenant.tenant, role)
            tenant.users[role] = user
            tenant.tokens[role] = (await login(gateway, tenant.tenant, user))["access_token"]
        return tenant

    async def register(self, role: str = "developer", **body: object) -> tuple[int, dict]:
        document = {"module_id": unique("mod"), "name": "Text tools", "capabilities": ["text.summarize"], **body}
        return await http("POST", f"{self.gateway.url}/v1/modules", json=document, credential=self.tokens[role])

    async def call(self, method: str, path: str, role: str = "developer", json: object = None) -> tuple[int, dict]:
        return await http(method, f"{self.gateway.url}/v1/modules{path}", json=json, credential=self.tokens[role])


def index(gateway: Gateway) -> IdentityIndex:
    assert gateway.app is not None
    return gateway.app[IDENTITY]


async def test_registration_shows_the_credential_once(gateway: Gateway) -> None:
    acme = await Tenant.create(gateway, "developer")
    module_id = unique("text-tools")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/modules",
            json={
                "module_id": module_id,
                "name": "Text tools",
                "capabilities": ["text.summarize", "text.analyze", "text.analyze"],
            },
            headers={"Authorization": f"Bearer {acme.tokens['developer']}"},
        ) as response,
    ):
        assert response.status == 201, await response.text()
        assert response.headers["Cache-Control"] == "no-store"
        created = await response.json()
    credential = created["credential"]
    assert parse_module_credential(credential) == (acme.tenant, module_id)
    assert created["tenant_id"] == acme.tenant and created["module_id"] == module_id
    assert created["owner_user_id"] == acme.users["developer"]["user_id"]
    assert created["capabilities"] == ["text.analyze", "text.summarize"] and created["name"] == "Text tools"
    assert credential.startswith(created["credential_prefix"]) and created["created_at"]

    module = index(gateway).module_for_credential(credential)
    assert module is not None and module.module_id == module_id and module.tenant_id == acme.tenant
    assert module.capabilities == ("text.analyze", "text.summarize")

    status, one = await acme.call("GET", f"/{module_id}")
    assert status == 200 and one["credential_prefix"] == created["credential_prefix"]
    status, listing = await acme.call("GET", "")
    assert status == 200 and [m["module_id"] for m in listing["modules"]] == [module_id]
    for document in (one, listing):
        assert "credential" not in str(document).replace("credential_prefix", "")
        assert credential.rsplit(".", 1)[1] not in str(document)
    assert one["revoked_at"] is None and one["owner_user_id"] == created["owner_user_id"]
    # A module credential is for the bus, not for the HTTP API.
    status, body = await http("GET", f"{gateway.url}/v1/modules", credential=credential)
    assert status == 401 and body["error"]["code"] == "UNAUTHENTICATED"


async def test_rotation_refuses_the_old_credential_and_accepts_the_new(gateway: Gateway) -> None:
    acme = await Tenant.create(gateway, "developer")
    _, created = await acme.register()
    module_id, old = created["module_id"], created["credential"]
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/modules/{module_id}/credential",
            headers={"Authorization": f"Bearer {acme.tokens['developer']}"},
        ) as response,
    ):
        assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
        rotated = await response.json()
    new = rotated["credential"]
    assert new != old and parse_module_credential(new) == (acme.tenant, module_id)
    assert index(gateway).module_for_credential(old) is None
    assert index(gateway).module_for_credential(new) is not None
    status, one = await acme.call("GET", f"/{module_id}")
    assert status == 200 and new.startswith(one["credential_prefix"])


async def test_revocation_refuses_the_credential_and_is_final(gateway: Gateway) -> None:
    acme = await Tenant.create(gateway, "developer")
    _, created = await acme.register()
    module_id = created["module_id"]
    results = await asyncio.gather(*(acme.call("DELETE", f"/{module_id}") for _ in range(4)))
    assert sorted(status for status, _ in results) == [204, 409, 409, 409]
    assert index(gateway).module_for_credential(created["credential"]) is None
    status, one = await acme.call("GET", f"/{module_id}")
    assert status == 200 and one["revoked_at"] is not None
    assert (await acme.call("POST", f"/{module_id}/credential"))[0] == 409
    assert (await acme.call("PATCH", f"/{module_id}", json={"name": "again"}))[0] == 409
    # A revoked id is not free again: registrations are forever.
    assert (await acme.register(module_id=module_id))[0] == 409


async def test_who_may_register_change_and_revoke(gateway: Gateway) -> None:
    acme = await Tenant.create(gateway, "tenant_admin", "developer", "viewer", "user")
    other_developer = await new_user(gateway, acme.tenant, "developer")
    acme.tokens["developer2"] = (await login(gateway, acme.tenant, other_developer))["access_token"]
    for role in ("viewer", "user"):
        status, body = await acme.register(role)
        assert status == 403 and body["error"]["code"] == "FORBIDDEN", (role, body)
    _, mine = await acme.register("developer")
    _, theirs = await acme.register("developer2")
    # A developer revokes its own module, not another developer's; a tenant admin revokes any.
    status, body = await acme.call("DELETE", f"/{theirs['module_id']}")
    assert status == 403 and body["error"]["details"]["needed"] == ["module:delete"]
    assert index(gateway).module_for_credential(theirs["credential"]) is not None
    assert (await acme.call("DELETE", f"/{mine['module_id']}"))[0] == 204
    assert (await acme.call("DELETE", f"/{theirs['module_id']}", role="tenant_admin"))[0] == 204
    # module:update is tenant-wide for developers (the product's table); viewers only read.
    _, third = await acme.register("developer2")
    status, changed = await acme.call(
        "PATCH", f"/{third['module_id']}", json={"capabilities": ["text.translate"], "name": "Translator"}
    )
    assert status == 200 and changed["capabilities"] == ["text.translate"] and changed["name"] == "Translator"
    assert index(gateway).modules[third["module_id"]].capabilities == ("text.translate",)
    assert (await acme.call("PATCH", f"/{third['module_id']}", role="viewer", json={"name": "x"}))[0] == 403
    assert (await acme.call("POST", f"/{third['module_id']}/credential", role="viewer"))[0] == 403
    assert (await acme.call("DELETE", f"/{third['module_id']}", role="viewer"))[0] == 403
    status, listing = await acme.call("GET", "", role="viewer")
    assert status == 200 and len(listing["modules"]) == 3


async def test_another_tenants_modules_are_404(gateway: Gateway) -> None:
    acme, globex = await Tenant.create(gateway, "tenant_admin"), await Tenant.create(gateway, "tenant_admin")
    _, theirs = await globex.register("tenant_admin")
    module_id = theirs["module_id"]
    for method, path, body in (
        ("GET", f"/{module_id}", None),
        ("PATCH", f"/{module_id}", {"name": "mine now"}),
        ("POST", f"/{module_id}/credential", None),
        ("DELETE", f"/{module_id}", None),
    ):
        status, answer = await acme.call(method, path, role="tenant_admin", json=body)
        assert status == 404 and answer["error"]["code"] == "NOT_FOUND", (method, path, answer)
    status, answer = await acme.register("tenant_admin", tenant_id=globex.tenant)
    assert status == 404, answer
    status, listing = await acme.call("GET", "", role="tenant_admin")
    assert status == 200 and listing["modules"] == []
    status, listing = await acme.call("GET", f"?tenant_id={globex.tenant}", role="tenant_admin")
    assert status == 404
    assert index(gateway).module_for_credential(theirs["credential"]) is not None  # untouched


async def test_a_super_admin_registers_for_any_tenant_and_lists_them_all(gateway: Gateway) -> None:
    acme, globex = await Tenant.create(gateway, "developer"), await Tenant.create(gateway, "developer")
    _, a = await acme.register()
    status, b = await http(
        "POST",
        f"{gateway.url}/v1/modules",
        credential=gateway.api_key,
        json={"module_id": unique("platform"), "capabilities": [], "tenant_id": globex.tenant},
    )
    assert status == 201 and b["tenant_id"] == globex.tenant and b["owner_user_id"] == "", b
    status, listing = await http("GET", f"{gateway.url}/v1/modules", credential=gateway.api_key)
    assert status == 200 and {a["module_id"], b["module_id"]} <= {m["module_id"] for m in listing["modules"]}
    status, listing = await http("GET", f"{gateway.url}/v1/modules?tenant_id={acme.tenant}", credential=gateway.api_key)
    assert status == 200 and [m["module_id"] for m in listing["modules"]] == [a["module_id"]]
    status, _ = await http("DELETE", f"{gateway.url}/v1/modules/{a['module_id']}", credential=gateway.api_key)
    assert status == 204


async def test_module_ids_are_unique_across_tenants(gateway: Gateway) -> None:
    acme, globex = await Tenant.create(gateway, "developer"), await Tenant.create(gateway, "developer")
    _, first = await acme.register()
    status, body = await acme.register(module_id=first["module_id"])
    assert status == 409 and body["error"]["code"] == "CONFLICT" and body["error"]["details"]["field"] == "module_id"
    status, body = await globex.register(module_id=first["module_id"])
    assert status == 409 and body["error"]["details"]["field"] == "module_id"
    # Racing registrations of one new id, from both tenants at once: exactly one wins, everywhere.
    contested = unique("contested")
    results = await asyncio.gather(*(t.register(module_id=contested) for t in (acme, globex, acme, globex)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [201, 409, 409, 409], results
    winner = next(body for status, body in results if status == 201)
    assert index(gateway).modules[contested].tenant_id == winner["tenant_id"]
    assert index(gateway).module_for_credential(winner["credential"]) is not None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"capabilities": ["text.summarize", "text.>"]}, "capabilities[1]"),
        ({"capabilities": ["*"]}, "capabilities[0]"),
        ({"capabilities": ["Text.Summarize"]}, "capabilities[0]"),
        ({"capabilities": [f"cap.n{i}" for i in range(65)]}, "capabilities"),
        ({"module_id": "Bad.Id"}, "module_id"),
        ({"module_id": ""}, "module_id"),
        ({"module_id": "x" * 65}, "module_id"),
        ({"name": "n" * 201}, "name"),
        ({"name": "nul\x00byte"}, "name"),
        ({"name": "bell\x07"}, "name"),
        ({"tenant_id": "../etc"}, "tenant_id"),
    ],
)
async def test_invalid_registrations_name_the_field(gateway: Gateway, body: dict, field: str) -> None:
    status, answer = await http(
        "POST",
        f"{gateway.url}/v1/modules",
        credential=gateway.api_key,
        json={"module_id": unique("m"), "capabilities": ["text.summarize"], "tenant_id": gateway.tenant, **body},
    )
    assert status in (404, 422), answer
    if status == 422:
        assert answer["error"]["code"] == "VALIDATION_FAILED" and answer["error"]["details"]["field"] == field, answer
    else:
        assert field == "tenant_id" and answer["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"module_id": "m", "capabilities": "text.summarize"}, "$.capabilities"),
        ({"module_id": "m", "capabilities": [1]}, "$.capabilities[0]"),
        ({"module_id": 7, "capabilities": []}, "$.module_id"),
        ({"capabilities": []}, "$.module_id"),
        ({"module_id": "m", "capabilities": [], "secret": "x"}, "$"),
    ],
)
async def test_bodies_of_the_wrong_shape_are_422_with_the_path(gateway: Gateway, body: dict, path: str) -> None:
    status, answer = await http("POST", f"{gateway.url}/v1/modules", json=body, credential=gateway.api_key)
    assert status == 422 and answer["error"]["details"]["path"] == path, answer


async def test_changes_of_the_wrong_shape_are_422(gateway: Gateway) -> None:
    _, created = await http(
        "POST",
        f"{gateway.url}/v1/modules",
        credential=gateway.api_key,
        json={"module_id": unique("m"), "capabilities": []},
    )
    url = f"{gateway.url}/v1/modules/{created['module_id']}"
    for body, where in (
        ({"capabilities": "text.a"}, "path"),
        ({"name": 5}, "path"),
        ({"credential": "x"}, "path"),
        ({"capabilities": ["a..b"]}, "field"),
        ({"name": "\x1b[31m"}, "field"),
    ):
        status, answer = await http("PATCH", url, json=body, credential=gateway.api_key)
        assert status == 422 and where in answer["error"]["details"], (body, answer)
    status, answer = await http("PATCH", url, json={}, credential=gateway.api_key)
    assert status == 422 and "nothing to change" in answer["error"]["message"]
    status, answer = await http(
        "PATCH", f"{gateway.url}/v1/modules/no-such-module", json={"name": "x"}, credential=gateway.api_key
    )
    assert status == 404


async def test_the_read_model_folds_the_module_events(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, projections: None
) -> None:
    from democratic_ai.projections import IdentityProjection, rebuild

    acme = await Tenant.create(gateway, "developer")
    # A forged registration with a wildcard capability, appended past the API: every reader skips it.
    forged = encode_event(_registered(acme.tenant, "forged", new_module_credential(acme.tenant, "forged")))
    await nc.jetstream().publish(f"iam.{acme.tenant}.module.forged", forged.replace(b'"text.a"', b'">"'))
    _, kept = await acme.register(name="Kept", capabilities=["text.a", "text.b"])
    _, gone = await acme.register(name="Gone", capabilities=[])
    await acme.call("PATCH", f"/{kept['module_id']}", json={"capabilities": ["text.c"]})
    _, rotated = await acme.call("POST", f"/{kept['module_id']}/credential")
    await acme.call("DELETE", f"/{gone['module_id']}")
    await caught_up(nc, pool, "identity")
    assert "forged" not in index(gateway).modules

    async def rows() -> dict[str, tuple]:
        async with pool.acquire() as conn:
            found = await conn.fetch(
                "SELECT module_id, tenant_id, owner_user_id, name, capabilities, credential_prefix,"
                " revoked_at IS NOT NULL AS revoked, registered_at <= updated_at AS ordered"
                " FROM modules WHERE tenant_id = $1",
                acme.tenant,
            )
        return {r["module_id"]: tuple(r) for r in found}

    owner = acme.users["developer"]["user_id"]
    live = await rows()
    assert live == {
        kept["module_id"]: (
            kept["module_id"],
            acme.tenant,
            owner,
            "Kept",
            ["text.c"],
            rotated["credential_prefix"],
            False,
            True,
        ),
        gone["module_id"]: (gone["module_id"], acme.tenant, owner, "Gone", [], gone["credential_prefix"], True, True),
    }
    async with pool.acquire() as conn:
        audit = await conn.fetch(
            "SELECT event_type FROM identity_audit WHERE tenant_id = $1 AND subject LIKE $2 ORDER BY sequence",
            acme.tenant,
            f"iam.{acme.tenant}.module.%",
        )
    assert [r["event_type"] for r in audit] == [
        "module.registered",
        "module.registered",
        "module.updated",
        "module.credential_rotated",
        "module.revoked",
    ]
    await rebuild(nc.jetstream(), pool, IdentityProjection())
    assert await rows() == live


def _meta() -> Meta:
    return Meta(at=datetime.now(UTC))


def _registered(
    tenant: str, module_id: str, credential: str, capabilities: tuple[str, ...] = ("text.a",)
) -> ModuleRegistered:
    return ModuleRegistered(
        tenant_id=tenant,
        meta=_meta(),
        module_id=module_id,
        owner_user_id="u",
        capabilities=capabilities,
        credential_sha256=credential_sha256(credential),
        credential_prefix=credential_prefix(credential),
    )


def test_the_index_keeps_the_first_registration_and_refuses_forged_names() -> None:
    folded = IdentityIndex()
    for tenant in ("acme", "globex", "evil"):
        folded.apply(TenantCreated(tenant_id=tenant, meta=_meta(), name=tenant))
    first, second = new_module_credential("acme", "tools"), new_module_credential("globex", "tools")
    folded.apply(_registered("acme", "tools", first))
    folded.apply(_registered("globex", "tools", second))
    assert folded.modules["tools"].tenant_id == "acme"
    assert folded.module_for_credential(first) is not None and folded.module_for_credential(second) is None
    # Another tenant's update of acme's module changes nothing.
    folded.apply(ModuleUpdated(tenant_id="globex", meta=_meta(), module_id="tools", capabilities=("text.x",)))
    assert folded.modules["tools"].capabilities == ("text.a",)
    # Names that would widen bus permissions never make an event, built or decoded.
    wild = new_module_credential("evil", "wild")
    with pytest.raises(ValueError, match="not a valid name"):
        _registered("evil", "wild", wild, capabilities=(">",))
    forged = encode_event(_registered("evil", "wild", wild, capabilities=("text.a",))).replace(b'"text.a"', b'"text.*"')
    with pytest.raises(msgspec.ValidationError, match="not a valid name"):
        decode_event(forged)
    for bad in (b'"module_id":"wild"', b'"tenant_id":"evil"'):
        with pytest.raises(msgspec.ValidationError):
            decode_event(forged.replace(b'"text.*"', b'"text.a"').replace(bad, bad.replace(b'":"', b'":"A.')))
    with pytest.raises(ValueError, match="control characters"):
        ModuleUpdated(tenant_id="acme", meta=_meta(), module_id="tools", name="\x1b[2J")
    assert "wild" not in folded.modules and folded.module_for_credential(wild) is None
    # A suspended tenant's modules are refused.
    folded.apply(TenantSuspended(tenant_id="acme", meta=_meta()))
    assert folded.module_for_credential(first) is None


def test_the_index_tells_listeners_about_module_changes() -> None:
    folded = IdentityIndex()
    seen: list[tuple[str, bool]] = []
    folded.on_module_change(lambda module: seen.append((module.module_id, module.revoked)))
    folded.on_module_change(lambda module: 1 / 0)  # a broken listener does not stop the fold
    folded.apply(TenantCreated(tenant_id="acme", meta=_meta(), name="acme"))
    folded.apply(_registered("acme", "tools", new_module_credential("acme", "tools")))
    folded.apply(ModuleRevoked(tenant_id="acme", meta=_meta(), module_id="tools"))
    assert seen == [("tools", False), ("tools", True)]
    assert folded.modules["tools"].revoked


@pytest.mark.parametrize(
    "text",
    [
        "",
        "dai-module",
        "dai-module.acme.tools",
        "dai-module.acme.tools.short",
        "dai-module.ACME.tools." + "a" * 43,
        "dai-module.acme.to.ols." + "a" * 43,
        "dai-module.acme.tools." + "a" * 44,
        "dai-module.acme.tools." + "a" * 42 + "=",
        "dai-modulx.acme.tools." + "a" * 43,
        "dai_" + "a" * 60,
        "dai-module.acme.tools." + "\u00e9" * 43,
        "dai-module." + "a" * 5000,
    ],
)
def test_malformed_credentials_parse_to_none_and_authenticate_nothing(text: str) -> None:
    folded = IdentityIndex()
    assert parse_module_credential(text) is None
    assert folded.module_for_credential(text) is None


def test_a_new_credential_has_the_agreed_shape() -> None:
    credential = new_module_credential("acme", "text-tools")
    kind, tenant, module_id, secret = credential.split(".")
    assert (kind, tenant, module_id) == ("dai-module", "acme", "text-tools") and len(secret) == 43
    assert parse_module_credential(credential) == ("acme", "text-tools")
    assert credential_prefix(credential) == "dai-module.acme.text-tools." + secret[:4]
    assert new_module_credential("acme", "text-tools") != credential


def json_documents(text: str) -> list[dict]:
    """The JSON documents ``text`` holds one after another (curl -s ends none of them with a newline)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (at := len(text) - len(text[at:].lstrip())) < len(text):
        document, at = decoder.raw_decode(text, at)
        found.append(document)
    return found


async def test_the_readme_example_registers_reads_runs_rotates_and_revokes(
    gateway: Gateway, nats_server: NatsServer, bus_authorizer: None, hub: Hub, repo_root: Path, tmp_path: Path
) -> None:
    """The README's blocks as written: "Write a module" saves shout.py, "Registering a module" registers
    it, reads it back, runs it with ``.venv/bin/dai module run``, calls it, stops it, rotates and revokes."""
    acme = await Tenant.create(gateway, "tenant_admin")  # the README's $TOKEN is a tenant admin's
    readme = repo_root / "README.md"
    headings = ("## Write a module", "## Registering a module")
    script = "\n".join(section_scripts(readme, heading)[0] for heading in headings)
    dai = tmp_path / ".venv" / "bin" / "dai"  # the README's .venv/bin/dai: this interpreter's
    dai.parent.mkdir(parents=True)
    dai.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m democratic_ai.ops.cli "$@"\n')
    dai.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "GW": gateway.url,
        "TOKEN": acme.tokens["tenant_admin"],
        "JSON": "Content-Type: application/json",
        "NATS_URL": nats_server.url,
    }
    out, err = await run_script(script, cwd=tmp_path, env=env, timeout=90)
    # What prints: the GET, the call, the call without its field and its status (the DELETE answers 204).
    read_back, called, refused, status = json_documents(out)
    assert status == 422, out
    assert called["module_id"] == "shout" and called["result"] == {"text": "HI!"}, called
    assert refused["error"]["code"] == "VALIDATION_FAILED" and refused["error"]["details"]["path"] == "$.text"
    assert "module shout of tenant" in err and "Traceback" not in err, err
    assert read_back["module_id"] == "shout" and read_back["capabilities"] == ["text.shout"], out
    assert read_back["owner_user_id"] == acme.users["tenant_admin"]["user_id"] and "credential" not in read_back

    file = tmp_path / "shout.credential"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    rotated = file.read_text().strip()
    assert parse_module_credential(rotated) == (acme.tenant, "shout")
    assert not rotated.startswith(read_back["credential_prefix"])  # the file holds the rotated credential
    module = index(gateway).modules["shout"]
    assert module.credential_sha256 == credential_sha256(rotated) and module.revoked
    assert index(gateway).module_for_credential(rotated) is None
