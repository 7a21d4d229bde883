"""A tenant's named toolsets: sets of capabilities that API keys may be limited to.

``PUT /v1/tenants/{t}/toolsets/{name}`` defines one (or replaces it: the keys issued with it
follow at their next call), ``GET`` lists them or shows one, ``DELETE`` removes one no live key
follows (409 otherwise, naming the keys). A key is issued with ``{"toolset": "<name>"}``; see
:mod:`democratic_ai.contracts.toolsets` for the entries and the rule. Toolsets are read from the
gateway's identity index, so a definition is visible in the answer that made it.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from democratic_ai.contracts.fields import Id
from democratic_ai.contracts.toolsets import MAX_TOOLSET_ENTRIES

from .auth import require, require_tenant
from .bodies import read_json, respond
from .meta import request_meta
from .openapi import NO_CONTENT, operation
from .state import IDENTITY, USERS

__all__ = ["add_toolset_routes"]


class ToolsetBody(msgspec.Struct, forbid_unknown_fields=True):
    capabilities: list[Id]  # capability names or families ("text.*"), at most MAX_TOOLSET_ENTRIES


class Toolset(msgspec.Struct):
    name: str
    capabilities: list[str]


class ToolsetList(msgspec.Struct):
    toolsets: list[Toolset]


@operation(
    f"Define (or replace) a named toolset of the tenant: at most {MAX_TOOLSET_ENTRIES} capability names or"
    " families ('text.*').",
    {200: Toolset},
    body=ToolsetBody,
)
async def put_toolset(request: web.Request) -> web.Response:
    tenant_id, name = request.match_info["tenant"], request.match_info["name"]
    principal = require_tenant(request, tenant_id)
    require(request, "tenant:update")
    body = await read_json(request, ToolsetBody)
    event = await request.app[USERS].define_toolset(
        request_meta(request, principal.actor), tenant_id, name, body.capabilities
    )
    return respond(Toolset(event.name, list(event.capabilities)))


@operation("The tenant's named toolsets, by name.", {200: ToolsetList})
async def list_toolsets(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant"]
    require_tenant(request, tenant_id)
    require(request, "tenant:read")
    toolsets = request.app[IDENTITY].toolsets
    return respond(
        ToolsetList(
            [
                Toolset(name, list(entries))
                for (tenant, name), entries in sorted(toolsets.items())
                if tenant == tenant_id
            ]
        )
    )


@operation("One named toolset of the tenant.", {200: Toolset})
async def get_toolset(request: web.Request) -> web.Response:
    tenant_id, name = request.match_info["tenant"], request.match_info["name"]
    require_tenant(request, tenant_id)
    require(request, "tenant:read")
    return respond(Toolset(name, list(request.app[USERS].toolset(tenant_id, name))))


@operation(
    "Delete a named toolset no live API key follows (409 CONFLICT, naming the keys, otherwise).", {204: NO_CONTENT}
)
async def delete_toolset(request: web.Request) -> web.Response:
    tenant_id, name = request.match_info["tenant"], request.match_info["name"]
    principal = require_tenant(request, tenant_id)
    require(request, "tenant:update")
    await request.app[USERS].delete_toolset(request_meta(request, principal.actor), tenant_id, name)
    return web.Response(status=204)


def add_toolset_routes(app: web.Application) -> None:
    app.router.add_get("/v1/tenants/{tenant}/toolsets", list_toolsets)
    app.router.add_get("/v1/tenants/{tenant}/toolsets/{name}", get_toolset)
    app.router.add_put("/v1/tenants/{tenant}/toolsets/{name}", put_toolset)
    app.router.add_delete("/v1/tenants/{tenant}/toolsets/{name}", delete_toolset)
