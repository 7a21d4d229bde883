"""Following a stream in order, across reconnects and server restarts, resuming by sequence.

Every in-memory view of the platform (the identity and registry indexes, the call-limit leases,
the storage meters, the subscribed plans, the JWT key ring, the user-key cache) follows a
stream with an :class:`OrderedConsumer`: an ephemeral push consumer without acks, which
remembers the last stream sequence it applied and, whenever its consumer may be gone, makes a
new one that starts right after it.

Why not nats-py's ``ordered_consumer=True``: on a reset it switches the first request to "by
start sequence" but keeps its other fields, so a consumer first made "by start time" is refused
for ever (``err_code=10094``, a start time together with a start sequence), retried every two
heartbeats (10 s); and it notices a restarted server only by those missed heartbeats.

The consumer is replaced when

- the connection reconnected (the server may have restarted: an ephemeral in-memory consumer
  does not survive that),
- no message and no heartbeat arrived for three heartbeat intervals,
- a delivery or a heartbeat shows a consumer sequence was skipped (a message was lost).

A replacement is retried with backoff (50 ms doubling to 1 s) until the server accepts it.
Nothing is applied twice: a message at or below the last applied sequence is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import (
    BadSubscriptionError,
    ConnectionClosedError,
    NoRespondersError,
    OutboundBufferLimitError,
    TimeoutError as NatsTimeoutError,
)
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError

from .headers import NATS_CONSUMER_STALLED, NATS_LAST_CONSUMER

__all__ = ["OrderedConsumer", "Start"]

log = logging.getLogger(__name__)

# Where a follower starts the first time: every message, only new ones, the last of each
# subject, or everything from a point in time. Later it always resumes by sequence.
Start = DeliverPolicy | datetime

_RETRYABLE = (NatsTimeoutError, TimeoutError, NoRespondersError, APIError, ConnectionClosedError,
              OutboundBufferLimitError)
_MAX_DELAY = 1.0
_WATCH_INTERVAL = 0.1


def connection_of(js: JetStreamContext) -> NATS:
    """The connection a JetStream context was made from (nats-py keeps it private)."""
    return js._nc  # noqa: SLF001


class OrderedConsumer:
    """Hand every message of ``subject`` on ``stream`` to ``on_message``, once, in stream order.

    ``on_message`` must not raise: an exception is logged and the message counts as applied.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        on_message: Callable[[Msg], Awaitable[None]],
        *,
        start: Start = DeliverPolicy.ALL,
        headers_only: bool = False,
        heartbeat: float = 1.0,
    ) -> None:
        if heartbeat <= 0:
            raise ValueError("heartbeat must be a positive number of seconds.")
        self._js = js
        self._nc = connection_of(js)
        self.stream, self.subject = stream, subject
        self._on_message = on_message
        self._start = start
        self._headers_only = headers_only
        self._heartbeat = heartbeat
        self.last_sequence = 0  # the last stream sequence applied (or skipped as before the start)
        self.resumes = 0  # consumers made after the first one
        self._progress = asyncio.Condition()
        self._caught_up = asyncio.Event()
        self._generation = 0  # deliveries to an older consumer's inbox are ignored
        self._expected = 1  # the next consumer sequence of the current consumer
        self._subscription: Subscription | None = None
        self._consumer = ""
        self._last_activity = 0.0
        self._reconnects = 0
        self._watchdog: asyncio.Task[None] | None = None
        self._resuming: asyncio.Task[None] | None = None
        self._stopped = False
        self._again = False

    async def start(self, timeout: float = 30.0) -> None:
        """Make the consumer and return once it has applied what the stream held at the call."""
        self._reconnects = self._nc.stats["reconnects"]
        await self._open(self._first_config())
        self._watchdog = asyncio.create_task(self._watch(), name=f"follow {self.stream} {self.subject}")
        await asyncio.wait_for(self._caught_up.wait(), timeout)

    async def stop(self) -> None:
        self._stopped = True
        for task in (self._watchdog, self._resuming):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._watchdog = self._resuming = None
        await self._close()

    async def wait_for(self, sequence: int, timeout: float = 10.0) -> None:
        """Wait until the message at stream ``sequence`` has been applied."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.last_sequence >= sequence), timeout)

    # Making consumers ---------------------------------------------------------------------------

    def _first_config(self) -> ConsumerConfig:
        if isinstance(self._start, datetime):
            return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=self._start)
        return ConsumerConfig(deliver_policy=self._start)

    async def _open(self, config: ConsumerConfig, timeout: float | None = None) -> None:
        """Subscribe a new inbox, then make a consumer delivering to it."""
        await self._unsubscribe()
        self._generation += 1
        inbox = self._nc.new_inbox()
        subscription = await self._nc.subscribe(inbox, cb=partial(self._deliver, self._generation))
        config.deliver_subject = inbox
        config.filter_subject = self.subject
        config.ack_policy = AckPolicy.NONE
        config.max_deliver = 1
        config.flow_control = True
        config.idle_heartbeat = self._heartbeat
        config.headers_only = self._headers_only or None
        config.mem_storage = True
        config.num_replicas = 1
        self._expected = 1
        self._last_activity = time.monotonic()
        try:
            info = await self._js.add_consumer(self.stream, config=config, timeout=timeout)
        except BaseException:
            await _unsubscribe(subscription)
            raise
        self._subscription, self._consumer = subscription, info.name
        # A new consumer reports the sequence before its first message as delivered: for "new
        # messages only" or "from a time", nothing before it concerns this follower.
        if info.delivered is not None:
            async with self._progress:
                self.last_sequence = max(self.last_sequence, info.delivered.stream_seq)
                self._progress.notify_all()
        if not info.num_pending:
            self._caught_up.set()

    async def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await _unsubscribe(subscription)

    async def _close(self) -> None:
        await self._unsubscribe()
        consumer, self._consumer = self._consumer, ""
        if consumer and self._nc.is_connected:
            try:  # without interest the server removes it anyway; this is only sooner
                await asyncio.wait_for(self._js.delete_consumer(self.stream, consumer), _MAX_DELAY)
            except _RETRYABLE:
                pass

    def _resume(self, reason: str) -> None:
        if self._stopped:
            return
        if self._resuming is not None and not self._resuming.done():
            self._again = True  # the consumer being made may predate this reason: make another after it
            return
        self._generation += 1  # from now on the old consumer's deliveries are ignored
        self._resuming = asyncio.create_task(self._resubscribe(reason), name=f"resume {self.stream} {self.subject}")

    async def _resubscribe(self, reason: str) -> None:
        log.info("following %s %s again after sequence %d: %s", self.stream, self.subject, self.last_sequence, reason)
        delay, attempts = 0.05, 0
        while True:
            self._again = False
            if self._nc.is_connected:
                try:
                    await self._open(ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                                    opt_start_seq=self.last_sequence + 1), timeout=_MAX_DELAY)
                except _RETRYABLE as exc:
                    attempts += 1
                    if attempts == 1 or attempts % 30 == 0:
                        log.warning("cannot follow %s %s yet (attempt %d): %r", self.stream, self.subject,
                                    attempts, exc)
                else:
                    self.resumes += 1
                    if not self._again:
                        return
                    delay = 0.05
                    continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            reconnects = self._nc.stats["reconnects"]
            if reconnects != self._reconnects:
                self._reconnects = reconnects
                self._resume("the connection reconnected")
            elif self._nc.is_connected and time.monotonic() - self._last_activity > 3 * self._heartbeat:
                self._resume("no heartbeat")

    # Deliveries ---------------------------------------------------------------------------------

    async def _deliver(self, generation: int, msg: Msg) -> None:
        if generation != self._generation:
            return
        self._last_activity = time.monotonic()
        if not msg.reply.startswith("$JS.ACK."):
            await self._control(msg)
            return
        metadata = msg.metadata
        if metadata.sequence.consumer != self._expected:
            self._resume(f"consumer sequence {metadata.sequence.consumer}, expected {self._expected}")
            return
        self._expected += 1
        sequence = metadata.sequence.stream
        # Under the lock: a replaced consumer's last delivery may still be in hand while the new
        # one delivers the same message, and it must be applied once.
        async with self._progress:
            if sequence <= self.last_sequence:
                return
            try:
                await self._on_message(msg)
            except Exception:
                log.exception("a follower of %s failed on the message at sequence %d (skipped)", self.stream, sequence)
            self.last_sequence = sequence
            self._progress.notify_all()
        if not metadata.num_pending:
            self._caught_up.set()

    async def _control(self, msg: Msg) -> None:
        """A heartbeat or a flow-control request (status 100)."""
        headers = msg.headers or {}
        # Deliveries are handled one at a time, so everything before this request is applied.
        reply = msg.reply or headers.get(NATS_CONSUMER_STALLED, "")
        if reply:
            try:
                await self._nc.publish(reply, b"")
            except (ConnectionClosedError, OutboundBufferLimitError):
                pass
        last = headers.get(NATS_LAST_CONSUMER)
        if last is not None and last.isdigit() and int(last) != self._expected - 1:
            self._resume(f"the server delivered up to consumer sequence {last}, this follower {self._expected - 1}")


async def _unsubscribe(subscription: Subscription) -> None:
    try:
        await subscription.unsubscribe()
    except (BadSubscriptionError, ConnectionClosedError, OutboundBufferLimitError):
        pass
