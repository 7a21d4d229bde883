"""The caller's end of a streamed call: an inbox of bounded size, credits, cancel, idle timeout.

The protocol is drawn in :mod:`democratic_ai.contracts.streaming`. :class:`CallStream` is what
:meth:`Router.open_stream <democratic_ai.hub.Router.open_stream>` returns; the gateway's SSE and
WebSocket handlers and the SDK's ``Client.stream`` all read it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from democratic_ai.contracts import ErrorCode, MCPMessage, MessageType, decode, streaming, subjects
from democratic_ai.contracts.headers import MCP_CONTROL

from .presence import PresenceIndex, died

__all__ = ["CallStream"]

log = logging.getLogger(__name__)

# The router's own error answers: (request, code, text, details) → the recorded ERROR message.
Fail = Callable[[MCPMessage, ErrorCode, str, dict[str, Any]], Awaitable[MCPMessage]]
# Told the message that ended a call, once: how the gateway meters streamed calls.
OnEnd = Callable[[MCPMessage], None]

CANCEL_WAIT_SECONDS = (
    3.0  # how long closing a running stream waits for the module to confirm the cancel (a loaded host answers late)
)

_TERMINAL = (MessageType.RESPONSE, MessageType.ERROR)


class _Signal(Enum):
    """What wakes a reader besides a message."""

    OVERFLOW = "the module sent more than the window"
    DIED = "the instance running the call missed its heartbeats"


class CallStream:
    """The answers to one streamed call, in order: its chunks, then exactly one terminal message.

    Iterating yields every STREAM_CHUNK and then the end — the chunk marked ``final``, a RESPONSE
    (a capability that does not stream answers once), or an ERROR — and stops. Asking for the next
    message is what grants the module credit, so a consumer that stops reading stops the module
    after ``window`` chunks: at most that many (plus the terminal message) ever wait here.

    ``refusal`` is the ERROR when no module took the call (nobody serves it, or the ttl passed
    first); iterating a refused stream yields just that error. Call :meth:`close` (or use
    ``async with``) when done: an unfinished stream is then cancelled at the module.

    ``end`` is the message that ended the call, and ``on_end`` is told it exactly once: the
    terminal message, the refusal, the router's own error when it gave up on the stream, or —
    for a stream closed while running — the module's confirmation of the cancel (an ERROR
    CANCELLED carrying the compute time spent until then). A module that does not confirm
    within ``cancel_wait`` seconds is answered CANCELLED by the router instead.

    With ``presence``, the instance named in ACCEPTED is watched: once it has missed three
    heartbeats, the stream ends with ``MODULE_UNAVAILABLE`` at once, rather than at its ttl.
    """

    def __init__(
        self,
        nc: NATS,
        request: MCPMessage,
        *,
        source_id: str,
        window: int,
        idle_timeout: float,
        fail: Fail,
        on_end: OnEnd | None = None,
        cancel_wait: float = CANCEL_WAIT_SECONDS,
        presence: PresenceIndex | None = None,
    ) -> None:
        if not 1 <= window <= streaming.MAX_WINDOW:
            raise ValueError(f"window must be between 1 and {streaming.MAX_WINDOW} chunks.")
        self.request = request
        self.refusal: MCPMessage | None = None
        self._nc = nc
        self._source_id = source_id
        self._window = window
        self._idle_timeout = idle_timeout
        self._fail = fail
        self._on_end = on_end
        self._cancel_wait = cancel_wait
        self.end: MCPMessage | None = None
        self._inbox = nc.new_inbox()
        self._subscription: Subscription | None = None
        # Credit bounds what the module sends; the terminal message and one stray message more
        # may come on top. Anything beyond that is a module ignoring the protocol.
        self._limit = window + 2
        self._queue: asyncio.Queue[Msg | _Signal] = asyncio.Queue()
        self._overflowed = False
        self._control = ""
        self._holder = ("", "")  # (module id, instance id) of the instance running the call
        self._presence = presence
        self._unwatch: Callable[[], None] | None = None
        self._first: MCPMessage | None = None  # answered at once instead of ACCEPTED
        self._next_sequence = 0
        self._acknowledged = 0
        self._finished = False

    @property
    def call_id(self) -> str:
        return self.request.correlation_id

    @property
    def inbox(self) -> str:
        return self._inbox

    async def listen(self) -> None:
        """Subscribe the inbox; before the call is sent, so no chunk can arrive unheard."""
        self._subscription = await self._nc.subscribe(self._inbox, cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        if self._overflowed:
            return
        if self._queue.qsize() >= self._limit:
            self._overflowed = True
            self._queue.put_nowait(_Signal.OVERFLOW)  # wake the reader, which ends the stream
            return
        self._queue.put_nowait(msg)

    async def refuse(self, error: MCPMessage) -> None:
        """No module took the call: the stream is just ``error``."""
        self.refusal = error
        self._first = error
        self._ended(error)
        await self._unsubscribe()

    async def start(self, answer: MCPMessage) -> None:
        """Take the module's answer to the call: ACCEPTED with its control subject, or a final answer."""
        if answer.type in _TERMINAL:
            self._first = answer
            self._ended(answer)
            await self._unsubscribe()
            return
        control = answer.headers.get(MCP_CONTROL, "")
        # A module names the subject we publish to: accept nothing but a control subject.
        named = subjects.instance_of_control(control) if answer.type == MessageType.ACCEPTED else None
        if named is not None:
            self._control, self._holder = control, named
            if self._presence is not None:
                self._unwatch = self._presence.watch(*named, lambda: self._queue.put_nowait(_Signal.DIED))
            return
        log.error(
            "module %s answered a streamed call with %s, control %r",
            answer.source_module_id,
            MessageType.Name(answer.type),
            control,
        )
        error = await self._fail(self.request, ErrorCode.INTERNAL, "the module's answer is not one of a stream", {})
        await self.refuse(error)

    def __aiter__(self) -> CallStream:
        return self

    async def __anext__(self) -> MCPMessage:
        if self._finished:
            raise StopAsyncIteration
        if self._first is not None:
            self._finished = True
            return self._first
        await self._grant()
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
                    msg = await self._queue.get()
            except TimeoutError:
                return await self._abort(
                    ErrorCode.TIMEOUT,
                    f"no message of the stream within its ttl of {self._idle_timeout:g} s",
                    {"ttl": self._idle_timeout},
                )
            if msg is _Signal.OVERFLOW:
                return await self._abort(
                    ErrorCode.INTERNAL, "the module sent more than the stream's window", {"window": self._window}
                )
            if msg is _Signal.DIED:
                return await self._abort(*died(*self._holder, self.request.action))
            try:
                message = decode(msg.data)
            except DecodeError:
                return await self._abort(ErrorCode.INTERNAL, "a message of the stream could not be read", {})
            if message.type == MessageType.STREAM_CHUNK:
                if message.sequence != self._next_sequence:
                    return await self._abort(
                        ErrorCode.INTERNAL,
                        "chunks of the stream were lost",
                        {"expected": self._next_sequence, "received": message.sequence},
                    )
                self._next_sequence += 1
                if message.final:
                    self._ended(message)
                    await self._finish()
                return message
            if message.type in _TERMINAL:
                self._ended(message)
                await self._finish()
                return message
            log.warning("ignored a %s message in the stream of call %s", MessageType.Name(message.type), self.call_id)

    async def _grant(self) -> None:
        """Credit the module with the chunks taken so far, in batches of half a window."""
        taken = self._next_sequence
        if self._control and taken - self._acknowledged >= max(1, self._window // 2):
            self._acknowledged = taken
            await self._nc.publish(self._control, streaming.stream_ack(self.request, taken).SerializeToString())

    def _ended(self, message: MCPMessage) -> None:
        if self.end is None:
            self.end = message
            if self._on_end is not None:
                self._on_end(message)

    async def _abort(self, code: ErrorCode, text: str, details: dict[str, Any]) -> MCPMessage:
        error = await self._fail(self.request, code, text, details)
        self._ended(error)  # the client is told this error, whatever the module answers the cancel with
        await self.cancel()
        return error

    async def cancel(self) -> None:
        """Stop the call: the module cancels its handler; the CANCEL is recorded with the request.

        Waits up to ``cancel_wait`` for the module's last message, so that ``end`` says what
        the call used until it stopped.
        """
        if self._finished:
            return
        self._finished = True
        if self._control:
            message = streaming.cancel(self.request, source_module_id=self._source_id).SerializeToString()
            await self._nc.publish(self._control, message)
            record = subjects.record_request(self.request.context.tenant_id, self.request.action)
            await self._nc.publish(record, message)
            if self.end is None:
                confirmation = await self._last_message()
                self._ended(
                    confirmation
                    or await self._fail(
                        self.request,
                        ErrorCode.CANCELLED,
                        f"the call was cancelled; its module did not confirm within {self._cancel_wait:g} s",
                        {},
                    )
                )
        await self._unsubscribe()

    async def _last_message(self) -> MCPMessage | None:
        """The module's terminal message, skipping the chunks still on their way; None if it takes too long."""
        try:
            async with asyncio.timeout(self._cancel_wait):
                while not isinstance(msg := await self._queue.get(), _Signal):
                    try:
                        message = decode(msg.data)
                    except DecodeError:
                        continue
                    if message.type in _TERMINAL or (message.type == MessageType.STREAM_CHUNK and message.final):
                        return message
        except TimeoutError:
            pass
        return None

    async def close(self) -> None:
        """Cancel the call if it is still running, and stop listening."""
        await self.cancel()
        await self._unsubscribe()

    async def _finish(self) -> None:
        self._finished = True
        await self._unsubscribe()

    async def _unsubscribe(self) -> None:
        if self._unwatch is not None:
            self._unwatch, unwatch = None, self._unwatch
            unwatch()
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            if not self._nc.is_closed:
                await subscription.unsubscribe()

    async def __aenter__(self) -> CallStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
