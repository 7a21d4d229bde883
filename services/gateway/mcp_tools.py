"""Every capability as an MCP tool: ``tools/list`` from the registry, ``tools/call`` through the gate.

The MCP server is the official SDK's low-level :class:`mcp.server.lowlevel.Server` with two
handlers; the HTTP side (:mod:`.mcp_http`) hands it each request with the caller's principal in
the ASGI scope. What maps where:

- a tool is a registered capability, by its name (capability names are valid tool names), with
  its description and input schema; listed in name order, only those the caller may call (the
  gate's ``may_call``: the permission, and the key's toolset);
- a tool's result is the module's answer as ``structuredContent`` plus its JSON text. An object
  output schema is the tool's ``outputSchema`` as declared; any other output is wrapped as
  ``{"result": …}``, and a streaming capability's chunks as ``{"chunks": […]}`` (MCP results
  are objects, and clients validate them against the schema);
- a streaming capability reports a ``notifications/progress`` per chunk; the call's end carries
  every chunk. Cancelling the handler (the client closed the response stream, or sent
  ``notifications/cancelled``) closes the call's stream, which cancels it at the module;
- an error of the call itself — the module failed, the input broke the schema, timeout, no
  module serving it — is a tool error (``isError``: the model can read it and try again);
- a refusal by the platform — no permission, rate limited, bad name, input too large, unknown
  tool — is a JSON-RPC error whose ``data`` holds the stable ``code`` and its ``details``
  (``retry_after`` for RATE_LIMITED), with the integer code of :data:`PROTOCOL_CODES`.

The gate does every check, admission, routing, recording and metering: nothing here decides
whether a call may run.
"""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as types
import msgspec
from mcp.server.caching import CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.exceptions import MCPError

from democratic_ai.contracts import ErrorCode, MCPMessage, MessageType, PlatformError, error_details
from democratic_ai.contracts.registry_events import CapabilitySpec
from democratic_ai.hub import RegistryIndex
from democratic_ai.services.identity import Principal

from .gate import CALL_PERMISSION, CallGate

__all__ = [
    "PRINCIPAL_SCOPE_KEY",
    "PROTOCOL_CODES",
    "TOOLS_TTL_MS",
    "McpTools",
    "failed",
    "protocol_error",
    "structured",
    "tool_of",
]

PRINCIPAL_SCOPE_KEY = "dai.principal"  # where the HTTP side puts the caller, in the ASGI scope
TRANSPORT = "mcp"  # the way in, as the gate's metrics name it
TOOLS_TTL_MS = 5_000  # how long a client may reuse a tools/list (per credential: "private")
EXPLANATION_META_KEY = "democratic-ai/explanation"  # why a tools/list is empty

# JSON-RPC codes of the platform's refusals, in the range JSON-RPC leaves to servers; the
# stable ErrorCode is in the error's data.
PROTOCOL_CODES: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHENTICATED: -32001,
    ErrorCode.FORBIDDEN: -32003,
    ErrorCode.PAYLOAD_TOO_LARGE: -32013,
    ErrorCode.RATE_LIMITED: -32029,
    ErrorCode.NOT_READY: -32053,
    ErrorCode.BAD_REQUEST: types.INVALID_PARAMS,
    ErrorCode.CAPABILITY_NOT_FOUND: types.INVALID_PARAMS,  # the spec's "unknown tool"
}
_OTHER_REFUSAL = -32000

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def protocol_error(code: ErrorCode | str, message: str, details: dict[str, Any]) -> MCPError:
    """The JSON-RPC error for a platform refusal with ``code``."""
    number = PROTOCOL_CODES.get(ErrorCode(code), _OTHER_REFUSAL) if code in ErrorCode.__members__ else _OTHER_REFUSAL
    return MCPError(number, message, {"code": str(code), "details": details})


def _object_schema(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "object"


def tool_of(spec: CapabilitySpec) -> types.Tool:
    """The MCP tool of a capability (see the module docstring for the schemas)."""
    input_schema = spec.input_schema if _object_schema(spec.input_schema) else {"type": "object", **spec.input_schema}
    if spec.streaming:
        output = {
            "type": "object",
            "properties": {"chunks": {"type": "array", "items": spec.output_schema}},
            "required": ["chunks"],
        }
    elif _object_schema(spec.output_schema):
        output = spec.output_schema
    else:
        output = {"type": "object", "properties": {"result": spec.output_schema}, "required": ["result"]}
    return types.Tool(
        name=spec.action, description=spec.description or None, input_schema=input_schema, output_schema=output
    )


def structured(spec: CapabilitySpec | None, value: Any) -> Any:
    """A module's answer as the object its tool's output schema describes."""
    if spec is not None and not spec.streaming and _object_schema(spec.output_schema):
        return value
    return {"result": value}


def _result(structured: Any) -> types.CallToolResult:
    text = _encode(structured).decode()
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=structured)


def failed(answer: MCPMessage) -> types.CallToolResult:
    """A tool error for an ERROR answer — or a protocol error, for an unknown tool."""
    code, details = answer.error.code, error_details(answer)
    if code == ErrorCode.CAPABILITY_NOT_FOUND:
        raise protocol_error(code, f"unknown tool: {answer.error.message}", details)
    document = {"error": {"code": code, "message": answer.error.message, "details": details}}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=_encode(document).decode())], is_error=True
    )


