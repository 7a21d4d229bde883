"""Run a projection: fetch batches from its durable consumer, fold them, checkpoint, ack.

Exactly once: a batch's rows and its last stream sequence commit in one transaction, and the
batch is acknowledged only after that commit. A crash before the commit loses nothing (the
events are delivered again); a crash after it and before the ack makes JetStream redeliver
events whose sequence is at or below the checkpoint, and those are skipped.

Poison-proof: a batch that fails because of one of its events (it cannot be decoded, or
PostgreSQL refuses its values) is applied again in a new transaction through
:func:`.quarantine.fold`, which folds every other event and quarantines the bad ones, with the
checkpoint advance in that same transaction. The projection goes on with the next event.

Outage-proof: when PostgreSQL cannot be reached (killed, restarting, in crash recovery), the
batch in hand is neither acknowledged nor counted as applied. The runner drops its
subscription, waits for the database with backoff (:class:`~democratic_ai.schemas.DatabaseOutage`:
0.2 s doubling to 5 s, a WARNING when the wait starts and every 30 s while it lasts) and then
starts over from the checkpoint Postgres committed, recreating the consumer there — so it
resumes as soon as the database answers, not after JetStream's ``ack_wait``, and a batch whose
commit the outage interrupted is neither lost nor folded twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from democratic_ai.schemas.outage import DatabaseOutage, on_database

from . import quarantine
from .base import Projection
from .checkpoints import advance_checkpoint, lock_checkpoint

__all__ = ["ProjectionRunner", "consumer_name"]

log = logging.getLogger(__name__)


def consumer_name(projection: Projection) -> str:
    """The durable consumer of the live runner: ``nats consumer info <STREAM> projection-<name>``."""
    return f"projection-{projection.name}"


class ProjectionRunner:
    def __init__(
        self, js: JetStreamContext, pool: asyncpg.Pool, projection: Projection, *, batch: int = 1024
    ) -> None:
        # A fetch returns what is there at once, so a larger batch adds no latency; under load
        # it spreads each transaction's fixed cost over more events (bench_usage.py).
        self._js = js
        self._pool = pool
        self.projection = projection
        self._batch = batch
        self.quarantined = 0  # events this runner has quarantined since it started

    async def run(self, stop: asyncio.Event) -> None:
        """Fold events until ``stop`` is set, waiting out database outages (see the module docstring)."""
        await DatabaseOutage(f"projection {self.projection.name}", log).keep_following(lambda outage: self._follow(stop, outage), stop)

    async def _follow(self, stop: asyncio.Event, outage: DatabaseOutage) -> None:
        """Fold from the checkpoint until ``stop`` is set; raises :class:`DatabaseUnreachable`.

        Pipelined: the next batch is fetched while Postgres writes the current one, so the
        database's work overlaps with this process's. Exactly once is unchanged — a batch is
        acknowledged only after its commit, and a batch fetched but not applied when the
        worker stops is delivered again from the checkpoint.
        """
        with on_database():
            last = await self._checkpoint()
        outage.over()
        subscription = await self._subscribe(last)
        fetching = asyncio.ensure_future(self._fetch(subscription))
        try:
            while not stop.is_set():
                messages = await fetching
                fetching = asyncio.ensure_future(self._fetch(subscription))
                if not messages:
                    continue
                with on_database():
                    await self.apply(messages)
                await messages[-1].ack()  # AckPolicy.ALL: acknowledges the whole batch
        finally:
            fetching.cancel()
            await asyncio.gather(fetching, return_exceptions=True)
            await subscription.unsubscribe()

    async def _fetch(self, subscription: JetStreamContext.PullSubscription) -> list[Msg]:
        try:
            return await subscription.fetch(self._batch, timeout=0.5)
        except TimeoutError:  # builtin: nats raises both its own and asyncio's
            return []

    async def apply(self, messages: Sequence[Msg]) -> int:
        """Fold one batch in one transaction; returns the new checkpoint.

        The common case costs nothing extra: the batch is applied without savepoints, and only
        when it fails with one of :data:`.quarantine.EVENT_ERRORS` is it applied again, in a new
        transaction, event by event where needed (bisecting, see :func:`.quarantine.fold`).
        """
        try:
            return await self._apply(messages, careful=False)
        except quarantine.EVENT_ERRORS as exc:
            log.warning("projection %s: a batch of %d events failed (%s); applying it again, quarantining"
                        " the events at fault", self.projection.name, len(messages), quarantine.describe(exc))
        return await self._apply(messages, careful=True)

    async def _apply(self, messages: Sequence[Msg], *, careful: bool) -> int:
        name = self.projection.name
        async with self._pool.acquire() as conn, conn.transaction():
            last = await lock_checkpoint(conn, name)
            # A batch is in stream order: unless its first event is at or below the checkpoint (a
            # redelivery), all of it is fresh — without parsing every message's metadata.
            fresh = messages
            if messages[0].metadata.sequence.stream <= last:
                fresh = [m for m in messages if m.metadata.sequence.stream > last]
            if not fresh:
                return last
            if careful:
                self.quarantined += len(await quarantine.fold(conn, self.projection, fresh))
            else:
                await self.projection.apply(conn, fresh)
            last = fresh[-1].metadata.sequence.stream
            await advance_checkpoint(conn, name, last)
            return last

    async def _checkpoint(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            return await lock_checkpoint(conn, self.projection.name)

    async def _subscribe(self, last: int) -> JetStreamContext.PullSubscription:
        """(Re)create the durable consumer just after the checkpoint ``last``.

        Postgres, not the consumer, knows what was applied: recreating the consumer at start
        (and after a database outage) means a worker resumes at once instead of waiting out
        ``ack_wait`` for the redelivery of what it had fetched but not committed.
        """
        projection = self.projection
        try:
            await self._js.delete_consumer(projection.stream, consumer_name(projection))
        except NotFoundError:
            pass
        config = ConsumerConfig(
            durable_name=consumer_name(projection),
            ack_policy=AckPolicy.ALL,
            ack_wait=60.0,
            max_ack_pending=-1,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if last else DeliverPolicy.ALL,
            opt_start_seq=last + 1 if last else None,
            filter_subject=projection.filter_subject,
            description=f"folds {projection.stream} into the {projection.name} read model",
        )
        return await self._js.pull_subscribe(
            projection.filter_subject, durable=consumer_name(projection), stream=projection.stream, config=config
        )
