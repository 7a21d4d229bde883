"""``POST /mcp``: the Model Context Protocol over Streamable HTTP, and its OAuth resource metadata.

The SDK's HTTP transport (``StreamableHTTPSessionManager``) is an ASGI application; the gateway
is aiohttp. Rather than re-implement the transport — protocol-version routing, the 2026-07-28
single-exchange requests with their ``Mcp-Method``/``Mcp-Name`` header checks and
``server/discover``, the 2025-11-25 ``initialize`` handshake, SSE framing, the keep-alive pings,
``subscriptions/listen`` — this handler hands each request to it through a small ASGI bridge:
the scope is built from the aiohttp request, ``receive`` yields the body once, and ``send``
writes the aiohttp response (one body, or a stream). One request, the 2026-07-28 ``tools/call``
of a capability that does not stream, is answered on a hot path of its own (:mod:`.mcp_direct`)
when it is one the SDK would accept as it stands. The manager runs stateless: every request
stands alone, so any gateway process can serve any request and no session outlives a request.
Clients of 2025-11-25 still handshake (``initialize`` is answered), but the server has no
standing GET stream for them; 2026-07-28 clients hear of tool-list changes on
``subscriptions/listen``.

Authentication is the gateway's (``Authorization: Bearer <API key or access token>``, or
``X-API-Key``), done here rather than in the auth middleware so that a missing or refused
credential answers 401 with the ``WWW-Authenticate`` challenge MCP clients follow (RFC 6750,
RFC 9728 §5.1) to ``/.well-known/oauth-protected-resource``. The principal travels to the tool
handlers in the ASGI scope (:data:`.mcp_tools.PRINCIPAL_SCOPE_KEY`).

Hanging up cancels: the gateway's runner cancels this handler when the client goes, and with
it the SDK's task running the tool, which closes the call's stream (CANCEL at the module).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import msgspec
from aiohttp import web
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.subscriptions import ToolsListChanged
from multidict import CIMultiDict

from democratic_ai.contracts import ErrorCode

from .auth import credential_of
from .errors import ApiError, status_of
from .mcp_direct import answer_directly
from .mcp_tools import PRINCIPAL_SCOPE_KEY, McpTools, protocol_error
from .openapi import operation
from .state import GATE, INPUT_LIMITS, REGISTRY

__all__ = ["MCP_PATH", "RESOURCE_METADATA_PATH", "McpEndpoint", "add_mcp_routes"]

MCP_PATH = "/mcp"
RESOURCE_METADATA_PATH = "/.well-known/oauth-protected-resource"
LOGIN_PATH, REFRESH_PATH = "/v1/auth/login", "/v1/auth/refresh"
WATCH_SECONDS = 0.5  # how often the registry is checked for a changed tool list
_STOP_SECONDS = 5.0


class McpEndpoint:
    """The MCP server of one gateway process, and the task its SDK session manager runs in.

    The manager's task group must be entered and left by one task, which aiohttp's start-up and
    clean-up are not; so it lives in a task of its own, from :meth:`start` to :meth:`stop`.
    A second task tells ``subscriptions/listen`` streams when the registry's tool list changed.
    """

    def __init__(self, tools: McpTools) -> None:
        self.tools = tools
        self.manager = StreamableHTTPSessionManager(tools.server, stateless=True)
        self.stamp = tools.server.server_info_stamp  # the serverInfo of every 2026-07-28 result
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        started = asyncio.Event()
        self._tasks = [asyncio.create_task(self._serve(started)), asyncio.create_task(self._watch())]
        await started.wait()

    async def stop(self) -> None:
        self._stopping.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), _STOP_SECONDS)

    async def _serve(self, started: asyncio.Event) -> None:
        async with self.manager.run():
            started.set()
            await self._stopping.wait()

    async def _watch(self) -> None:
        seen = self.tools.signature()
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), WATCH_SECONDS)
            except TimeoutError:
                pass
            now = self.tools.signature()
            if now != seen:
                seen = now
                await self.tools.changes.publish(ToolsListChanged())


_ENDPOINT = web.AppKey("mcp_endpoint", McpEndpoint)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    endpoint = McpEndpoint(McpTools(app[GATE], app[REGISTRY]))
    await endpoint.start()
    app[_ENDPOINT] = endpoint
    yield
    await endpoint.stop()


def _origin(request: web.Request) -> str:
    return str(request.url.origin())


def _check_origin(request: web.Request) -> None:
    """FORBIDDEN for a browser's request from another site (its ``Origin`` names another host).

    The MCP transport asks servers to check ``Origin`` against DNS rebinding: a page that gets a
    browser to resolve its own name to this gateway would otherwise reach ``/mcp`` from inside.
    Desktop and command-line clients send no ``Origin``; a page of this gateway's own host is let
    through (its scheme may differ behind a TLS-terminating proxy, its host does not).
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if urlsplit(origin.strip()).netloc.lower() != request.host.lower():
        raise ApiError(
            ErrorCode.FORBIDDEN,
            "cross-origin requests to /mcp are refused: call it from an MCP client, or from a page of this gateway",
            {"origin": origin[:200]},
        )


