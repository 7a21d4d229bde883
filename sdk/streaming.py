"""Streaming capabilities, the module's side: chunks with progress, credit, and the end of a stream.

A capability written as an async generator streams: every value it yields is one STREAM_CHUNK,
sent to the caller's inbox and recorded on ``mcp.res.<tenant>.<capability>``. Yield plain data,
or a :class:`Chunk` to report progress (with or without data)::

    @capability("image.upscale", ...)
    async def upscale(self, image: str, scale: int = 2):
        yield Chunk(progress=0.1, message="decoded")
        ...
        yield Chunk({"image": png}, progress=1.0, message="done")

The data of each chunk is checked against the capability's output schema on its own; chunks with
progress alone carry no data and are not checked. When the generator ends, one more chunk marked
``final`` closes the stream: it carries no data, only what the call used (the handler's
``compute_ms``, and ``bytes_in`` / ``bytes_out``, the request's size and the sum of the payloads
sent, for metering), because whether a yielded value is the last is only known once the
generator says so — holding every chunk back until then would delay all progress by one step.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError

from democratic_ai.contracts import ErrorCode, MCPMessage, streaming, subjects, tracing
from democratic_ai.contracts.headers import MCP_BYTES_IN, MCP_BYTES_OUT, MCP_COMPUTE_MS

from .execution import Invocation

__all__ = ["Chunk", "ChunkSender", "CreditTimeout", "elapsed_ms", "last_data", "stream_answers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a streamed answer: its data, how far the call has come (0–1), or both."""

    data: Any = None
    progress: float | None = None
    message: str = ""

    def __post_init__(self) -> None:
        if self.progress is not None and not (math.isfinite(self.progress) and 0.0 <= self.progress <= 1.0):
            raise ValueError(f"progress must be a number from 0 to 1, not {self.progress!r}.")


class CreditTimeout(TimeoutError):
    """The caller took no chunk for a whole ttl: it is gone or stuck, so the stream stops."""


class ChunkSender:
    """Send one stream's messages to the caller's inbox and to the log, never beyond the caller's credit."""

    def __init__(
        self, nc: NATS, request: MCPMessage, inbox: str, window: int, *, source_module_id: str, credit_timeout: float
    ) -> None:
        self.request = request
        self.ended = False
        self._nc = nc
        self._inbox = inbox
        self._record = subjects.record_response(request.context.tenant_id, request.action)
        self._window = window
        self._granted = window  # chunks before this sequence may be sent
        self._credit = asyncio.Event()
        self._credit_timeout = credit_timeout
        self._source = source_module_id
        self._sequence = 0
        self._bytes_out = 0  # payload bytes sent so far

    def grant(self, consumed: int) -> None:
        """The caller has taken every chunk before sequence ``consumed``."""
        if consumed + self._window > self._granted:
            self._granted = consumed + self._window
            self._credit.set()

    async def send(self, payload: bytes, fraction: float | None = None, status: str = "") -> None:
        """Send the next chunk once the caller has room for it."""
        while self._sequence >= self._granted:
            self._credit.clear()
            try:
                async with asyncio.timeout(self._credit_timeout):
                    await self._credit.wait()
            except TimeoutError:
                raise CreditTimeout(f"the caller took no chunk within {self._credit_timeout:g} s") from None
        message = streaming.chunk(
            self.request, self._sequence, payload, source_module_id=self._source, fraction=fraction, status=status
        )
        self._sequence += 1
        self._bytes_out += len(payload)
        await self._publish(message)

    def final_chunk(self) -> MCPMessage:
        """The empty chunk marked ``final`` that closes a stream which ended well."""
        return streaming.chunk(self.request, self._sequence, b"", source_module_id=self._source, final=True)

    async def end(self, message: MCPMessage, compute_ms: float) -> None:
        """Send the stream's last message (final chunk, RESPONSE or ERROR); it needs no credit.

        It carries what the whole call used, so the call is metered from this one message.
        """
        if self.ended:
            return
        self.ended = True
        headers = message.headers
        headers[MCP_COMPUTE_MS] = f"{compute_ms:.3f}"
        headers[MCP_BYTES_IN] = str(len(self.request.payload))
        headers[MCP_BYTES_OUT] = str(self._bytes_out + len(message.payload))
        if tracing.tracing_enabled():
            tracing.inject(headers)  # the module's span, when it ends the call: the usage continues from it
        try:
            await self._publish(message)
        except ConnectionClosedError:
            # The module is shutting down and its owner closed the connection: nobody can hear it.
            log.info("call %s ended after the connection closed; its end was not sent", self.request.correlation_id)

    async def _publish(self, message: MCPMessage) -> None:
        data = message.SerializeToString()
        await self._nc.publish(self._inbox, data)
        await self._nc.publish(self._record, data)


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()`` reading)."""
    return (time.perf_counter() - started) * 1000.0


async def stream_answers(
    invocation: Invocation, stream: AsyncGenerator[Any, None], sender: ChunkSender, started: float
) -> None:
    """Run a streaming handler to its end, sending each chunk; then send the final chunk or the ERROR.

    A cancel of the task running this propagates: into the handler if it is running, else the
    generator is closed where it waits at its ``yield``. The caller sends the CANCELLED answer.
    """
    try:
        async for item in stream:
            chunk = item if isinstance(item, Chunk) else Chunk(item)
            payload = b""
            if chunk.data is not None:
                payload, invalid = invocation.output(chunk.data)
                if invalid is not None:
                    await sender.end(invalid, elapsed_ms(started))
                    return
            await sender.send(payload, chunk.progress, chunk.message)
    except CreditTimeout as exc:
        await sender.end(invocation.error(ErrorCode.TIMEOUT, str(exc)), elapsed_ms(started))
        return
    except ConnectionClosedError:
        log.info("stopped streaming call %s: the connection closed", invocation.request.correlation_id)
        return
    except Exception as exc:
        # A handler's bug must not take the module down: answer, log, keep serving.
        await sender.end(invocation.failure(exc), elapsed_ms(started))
        return
    finally:
        await stream.aclose()
    await sender.end(sender.final_chunk(), elapsed_ms(started))


async def last_data(stream: AsyncGenerator[Any, None]) -> Any:
    """Run a streaming handler for a caller that did not ask to stream: its result is the last data."""
    last = None
    try:
        async for item in stream:
            data = item.data if isinstance(item, Chunk) else item
            if data is not None:
                last = data
    finally:
        await stream.aclose()
    return last
