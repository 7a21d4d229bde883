"""Reading a window of the log: one stream, an optional subject filter, an inclusive range of sequences.

Rebuilds, verifications and ``dai replay`` read through :class:`LogReader`. It uses an ephemeral
pull consumer that acknowledges nothing (``AckPolicy.NONE``: the server keeps no pending state
per message) and forgets itself when idle (``inactive_threshold``), so an interrupted reader
leaves nothing behind. The window's end is fixed when reading starts, so a read terminates
even while producers keep appending; memory stays bounded by ``batch`` times a small prefetch
depth whatever the stream's size.

Times map to sequences with :func:`sequence_at`: JetStream stamps every message when it stores
it, and those stamps grow with the sequence, so "the events up to instant T" is a sequence window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

__all__ = ["LogRange", "LogReader", "sequence_at", "stream_last_sequence"]

_IDLE_SECONDS = 30.0  # an abandoned reader's consumer disappears after this long
_PREFETCH = 2  # batches fetched ahead of the one being processed


@dataclass(frozen=True, slots=True)
class LogRange:
    """Which events to read: ``first_seq`` … ``last_seq`` (inclusive) of ``stream`` matching ``filter_subject``.

    ``last_seq=None`` means the stream's last sequence at the moment reading starts.
    """

    stream: str
    filter_subject: str | None = None
    first_seq: int = 1
    last_seq: int | None = None

    def __post_init__(self) -> None:
        if self.first_seq < 1:
            raise ValueError("first_seq must be 1 or more: stream sequences start at 1.")
        if self.last_seq is not None and self.last_seq < 0:
            raise ValueError("last_seq must not be negative.")


async def stream_last_sequence(js: JetStreamContext, stream: str) -> int:
    """The stream's last sequence; raises ``nats.js.errors.NotFoundError`` for an unknown stream."""
    return (await js.stream_info(stream)).state.last_seq


def _nanosecond_timestamp(when: datetime, *, plus_one_ns: bool) -> str:
    """RFC 3339 with nanoseconds, which JetStream parses exactly (Python keeps microseconds)."""
    utc = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond:06d}{'001' if plus_one_ns else '000'}Z"


async def sequence_at(js: JetStreamContext, stream: str, when: datetime, *, after: bool = False) -> int:
    """The first sequence stored at or after ``when`` (strictly after it with ``after=True``).

    Returns the stream's last sequence + 1 when no such message exists yet. The server answers
    from its index: a consumer created with ``DeliverPolicy.BY_START_TIME`` reports the
    sequence it would start at without delivering anything.
    """
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=_nanosecond_timestamp(when, plus_one_ns=after),  # type: ignore[arg-type]  # str passes through
        ack_policy=AckPolicy.NONE,
        inactive_threshold=_IDLE_SECONDS,
        mem_storage=True,
    )
    info = await js.add_consumer(stream, config)
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(stream, info.name)
    return info.delivered.stream_seq + 1


class LogReader:
    """An open window of the log: ``async with LogReader(js, window) as reader: async for batch in reader``.

    The next batches are fetched while the caller processes the current one (JetStream and
    the caller's work overlap); at most ``_PREFETCH`` batches wait in memory.
    """

    def __init__(self, js: JetStreamContext, window: LogRange, *, batch: int = 1024) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1.")
        self._js = js
        self._window = window
        self._batch = batch
        self._last = 0
        self._consumer: str | None = None
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._fetcher: asyncio.Task[None] | None = None
        self.pending = 0  # matching events from the window's start to the stream's end, when opened

    async def __aenter__(self) -> LogReader:
        window = self._window
        self._last = await stream_last_sequence(self._js, window.stream)
        if window.last_seq is not None:
            self._last = min(self._last, window.last_seq)
        if window.first_seq > self._last:
            return self
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=window.first_seq,
            filter_subject=window.filter_subject,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=_IDLE_SECONDS,
            mem_storage=True,
        )
        info = await self._js.add_consumer(window.stream, config)
        self._consumer = info.name
        self.pending = info.num_pending
        if self.pending:
            self._subscription = await self._js.pull_subscribe_bind(consumer=info.name, stream=window.stream)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._fetcher is not None:
            self._fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetcher
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        if self._consumer is not None:
            # The inactive threshold would remove it anyway; deleting now keeps `nats consumer ls` tidy.
            with contextlib.suppress(NotFoundError):
                await self._js.delete_consumer(self._window.stream, self._consumer)

    async def __aiter__(self) -> AsyncIterator[list[Msg]]:
        """Yield the window's messages in stream order, in lists of at most ``batch``."""
        if self._subscription is None:
            return
        queue: asyncio.Queue[list[Msg] | BaseException | None] = asyncio.Queue(maxsize=_PREFETCH)
        self._fetcher = asyncio.create_task(_fetch_into(self._subscription, queue, self._batch, self._last))
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item


async def _fetch_into(
    subscription: JetStreamContext.PullSubscription,
    queue: asyncio.Queue[list[Msg] | BaseException | None],
    batch: int,
    last: int,
) -> None:
    """Fetch until the window's last sequence (or the filter's last match) and queue the batches."""
    try:
        while True:
            try:
                messages = await subscription.fetch(batch, timeout=2.0)
            except TimeoutError:  # builtin: nats raises both its own and asyncio's
                # The window's end was checked against the stream when reading started, so an
                # empty fetch means the remaining matches were removed (limits, purge).
                if (await subscription.consumer_info()).num_pending == 0:
                    break
                continue
            tail = messages[-1].metadata
            if tail.sequence.stream >= last:
                messages = [m for m in messages if m.metadata.sequence.stream <= last]
                if messages:
                    await queue.put(messages)
                break
            await queue.put(messages)
            if tail.num_pending == 0:
                break
    except Exception as exc:  # handed to the reader, which raises it where it is awaited
        await queue.put(exc)
        return
    await queue.put(None)
