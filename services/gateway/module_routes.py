"""Modules over HTTP: register one, list and read them, change, rotate its credential, revoke it;
a module's live instances, and the stats of the calls it answered.

A registration answers the module's credential once (``Cache-Control: no-store``); nothing
shows it again — reads show its non-secret prefix. Whether a module exists, and whose it is,
comes from the in-memory index, so another tenant's module answers 404 before any read. Reads
of the rows come from the ``modules`` read model, confined to the tenant by Row Level Security.
"""

from __future__ import annotations

from datetime import datetime

import msgspec
from aiohttp import web

from democratic_ai.contracts import ErrorCode
from democratic_ai.schemas import platform_transaction
from democratic_ai.services.identity import ModuleCredential, ModuleState, Principal

from .auth import require, require_tenant
from .bodies import from_row, read_json, respond
from .calls_stats import MINUTES_QUERY, STATS_DESCRIPTION, WindowStats, window_minutes, window_stats
from .errors import ApiError
from .identity_reads import read_your_writes, tenant_rows
from .instances import LiveInstance, live_instances
from .meta import request_meta
from .openapi import NO_CONTENT, Query, operation
from .state import POOL, USERS

__all__ = ["add_module_routes"]

_COLUMNS = (
    "tenant_id, module_id, owner_user_id, name, capabilities, credential_prefix,"
    " registered_at AS created_at, updated_at, revoked_at"
)
_NO_STORE = {"Cache-Control": "no-store"}


class NewModule(msgspec.Struct, forbid_unknown_fields=True):
    module_id: str
    capabilities: list[str]
    name: str = ""
    tenant_id: str | None = None  # super admins register for any tenant; others for their own


