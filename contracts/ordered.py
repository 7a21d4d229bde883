"""Following a stream in order, across reconnects and server restarts, resuming by sequence.

Every in-memory view of the platform (the identity and registry indexes, the call-limit leases,
the storage meters, the subscribed plans, the JWT key ring, the user-key cache) and every worker
that folds a stream into PostgreSQL (the projections, the usage recovery sweep) follows its
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
- no message and no heartbeat arrived for three heartbeat intervals (while nothing was being
  applied: a long fold is not a lost consumer),
- a delivery or a heartbeat shows a consumer sequence was skipped (a message was lost).

A replacement is retried with backoff (50 ms doubling to 1 s) until the server accepts it.
Nothing is applied twice: a message at or below the last applied sequence is dropped.

Two ways to be handed the messages:

- ``on_message``, one at a time (the views): it must not raise; an exception is logged and the
  message counts as applied. :meth:`~OrderedConsumer.start` returns once caught up.
- ``on_batch``, in batches (the workers that write to PostgreSQL, one transaction per batch): a
  batch is what arrived while the previous one was applied, up to ``batch`` messages, in stream
  order. An exception from ``on_batch`` stops the follower with nothing of that batch applied,
  and :meth:`~OrderedConsumer.run` raises it, so the worker can start again from what it
  committed (``after=`` its checkpoint). A flow-control request is answered only once every
  message before it is applied, so the server never runs far ahead of the fold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
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
from nats.js.errors import APIError, NotFoundError

from .headers import NATS_CONSUMER_STALLED, NATS_LAST_CONSUMER

__all__ = ["OrderedConsumer", "Start"]

log = logging.getLogger(__name__)

# Where a follower starts the first time: every message, only new ones, the last of each
# subject, or everything from a point in time. Later it always resumes by sequence; a follower
# given ``after`` (a checkpoint) starts by sequence too.
Start = DeliverPolicy | datetime

_RETRYABLE = (
    NatsTimeoutError,
    TimeoutError,
    NoRespondersError,
    APIError,
    ConnectionClosedError,
    OutboundBufferLimitError,
)
_MAX_DELAY = 1.0
_WATCH_INTERVAL = 0.1


def connection_of(js: JetStreamContext) -> NATS:
    """The connection a JetStream context was made from (nats-py keeps it private)."""
    return js._nc  # noqa: SLF001


class OrderedConsumer:
    """Hand every message of ``subject`` on ``stream`` to ``on_message`` (or, in batches, to
    ``on_batch``), once, in stream order (see the module docstring).

    ``subject``: one filter subject, or several (a partitioned worker's partitions; they must not
    overlap). ``after``: the last sequence already applied elsewhere (a checkpoint): start right after it,
    whatever ``start`` says. ``name``: the consumer's name (``nats consumer info STREAM NAME``);
    one follower per name, since making its consumer replaces any other of that name.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str | Sequence[str],
        on_message: Callable[[Msg], Awaitable[None]] | None = None,
        *,
        on_batch: Callable[[list[Msg]], Awaitable[None]] | None = None,
        batch: int = 1024,
        start: Start = DeliverPolicy.ALL,
        after: int = 0,
        name: str = "",
        description: str = "",
        headers_only: bool = False,
        heartbeat: float = 1.0,
    ) -> None:
        if (on_message is None) == (on_batch is None):
            raise ValueError("give either on_message or on_batch.")
        if heartbeat <= 0:
            raise ValueError("heartbeat must be a positive number of seconds.")
        if batch < 1 or after < 0:
            raise ValueError("batch must be at least 1 and after at least 0.")
        self._subjects = [subject] if isinstance(subject, str) else list(subject)
        if not self._subjects:
            raise ValueError("give at least one subject to follow.")
        self._js = js
        self._nc = connection_of(js)
        self.stream, self.subject = stream, " ".join(self._subjects)
        self._on_message = on_message
        self._on_batch = on_batch
        self._batch = batch if on_batch is not None else 1
        self._start = start
        self._name, self._description = name, description
        self._headers_only = headers_only
        self._heartbeat = heartbeat
        self.last_sequence = after  # the last stream sequence applied (or skipped as before the start)
        self.resumes = 0  # consumers made after the first one
        self.failure: Exception | None = None  # what on_batch raised, which stopped the follower
        self._progress = asyncio.Condition()
        self._caught_up = asyncio.Event()
        self._ended = asyncio.Event()
        self._generation = 0  # deliveries to an older consumer's inbox are ignored
        self._expected = 1  # the next consumer sequence of the current consumer
        self._held: list[Msg] = []  # delivered by the current consumer, not yet applied
        self._busy = False  # a batch is being applied
        self._opened = False  # a first consumer was made
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
        if self._on_batch is not None:
            raise TypeError("a follower with on_batch runs with run(stop), which raises what on_batch raised.")
        self._reconnects = self._nc.stats["reconnects"]
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self._open(self._first_config())
                break
            except NatsTimeoutError:
                # A busy server may take longer than one API request's timeout to make the
                # consumer: ask again until the caller's own timeout is spent (a consumer the
                # lost request made anyway delivers to an inbox nobody listens on any more, and
                # the server removes it as an ephemeral consumer without interest).
                if time.monotonic() + 1.0 > deadline:
                    raise
                log.warning("%s: making the consumer of %s timed out; asking again", self.stream, self.subject)
                await asyncio.sleep(0.5)
        self._watchdog = asyncio.create_task(self._watch(), name=f"follow {self.stream} {self.subject}")
        await asyncio.wait_for(self._caught_up.wait(), timeout)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until ``stop`` is set, or until ``on_batch`` raises: then raise that.

        The first consumer is made as a replacement is, retried until the server accepts it.
        """
        self._reconnects = self._nc.stats["reconnects"]
        self._watchdog = asyncio.create_task(self._watch(), name=f"follow {self.stream} {self.subject}")
        self._resume("")
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._ended.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await self.stop()
        if self.failure is not None:
            raise self.failure

    async def stop(self) -> None:
        """Stop following, after the message or batch being applied (if any) is applied."""
        self._stopped = True
        for task in (self._watchdog, self._resuming):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._watchdog = self._resuming = None
        async with self._progress:
            pass
        await self._close()

    async def wait_for(self, sequence: int, timeout: float = 10.0) -> None:
        """Wait until the message at stream ``sequence`` has been applied."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.last_sequence >= sequence), timeout)

    async def catch_up(self, timeout: float) -> None:
        """Wait until every message the stream holds now (of this consumer's subjects) has been
        applied: what another process appended a moment ago is then folded. The server says
        what is left to deliver, so a purged tail is not waited for. Raises ``TimeoutError``;
        while the consumer is being replaced it returns at once (nothing to ask)."""
        async with asyncio.timeout(timeout):
            while True:
                consumer = self._consumer
                if not consumer:
                    return
                try:
                    info = await self._js.consumer_info(self.stream, consumer)
                except NotFoundError:
                    return
                if not info.num_pending:
                    break
                await asyncio.sleep(0.01)  # the server is still delivering
            delivered = info.delivered.stream_seq if info.delivered else 0
            async with self._progress:
                await self._progress.wait_for(lambda: self.last_sequence >= delivered)

    # Making consumers ---------------------------------------------------------------------------

    def _first_config(self) -> ConsumerConfig:
        if self.last_sequence:
            return self._resume_config()
        if isinstance(self._start, datetime):
            return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=self._start)
        return ConsumerConfig(deliver_policy=self._start)

    def _resume_config(self) -> ConsumerConfig:
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.last_sequence + 1)

    async def _open(self, config: ConsumerConfig, timeout: float | None = None) -> None:
        """Subscribe a new inbox, then make a consumer delivering to it."""
        await self._retire()
        self._generation += 1
        self._held = []
        inbox = self._nc.new_inbox()
        subscription = await self._nc.subscribe(inbox, cb=partial(self._deliver, self._generation))
        self._subscription = subscription
        config.deliver_subject = inbox
        if len(self._subjects) == 1:
            config.filter_subject = self._subjects[0]
        else:
            config.filter_subjects = self._subjects
        config.ack_policy = AckPolicy.NONE
        config.max_deliver = 1
        config.flow_control = True
        config.idle_heartbeat = self._heartbeat
        config.headers_only = self._headers_only or None
        config.mem_storage = True
        config.num_replicas = 1
        config.name = self._name or None
        config.description = self._description or None
        self._expected = 1
        self._last_activity = time.monotonic()
        try:
            if self._name:  # the consumer of that name a previous run (or a lost connection) left behind
                with contextlib.suppress(NotFoundError):
                    await asyncio.wait_for(self._js.delete_consumer(self.stream, self._name), timeout)
            info = await self._js.add_consumer(self.stream, config=config, timeout=timeout)
        except BaseException:
            await self._unsubscribe()
            raise
        self._consumer = info.name
        self._opened = True
        # A new consumer reports the sequence before its first message as delivered: for "new
        # messages only" or "from a time", nothing before it concerns this follower.
        if info.delivered is not None:
            async with self._progress:
                self.last_sequence = max(self.last_sequence, info.delivered.stream_seq)
                self._progress.notify_all()
        if not info.num_pending:
            self._caught_up.set()

    async def _retire(self) -> None:
        """Drop the current subscription, once what it is applying is applied (unsubscribing
        cancels its deliveries, and a fold cut off half-way would have to be done again)."""
        if self._subscription is None:
            return
        async with self._progress:
            pass
        await self._unsubscribe()

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
            except _RETRYABLE:  # NotFoundError among them (an APIError)
                pass

    def _resume(self, reason: str) -> None:
        """Make a new consumer after the last applied sequence (``reason`` empty: the first one)."""
        if self._stopped:
            return
        if self._resuming is not None and not self._resuming.done():
            self._again = True  # the consumer being made may predate this reason: make another after it
            return
        self._generation += 1  # from now on the old consumer's deliveries are ignored
        self._resuming = asyncio.create_task(self._resubscribe(reason), name=f"resume {self.stream} {self.subject}")

    async def _resubscribe(self, reason: str) -> None:
        if reason:
            log.info(
                "following %s %s again after sequence %d: %s", self.stream, self.subject, self.last_sequence, reason
            )
        delay, attempts = 0.05, 0
        while True:
            self._again = False
            if self._nc.is_connected:
                first = not self._opened
                try:
                    await self._open(self._first_config() if first else self._resume_config(), timeout=_MAX_DELAY)
                except _RETRYABLE as exc:
                    attempts += 1
                    if attempts == 1 or attempts % 30 == 0:
                        log.warning(
                            "cannot follow %s %s yet (attempt %d): %r", self.stream, self.subject, attempts, exc
                        )
                else:
                    if not first:
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
            elif (
                self._nc.is_connected
                and self._subscription is not None
                and not self._busy
                and time.monotonic() - self._last_activity > 3 * self._heartbeat
            ):
                self._resume("no heartbeat")

    # Deliveries ---------------------------------------------------------------------------------

    async def _deliver(self, generation: int, msg: Msg) -> None:
        if generation != self._generation or self._stopped:
            return
        self._last_activity = time.monotonic()
        if not msg.reply.startswith("$JS.ACK."):
            await self._control(generation, msg)
            return
        held = self._held
        held.append(msg)
        subscription = self._subscription
        if len(held) >= self._batch or subscription is None or not subscription.pending_msgs:
            await self._apply(generation)

    async def _apply(self, generation: int) -> None:
        """Apply what the current consumer delivered, unless it was applied already.

        A message's metadata (its sequences, parsed from the reply subject) costs more than
        the rest of its delivery, so a batch reads it of its first and last message only: the
        consumer numbers its deliveries 1, 2, 3 …, so the last one's number says whether one
        was skipped, and only then is every message's read, to apply what came before the gap.
        """
        held, self._held = self._held, []
        expected, gap = self._expected, ""
        if held[-1].metadata.sequence.consumer != expected + len(held) - 1:
            whole = 0
            while held[whole].metadata.sequence.consumer == expected + whole:
                whole += 1
            gap = f"consumer sequence {held[whole].metadata.sequence.consumer}, expected {expected + whole}"
            held = held[:whole]
        self._expected = expected + len(held)
        if held:
            await self._apply_whole(generation, held)
        if gap:
            self._resume(gap)

    async def _apply_whole(self, generation: int, held: list[Msg]) -> None:
        self._busy = True
        try:
            # Under the lock: a replaced consumer's last delivery may still be in hand while the
            # new one delivers the same message, and it must be applied once.
            async with self._progress:
                if self._stopped:
                    return
                if held[0].metadata.sequence.stream <= self.last_sequence:
                    held = [m for m in held if m.metadata.sequence.stream > self.last_sequence]
                    if not held:
                        return
                if not await self._hand_over(held):
                    return
                self.last_sequence = held[-1].metadata.sequence.stream
                self._progress.notify_all()
        finally:
            self._busy = False
            self._last_activity = time.monotonic()
        if not held[-1].metadata.num_pending and generation == self._generation:
            self._caught_up.set()

    async def _hand_over(self, held: list[Msg]) -> bool:
        """Give ``held`` to the handler; False when ``on_batch`` failed (the follower stops)."""
        if self._on_batch is not None:
            try:
                await self._on_batch(held)
            except Exception as exc:
                self.failure, self._stopped = exc, True
                self._ended.set()
                return False
            return True
        assert self._on_message is not None
        for msg in held:
            try:
                await self._on_message(msg)
            except Exception:
                log.exception(
                    "a follower of %s failed on the message at sequence %d (skipped)",
                    self.stream,
                    msg.metadata.sequence.stream,
                )
        return True

    async def _control(self, generation: int, msg: Msg) -> None:
        """A heartbeat or a flow-control request (status 100)."""
        if self._held:
            await self._apply(generation)
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