def refusal(
    code: ErrorCode, message: str, details: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    """A refusal of the request itself, with its HTTP status, as the JSON-RPC error MCP clients
    show their users: the numbered code of :data:`.mcp_tools.PROTOCOL_CODES`, the stable code and
    its details in ``data`` — as a refused ``tools/call`` reads. The id is null: the refused
    request is not read (clients pair it with the request they sent)."""
    error = protocol_error(code, message, details)
    answer = McpAnswer("2.0", None, error={"code": error.code, "message": error.message, "data": error.data})
    return web.Response(
        body=msgspec.json.encode(answer), status=status_of(code), content_type="application/json", headers=headers
    )


def challenge(request: web.Request, refused: str = "") -> web.Response:
    """401 UNAUTHENTICATED with the Bearer challenge that names the resource metadata."""
    header = f'Bearer realm="democratic-ai", resource_metadata="{_origin(request)}{RESOURCE_METADATA_PATH}{MCP_PATH}"'
    if refused:
        header += f', error="invalid_token", error_description="{refused.replace(chr(34), chr(39))}"'
    message = refused or (
        f"a credential is required: 'Authorization: Bearer <API key, or an access token from POST {LOGIN_PATH}>'"
    )
    details = {"login": LOGIN_PATH, "refresh": REFRESH_PATH}
    return refusal(ErrorCode.UNAUTHENTICATED, message, details, headers={"WWW-Authenticate": header})


async def _body(request: web.Request) -> bytes:
    """The request body, up to the largest input any capability may take (the gate checks the
    called capability's own limit once the body names it)."""
    ceiling = request.app[INPUT_LIMITS].ceiling
    body = bytearray()
    while chunk := await request.content.readany():
        body.extend(chunk)
        if len(body) > ceiling:
            raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, "the request body is too large", {"max_bytes": ceiling})
    return bytes(body)


class _Exchange:
    """One aiohttp request as an ASGI ``(scope, receive, send)``, and the response it sent."""

    def __init__(self, request: web.Request, body: bytes, principal: object) -> None:
        self._request = request
        self._body: bytes | None = body
        self._over = asyncio.Event()
        self._start: dict[str, Any] | None = None
        self.response: web.StreamResponse | None = None
        client = request.transport.get_extra_info("peername") if request.transport else None
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.scheme,
            "path": request.path,
            "raw_path": request.raw_path.encode("latin-1"),
            "query_string": request.query_string.encode("latin-1"),
            "root_path": "",
            "headers": [(name.lower(), value) for name, value in request.raw_headers],
            "client": tuple(client[:2]) if client else None,
            "server": None,
            "state": {},
            PRINCIPAL_SCOPE_KEY: principal,
        }

    async def receive(self) -> dict[str, Any]:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self._over.wait()  # a client that hangs up cancels the whole handler instead
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self._start = message
            return
        if message["type"] != "http.response.body" or self._start is None:
            return
        body, more = message.get("body", b""), message.get("more_body", False)
        if self.response is None:
            headers = CIMultiDict(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in self._start.get("headers", ())
                if name.lower() != b"content-length"
            )
            if not more:  # one body: aiohttp sends it with its length
                self.response = web.Response(body=body, status=self._start["status"], headers=headers)
                return
            self.response = web.StreamResponse(status=self._start["status"], headers=headers)
            await self.response.prepare(self._request)
        if body:
            await self.response.write(body)
        if not more:
            await self.response.write_eof()

    def over(self) -> None:
        self._over.set()


