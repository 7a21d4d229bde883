"""``POST /v1/capabilities/{capability}/invoke`` and ``GET /v1/capabilities``.

The invoke endpoint answers with one JSON document, or — when the client sends
``Accept: text/event-stream`` — streams the call as Server-Sent Events (:mod:`.sse`).

An invocation goes through the call gate (:mod:`.gate`): admitted by the rate limits, routed,
recorded and metered when it ends — its answer, a stream's last message, or the router's
``CANCELLED`` when the client hangs up first. It is answered with ``RateLimit-Policy`` and
``RateLimit`` headers; a refusal is a 429 with ``Retry-After``.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web

from democratic_ai.contracts import ErrorCode, MCPMessage, MessageType
from democratic_ai.contracts.headers import HTTP_CALL_ID
from democratic_ai.services.identity import Principal

from .auth import PRINCIPAL, require
from .bodies import check_json, respond
from .errors import ApiError, error_response
from .gate import CallGate, Refused, checked_capability, checked_module
from .input_limits import read_input
from .openapi import Query, operation
from .ratelimit_headers import limit_header, policy_header
from .sse import stream_call
from .state import GATE, INPUT_LIMITS, PRESENCE, REGISTRY
from .wire import MAX_TTL_SECONDS, http_error

__all__ = ["invoke", "list_capabilities"]

_FreeForm = Annotated[
    Any,
    msgspec.Meta(
        description="Free-form JSON: the capability's own, as its module declares"
        " (see input_schema/output_schema in GET /v1/capabilities)."
    ),
]


class InvokeResult(msgspec.Struct):
    call_id: str
    module_id: str  # the module that answered
    result: _FreeForm  # the capability's output, passed through as the module sent it


class CapabilityEntry(msgspec.Struct):
    action: str
    description: str
    input_schema: Annotated[Any, msgspec.Meta(description="The JSON Schema a call's payload must match.")]
    output_schema: Annotated[Any, msgspec.Meta(description="The JSON Schema of the capability's result.")]
    streaming: bool
    module_id: str
    module_name: str
    module_version: str
    instances: int  # live instances serving it now
    max_input_bytes: int  # the largest input (body) the gateway takes for it: as declared, up to its ceiling


class CapabilityList(msgspec.Struct):
    capabilities: list[CapabilityEntry]


_INVOKE_QUERY = (
    Query("module", "Call this module's instance of the capability (default: any module serving it)."),
    Query("priority", "0-9, higher first (default 5).", {"type": "string", "pattern": "^[0-9]$"}),
    Query(
        "ttl",
        f"Seconds the call may take, 1-{MAX_TTL_SECONDS} (default 30).",
        {"type": "string", "pattern": "^[0-9]{1,5}$"},
    ),
)


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(
            ErrorCode.BAD_REQUEST,
            f"query parameter {name!r} must be an integer from {low} to {high}",
            {"parameter": name, "value": raw},
        )
    return value


@operation(
    "Invoke a capability with a JSON payload (at most its max_input_bytes: 413 otherwise).",
    {200: InvokeResult},
    body=_FreeForm,
    query=_INVOKE_QUERY,
    other_content={
        "text/event-stream": {
            "type": "string",
            "description": "With 'Accept: text/event-stream':"
            " the call as Server-Sent Events (progress, chunks, the result).",
        }
    },
    description="A refusal by a rate limit is a 429 with Retry-After; every answer carries X-Call-Id and the"
    " RateLimit-Policy / RateLimit headers of the caller's limits.",
)
async def invoke(request: web.Request) -> web.StreamResponse:
    principal = request[PRINCIPAL]
    gate = request.app[GATE]
    call = await _call_of(request, gate, principal)
    try:
        if "text/event-stream" in request.headers.get("Accept", ""):
            stream = await gate.stream(principal, call)
            return await stream_call(request, stream, _limit_headers(gate, principal, call))
        answer = await gate.call(principal, call)
    except Refused as refused:
        return _refusal(gate, principal, call, refused)
    headers = _limit_headers(gate, principal, call)
    if answer.type == MessageType.ERROR:
        response = http_error(answer, call.id)
        response.headers.update(headers)
        return response
    return respond(InvokeResult(call.id, answer.source_module_id, msgspec.Raw(answer.payload)), headers=headers)


async def _call_of(request: web.Request, gate: CallGate, principal: Principal) -> MCPMessage:
    """The call an invoke asks for, once its name, parameters and body are checked."""
    capability = checked_capability(request.match_info["capability"])
    gate.authorize(principal, capability)  # before the body is read
    target = checked_module(request.query.get("module", ""))
    priority = _int_param(request, "priority", 5, 0, 9)
    ttl = _int_param(request, "ttl", 30, 1, MAX_TTL_SECONDS)
    if request.content_type != "application/json":
        raise ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "send the payload as JSON with 'Content-Type: application/json'",
            {"content_type": request.content_type},
        )
    body = await read_input(request, request.app[INPUT_LIMITS], capability, target)
    if not body.strip():
        raise ApiError(ErrorCode.BAD_REQUEST, "the request body is empty; send the payload as a JSON object")
    check_json(body)
    return gate.request(principal, capability, body, module=target, priority=priority, ttl=ttl)


def _limit_headers(gate: CallGate, principal: Principal, call: MCPMessage) -> dict[str, str]:
    """``X-Call-Id`` and the ``RateLimit-Policy`` / ``RateLimit`` headers of the caller's limits."""
    headers = {HTTP_CALL_ID: call.id}
    policies = gate.policies(principal)
    if policies:
        headers["RateLimit-Policy"] = policy_header(policies)
        headers["RateLimit"] = limit_header(policies)
    return headers


def _refusal(gate: CallGate, principal: Principal, call: MCPMessage, refused: Refused) -> web.Response:
    """429 with ``Retry-After`` and the state of every policy."""
    policies = gate.policies(principal)
    decision = refused.decision
    headers = {
        HTTP_CALL_ID: call.id,
        "Retry-After": str(refused.details["retry_after"]),
        "RateLimit-Policy": policy_header(policies),
        "RateLimit": limit_header(policies, decision.refused_by, decision.retry_after),
    }
    return error_response(ErrorCode.RATE_LIMITED, refused.message, refused.details, status=429, headers=headers)


@operation(
    "Every registered capability the caller may call (for a key with a toolset: those in it), its schemas"
    " and how many live instances serve it.",
    {200: CapabilityList},
)
async def list_capabilities(request: web.Request) -> web.Response:
    """From the gateway's registry index — the view its router and ``tools/list`` route by — so a
    capability is listed exactly when it can be called here."""
    principal = require(request, "module:read")
    manifests = request.app[REGISTRY].manifests
    live = request.app[PRESENCE].instances()
    limits = request.app[INPUT_LIMITS]
    capabilities = [
        CapabilityEntry(
            action=spec.action,
            description=spec.description,
            input_schema=spec.input_schema,
            output_schema=spec.output_schema,
            streaming=spec.streaming,
            module_id=manifest.module_id,
            module_name=manifest.name,
            module_version=manifest.version,
            instances=sum(
                1 for beat in live if beat.module_id == manifest.module_id and spec.action in beat.capabilities
            ),
            max_input_bytes=limits.declared(spec.max_input_bytes),
        )
        for manifest in manifests.values()
        for spec in manifest.capabilities
        if principal.may_call(spec.action)  # a key with a toolset sees only that
    ]
    capabilities.sort(key=lambda entry: (entry.action, entry.module_id))
    return respond(CapabilityList(capabilities))
