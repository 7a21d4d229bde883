"""Recovering usage a crashed gateway never published, from the MCP log.

A gateway buffers usage events for up to ``max_delay`` before publishing them
(:mod:`democratic_ai.services.metering.publisher`); killed in between, it takes them along. The calls themselves are not
lost: every answer a client received was first recorded on ``mcp.res.<tenant>.<capability>``
by whoever answered (the module writes the record before the reply; the gateway records its
own errors and refusals), and an answer — for a streamed call, its last message, the ``final``
chunk or the ERROR — carries everything
:func:`~democratic_ai.contracts.call_usage.usage_of` needs.

The same holds for a plain call whose client hung up before the answer came: the gateway
stopped waiting, the module did the work, and its record is how the call is metered. (Waiting
on in the gateway instead would cost a task per call on the hot path.)

The sweeper follows those records with the platform's one follower
(:class:`~democratic_ai.contracts.ordered.OrderedConsumer`, resuming by sequence after
reconnects and server restarts), at a distance of ``grace`` seconds — longer than any publisher
takes to flush and retry — and for each batch of answers to gateway calls:

1. waits until the usage projection has applied everything the USAGE stream holds now, so
   any event a gateway published for these calls is in ``usage_events``;
2. asks ``usage_events`` which (call id, metric) pairs it has, in one query;
3. publishes the missing events — derived from the same answer, so identical, with the same
   ``Nats-Msg-Id`` — and only then advances its checkpoint: the row ``usage-recovery`` of the
   projections' ``projection_checkpoints`` (:mod:`.checkpoints`), the last MCP sequence handled.

Every step is idempotent: a sweep repeated after a crash finds the events present; an event
the sweeper publishes while a slow gateway publishes it too is dropped by the duplicate
window, and beyond it by the read model's key.

**One outcome per call.** A call the gateway stopped waiting for (its ttl passed, its client hung
up) has two ends in the log: the gateway's own ERROR, recorded first, and the module's later
answer, which carries what the gateway's lacks — the compute time, the bytes sent. The sweeper
meters such a call from both with ``usage_of``: the outcome is the gateway's end (the
one its client got), or — when some of the call's events are in the read model already — the
outcome they carry; the module's answer only adds the missing measures, under that outcome. So
a plain call whose client hung up is ``cancelled`` in every metric (its ``compute_ms`` billable),
and one that timed out is ``timeout`` in every metric, whichever batch its module's late answer
falls in. One edge stays: when the gateway crashed before it even recorded its own end, only the
module's answer is left, and the call is metered from that.

While PostgreSQL cannot be reached the sweeper waits for it with backoff (one WARNING, then one
every 30 s) and then starts over from its checkpoint, as the projections do
(:class:`~.runner.ProjectionRunner`); nothing it held in memory is taken for swept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from democratic_ai.contracts import MCPMessage, decode
from democratic_ai.contracts.call_usage import GATEWAY, at_of, is_metered, usage_of
from democratic_ai.contracts.headers import NATS_MSG_ID
from democratic_ai.contracts.ordered import OrderedConsumer
from democratic_ai.contracts.server_clock import ServerClock
from democratic_ai.contracts.streams import MCP_STREAM
from democratic_ai.contracts.subjects import ALL_RESPONSES, usage_subject
from democratic_ai.contracts.usage_events import CallMetered, Metric, Outcome, encode_event, message_id
from democratic_ai.schemas.outage import DatabaseOutage, on_database

from .checkpoints import Checkpoints, advance_checkpoint, lock_checkpoint, read_checkpoint
from .usage import UsageProjection

__all__ = ["RecoveryConfig", "UsageRecovery"]

log = logging.getLogger(__name__)

CHECKPOINT = "usage-recovery"  # its row in projection_checkpoints
_LATE_ANSWER_MARGIN = timedelta(days=1)  # how much earlier than its answer a call's usage may be stamped


def _outcome_metered(metered: dict[str, str]) -> Outcome | None:
    """The outcome a call was metered with already (that of its ``api_calls``), if any is known."""
    recorded = metered.get(Metric.API_CALLS.value) or next(iter(sorted(metered.values())), None)
    try:
        return None if recorded is None else Outcome(recorded)
    except ValueError:
        return None  # an outcome newer than this sweeper: derive the call's own


@dataclass(frozen=True, slots=True)
class RecoveryConfig:
    grace: float = 30.0  # answers younger than this may still sit in a live publisher's buffer
    batch: int = 1000
    initial_lookback: float = 600.0  # first start (no checkpoint): how far back to look
    catch_up_timeout: float = 30.0  # longest wait for the usage projection before sweeping anyway

    def __post_init__(self) -> None:
        if self.grace < 0 or self.batch < 1 or self.initial_lookback < 0 or self.catch_up_timeout < 0:
            raise ValueError("grace, initial_lookback and catch_up_timeout must be >= 0 and batch >= 1.")


class UsageRecovery:
    """Re-derive and publish usage events missing for calls recorded in the MCP stream."""

    def __init__(self, js: JetStreamContext, pool: asyncpg.Pool, config: RecoveryConfig | None = None) -> None:
        self._js = js
        self._pool = pool
        self.config = config or RecoveryConfig()
        self.recovered = 0  # events published by this sweeper
        self.swept = 0  # answers examined
        # An answer's age is measured on the server's clock, which stamped it: this host's
        # clock, if ahead, would sweep answers a publisher still holds; if behind, sweep late.
        self._clock = ServerClock()

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep until ``stop`` is set, waiting out database outages."""
        await DatabaseOutage("usage recovery", log).keep_following(lambda outage: self._follow(stop, outage), stop)

    async def _follow(self, stop: asyncio.Event, outage: DatabaseOutage) -> None:
        """Sweep from the checkpoint until ``stop`` is set; raises :class:`DatabaseUnreachable`."""
        with on_database():
            async with self._pool.acquire() as conn:
                last = await read_checkpoint(conn, CHECKPOINT)
        outage.over()
        # The first time (no checkpoint), from ``initial_lookback`` ago; then after the checkpoint.
        since = datetime.now(UTC) - timedelta(seconds=self.config.initial_lookback)
        follower = OrderedConsumer(
            self._js,
            MCP_STREAM,
            ALL_RESPONSES,
            batch=self.config.batch,
            start=since,
            after=last,
            on_batch=lambda records: self._when_due(records, stop),
        )
        await follower.run(stop)

    async def _when_due(self, records: list[Msg], stop: asyncio.Event) -> None:
        """Sweep a batch once its newest answer is ``grace`` old, retrying a sweep that failed
        (not for an outage: that stops the follower, which starts over from the checkpoint)."""
        self._clock.observe_message(records[-1])  # the newest: the tightest bound
        while (wait := (records[-1].metadata.timestamp - self._cutoff()).total_seconds()) > 0:
            if await _stopped(stop, wait):
                return  # unswept, and the checkpoint stays before it: the next run sweeps it
        while True:
            try:
                await self.sweep(records)
                return
            except (asyncpg.PostgresError, OSError, NatsError, TimeoutError) as exc:
                # A NATS hiccup, or a statement Postgres refused.
                log.warning("usage recovery sweep failed (%r); retrying", exc)
                if await _stopped(stop, 1.0):
                    return

    def _cutoff(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now() - self.config.grace, UTC)

    async def sweep(self, records: Sequence[Msg]) -> int:
        """Handle one batch of answer records (in stream order); returns the events published."""
        ends: dict[str, list[MCPMessage]] = {}  # call id → its ends, the one its client got first
        for msg in records:
            try:
                answer = decode(msg.data)
            except DecodeError:
                continue
            if not is_metered(answer):
                continue
            known = ends.setdefault(answer.correlation_id, [])
            # The gateway's own error (a timeout, a hang-up) is the end its client got.
            if answer.source_module_id == GATEWAY and known and known[0].source_module_id != GATEWAY:
                known.insert(0, answer)
            else:
                known.append(answer)
        self.swept += len(ends)
        published = 0
        if ends:
            await self._wait_for_projection()
            present = await self._present([a for call in ends.values() for a in call])
            missing = []
            for call_id, call in ends.items():
                metered = present.get(call_id, {})
                for event in usage_of(*call, outcome=_outcome_metered(metered)):
                    if event.metric not in metered:
                        missing.append(event)
            if missing:
                await self._publish(missing)
                published = len(missing)
                self.recovered += published
                log.info(
                    "recovered %d usage events of %d calls that no gateway had published"
                    " (a gateway stopped, or a client hung up before its answer came)",
                    published,
                    len({e.call_id for e in missing}),
                )
        with on_database():
            async with self._pool.acquire() as conn, conn.transaction():
                await lock_checkpoint(conn, CHECKPOINT)
                await advance_checkpoint(conn, CHECKPOINT, records[-1].metadata.sequence.stream)
        return published

    async def _wait_for_projection(self) -> None:
        checkpoints = Checkpoints(UsageProjection())  # every partition's, whichever worker folds it
        targets = await checkpoints.targets(self._js)
        deadline = time.monotonic() + self.config.catch_up_timeout
        with on_database():
            async with self._pool.acquire() as conn:
                while True:
                    done = await checkpoints.read(conn)
                    behind = {name: (done[name], target) for name, target in targets.items() if done[name] < target}
                    if not behind:
                        return
                    if time.monotonic() > deadline:
                        # Sweep anyway: what the read model lacks but the stream has is dropped as a duplicate.
                        log.warning("the usage projection lags (%s); sweeping without waiting", _lags(behind))
                        return
                    await asyncio.sleep(0.05)

    async def _present(self, answers: list[MCPMessage]) -> dict[str, dict[str, str]]:
        """call id → metric → outcome of the events the read model holds for these calls."""
        stamps = [at_of(a) for a in answers]
        with on_database():
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT call_id, metric, outcome FROM usage_events"
                    " WHERE call_id = any($1::text[]) AND at >= $2 AND at <= $3",
                    list({a.correlation_id for a in answers}),
                    min(stamps) - _LATE_ANSWER_MARGIN,
                    max(stamps),
                )
        present: dict[str, dict[str, str]] = {}
        for r in rows:
            present.setdefault(r["call_id"], {})[r["metric"]] = r["outcome"]
        return present

    async def _publish(self, events: list[CallMetered]) -> None:
        futures = [
            await self._js.publish_async(
                usage_subject(e.tenant_id, e.metric), encode_event(e), headers={NATS_MSG_ID: message_id(e)}
            )
            for e in events
        ]
        await asyncio.wait_for(asyncio.gather(*futures), timeout=30.0)


def _lags(behind: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{name} {done} < {target}" for name, (done, target) in sorted(behind.items()))


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds``; whether ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
