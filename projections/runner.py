"""Run a projection: fetch batches from its durable consumer, fold them, checkpoint, ack.

Exactly once: a batch's rows and its last stream sequence commit in one transaction, and the
batch is acknowledged only after that commit. A crash before the commit loses nothing (the
events are delivered again); a crash after it and before the ack makes JetStream redeliver
events whose sequence is at or below the checkpoint, and those are skipped.
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

from .base import Projection
from .checkpoints import advance_checkpoint, lock_checkpoint

__all__ = ["ProjectionRunner", "consumer_name"]

log = logging.getLogger(__name__)


def consumer_name(projection: Projection) -> str:
    """The durable consumer of the live runner: ``nats consumer info <STREAM> projection-<name>``."""
    return f"projection-{projection.name}"


class ProjectionRunner:
    def __init__(
        self, js: JetStreamContext, pool: asyncpg.Pool, projection: Projection, *, batch: int = 512
    ) -> None:
        self._js = js
        self._pool = pool
        self.projection = projection
        self._batch = batch

    async def run(self, stop: asyncio.Event) -> None:
        """Fold events until ``stop`` is set."""
        subscription = await self._subscribe()
        try:
            while not stop.is_set():
                try:
                    messages = await subscription.fetch(self._batch, timeout=0.5)
                except TimeoutError:  # builtin: nats raises both its own and asyncio's
                    continue
                if not messages:
                    continue
                await self.apply(messages)
                await messages[-1].ack()  # AckPolicy.ALL: acknowledges the whole batch
        finally:
            await subscription.unsubscribe()

    async def apply(self, messages: Sequence[Msg]) -> int:
        """Fold one batch in one transaction; returns the new checkpoint."""
        name = self.projection.name
        async with self._pool.acquire() as conn, conn.transaction():
            last = await lock_checkpoint(conn, name)
            fresh = [m for m in messages if m.metadata.sequence.stream > last]
            if not fresh:
                return last
            await self.projection.apply(conn, fresh)
            last = fresh[-1].metadata.sequence.stream
            await advance_checkpoint(conn, name, last)
            return last

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        """(Re)create the durable consumer just after the checkpoint.

        Postgres, not the consumer, knows what was applied: recreating the consumer at start
        means a worker killed mid-batch resumes at once instead of waiting out ``ack_wait``.
        """
        projection = self.projection
        async with self._pool.acquire() as conn, conn.transaction():
            last = await lock_checkpoint(conn, projection.name)
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
