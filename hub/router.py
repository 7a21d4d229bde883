"""The call path: decide a call's subject, record it, carry it, and turn failures into errors.

The router is a library, not a process: the gateway and the SDK client run it in-process, so
a call costs one NATS request and no extra hop. Routing by capability publishes on
``mcp.call.<tenant>.<capability>``, where every replica of every module serving it shares one
queue group; routing to a module publishes on ``mcp.direct.<module>.<tenant>.<capability>``.

The router enforces a call's ttl: a request whose deadline (its timestamp plus ttl, on this
process's clock, which made it) has passed is answered TIMEOUT without being sent, and no answer
is awaited beyond the deadline. The module learns the time left, not the deadline: the header
``Dai-Remaining-Ms`` (:mod:`democratic_ai.contracts.deadlines`), so clocks need not agree. A streamed
call (:meth:`Router.open_stream`) is opened with the same NATS request, so "no module" is still
answered at once; its chunks then flow as :mod:`democratic_ai.contracts.streaming` describes.

A router given a :class:`~.presence.PresenceIndex` also answers at once when the module instance
running a call dies: it asks (``MCP_ACCEPT_HELD``) that a call its module holds for longer than
``ACCEPT_AFTER`` be acknowledged with ACCEPTED naming the instance (a streamed call always is),
and once that instance has missed three heartbeats the call is answered ``MODULE_UNAVAILABLE``
instead of waiting out its ttl.
A call answered faster costs nothing extra: the router's own inboxes (:mod:`.replies`) take the
answer exactly as nats-py's ``request`` would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from democratic_ai.contracts import (
    DEFAULT_TTL_SECONDS,
    ErrorCode,
    MCPMessage,
    deadlines,
    decode,
    error_reply,
    streaming,
    subjects,
    tracing,
)
from democratic_ai.contracts.headers import (
    DAI_REMAINING_MS,
    DAI_STREAM,
    DAI_WINDOW,
    MCP_ACCEPT_HELD,
    MCP_BYTES_IN,
    MCP_CONTROL,
)
from democratic_ai.contracts.messages import ACCEPTED

from .presence import PresenceIndex, died
from .replies import Interrupted, Pending, Replies
from .streaming import CANCEL_WAIT_SECONDS, CallStream, OnEnd

__all__ = ["Router"]

log = logging.getLogger(__name__)

_UNREADABLE = "the module's answer could not be read"


class Router:
    """Route MCP requests over NATS and always answer with a RESPONSE or an ERROR message.

    ``is_registered(capability)`` tells a capability that no module ever registered (an error
    of the caller: ``CAPABILITY_NOT_FOUND``) from one whose modules are all gone right now
    (``CAPABILITY_UNAVAILABLE``). It is consulted only after NATS answered "no responders".
    ``cancel_wait`` is how long closing a running stream waits for its module to confirm.
    ``record_failures=False`` leaves the router's own errors out of the log: a module's connection
    may record answers of its own capabilities only, and its nested call's failure is part of
    the answer of the call it serves, which is recorded.
    ``presence`` lets the router tell that the instance running a call died (without it, such a
    call waits out its ttl).
    """

    def __init__(
        self,
        nc: NATS,
        *,
        source_id: str,
        is_registered: Callable[[str], bool] | None = None,
        cancel_wait: float = CANCEL_WAIT_SECONDS,
        record_failures: bool = True,
        presence: PresenceIndex | None = None,
    ) -> None:
        self._nc = nc
        self._presence = presence
        self._replies = Replies(nc)
        self._record_failures = record_failures
        self._cancel_wait = cancel_wait
        self._source_id = source_id
        self._is_registered = is_registered
        self._tasks: set[asyncio.Future[None]] = set()  # streams abandoned while opening, being cancelled

    async def call(self, request: MCPMessage, *, on_end: OnEnd | None = None) -> MCPMessage:
        """Carry ``request`` to a module and return its answer, or the routing error.

        ``on_end`` is told the message that ended the call, once, as for a stream: the answer
        returned, or — when the caller is cancelled while it waits (a client hanging up) — the
        router's ERROR ``CANCELLED``, recorded like its other errors. The module's own answer,
        should it come later, is then in the log only (it carries the compute time the call used).
        """
        if tracing.tracing_enabled():
            with tracing.tracer.start_as_current_span(f"hub route {request.action}"):
                return await self._call(request, on_end)
        if on_end is None:  # the common case, one coroutine fewer
            return await self._carry(request)
        return await self._call(request, on_end)

    async def _call(self, request: MCPMessage, on_end: OnEnd | None) -> MCPMessage:
        if on_end is None:
            return await self._carry(request)
        try:
            answer = await self._carry(request)
        except asyncio.CancelledError:
            on_end(await self._fail(request, ErrorCode.CANCELLED, "the caller left before the answer came", {}))
            raise
        on_end(answer)
        return answer

    async def _carry(self, request: MCPMessage) -> MCPMessage:
        deadline = deadlines.made_here(request)
        if deadline is not None and deadline <= time.monotonic():
            return await self._expired(request)
        if self._presence is not None:
            request.headers[MCP_ACCEPT_HELD] = "1"  # we watch the instance that says it holds the call
        data = request.SerializeToString()
        tenant, action = request.context.tenant_id, request.action
        trace = tracing.inject({}) if tracing.tracing_enabled() else None
        nc = self._nc

        # The record goes first on the same connection, so the log holds the request before
        # any module can answer it.
        await nc.publish(subjects.record_request(tenant, action), data, headers=trace)
        replies = self._replies
        pending = replies.pending() if replies.ready else await replies.expect()
        try:
            target = request.target_module_id
            subject = subjects.direct(target, tenant, action) if target else subjects.call(tenant, action)
            await nc.publish(subject, data, reply=pending.inbox, headers=_with_remaining(trace, deadline))
            answer = await self._next(request, pending, _remaining(deadline))
            if answer.type != ACCEPTED:
                return answer
            return await self._held(request, pending, deadline, answer)
        finally:
            pending.close()

    async def _held(
        self, request: MCPMessage, pending: Pending, deadline: float | None, answer: MCPMessage
    ) -> MCPMessage:
        """The answer after the module's ACCEPTED (it holds the call), unless the instance dies."""
        named = subjects.instance_of_control(answer.headers.get(MCP_CONTROL, ""))
        unwatch = self._presence.watch(*named, pending.interrupt) if named and self._presence else _nothing
        try:
            while answer.type == ACCEPTED:
                answer = await self._next(request, pending, _remaining(deadline))
        except Interrupted:
            module_id, instance_id = named or ("", "")  # only a watched call is interrupted
            answer = await self._fail(request, *died(module_id, instance_id, request.action))
        finally:
            unwatch()
        return answer

    async def _next(self, request: MCPMessage, pending: Pending, timeout: float) -> MCPMessage:
        """The call's next message, or the router's error when none comes in time."""
        try:
            msg = await pending.next(timeout)
        except NoRespondersError:
            return await self._fail(request, *self._no_responders(request))
        except TimeoutError:
            return await self._timed_out(request)
        try:
            return decode(msg.data)
        except DecodeError:
            log.error("unreadable answer to %s (call %s)", request.action, request.correlation_id)
            return await self._fail(request, ErrorCode.INTERNAL, _UNREADABLE, {})

    async def open_stream(
        self, request: MCPMessage, *, window: int = streaming.DEFAULT_WINDOW, on_end: OnEnd | None = None
    ) -> CallStream:
        """Send ``request`` as a streamed call and return its stream once a module took it (or none did).

        The returned stream's ``refusal`` is set when no module took the call. Each wait for the
        next message is bounded by the request's ttl, so a long call that keeps reporting may
        outlive its ttl, but a silent one may not. ``window`` is how many chunks may wait unread.
        ``on_end`` is told the message that ended the call, once — also when the caller left
        while the stream was being opened and the stream is closed in the background.
        """
        if tracing.tracing_enabled():
            with tracing.tracer.start_as_current_span(f"hub stream {request.action}"):
                return await self._open_stream(request, window, on_end)
        return await self._open_stream(request, window, on_end)

    async def _open_stream(self, request: MCPMessage, window: int, on_end: OnEnd | None) -> CallStream:
        stream = CallStream(
            self._nc,
            request,
            source_id=self._source_id,
            window=window,
            idle_timeout=float(request.ttl or DEFAULT_TTL_SECONDS),
            fail=self._fail,
            on_end=on_end,
            cancel_wait=self._cancel_wait,
            presence=self._presence,
        )
        deadline = deadlines.made_here(request)
        if deadline is not None and deadline <= time.monotonic():
            await stream.refuse(await self._expired(request))
            return stream
        await stream.listen()
        data = request.SerializeToString()
        trace = tracing.inject({}) if tracing.tracing_enabled() else None
        await self._nc.publish(subjects.record_request(request.context.tenant_id, request.action), data, headers=trace)
        headers = {**(_with_remaining(trace, deadline) or {}), DAI_STREAM: stream.inbox, DAI_WINDOW: str(window)}
        opening = asyncio.ensure_future(
            self._nc.request(self._subject(request), data, timeout=_remaining(deadline), headers=headers)
        )
        try:
            # Shielded: a caller that gives up now (a client hanging up) must still learn where the
            # module runs the call, or it could not cancel it there.
            answer = await asyncio.shield(opening)
        except NoRespondersError:
            await stream.refuse(await self._fail(request, *self._no_responders(request)))
        except TimeoutError:
            await stream.refuse(await self._timed_out(request))
        except asyncio.CancelledError:
            self._background(self._abandon(stream, opening))
            raise
        else:
            await self._start(stream, answer.data)
        return stream

    async def _start(self, stream: CallStream, data: bytes) -> None:
        try:
            await stream.start(decode(data))
        except DecodeError:
            request = stream.request
            log.error("unreadable answer to streamed %s (call %s)", request.action, request.correlation_id)
            await stream.refuse(await self._fail(request, ErrorCode.INTERNAL, _UNREADABLE, {}))

    async def _abandon(self, stream: CallStream, opening: asyncio.Future[Msg]) -> None:
        """Cancel at the module a streamed call whose caller left while it was being opened."""
        try:
            answer = await opening
        except (NoRespondersError, TimeoutError):
            await stream.close()
            return
        await self._start(stream, answer.data)
        await stream.close()

    def _background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _subject(request: MCPMessage) -> str:
        if request.target_module_id:
            return subjects.direct(request.target_module_id, request.context.tenant_id, request.action)
        return subjects.call(request.context.tenant_id, request.action)

    async def _expired(self, request: MCPMessage) -> MCPMessage:
        """A request whose deadline passed before it was sent: never sent, answered TIMEOUT."""
        return await self._fail(
            request,
            ErrorCode.TIMEOUT,
            f"the ttl of {request.action!r} passed before it was sent",
            {"ttl": request.ttl},
        )

    async def _timed_out(self, request: MCPMessage) -> MCPMessage:
        ttl = float(request.ttl or DEFAULT_TTL_SECONDS)
        return await self._fail(
            request, ErrorCode.TIMEOUT, f"no answer to {request.action!r} within its ttl of {ttl:g} s", {"ttl": ttl}
        )

    def _no_responders(self, request: MCPMessage) -> tuple[ErrorCode, str, dict[str, str]]:
        action = request.action
        if request.target_module_id:
            return (
                ErrorCode.MODULE_NOT_FOUND,
                f"no instance of module {request.target_module_id!r} serves {action!r}",
                {"module_id": request.target_module_id, "capability": action},
            )
        if self._is_registered is not None and not self._is_registered(action):
            return ErrorCode.CAPABILITY_NOT_FOUND, f"no module offers {action!r}", {"capability": action}
        return (
            ErrorCode.CAPABILITY_UNAVAILABLE,
            f"no module serving {action!r} is running",
            {"capability": action},
        )

    async def _fail(self, request: MCPMessage, code: ErrorCode, text: str, details: dict[str, object]) -> MCPMessage:
        """Answer with an error of the router's own and record it like a module's answer.

        It carries the request's size, as a module's answer does, so the failed call is
        metered the same from the answer or from its record."""
        error = error_reply(request, code, text, source_module_id=self._source_id, details=details)
        error.headers[MCP_BYTES_IN] = str(len(request.payload))
        if self._record_failures:
            await self._nc.publish(
                subjects.record_response(request.context.tenant_id, request.action), error.SerializeToString()
            )
        return error


def _nothing() -> None:
    pass


def _remaining(deadline: float | None) -> float:
    """Seconds until ``deadline`` (monotonic); the platform's default ttl when there is none."""
    if deadline is None:
        return float(DEFAULT_TTL_SECONDS)
    return deadline - time.monotonic()


def _with_remaining(headers: dict[str, str] | None, deadline: float | None) -> dict[str, str] | None:
    """``headers`` with the time left added, set just before publishing (none without a deadline);
    None when there is nothing to send, so the message goes without a header block."""
    if deadline is None:
        return headers
    if headers is None:
        return {DAI_REMAINING_MS: deadlines.remaining_header(deadline)}
    headers[DAI_REMAINING_MS] = deadlines.remaining_header(deadline)
    return headers
