"""``GET /v1/ws``: MCP messages as JSON over one WebSocket, many calls at once, for interactive clients.

Authentication happens on connect. Send the API key as for every endpoint (``X-API-Key`` or
``Authorization: Bearer``); a browser, which cannot set headers on a WebSocket, sends instead
``{"type": "AUTH", "api_key": "..."}`` as its first message, within ``ws_auth_timeout`` seconds.
Nothing else is accepted before it. The key is never taken from the URL: query strings end up
in access logs, proxy logs and browser history.

Client → gateway::

    {"type": "REQUEST", "correlation_id": "c1", "action": "image.upscale", "payload": {...},
     "priority": 5, "ttl": 30, "target_module_id": ""}
    {"type": "CANCEL", "correlation_id": "c1"}

Gateway → client: ``READY`` (authenticated, with ``tenant_id``), then for each call
``ACCEPTED`` (with the platform's ``call_id``), its STREAM_CHUNK messages, and exactly one end: the
chunk with ``"final": true``, a ``RESPONSE``, or an ``ERROR`` (``CANCELLED`` after a CANCEL).
Every call goes through the call gate (:mod:`.gate`), as over HTTP: admitted by the same rate
limits — a refused one gets only an ``ERROR`` ``RATE_LIMITED`` whose details name the ``policy``
and the seconds to wait (``retry_after``) —, routed, recorded and metered when it ends.
Every frame names the client's ``correlation_id``, which must be unique among its calls in flight.
A frame that cannot be read is answered with an ``ERROR`` (``BAD_REQUEST``); a call whose input is
over its capability's limit (:mod:`.input_limits`: as declared, else ``max_body_bytes``, never over
the ceiling), or a frame over the ceiling and room for its envelope, with an ``ERROR``
(``PAYLOAD_TOO_LARGE``, ``details.max_bytes`` the limit); either names the frame's
``correlation_id`` when one can be found in it and is not that of a call in flight (it is then in
the error's ``details``), and the socket and its other calls go on. Two faults do end the socket,
as RFC 6455 asks: a frame larger than ``ws_read_limit_bytes`` (1009: reading it would mean
holding it in memory) and a text frame that is not UTF-8 (1007).
Closing the socket cancels every call still running.

The credential is re-checked where it is used (:mod:`.credential_watch`): before each call, and
whenever the identity log changes it. Once the key is revoked or expires, the access token
expires or its session ends (logout, reuse of its refresh token, a password change), the user is
deactivated or given another role, or the tenant is suspended, the socket refuses the next call
and is closed at once, idle or not: an ``ERROR`` ``UNAUTHENTICATED`` saying why, then close code
1008 (policy violation). Its calls in flight are cancelled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from democratic_ai.contracts import ErrorCode, MCPMessage, MessageType
from democratic_ai.services.identity import Principal, Unauthenticated

from .auth import PRINCIPAL
from .credential_watch import Watched
from .errors import ApiError
from .gate import Refused
from .input_limits import ENVELOPE_BYTES
from .openapi import operation
from .state import CONFIG, CREDENTIALS, GATE, INPUT_LIMITS
from .wire import (
    Auth,
    Cancel,
    Request,
    WireError,
    WireMessage,
    correlation_id_of,
    decode_client_message,
    encode,
    to_wire,
)

__all__ = ["websocket"]

_TERMINAL = (MessageType.RESPONSE, MessageType.ERROR)


@operation(
    "The WebSocket transport: MCP messages as JSON frames (see the README); not plain HTTP.",
    {101: None},
    description="Upgrade with the usual WebSocket handshake. The credential goes in the X-API-Key or Authorization"
    ' header, or in the first frame ({"type": "AUTH", "api_key": ...}). Each frame is one call, progress'
    " message or answer; an oversized or malformed frame gets an ERROR frame for that call.",
)
async def websocket(request: web.Request) -> web.WebSocketResponse:
    config = request.app[CONFIG]
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=config.ws_read_limit_bytes)
    await ws.prepare(request)
    principal = request.get(PRINCIPAL) or await _authenticate(ws, request)
    if principal is None:
        return ws
    session = _Session(ws, principal, request.app, config.ws_max_in_flight)
    try:
        await session.send(WireMessage(type="READY", tenant_id=principal.tenant_id))
        reason = await session.serve()
        if reason is not None:
            session.cancel_calls()
            await _refuse(ws, reason)
    finally:
        await session.close()
    return ws


async def _authenticate(ws: web.WebSocketResponse, request: web.Request) -> Principal | None:
    """The principal of a connection that sent no key in its headers: its first message must be AUTH."""
    timeout = request.app[CONFIG].ws_auth_timeout
    try:
        async with asyncio.timeout(timeout):
            frame = await ws.receive()
    except TimeoutError:
        return await _refuse(ws, f"send {{'type': 'AUTH', 'api_key': ...}} within {timeout:g} s of connecting")
    first = None
    if frame.type == WSMsgType.TEXT:
        try:
            first = decode_client_message(frame.data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            first = None
    if not isinstance(first, Auth):
        return await _refuse(ws, "the first message must be {'type': 'AUTH', 'api_key': ...}")
    try:
        return request.app[GATE].authenticate(first.api_key)
    except ApiError as exc:
        return await _refuse(ws, exc.message)


async def _refuse(ws: web.WebSocketResponse, text: str) -> None:
    """Send an ``ERROR`` ``UNAUTHENTICATED`` and close the socket with 1008."""
    if ws.closed:
        return
    error = WireError(ErrorCode.UNAUTHENTICATED.value, text)
    try:
        await ws.send_frame(encode(WireMessage(type="ERROR", error=error)), WSMsgType.TEXT)
    except ConnectionResetError:
        pass  # the client is gone already; the close below only tidies up
    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"unauthenticated")


def _utf8_longer_than(text: str, limit: int) -> bool:
    """Whether ``text`` takes more than ``limit`` bytes as UTF-8 (a character takes one to four)."""
    if len(text) > limit:
        return True
    return len(text) * 4 > limit and len(text.encode()) > limit


@dataclass(slots=True)
class _Call:
    """One call of a socket; ``ended`` once the client has been sent (or is being sent) its last frame."""

    call_id: str
    task: asyncio.Task[None] | None = None
    ended: bool = False


class _Session:
    """The calls of one authenticated socket, by the client's correlation id."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        principal: Principal,
        app: web.Application,
        max_in_flight: int,
    ) -> None:
        self._ws = ws
        self._principal = principal
        self._gate = app[GATE]
        self._max_in_flight = max_in_flight
        self._limits = app[INPUT_LIMITS]
        # No call's input is over the ceiling: a frame over it and its envelope's room is not read.
        self._max_frame_bytes = self._limits.ceiling + ENVELOPE_BYTES
        self._calls: dict[str, _Call] = {}
        # Ended, with why, once the credential no longer holds: by the watch, or by a call's check.
        self._revoked: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._credential: Watched = app[CREDENTIALS].watch(principal, self._revoke)

    def _revoke(self, reason: str) -> None:
        if not self._revoked.done():
            self._revoked.set_result(reason)

    async def serve(self) -> str | None:
        """Read the client's frames until it closes the socket (``None``) or the credential no
        longer holds (why). The reading runs in a task of its own so that a revocation can stop
        it: closing an aiohttp socket while another task reads it would skip the close handshake."""
        reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait((reader, self._revoked), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.wait((reader,))
        if not reader.cancelled() and (exc := reader.exception()) is not None:
            raise exc
        return self._revoked.result() if self._revoked.done() else None

    async def _read(self) -> None:
        async for frame in self._ws:
            if frame.type == WSMsgType.TEXT:
                await self.handle(frame.data)
            elif frame.type == WSMsgType.BINARY:
                await self.error("", ErrorCode.BAD_REQUEST, "send MCP messages as JSON text frames")
            if self._revoked.done():
                return

    async def handle(self, data: str) -> None:
        if _utf8_longer_than(data, self._max_frame_bytes):
            ceiling = self._limits.ceiling
            await self._refuse_frame(
                data,
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"a message may be at most {self._max_frame_bytes} bytes, a call's input at most {ceiling}",
                {"max_bytes": ceiling},
            )
            return
        try:
            message = decode_client_message(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await self._refuse_frame(data, ErrorCode.BAD_REQUEST, f"unreadable message: {exc}", {})
            return
        if isinstance(message, Cancel):
            await self._cancel(message.correlation_id)
        elif isinstance(message, Auth):
            await self.error("", ErrorCode.BAD_REQUEST, "this connection is authenticated already")
        else:
            await self._start(message)

    async def _refuse_frame(self, data: str, code: ErrorCode, text: str, details: dict[str, object]) -> None:
        """The ERROR for a frame that was not read, under its correlation id unless that id is
        a call in flight: the client would take the ERROR for that call's end."""
        correlation_id = correlation_id_of(data)
        if correlation_id in self._calls:
            details, correlation_id = {**details, "correlation_id": correlation_id}, ""
        await self.error(correlation_id, code, text, details)

    async def _cancel(self, correlation_id: str) -> None:
        call = self._calls.get(correlation_id)
        if call is None or call.ended or call.task is None:
            await self.error(correlation_id, ErrorCode.BAD_REQUEST, "no call in flight has this id")
            return
        # Answered here, not by the call's task: a task cancelled before its first step runs no code.
        call.ended = True
        call.task.cancel()
        await self.error(correlation_id, ErrorCode.CANCELLED, "the call was cancelled", call_id=call.call_id)

    async def _start(self, message: Request) -> None:
        correlation_id = message.correlation_id
        try:
            self._credential.current()
        except Unauthenticated as exc:
            await self.error(correlation_id, ErrorCode.UNAUTHENTICATED, exc.message)
            self._credential.end(exc.message)
            return
        if correlation_id in self._calls:
            await self.error(correlation_id, ErrorCode.BAD_REQUEST, "a call with this correlation_id is in flight")
            return
        if len(self._calls) >= self._max_in_flight:
            await self.error(
                correlation_id,
                ErrorCode.RATE_LIMITED,
                f"at most {self._max_in_flight} calls may be in flight",
                {"max_in_flight": self._max_in_flight},
            )
            return
        try:
            request = self._request(message)
        except ApiError as exc:
            await self.error(correlation_id, exc.code, exc.message, exc.details)
            return
        call = _Call(request.id)
        call.task = asyncio.create_task(self._run(correlation_id, call, request))
        self._calls[correlation_id] = call
        call.task.add_done_callback(lambda _: self._calls.pop(correlation_id, None))

    def _request(self, message: Request) -> MCPMessage:
        return self._gate.request(
            self._principal,
            message.action,
            bytes(message.payload),
            module=message.target_module_id,
            priority=message.priority,
            ttl=message.ttl,
        )

    async def _run(self, correlation_id: str, call: _Call, request: MCPMessage) -> None:
        stream = None
        try:
            try:
                stream = await self._gate.stream(self._principal, request, transport="websocket")
            except Refused as refused:
                call.ended = True
                await self.send(to_wire(refused.answer, correlation_id))
                return
            except ApiError as exc:
                call.ended = True
                await self.error(correlation_id, exc.code, exc.message, exc.details, call_id=call.call_id)
                return
            if stream.refusal is None:
                await self.send(WireMessage(type="ACCEPTED", correlation_id=correlation_id, call_id=call.call_id))
            async for message in stream:
                if message.type in _TERMINAL or message.final:
                    call.ended = True  # from here a CANCEL would come too late to mean anything
                await self.send(to_wire(message, correlation_id))
        except asyncio.CancelledError:
            pass  # by the client's CANCEL, which answered it, or by the socket closing
        finally:
            if stream is not None:
                await stream.close()

    async def send(self, message: WireMessage) -> None:
        """Send a frame; waits while the client's socket is full, which is what paces its streams."""
        if self._ws.closed:
            return
        try:
            # msgspec's JSON is UTF-8 already: send it as a text frame without a str round trip.
            await self._ws.send_frame(encode(message), WSMsgType.TEXT)
        except ConnectionResetError:
            pass  # the socket is closing; its calls are being cancelled

    async def error(
        self,
        correlation_id: str,
        code: ErrorCode,
        text: str,
        details: dict[str, object] | None = None,
        call_id: str = "",
    ) -> None:
        error = WireError(code.value, text, dict(details or {}))
        await self.send(WireMessage(type="ERROR", correlation_id=correlation_id, call_id=call_id, error=error))

    def cancel_calls(self) -> None:
        """Cancel every call still running; a call that has ended already is left to finish."""
        for call in self._calls.values():
            if call.task is not None and not call.ended:
                call.task.cancel()

    async def close(self) -> None:
        """Stop watching the credential, cancel every call still running (each sends CANCEL to
        its module) and wait for them.

        A call that has ended already is left to finish: it may be waiting for its module to
        confirm a cancel, which is what meters it. Should this handler itself be cancelled (the
        client vanished), the calls still finish: ``asyncio.wait`` does not cancel what it waits for.
        """
        self._credential.stop()
        tasks = [call.task for call in self._calls.values() if call.task is not None]
        self.cancel_calls()
        if tasks:
            await asyncio.wait(tasks)
