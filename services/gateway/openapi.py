"""The gateway's OpenAPI 3.1 document, built from the routes of the running app.

Each handler carries an :class:`Operation` (set by :func:`operation`, which does nothing else):
its summary, the msgspec type its body is decoded as, the msgspec type(s) it answers with, its
query parameters. :func:`openapi_document` walks ``app.router`` and turns those types into JSON
Schema with ``msgspec.json.schema_components`` — the very types ``read_json`` decodes and the
handlers encode, so the document cannot drift from what is sent. A route whose handler carries
no ``Operation`` is an error, not a gap in the document.

Every 4xx/5xx is the one error shape of :mod:`.errors` (``ErrorBody``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from democratic_ai.contracts.headers import HTTP_API_KEY

from .errors import ErrorBody

__all__ = [
    "NO_CONTENT",
    "OPENAPI_PATH",
    "Operation",
    "Query",
    "add_openapi_route",
    "openapi_document",
    "operation",
    "operation_of",
]

H = TypeVar("H", bound=Callable[..., Any])
NO_CONTENT = None  # a response type of None: the status carries no body (204)
_ATTRIBUTE = "__openapi_operation__"
OPENAPI_PATH = "/openapi.json"
_PARAM = re.compile(r"\{([^}/]+)\}")
_REF = "#/components/schemas/{name}"


@dataclass(frozen=True)
class Query:
    """One query parameter (every one is optional and a string on the wire)."""

    name: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Operation:
    """What the document says about one handler.

    ``responses`` maps a success status to the type of its JSON body (``None``: no body).
    ``other_content`` adds media types a success may also answer with (e.g. ``text/html``),
    described by a schema of their own. ``public``: no credential needed.
    """

    summary: str
    responses: Mapping[int, Any]
    body: Any = None
    body_required: bool = True
    query: tuple[Query, ...] = ()
    public: bool = False
    other_content: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""


def operation(summary: str, responses: Mapping[int, Any], **kwargs: Any) -> Callable[[H], H]:
    """Attach an :class:`Operation` to a handler (and nothing else)."""
    spec = Operation(summary, responses, **kwargs)

    def mark(handler: H) -> H:
        setattr(handler, _ATTRIBUTE, spec)
        return handler

    return mark


def operation_of(handler: Any) -> Operation | None:
    return getattr(handler, _ATTRIBUTE, None)


def _routes(app: web.Application) -> list[tuple[str, str, Operation]]:
    found = []
    for route in app.router.routes():
        if route.method == "HEAD":  # aiohttp adds one beside every GET
            continue
        spec = operation_of(route.handler)
        if spec is None:
            raise ValueError(
                f"{route.method} {route.resource.canonical} has no OpenAPI operation: decorate"
                f" {route.handler.__qualname__} with @operation"
            )
        found.append((route.method.lower(), route.resource.canonical, spec))
    return found


def _operation_id(method: str, path: str) -> str:
    """``post /v1/tenants/{tenant}/users`` → ``post_v1_tenants_tenant_users``."""
    return "_".join([method, *re.findall(r"[A-Za-z0-9]+", path)])


def openapi_document(
    app: web.Application, *, title: str = "Democratic_AI gateway", version: str = "0.1.0"
) -> dict[str, Any]:
    routes = _routes(app)
    types: list[Any] = [ErrorBody]
    for _, _, spec in routes:
        if spec.body is not None:
            types.append(spec.body)
        types.extend(t for t in spec.responses.values() if t is not None)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip(map(id, types), schemas, strict=True))
    error = {
        "description": "An error in the platform's one shape.",
        "content": {"application/json": {"schema": schema_of[id(ErrorBody)]}},
    }

    paths: dict[str, dict[str, Any]] = {}
    for method, path, spec in routes:
        op: dict[str, Any] = {"summary": spec.summary, "operationId": _operation_id(method, path)}
        if spec.description:
            op["description"] = spec.description
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(path)
        ]
        parameters += [
            {"name": q.name, "in": "query", "required": False, "description": q.description, "schema": dict(q.schema)}
            for q in spec.query
        ]
        if parameters:
            op["parameters"] = parameters
        if spec.body is not None:
            op["requestBody"] = {
                "required": spec.body_required,
                "content": {"application/json": {"schema": schema_of[id(spec.body)]}},
            }
        responses: dict[str, Any] = {}
        for status, body_type in spec.responses.items():
            answer: dict[str, Any] = {"description": _REASONS.get(status, "Success.")}
            if body_type is not None:
                answer["content"] = {"application/json": {"schema": schema_of[id(body_type)]}}
            if body_type is not None or (spec.other_content and status < 300 and status != 204):
                for media_type, schema in spec.other_content.items():
                    answer.setdefault("content", {})[media_type] = {"schema": dict(schema)}
            responses[str(status)] = answer
        responses["default"] = error
        op["responses"] = responses
        if spec.public:
            op["security"] = []
        paths.setdefault(path, {})[method] = op

    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": 'Every route of the gateway. Errors are {"error": {"code", "message",'
            ' "details"}} with a stable code.',
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": HTTP_API_KEY},
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from /v1/auth/login, or an API key.",
                },
            },
        },
        "security": [{"apiKey": []}, {"bearer": []}],
    }


_REASONS = {
    200: "OK.",
    201: "Created.",
    202: "Accepted; no body.",
    204: "Done; no body.",
    101: "Switching to the WebSocket protocol.",
    400: "Refused; the body says why.",
    404: "Not found; the body says what.",
}
_DOCUMENT = web.AppKey("openapi_document", dict)  # {"json": bytes} once built


@operation("This document: the OpenAPI 3.1 description of every route.", {200: dict[str, Any]}, public=True)
async def openapi_json(request: web.Request) -> web.Response:
    cache = request.app[_DOCUMENT]
    if "json" not in cache:  # built once: the routes do not change while the app runs
        cache["json"] = msgspec.json.encode(openapi_document(request.app))
    return web.Response(body=cache["json"], content_type="application/json")


def add_openapi_route(app: web.Application) -> None:
    app[_DOCUMENT] = {}
    app.router.add_get(OPENAPI_PATH, openapi_json)