class McpTools:
    """The MCP server of one gateway: its handlers, and the bus that tells listeners the tool list changed."""

    def __init__(self, gate: CallGate, registry: RegistryIndex) -> None:
        self._gate = gate
        self._registry = registry
        self._specs: dict[str, CapabilitySpec] = {}
        self._specs_at = -1  # the registry's sequence ``_specs`` was built at
        self.changes = InMemorySubscriptionBus()
        self.server: Server[Any] = Server(
            "democratic-ai",
            version="0.1.0",
            instructions="Every capability of the Democratic_AI platform that your credential may call, as a tool."
            " Calls are metered and billed like any other call of your tenant.",
            cache_hints={"tools/list": CacheHint(ttl_ms=TOOLS_TTL_MS, scope="private")},
            get_tool_input_schema=self._input_schema,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_subscriptions_listen=ListenHandler(self.changes),
        )
        # The gate traces a call already; the SDK's own span per message would only add cost.
        self.server.middleware = []

    def specs(self) -> dict[str, CapabilitySpec]:
        """Every registered capability by name; where several modules offer one, the spec of the
        first module id, so the answer does not depend on the order they registered in. Built
        again only when the registry has applied another event."""
        if self._specs_at != self._registry.last_sequence or not self._specs:
            found: dict[str, CapabilitySpec] = {}
            for module_id in sorted(self._registry.manifests):
                for spec in self._registry.manifests[module_id].capabilities:
                    found.setdefault(spec.action, spec)
            self._specs, self._specs_at = found, self._registry.last_sequence
        return self._specs

    def signature(self) -> tuple[tuple[str, str], ...]:
        """What the tool list is made of (module ids and manifest digests): a change means a new list."""
        return tuple(sorted(self._registry.digests.items()))

    def tools(self, principal: Principal) -> list[types.Tool]:
        """The tools ``principal`` may call, in name order."""
        specs = self.specs()
        return [tool_of(specs[name]) for name in sorted(specs) if self._gate.may_call(principal, name)]

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        spec = self.specs().get(name)
        return None if spec is None else tool_of(spec).input_schema

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        principal = _principal(ctx)
        if not principal.can(CALL_PERMISSION):
            raise protocol_error(
                ErrorCode.FORBIDDEN,
                f"this credential may not call tools: it needs the permission {CALL_PERMISSION}",
                {"needed": [CALL_PERMISSION]},
            )
        tools = self.tools(principal)
        if tools:
            return types.ListToolsResult(tools=tools)
        if not self._registry.manifests:
            why = "no module has registered a capability yet"
        elif principal.toolset:
            why = (
                f"this API key may call only its toolset ({', '.join(sorted(principal.toolset))}), and no module"
                " serving one of those is registered"
            )
        else:
            why = "none of the registered capabilities is one this credential may call"
        return types.ListToolsResult(tools=[], meta={EXPLANATION_META_KEY: why})

    async def call(self, principal: Principal, name: str, payload: bytes) -> MCPMessage:
        """The answer to a (not streamed) call of tool ``name``: the RESPONSE or ERROR message;
        a platform refusal raises the protocol error (:func:`protocol_error`)."""
        try:
            return await self._gate.call(principal, self._gate.request(principal, name, payload), transport=TRANSPORT)
        except PlatformError as exc:
            raise protocol_error(exc.code, exc.message, exc.details) from None

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        principal = _principal(ctx)
        spec = self.specs().get(params.name)
        payload = _encode(params.arguments or {})
        if spec is not None and spec.streaming:
            try:
                request = self._gate.request(principal, params.name, payload)
                return await self._streamed(ctx, principal, request)
            except PlatformError as exc:
                raise protocol_error(exc.code, exc.message, exc.details) from None
        answer = await self.call(principal, params.name, payload)
        if answer.type == MessageType.ERROR:
            return failed(answer)
        return _result(structured(spec, _decode(answer.payload) if answer.payload else None))

    async def _streamed(
        self, ctx: ServerRequestContext[Any], principal: Principal, request: MCPMessage
    ) -> types.CallToolResult:
        stream = await self._gate.stream(principal, request, transport=TRANSPORT)
        chunks: list[Any] = []
        try:
            async for message in stream:
                if message.type == MessageType.ERROR:
                    return failed(message)
                if message.payload:
                    chunks.append(_decode(message.payload))
                if message.payload or message.HasField("progress"):
                    note = message.progress.message if message.HasField("progress") else ""
                    await ctx.session.report_progress(len(chunks), None, note or None)
        finally:
            # Shielded: a cancelled handler must still tell the module, and wait for its word.
            with anyio.CancelScope(shield=True):
                await stream.close()
        return _result({"chunks": chunks})


def _principal(ctx: ServerRequestContext[Any]) -> Principal:
    """The caller the HTTP side authenticated for this request."""
    if ctx.request is None or PRINCIPAL_SCOPE_KEY not in ctx.request.scope:
        raise protocol_error(ErrorCode.UNAUTHENTICATED, "a credential is required", {})
    return ctx.request.scope[PRINCIPAL_SCOPE_KEY]
