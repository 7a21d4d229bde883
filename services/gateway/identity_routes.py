"""Identity over HTTP: tenants, users, sessions and API keys.

Every handler checks a permission of the seed's table, and every tenant-scoped path checks
that the tenant is the caller's own (super admins excepted). Commands append events; reads
come from the read models, inside a transaction that sets the tenant with ``SET LOCAL`` so
Row Level Security confines them to it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal

import msgspec
from aiohttp import web

from democratic_ai.contracts import ErrorCode
from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.fields import Email, Id, Name, PositiveInt32, Text
from democratic_ai.services.identity import Principal

from .auth import principal_of, require, require_tenant
from .bodies import from_row, read_json, respond
from .errors import ApiError
from .identity_reads import read_your_writes, tenant_rows
from .meta import request_meta
from .openapi import NO_CONTENT, operation
from .state import IDENTITY, KEY_RING, USERS

__all__ = ["add_identity_routes"]

log = logging.getLogger(__name__)


def _meta(request: web.Request, principal: Principal | None = None) -> Meta:
    return request_meta(request, principal.actor if principal else "anonymous")


# Tenants ---------------------------------------------------------------------------------------


# Body fields that reach an event have its field types: the edge refuses (422, naming the
# field) what the event would refuse, before any command runs.


class NewTenant(msgspec.Struct, forbid_unknown_fields=True):
    tenant_id: str  # a subject token: the service says so when it is not one
    name: Name = ""


class CreatedTenant(msgspec.Struct):
    tenant_id: str
    name: str


class Tenant(msgspec.Struct):
    tenant_id: str
    name: str
    suspended: bool
    created_at: datetime


class TenantList(msgspec.Struct):
    tenants: list[Tenant]


@operation("Create a tenant (super admin).", {201: CreatedTenant}, body=NewTenant)
async def create_tenant(request: web.Request) -> web.Response:
    principal = require(request, "tenant:create")
    body = await read_json(request, NewTenant)
    event = await request.app[USERS].create_tenant(_meta(request, principal), body.tenant_id, body.name)
    await read_your_writes(request)
    return respond(CreatedTenant(event.tenant_id, event.name), status=201)


@operation("Every tenant (super admin).", {200: TenantList})
async def list_tenants(request: web.Request) -> web.Response:
    require(request, "tenant:list")
    rows = await tenant_rows(
        request, None, "SELECT tenant_id, name, suspended, created_at FROM tenants ORDER BY tenant_id"
    )
    return respond(TenantList([from_row(Tenant, r) for r in rows]))


@operation("One tenant: the caller's own (any, for a super admin).", {200: Tenant})
async def get_tenant(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant"]
    require_tenant(request, tenant_id)
    require(request, "tenant:read")
    return await _tenant_answer(request, tenant_id)


async def _tenant_answer(request: web.Request, tenant_id: str, **known: Any) -> web.Response:
    rows = await tenant_rows(
        request, tenant_id, "SELECT tenant_id, name, suspended, created_at FROM tenants WHERE tenant_id = $1", tenant_id
    )
    if not rows:
        raise ApiError(ErrorCode.NOT_FOUND, f"no tenant {tenant_id!r}")
    return respond(from_row(Tenant, rows[0], **known))


class TenantChange(msgspec.Struct, forbid_unknown_fields=True):
    name: Name


@operation(
    "Rename a tenant: the caller's own (tenant:update), any for a super admin.", {200: Tenant}, body=TenantChange
)
async def update_tenant(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant"]
    principal = require_tenant(request, tenant_id)
    require(request, "tenant:update")
    body = await read_json(request, TenantChange)
    tenant = await request.app[USERS].rename_tenant(_meta(request, principal), tenant_id, body.name)
    await read_your_writes(request)
    # The name as the command left it, even if the read model lags behind.
    return await _tenant_answer(request, tenant_id, name=tenant.name, suspended=tenant.suspended)


class Suspension(msgspec.Struct, forbid_unknown_fields=True):
    reason: Text = ""  # kept in the event (and so in the log), for the operators


async def _optional_reason(request: web.Request) -> str:
    """The ``reason`` of an optional ``{"reason"}`` body: none is needed."""
    return (await read_json(request, Suspension)).reason if request.can_read_body else ""


async def _change_lifecycle(
    request: web.Request, change: Callable[[Meta, str, str], Awaitable[object]]
) -> web.Response:
    """Suspend or reinstate the path's tenant (super admin), with the optional reason."""
    principal = require(request, "tenant:suspend")
    tenant_id = request.match_info["tenant"]
    if tenant_id == principal.tenant_id:
        # Suspending it would lock out the very credentials that could reinstate it.
        raise ApiError(
            ErrorCode.FORBIDDEN,
            "a super admin does not suspend or reinstate their own tenant",
            {"tenant_id": tenant_id},
        )
    await change(_meta(request, principal), tenant_id, await _optional_reason(request))
    await read_your_writes(request)
    return web.Response(status=204)