class McpAnswer(msgspec.Struct):
    """A JSON-RPC 2.0 response or error (or, over SSE, a stream of messages ending in one)."""

    jsonrpc: str
    id: str | int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


@operation(
    "The Model Context Protocol (Streamable HTTP): every capability the caller may call, as a tool.",
    # A request the transport refuses (bad JSON-RPC, a header that disagrees with the body, an
    # unknown method) is a JSON-RPC error too, with 400 or 404.
    {
        200: McpAnswer,
        202: None,
        **dict.fromkeys((400, 401, 403, 404, 413, 415), McpAnswer),
    },
    body=dict[str, Any],
    other_content={
        "text/event-stream": {
            "type": "string",
            "description": "Progress notifications, then the JSON-RPC response, as Server-Sent Events.",
        }
    },
    description="JSON-RPC 2.0 per the MCP revisions 2026-07-28 (stateless requests, server/discover, the"
    " Mcp-Method/Mcp-Name headers) and 2025-11-25 (the initialize handshake). A refused request is a"
    " JSON-RPC error too, its data the stable code and details; a missing or refused credential is a"
    " 401 with a WWW-Authenticate challenge naming " + RESOURCE_METADATA_PATH + ".",
)
async def mcp(request: web.Request) -> web.StreamResponse:
    try:
        return await _answer(request)
    except ApiError as exc:
        if status_of(exc.code) >= 500:
            raise  # the error middleware logs it
        return refusal(exc.code, exc.message, exc.details)


async def _answer(request: web.Request) -> web.StreamResponse:
    _check_origin(request)
    credential = credential_of(request)
    if credential is None:
        return challenge(request)
    try:
        principal = request.app[GATE].authenticate(credential)
    except ApiError as exc:
        return challenge(request, exc.message)
    if request.content_type != "application/json":  # as every JSON route of the gateway answers it
        raise ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "send JSON-RPC with 'Content-Type: application/json'",
            {"content_type": request.content_type},
        )
    body, endpoint = await _body(request), request.app[_ENDPOINT]
    direct = await answer_directly(request, body, principal, endpoint.tools, endpoint.stamp)
    if direct is not None:
        return direct
    exchange = _Exchange(request, body, principal)
    try:
        await endpoint.manager.handle_request(exchange.scope, exchange.receive, exchange.send)
    finally:
        exchange.over()
    if exchange.response is None:
        raise ApiError(ErrorCode.INTERNAL, "the MCP transport sent no response")
    return exchange.response


class ResourceMetadata(msgspec.Struct):
    """OAuth 2.0 Protected Resource Metadata (RFC 9728) of ``/mcp``.

    The platform is not an OAuth authorization server (it lists none): a client sends an API key,
    or an access token from ``dai_login_endpoint`` (renewed at ``dai_refresh_endpoint``), as a
    Bearer token.
    """

    resource: str
    resource_name: str
    bearer_methods_supported: list[str]
    scopes_supported: list[str]
    resource_documentation: str
    dai_login_endpoint: str
    dai_refresh_endpoint: str


@operation(
    "OAuth protected-resource metadata (RFC 9728) of the MCP endpoint: how to authenticate to it.",
    {200: ResourceMetadata},
    public=True,
)
async def resource_metadata(request: web.Request) -> web.Response:
    origin = _origin(request)
    document = ResourceMetadata(
        resource=origin + MCP_PATH,
        resource_name="Democratic_AI",
        bearer_methods_supported=["header"],
        scopes_supported=["module:use"],
        resource_documentation=origin + "/openapi.json",
        dai_login_endpoint=origin + LOGIN_PATH,
        dai_refresh_endpoint=origin + REFRESH_PATH,
    )
    return web.Response(body=msgspec.json.encode(document), content_type="application/json")


def add_mcp_routes(app: web.Application) -> None:
    """``POST /mcp`` and its metadata (at the well-known path, and suffixed with the resource's path)."""
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_post(MCP_PATH, mcp)
    app.router.add_get(RESOURCE_METADATA_PATH, resource_metadata)
    app.router.add_get(RESOURCE_METADATA_PATH + MCP_PATH, resource_metadata)