class ModuleChange(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None
    capabilities: list[str] | None = None


class Module(msgspec.Struct):
    tenant_id: str
    module_id: str
    owner_user_id: str  # empty when an owner-less (bootstrap) key registered it
    name: str
    capabilities: list[str]
    credential_prefix: str
    created_at: datetime
    updated_at: datetime
    revoked_at: datetime | None


class ModuleList(msgspec.Struct):
    modules: list[Module]


class ModuleInstances(msgspec.Struct):
    module_id: str
    instances: list[LiveInstance]


class ModuleCallStats(WindowStats):
    """The calls a module answered in the window, from every tenant that called it: aggregates only."""

    module_id: str


class IssuedModuleCredential(msgspec.Struct):
    """A module and its new credential, shown this once (``Cache-Control: no-store``)."""

    module_id: str
    tenant_id: str
    owner_user_id: str
    name: str
    capabilities: list[str]
    credential: str
    credential_prefix: str


class RegisteredModule(IssuedModuleCredential):
    created_at: datetime


class RotatedCredential(IssuedModuleCredential):
    rotated_at: datetime


def _visible(request: web.Request, principal: Principal) -> ModuleState:
    """The module of the path, if the caller's tenant owns it (any, for a super admin); else 404."""
    return request.app[USERS].module(
        None if principal.is_super_admin else principal.tenant_id, request.match_info["module"]
    )


async def _document(request: web.Request, module: ModuleState) -> Module:
    rows = await tenant_rows(
        request, module.tenant_id, f"SELECT {_COLUMNS} FROM modules WHERE module_id = $1", module.module_id
    )
    if not rows:  # the read model lags (its worker is down): the index knows the module, the rows not yet
        raise ApiError(
            ErrorCode.NOT_READY,
            "the module is registered but the read model has not caught up; retry",
            {"module_id": module.module_id},
        )
    return from_row(Module, rows[0])


def _credential(answer_type: type[IssuedModuleCredential], issued: ModuleCredential, status: int) -> web.Response:
    module = issued.module
    answer = answer_type(
        module.module_id,
        module.tenant_id,
        module.owner_user_id,
        module.name,
        list(module.capabilities),
        issued.credential,
        issued.prefix,
        issued.at,
    )
    return respond(answer, status=status, headers=_NO_STORE)


@operation("Register a module: its credential is answered once.", {201: RegisteredModule}, body=NewModule)
async def register_module(request: web.Request) -> web.Response:
    principal = require(request, "module:create")
    body = await read_json(request, NewModule)
    tenant_id = principal.tenant_id if body.tenant_id is None else body.tenant_id
    require_tenant(request, tenant_id)
    issued = await request.app[USERS].register_module(
        request_meta(request, principal.actor),
        tenant_id=tenant_id,
        owner_user_id=principal.user_id,
        module_id=body.module_id,
        name=body.name,
        capabilities=body.capabilities,
    )
    await read_your_writes(request)
    return _credential(RegisteredModule, issued, 201)


@operation(
    "The tenant's modules (every tenant's, for a super admin without tenant_id).",
    {200: ModuleList},
    query=(Query("tenant_id", "Only this tenant's modules (super admins; others see their own)."),),
)
async def list_modules(request: web.Request) -> web.Response:
    principal = require(request, "module:read")
    tenant_id = request.query.get("tenant_id") or None  # empty: as if absent (not a tenant to scope to)
    if tenant_id is not None:
        require_tenant(request, tenant_id)
    elif not principal.is_super_admin:
        tenant_id = principal.tenant_id
    # None: a super admin's platform-wide read (the modules policy admits dai.scope = 'platform').
    rows = await tenant_rows(request, tenant_id, f"SELECT {_COLUMNS} FROM modules ORDER BY tenant_id, module_id")
    return respond(ModuleList([from_row(Module, r) for r in rows]))


@operation("One module of the caller's tenant (any, for a super admin).", {200: Module})
async def get_module(request: web.Request) -> web.Response:
    principal = require(request, "module:read")
    return respond(await _document(request, _visible(request, principal)))


@operation(
    "A module's live instances, from their heartbeats (the caller's tenant's; any, for a super admin).",
    {200: ModuleInstances},
)
async def module_instances(request: web.Request) -> web.Response:
    principal = require(request, "module:read")
    module = _visible(request, principal)
    return respond(ModuleInstances(module.module_id, live_instances(request.app, module.module_id)))


@operation(
    "The calls a module answered, from every tenant that called it: per-minute calls and errors, and"
    " latency and success rate per capability (the caller's tenant's module; any, for a super admin).",
    {200: ModuleCallStats},
    query=(MINUTES_QUERY,),
    description=STATS_DESCRIPTION + " Counts and percentiles only: no caller's tenant, user, key or payload."
    " Another tenant's module, or an unknown one, answers 404 NOT_FOUND.",
)
async def module_stats(request: web.Request) -> web.Response:
    """How the module does for everyone who calls it, as its author needs to know.

    The module's calls are rows of the calling tenants, which a tenant-scoped transaction hides
    by design (the ``calls`` policy shows a tenant its own calls only), so this reads in a
    :func:`~democratic_ai.schemas.platform_transaction`, which the policy also admits
    (schemas/sql/017_calls_by_module.sql), and keeps the rows whose ``module_id`` is this
    module: ids are unique across tenants, and whose the module is was checked first (404
    otherwise). Nothing but counts and percentiles leaves the database, so no calling tenant's
    ids, users, keys or payloads reach the author. A policy keyed on the module (a
    ``dai.module_id`` setting) would make the database enforce the filter too; the platform
    scope keeps one mechanism for reads across tenants, and the filter lives in this one query.
    """
    principal = require(request, "module:read")
    module = _visible(request, principal)
    minutes = window_minutes(request)
    async with platform_transaction(request.app[POOL]) as conn:
        stats = await window_stats(
            conn, ModuleCallStats, minutes, "module_id = $3", (module.module_id,), module_id=module.module_id
        )
    return respond(stats)


@operation("Rename a module or change its capabilities.", {200: Module}, body=ModuleChange)
async def update_module(request: web.Request) -> web.Response:
    principal = require(request, "module:update")
    module = _visible(request, principal)
    body = await read_json(request, ModuleChange)
    if body.name is None and body.capabilities is None:
        raise ApiError(
            ErrorCode.VALIDATION_FAILED, "nothing to change: send 'name' and/or 'capabilities'", {"path": "$"}
        )
    module = await request.app[USERS].update_module(
        request_meta(request, principal.actor), module, name=body.name, capabilities=body.capabilities
    )
    await read_your_writes(request)
    return respond(await _document(request, module))


@operation(
    "Rotate a module's credential: the old one stops working; the new one is answered once.", {200: RotatedCredential}
)
async def rotate_credential(request: web.Request) -> web.Response:
    principal = require(request, "module:update")
    module = _visible(request, principal)
    issued = await request.app[USERS].rotate_module_credential(request_meta(request, principal.actor), module)
    await read_your_writes(request)
    return _credential(RotatedCredential, issued, 200)


@operation("Revoke a module (one's own, without module:delete): its credential stops working.", {204: NO_CONTENT})
async def revoke_module(request: web.Request) -> web.Response:
    principal = require(request, "module:delete", "module:delete:own")
    module = _visible(request, principal)
    if not principal.can("module:delete") and (not principal.user_id or module.owner_user_id != principal.user_id):
        raise ApiError(ErrorCode.FORBIDDEN, "you may only revoke your own modules", {"needed": ["module:delete"]})
    await request.app[USERS].revoke_module(request_meta(request, principal.actor), module)
    await read_your_writes(request)
    return web.Response(status=204)


def add_module_routes(app: web.Application) -> None:
    app.router.add_post("/v1/modules", register_module)
    app.router.add_get("/v1/modules", list_modules)
    app.router.add_get("/v1/modules/{module}", get_module)
    app.router.add_get("/v1/modules/{module}/instances", module_instances)
    app.router.add_get("/v1/modules/{module}/stats", module_stats)
    app.router.add_patch("/v1/modules/{module}", update_module)
    app.router.add_post("/v1/modules/{module}/credential", rotate_credential)
    app.router.add_delete("/v1/modules/{module}", revoke_module)
