"""Publishing usage events: buffered, batched, pipelined — and never the only copy.

The hot path only appends to a list (:meth:`UsagePublisher.add`). A background task takes up
to ``max_batch`` events (1,000, as the seed) when that many are waiting, or whatever is there
every ``max_delay`` seconds, and writes the batch to JetStream as plain publishes on
``usage.<tenant>.<metric>``, each with its deterministic ``Nats-Msg-Id`` and a reply subject
for its acknowledgement: a batch counts as stored once every one of its messages is
acknowledged. (The ack of the last message alone is not enough: in a cluster, a publish that
arrives while the stream elects a new leader is dropped, and a later one of the same batch
may be stored and acknowledged by the new leader.) Several batches may be in flight at once
(pipelining); a batch with an ack late, negative, or straddling a reconnect (which can drop
buffered publishes) is sent again whole, and JetStream's duplicate window drops what it
already stored.

An event may travel with the trace context of its call (``traceparent``, when the gateway traces):
it goes out as that message's NATS headers, and the usage projection continues the call's trace
from it (``projections/spans.py``).

**Why a crash loses nothing.** Events waiting in this buffer die with the process. They are
not the only record of the call: the module wrote its answer to the MCP stream *before* it
answered (``sdk/module.py``), so any call a client saw completed is in the log, with what is
needed to meter it (:func:`democratic_ai.contracts.call_usage.usage_of`). The recovery sweeper
(:mod:`democratic_ai.projections.recovery`) reads those answers once they are older than the
publisher can take to flush, looks up which of their usage events the read model lacks, and
publishes exactly those — with the same message ids, so a race with a slow publisher still
counts every event once. The same backstop lets
this buffer shed events when NATS is unreachable for long (``max_buffer``) instead of growing
without bound.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, OutboundBufferLimitError

from democratic_ai.contracts.headers import NATS_MSG_ID, NATS_STATUS
from democratic_ai.contracts.subjects import usage_subject
from democratic_ai.contracts.usage_events import UsageEvent, encode_event, message_id

__all__ = ["PublisherConfig", "PublisherStats", "UsagePublisher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PublisherConfig:
    max_batch: int = 1000  # events per batch (the seed's buffer size)
    max_delay: float = 1.0  # seconds an event may wait for its batch; the seed waits 5 s
    ack_timeout: float = 5.0  # a batch not acknowledged by then is sent again
    max_in_flight: int = 8  # batches awaiting their ack at once
    max_buffer: int = 1_000_000  # beyond this the oldest events are dropped (recovery re-derives them)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_in_flight < 1 or self.max_buffer < self.max_batch:
            raise ValueError("max_batch and max_in_flight must be at least 1, and max_buffer at least max_batch.")
        if self.max_delay <= 0 or self.ack_timeout <= 0:
            raise ValueError("max_delay and ack_timeout must be positive numbers of seconds.")


class _Ack(msgspec.Struct):
    error: dict[str, object] | None = None


_decode_ack = msgspec.json.Decoder(_Ack).decode


@dataclass(slots=True)
class _Batch:
    frames: list[tuple[str, bytes, dict[str, str]]]
    sent_at: float = 0.0
    reconnects: int = 0
    attempts: int = 0
    acked: int = 0  # messages of this attempt the stream acknowledged
    refused: bool = False  # one of them was not stored: the batch goes again


@dataclass
class PublisherStats:
    events: int = 0  # events handed to the publisher
    batches: int = 0  # batches acknowledged
    resent: int = 0  # batches sent again
    dropped: int = 0  # events shed because the buffer was full


_Queued = UsageEvent | tuple[UsageEvent, dict[str, str]]
"""A buffered event, or one with the trace headers it goes out with. Only a traced event is a
pair: without tracing, the hot path stays one ``list.extend``."""


class UsagePublisher:
    """Buffer usage events and publish them in acknowledged, pipelined batches."""

    def __init__(self, nc: NATS, config: PublisherConfig | None = None) -> None:
        self._nc = nc
        self.config = config or PublisherConfig()
        self.stats = PublisherStats()
        self._buffer: list[_Queued] = []
        self._in_flight: dict[str, _Batch] = {}
        self._tokens = itertools.count()
        self._prefix = ""
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._settled.set()
        self._window = asyncio.Semaphore(self.config.max_in_flight)
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pending(self) -> int:
        """Events not yet acknowledged by JetStream (buffered or in flight)."""
        return len(self._buffer) + sum(len(b.frames) for b in self._in_flight.values())

    async def start(self) -> None:
        self._prefix = f"{self._nc.new_inbox()}."
        self._subscription = await self._nc.subscribe(f"{self._prefix}*", cb=self._on_ack)
        self._task = asyncio.create_task(self._run(), name="usage-publisher")

    def add(self, events: Sequence[UsageEvent], trace: dict[str, str] | None = None) -> None:
        """Queue the events of a completed call, each to be published with the headers ``trace``
        (its trace context) if given. Never blocks and never raises."""
        buffer = self._buffer
        if trace:
            buffer.extend([(event, trace) for event in events])
        else:
            buffer.extend(events)
        self.stats.events += len(events)
        if len(buffer) >= self.config.max_batch:
            if len(buffer) > self.config.max_buffer:
                shed = len(buffer) - self.config.max_buffer
                del buffer[:shed]
                self.stats.dropped += shed
                log.error("usage buffer full: dropped %d events; the recovery sweeper will re-derive them", shed)
            self._wake.set()

    async def flush(self, timeout: float = 10.0) -> bool:
        """Publish everything buffered and wait until JetStream acknowledged it; ``False`` on timeout."""
        self._wake.set()
        deadline = time.monotonic() + timeout
        while self._buffer or self._in_flight:
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            self._settled.clear()
            try:
                await asyncio.wait_for(self._settled.wait(), timeout=0.05)
            except TimeoutError:
                pass
        return True

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush (up to ``timeout``), then stop. What is still unacknowledged is left to recovery."""
        if self._task is None:
            return
        flushed = self._nc.is_connected and await self.flush(timeout)
        if not flushed and self.pending:
            log.warning("stopping with %d usage events unacknowledged; recovery will re-derive them", self.pending)
        self._stopping = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        if self._subscription is not None and not self._nc.is_closed:
            await self._subscription.unsubscribe()
        self._subscription = None

    async def _run(self) -> None:
        config = self.config
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=config.max_delay)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                while self._buffer:
                    batch, self._buffer = self._buffer[: config.max_batch], self._buffer[config.max_batch :]
                    await self._send(_Batch([_frame(queued) for queued in batch]))
                await self._resend_overdue()
            except (ConnectionClosedError, OutboundBufferLimitError) as exc:
                # Disconnected and nats-py's own buffer is full: keep the events and try later.
                log.warning("usage publishing paused: %s", exc)
                await asyncio.sleep(config.max_delay)

    async def _send(self, batch: _Batch) -> None:
        if batch.attempts == 0:
            await self._take_window()
        token = f"{next(self._tokens):x}"
        batch.sent_at = time.monotonic()
        batch.reconnects = self._nc.stats["reconnects"]
        batch.attempts += 1
        batch.acked, batch.refused = 0, False
        self._in_flight[token] = batch
        self._settled.clear()
        publish = self._nc.publish
        reply = self._prefix + token
        for subject, data, headers in batch.frames:
            await publish(subject, data, reply=reply, headers=headers)

    async def _take_window(self) -> None:
        """A slot for a new batch. While every slot is taken by batches whose acks are not coming
        (lost in an outage or a leader election), send those again rather than wait for ever."""
        while True:
            try:
                await asyncio.wait_for(self._window.acquire(), timeout=self.config.ack_timeout)
            except TimeoutError:
                await self._resend_overdue()
            else:
                return

    async def _resend_overdue(self) -> None:
        now = time.monotonic()
        overdue = [(t, b) for t, b in self._in_flight.items() if now - b.sent_at > self.config.ack_timeout]
        for token, batch in overdue:
            del self._in_flight[token]
            self.stats.resent += 1
            if batch.sent_at:  # a batch the stream refused was logged when it was refused
                log.warning(
                    "usage batch of %d events unacknowledged after %.1f s; sending it again",
                    len(batch.frames),
                    now - batch.sent_at,
                )
            await self._send(batch)

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix) :]
        batch = self._in_flight.get(token)
        if batch is None or batch.refused:
            return  # the ack of an attempt already superseded, or of one that goes again
        problem = ""
        if not msg.data:
            problem = f"no stream answered (status {msg.headers.get(NATS_STATUS) if msg.headers else '?'})"
        else:
            try:
                ack = _decode_ack(msg.data)
            except msgspec.DecodeError:
                problem = "unreadable acknowledgement"
            else:
                if ack.error is not None:
                    problem = str(ack.error.get("description", ack.error))
        if not problem and batch.reconnects != self._nc.stats["reconnects"]:
            problem = "the connection was re-established while the batch was in flight"
        if problem:
            # Leave it in flight with an old timestamp: the run loop sends it again.
            batch.sent_at, batch.refused = 0.0, True
            log.warning("usage batch not stored (%s); it will be sent again", problem)
            self._wake.set()
            return
        batch.acked += 1
        if batch.acked < len(batch.frames):
            return
        del self._in_flight[token]
        self._window.release()
        self.stats.batches += 1
        if not self._in_flight and not self._buffer:
            self._settled.set()


def _frame(queued: _Queued) -> tuple[str, bytes, dict[str, str]]:
    if isinstance(queued, tuple):
        event, trace = queued
        headers = {**trace, NATS_MSG_ID: message_id(event)}
    else:
        event, headers = queued, {NATS_MSG_ID: message_id(queued)}
    return usage_subject(event.tenant_id, event.metric), encode_event(event), headers
