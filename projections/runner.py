"""Run a projection: follow its stream from its checkpoint, fold each batch, checkpoint.

The stream is followed with :class:`~democratic_ai.contracts.ordered.OrderedConsumer`, the one
follower of the platform: an ephemeral push consumer named ``projection-<name>`` that resumes
by sequence after reconnects, server restarts and lost messages, and hands over in batches
whatever arrived while the previous batch was being folded (up to ``batch`` events) — so
Postgres writes one batch while the next one arrives.

Exactly once: a batch's rows and its last stream sequence commit in one transaction, and the
runner starts from the checkpoint Postgres committed. A crash before the commit loses nothing
(the events are delivered again from the checkpoint); an event at or below the checkpoint
(delivered again after a resume) is skipped.

Poison-proof: a batch that fails because of one of its events (it cannot be decoded, or
PostgreSQL refuses its values) is applied again in a new transaction through
:func:`.quarantine.fold`, which folds every other event and quarantines the bad ones, with the
checkpoint advance in that same transaction. The projection goes on with the next event.

Outage-proof: when PostgreSQL cannot be reached (killed, restarting, in crash recovery), the
batch in hand is not counted as applied. The runner stops following (its consumer goes), waits
for the database with backoff (:class:`~democratic_ai.schemas.DatabaseOutage`: 0.2 s doubling
to 5 s, a WARNING when the wait starts and every 30 s while it lasts) and then starts over from
the checkpoint Postgres committed — so it resumes as soon as the database answers, and a batch
whose commit the outage interrupted is neither lost nor folded twice.

Traced: when tracing is on, the fold of an event that carries its call's trace context is a span
in that call's trace (:mod:`.spans`); when it is off, that costs one check per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from democratic_ai.contracts import tracing
from democratic_ai.contracts.ordered import OrderedConsumer
from democratic_ai.schemas.outage import DatabaseOutage, on_database

from . import quarantine, spans
from .base import Projection
from .checkpoints import advance_checkpoint, lock_checkpoint

__all__ = ["ProjectionRunner", "consumer_name"]

log = logging.getLogger(__name__)


def consumer_name(projection: Projection) -> str:
    """The consumer of the live runner: ``nats consumer info <STREAM> projection-<name>``."""
    return f"projection-{projection.name}"


class ProjectionRunner:
    """Folds one projection's stream into its read model, live, exactly once, through outages.

    ``run(stop)`` follows the stream from the projection's checkpoint until ``stop`` is set;
    ``apply(batch)`` folds one batch with its checkpoint in one transaction (see the module
    docstring for what survives what). Run one per projection and database.
    """

    def __init__(self, js: JetStreamContext, pool: asyncpg.Pool, projection: Projection, *, batch: int = 1024) -> None:
        # A batch is what arrived while the previous one was folded, so a larger limit adds no
        # latency; under load it spreads each transaction's fixed cost over more events (bench_usage.py).
        self._js = js
        self._pool = pool
        self.projection = projection
        self._batch = batch
        # Since this runner started, for the worker's metrics (:mod:`.metrics`): events folded and
        # committed, events quarantined, and batches that failed on an event and were applied again.
        self.applied = 0
        self.quarantined = 0
        self.failed_batches = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Fold events until ``stop`` is set, waiting out database outages (see the module docstring)."""
        outage = DatabaseOutage(f"projection {self.projection.name}", log)
        await outage.keep_following(lambda outage: self._follow(stop, outage), stop)

    async def _follow(self, stop: asyncio.Event, outage: DatabaseOutage) -> None:
        """Fold from the checkpoint until ``stop`` is set; raises :class:`DatabaseUnreachable`."""
        with on_database():
            last = await self._checkpoint()
        outage.over()
        projection = self.projection
        follower = OrderedConsumer(
            self._js,
            projection.stream,
            projection.filter_subject,
            on_batch=self._fold,
            batch=self._batch,
            after=last,
            name=consumer_name(projection),
            description=f"folds {projection.stream} into the {projection.name} read model",
        )
        await follower.run(stop)

    async def _fold(self, messages: list[Msg]) -> None:
        with on_database():
            await self.apply(messages)

    async def apply(self, messages: Sequence[Msg]) -> int:
        """Fold one batch in one transaction; returns the new checkpoint.

        The common case costs nothing extra: the batch is applied without savepoints, and only
        when it fails with one of :data:`.quarantine.EVENT_ERRORS` is it applied again, in a new
        transaction, event by event where needed (bisecting, see :func:`.quarantine.fold`).
        """
        started = time.time_ns() if tracing.tracing_enabled() else 0  # 0: not traced
        try:
            return await self._apply(messages, careful=False, started=started)
        except quarantine.EVENT_ERRORS as exc:
            self.failed_batches += 1
            log.warning(
                "projection %s: a batch of %d events failed (%s); applying it again, quarantining the events at fault",
                self.projection.name,
                len(messages),
                quarantine.describe(exc),
            )
        return await self._apply(messages, careful=True, started=started)

    async def _apply(self, messages: Sequence[Msg], *, careful: bool, started: int) -> int:
        name = self.projection.name
        async with self._pool.acquire() as conn, conn.transaction():
            last = await lock_checkpoint(conn, name)
            # A batch is in stream order: unless its first event is at or below the checkpoint (a
            # redelivery), all of it is fresh.
            fresh = messages
            if messages[0].metadata.sequence.stream <= last:
                fresh = [m for m in messages if m.metadata.sequence.stream > last]
            if not fresh:
                return last
            if careful:
                letters = await quarantine.fold(conn, self.projection, fresh)
            else:
                await self.projection.apply(conn, fresh)
                letters = []
            last = fresh[-1].metadata.sequence.stream
            await advance_checkpoint(conn, name, last)
        # Counted once committed: a batch whose commit failed is applied again and counted then.
        self.applied += len(fresh) - len(letters)
        self.quarantined += len(letters)
        if started:
            stream = self.projection.stream
            spans.record_fold(name, stream, fresh, started, time.time_ns(), {d.sequence for d in letters})
        return last

    async def _checkpoint(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            return await lock_checkpoint(conn, self.projection.name)