@operation(
    "Suspend a tenant: its credentials stop working until it is reinstated (super admin). No body needed;"
    " 409 if it is suspended already.",
    {204: NO_CONTENT},
    body=Suspension,
    body_required=False,
)
async def suspend_tenant(request: web.Request) -> web.Response:
    return await _change_lifecycle(request, request.app[USERS].suspend_tenant)


@operation(
    "Reinstate a suspended tenant: its credentials work again (super admin). No body needed; 409 if it is"
    " not suspended.",
    {204: NO_CONTENT},
    body=Suspension,
    body_required=False,
)
async def reinstate_tenant(request: web.Request) -> web.Response:
    return await _change_lifecycle(request, request.app[USERS].reinstate_tenant)


# Users -----------------------------------------------------------------------------------------


class NewUser(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: str  # only its hash is stored
    role: Id = "user"


class UserChange(msgspec.Struct, forbid_unknown_fields=True):
    role: Id | None = None
    password: str | None = None
    current_password: str | None = None


_USER_COLUMNS = "user_id, tenant_id, email, role, active, created_at, updated_at"


class UserAnswer(msgspec.Struct):
    """A user as a command leaves it."""

    user_id: str
    tenant_id: str
    email: str
    role: str
    active: bool


class User(msgspec.Struct):
    """A user as the read model holds it."""

    user_id: str
    tenant_id: str
    email: str
    role: str
    active: bool
    created_at: datetime
    updated_at: datetime


class UserList(msgspec.Struct):
    users: list[User]


@operation("Register a user in the tenant.", {201: UserAnswer}, body=NewUser)
async def create_user(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant"]
    principal = require_tenant(request, tenant_id)
    require(request, "user:create")
    body = await read_json(request, NewUser)
    event = await request.app[USERS].register_user(
        _meta(request, principal), tenant_id, body.email, body.password, body.role
    )
    await read_your_writes(request)
    return respond(UserAnswer(event.user_id, tenant_id, event.email, event.role, True), status=201)


@operation("The tenant's users (only oneself, without user:read).", {200: UserList})
async def list_users(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant"]
    principal = require_tenant(request, tenant_id)
    require(request, "user:read", "user:read:self")
    if principal.can("user:read"):
        rows = await tenant_rows(request, tenant_id, f"SELECT {_USER_COLUMNS} FROM users ORDER BY email")
    else:
        rows = await tenant_rows(
            request, tenant_id, f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = $1", principal.user_id
        )
    return respond(UserList([from_row(User, r) for r in rows]))


def _self_or(request: web.Request, principal: Principal, user_id: str, permission: str) -> None:
    """Allow ``permission`` on anyone, or ``permission:self`` on the caller's own user."""
    if principal.can(permission) or (principal.user_id == user_id and principal.can(f"{permission}:self")):
        return
    if principal.can(f"{permission}:self"):
        raise ApiError(ErrorCode.FORBIDDEN, "you may only do this for your own user", {"needed": [permission]})
    require(request, permission, f"{permission}:self")


@operation("One user of the tenant.", {200: User})
async def get_user(request: web.Request) -> web.Response:
    tenant_id, user_id = request.match_info["tenant"], request.match_info["user"]
    principal = require_tenant(request, tenant_id)
    _self_or(request, principal, user_id, "user:read")
    rows = await tenant_rows(request, tenant_id, f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = $1", user_id)
    if not rows:
        raise ApiError(ErrorCode.NOT_FOUND, f"no user {user_id!r} in tenant {tenant_id!r}")
    return respond(from_row(User, rows[0]))


@operation(
    "Change a user's role and/or password (one's own password needs current_password).",
    {200: UserAnswer},
    body=UserChange,
)
async def update_user(request: web.Request) -> web.Response:
    tenant_id, user_id = request.match_info["tenant"], request.match_info["user"]
    principal = require_tenant(request, tenant_id)
    service = request.app[USERS]
    body = await read_json(request, UserChange)
    if body.role is None and body.password is None:
        raise ApiError(ErrorCode.VALIDATION_FAILED, "nothing to change: send 'role' and/or 'password'", {"path": "$"})
    if body.role is not None:
        require(request, "user:update")
    if body.password is not None:
        _self_or(request, principal, user_id, "user:update")
    user = service.user(tenant_id, user_id)
    meta = _meta(request, principal)
    if body.password is not None:
        # Changing one's own password needs the current one: a stolen token is not enough.
        if not principal.can("user:update") and not await service.check_password(user, body.current_password or ""):
            raise ApiError(ErrorCode.FORBIDDEN, "current_password is wrong or missing", {"path": "$.current_password"})
        # The user's own session that changes it lives on; every other one ends. An admin's
        # reset ends them all.
        own = principal.session_id if principal.user_id == user.user_id else ""
        await service.change_password(meta, user, body.password, keep_session=own)
    if body.role is not None:
        await service.change_role(meta, service.user(tenant_id, user_id), body.role)
    await read_your_writes(request)
    user = service.user(tenant_id, user_id)
    return respond(UserAnswer(user.user_id, tenant_id, user.email, user.role, user.active))


@operation("Deactivate a user: every session and API key of theirs stops working.", {204: NO_CONTENT})
async def deactivate_user(request: web.Request) -> web.Response:
    tenant_id, user_id = request.match_info["tenant"], request.match_info["user"]
    principal = require_tenant(request, tenant_id)
    require(request, "user:delete")
    service = request.app[USERS]
    await service.deactivate(_meta(request, principal), service.user(tenant_id, user_id))
    await read_your_writes(request)
    return web.Response(status=204)


# Sessions --------------------------------------------------------------------------------------


class Login(msgspec.Struct, forbid_unknown_fields=True):
    tenant_id: str
    email: str
    password: str


class Refresh(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: str


class Logout(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: str | None = None


class TokenAnswer(msgspec.Struct):
    access_token: str  # a JWT, for 'Authorization: Bearer'
    token_type: Literal["Bearer"]
    expires_in: int  # seconds
    refresh_token: str


def _tokens(tokens: Any) -> web.Response:
    return respond(TokenAnswer(tokens.access_token, "Bearer", tokens.expires_in, tokens.refresh_token))


@operation(
    "Log in with email and password: an access token and a refresh token.", {200: TokenAnswer}, body=Login, public=True
)
async def login(request: web.Request) -> web.Response:
    body = await read_json(request, Login)
    return _tokens(await request.app[USERS].login(_meta(request), body.tenant_id, body.email, body.password))


@operation(
    "Exchange a refresh token for new tokens (the old refresh token is spent).",
    {200: TokenAnswer},
    body=Refresh,
    public=True,
)
async def refresh(request: web.Request) -> web.Response:
    body = await read_json(request, Refresh)
    return _tokens(await request.app[USERS].refresh(_meta(request), body.refresh_token))


@operation(
    "End the session (and revoke the refresh token, if sent).", {204: NO_CONTENT}, body=Logout, body_required=False
)
async def logout(request: web.Request) -> web.Response:
    principal = principal_of(request)
    body = await read_json(request, Logout) if request.can_read_body else Logout()
    await request.app[USERS].logout(_meta(request, principal), principal, body.refresh_token)
    return web.Response(status=204)


class JsonWebKey(msgspec.Struct):
    kty: str
    crv: str
    x: str
    kid: str
    alg: str
    use: str


class JsonWebKeySet(msgspec.Struct):
    keys: list[JsonWebKey]


@operation(
    "The public keys that verify the gateway's access tokens (a JSON Web Key Set).", {200: JsonWebKeySet}, public=True
)
async def jwks(request: web.Request) -> web.Response:
    return respond(msgspec.convert(request.app[KEY_RING].jwks(), JsonWebKeySet))


# API keys --------------------------------------------------------------------------------------


class NewApiKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Name = ""
    scopes: list[Id] | None = None  # omitted: module:read and module:use (as far as the caller holds them)
    expires_at: datetime | None = None
    rate_limit: PositiveInt32 | None = None  # api_keys.rate_limit is an integer column
    # What the key may call: capability names or families ("text.*"); omitted, what its issuer may.
    capabilities: list[Id] | None = None
    toolset: Id = ""  # or the name of one of the tenant's toolsets, which the key follows


_KEY_COLUMNS = (
    "key_id, tenant_id, user_id, name, prefix, role, scopes, expires_at, rate_limit, capabilities,"
    " toolset, created_at, revoked_at"
)


class IssuedApiKey(msgspec.Struct):
    """A new key; ``api_key`` is shown this once."""

    key_id: str
    api_key: str
    prefix: str
    name: str
    scopes: list[str]
    expires_at: datetime | None
    rate_limit: int | None
    capabilities: list[str]  # its toolset; empty: every capability its scopes allow
    toolset: str  # or the tenant's toolset it follows


class ApiKey(msgspec.Struct):
    key_id: str
    tenant_id: str
    user_id: str
    name: str
    prefix: str
    role: str
    scopes: list[str]
    expires_at: datetime | None
    rate_limit: int | None
    capabilities: list[str]  # its toolset; empty: every capability its scopes allow
    toolset: str  # or the tenant's toolset it follows
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyList(msgspec.Struct):
    api_keys: list[ApiKey]


@operation(
    "Issue an API key to the caller (a user of this tenant); its secret is answered once.",
    {201: IssuedApiKey},
    body=NewApiKey,
)
async def create_api_key(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant"]
    principal = require_tenant(request, tenant_id)
    require(request, "api_key:create", "api_key:create:own")
    body = await read_json(request, NewApiKey)
    if principal.tenant_id != tenant_id:
        raise ApiError(ErrorCode.FORBIDDEN, "API keys are created by a user of their own tenant")
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        raise ApiError(
            ErrorCode.VALIDATION_FAILED,
            "expires_at needs a time zone, e.g. 2027-01-01T00:00:00Z",
            {"path": "$.expires_at"},
        )
    issued = await request.app[USERS].issue_api_key(
        _meta(request, principal),
        tenant_id=tenant_id,
        role=principal.role,
        user_id=principal.user_id,
        name=body.name,
        scopes=body.scopes,
        expires_at=body.expires_at,
        rate_limit=body.rate_limit,
        granted=principal.permissions,
        capabilities=body.capabilities,
        toolset=body.toolset,
        granted_toolset=principal.toolset,
    )
    await read_your_writes(request)
    event = issued.event
    return respond(
        IssuedApiKey(
            issued.key_id,
            issued.secret,
            event.prefix,
            event.name,
            list(event.scopes),
            event.expires_at,
            event.rate_limit,
            list(event.capabilities),
            event.toolset,
        ),
        status=201,
    )


@operation("The tenant's API keys (only one's own, without api_key:read); never their secrets.", {200: ApiKeyList})
async def list_api_keys(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant"]
    principal = require_tenant(request, tenant_id)
    require(request, "api_key:read", "api_key:read:own")
    if principal.can("api_key:read"):
        rows = await tenant_rows(request, tenant_id, f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at")
    else:
        rows = await tenant_rows(
            request,
            tenant_id,
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at",
            principal.user_id,
        )
    return respond(ApiKeyList([from_row(ApiKey, r) for r in rows]))


@operation("Revoke an API key (one's own, without api_key:delete).", {204: NO_CONTENT})
async def revoke_api_key(request: web.Request) -> web.Response:
    tenant_id, key_id = request.match_info["tenant"], request.match_info["key"]
    principal = require_tenant(request, tenant_id)
    require(request, "api_key:delete", "api_key:delete:own")
    key = request.app[IDENTITY].api_keys.get(key_id)
    if key is None or key.tenant_id != tenant_id:
        raise ApiError(ErrorCode.NOT_FOUND, f"no API key {key_id!r} in tenant {tenant_id!r}")
    if not principal.can("api_key:delete") and (not principal.user_id or key.user_id != principal.user_id):
        raise ApiError(ErrorCode.FORBIDDEN, "you may only revoke your own API keys", {"needed": ["api_key:delete"]})
    await request.app[USERS].revoke_api_key(_meta(request, principal), tenant_id, key_id)
    await read_your_writes(request)
    return web.Response(status=204)


def add_identity_routes(app: web.Application) -> None:
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_post("/v1/auth/login", login)
    app.router.add_post("/v1/auth/refresh", refresh)
    app.router.add_post("/v1/auth/logout", logout)
    app.router.add_post("/v1/tenants", create_tenant)
    app.router.add_get("/v1/tenants", list_tenants)
    app.router.add_get("/v1/tenants/{tenant}", get_tenant)
    app.router.add_patch("/v1/tenants/{tenant}", update_tenant)
    app.router.add_post("/v1/tenants/{tenant}/suspend", suspend_tenant)
    app.router.add_post("/v1/tenants/{tenant}/reinstate", reinstate_tenant)
    app.router.add_post("/v1/tenants/{tenant}/users", create_user)
    app.router.add_get("/v1/tenants/{tenant}/users", list_users)
    app.router.add_get("/v1/tenants/{tenant}/users/{user}", get_user)
    app.router.add_patch("/v1/tenants/{tenant}/users/{user}", update_user)
    app.router.add_post("/v1/tenants/{tenant}/users/{user}/deactivate", deactivate_user)
    app.router.add_post("/v1/tenants/{tenant}/api-keys", create_api_key)
    app.router.add_get("/v1/tenants/{tenant}/api-keys", list_api_keys)
    app.router.add_delete("/v1/tenants/{tenant}/api-keys/{key}", revoke_api_key)
