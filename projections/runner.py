"""Run a projection: follow its stream from its checkpoint, fold each batch, checkpoint.

The stream is followed with :class:`~democratic_ai.contracts.ordered.OrderedConsumer`, the one
follower of the platform: an ephemeral push consumer named ``projection-<name>`` that resumes
by sequence after reconnects, server restarts and lost messages, and hands over in batches
whatever arrived while the previous batch was being folded (up to ``batch`` events) — so
Postgres writes one batch while the next one arrives.

Partitioned (the usage projection): run as N workers, each given its :class:`~.checkpoints.Share`
of the stream's partitions. A worker's consumer (``projection-<name>-<i>of<N>``) follows the
projection's whole filter and the worker folds only its partitions' events, with one checkpoint
per partition (see :mod:`.checkpoints`, which says why the server does not filter them); a
single worker (the default) owns every partition and its consumer keeps the name
``projection-<name>``.

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
from .checkpoints import Checkpoints, Share

__all__ = ["ProjectionRunner", "consumer_name"]

log = logging.getLogger(__name__)


def consumer_name(projection: Projection, share: Share | None = None) -> str:
    """The consumer of the live runner: ``nats consumer info <STREAM> projection-<name>``
    (``projection-usage-1of2`` for the second of two usage workers)."""
    return f"projection-{projection.name}{(share or Share()).suffix()}"


class ProjectionRunner:
    """Folds one projection's stream into its read model, live, exactly once, through outages.

    ``run(stop)`` follows the stream from the projection's checkpoint until ``stop`` is set;
    ``apply(batch)`` folds one batch with its checkpoint in one transaction (see the module
    docstring for what survives what). Run one per projection and database — or, for a
    partitioned projection, one per ``share`` of its partitions.
    """

    def __init__(
        self,
        js: JetStreamContext,
        pool: asyncpg.Pool,
        projection: Projection,
        *,
        batch: int = 1024,
        share: Share | None = None,
    ) -> None:
        # A batch is what arrived while the previous one was folded, so a larger limit adds no
        # latency; under load it spreads each transaction's fixed cost over more events (bench_usage.py).
        self._js = js
        self._pool = pool
        self.projection = projection
        self._batch = batch
        self.share = share or Share()
        self.checkpoints = Checkpoints(projection, self.share)  # raises ValueError for a bad share
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
            self.checkpoints.subjects,
            on_batch=self._fold,
            batch=self._batch,
            after=last,
            name=consumer_name(projection, self.share),
            description=f"folds {projection.stream} into the {projection.name} read model{self.share.suffix()}",
        )
        await follower.run(stop)

    async def _fold(self, messages: list[Msg]) -> None:
        with on_database():
            await self.apply(messages)

    async def apply(self, messages: Sequence[Msg]) -> int:
        """Fold one batch in one transaction; returns the new checkpoint (the lowest of this
        runner's, when nothing in the batch was fresh).

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
        async with self._pool.acquire() as conn, conn.transaction():
            locked = await self.checkpoints.lock(conn)
            # A batch is in stream order: unless its first event is at or below a checkpoint (a
            # redelivery, or a partition another worker had folded further), all of it is fresh.
            fresh = self.checkpoints.fresh(messages, locked)
            # Every event of this runner's partitions up to the batch's last one is folded once
            # this commits (a batch of other workers' partitions only moves the checkpoints on).
            last = messages[-1].metadata.sequence.stream
            if not fresh:
                await self.checkpoints.advance(conn, last)
                return min(locked.values())
            if careful:
                letters = await quarantine.fold(conn, self.projection, fresh)
            else:
                await self.projection.apply(conn, fresh)
                letters = []
            await self.checkpoints.advance(conn, last)
        # Counted once committed: a batch whose commit failed is applied again and counted then.
        self.applied += len(fresh) - len(letters)
        self.quarantined += len(letters)
        if started:
            stream = self.projection.stream
            spans.record_fold(
                self.projection.name, stream, fresh, started, time.time_ns(), {d.sequence for d in letters}
            )
        return last

    async def _checkpoint(self) -> int:
        """Where to follow from: the lowest of this runner's checkpoints."""
        async with self._pool.acquire() as conn, conn.transaction():
            return min((await self.checkpoints.lock(conn)).values())
