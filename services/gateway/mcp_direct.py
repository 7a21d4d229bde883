"""The hot path of ``/mcp``: a 2026-07-28 ``tools/call`` of a capability that does not stream.

The SDK's generic dispatch (its validation ladder in pydantic, an anyio task group and memory
streams per request to decide between JSON and SSE, result models dumped and re-validated)
costs about three times what the whole invoke path does, which would make a tool call far
slower than the same invoke. This module answers the one request that matters for throughput
directly, with msgspec, and hands everything else to the SDK:

- it takes only a request the SDK's ladder would accept as it stands — the routing headers
  once each and equal to the body (``Mcp-Protocol-Version`` a 2026-07-28-era version and the
  ``_meta`` envelope's, ``Mcp-Method: tools/call``, ``Mcp-Name`` the tool), the envelope's
  client capabilities an object, no ``Mcp-Param-*`` header and a tool whose schema declares
  none, JSON accepted — of a tool that does not stream (a name nobody registered goes to the
  gate as on the SDK path, which answers it CAPABILITY_NOT_FOUND);
- any other request, and any body that does not decode as exactly that, goes to the SDK,
  which answers it (or refuses it with the error the specification names);
- the call itself is :meth:`McpTools.call <.mcp_tools.McpTools.call>`, the same as the SDK
  path's: the call gate decides, routes, records and meters. The answer is the SDK's shape —
  ``content`` (the text form), ``structuredContent`` (the module's bytes, spliced in
  unparsed), ``resultType`` and the ``serverInfo`` stamp — and a tool or protocol error is
  serialised with the SDK's own models.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from aiohttp import web
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PARAM_HEADER_PREFIX,
    MCP_PROTOCOL_VERSION_HEADER,
)
from mcp_types import SERVER_INFO_META_KEY, JSONRPCError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from democratic_ai.contracts import MessageType
from democratic_ai.services.identity import Principal

from .mcp_tools import McpTools, failed, structured

__all__ = ["answer_directly"]

_PARAM_PREFIX = MCP_PARAM_HEADER_PREFIX.lower()
_ROUTING = (MCP_PROTOCOL_VERSION_HEADER, MCP_METHOD_HEADER, MCP_NAME_HEADER)


class _ClientInfo(msgspec.Struct):
    name: str
    version: str


class _Envelope(msgspec.Struct):
    protocol_version: str = msgspec.field(name="io.modelcontextprotocol/protocolVersion")
    client_capabilities: dict[str, Any] = msgspec.field(name="io.modelcontextprotocol/clientCapabilities")
    client_info: _ClientInfo | None = msgspec.field(name="io.modelcontextprotocol/clientInfo", default=None)


class _Params(msgspec.Struct):
    name: str
    meta: _Envelope = msgspec.field(name="_meta")
    arguments: msgspec.Raw = msgspec.Raw(b"null")  # the capability's input, passed on as sent


class _ToolCall(msgspec.Struct):
    jsonrpc: Literal["2.0"]
    id: int | str
    method: Literal["tools/call"]
    params: _Params


_decode_call = msgspec.json.Decoder(_ToolCall).decode
_encode = msgspec.json.Encoder().encode


def _direct_call(request: web.Request, body: bytes) -> _ToolCall | None:
    """The call, if this request is one the hot path may answer (see the module docstring)."""
    headers = request.headers
    version = headers.get(MCP_PROTOCOL_VERSION_HEADER)
    if version not in MODERN_PROTOCOL_VERSIONS or headers.get(MCP_METHOD_HEADER) != "tools/call":
        return None
    if "application/json" not in headers.get("Accept", ""):
        return None
    if any(len(headers.getall(name, ())) != 1 for name in _ROUTING):
        return None
    if any(name.lower().startswith(_PARAM_PREFIX) for name in headers):
        return None
    try:
        call = _decode_call(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None
    if call.params.meta.protocol_version != version or headers[MCP_NAME_HEADER] != call.params.name:
        return None
    if not bytes(call.params.arguments).lstrip().startswith((b"{", b"null")):
        return None
    return call


def _json(document: bytes, status: int = 200) -> web.Response:
    return web.Response(body=document, status=status, content_type="application/json")


async def answer_directly(
    request: web.Request, body: bytes, principal: Principal, tools: McpTools, stamp: dict[str, Any]
) -> web.Response | None:
    """The answer to ``body`` when the hot path takes it; ``None`` leaves it to the SDK.
    ``stamp`` is the server's ``serverInfo`` for the result's ``_meta``."""
    call = _direct_call(request, body)
    if call is None:
        return None
    spec = tools.specs().get(call.params.name)
    if spec is not None and (spec.streaming or b"x-mcp-header" in _encode(spec.input_schema)):
        return None  # the SDK streams progress, and checks Mcp-Param-* headers against the schema
    arguments = bytes(call.params.arguments)
    if arguments.lstrip().startswith(b"null"):
        arguments = b"{}"
    try:
        answer = await tools.call(principal, call.params.name, arguments)
        if answer.type == MessageType.ERROR:
            result = failed(answer).model_dump(mode="json", by_alias=True, exclude_none=True)
            return _json(
                _encode(
                    {
                        "jsonrpc": "2.0",
                        "id": call.id,
                        "result": {**result, "resultType": "complete", "_meta": {SERVER_INFO_META_KEY: stamp}},
                    }
                )
            )
    except MCPError as exc:
        error = JSONRPCError(jsonrpc="2.0", id=call.id, error=exc.error)
        return _json(
            error.model_dump_json(by_alias=True, exclude_none=True).encode(),
            ERROR_CODE_HTTP_STATUS.get(exc.error.code, 200),
        )
    value = msgspec.Raw(answer.payload or b"null")
    content = structured(spec, value)
    text = _encode(content).decode()
    return _json(
        _encode(
            {
                "jsonrpc": "2.0",
                "id": call.id,
                "result": {
                    "content": [{"type": "text", "text": text}],
                    "structuredContent": content,
                    "isError": False,
                    "resultType": "complete",
                    "_meta": {SERVER_INFO_META_KEY: stamp},
                },
            }
        )
    )
