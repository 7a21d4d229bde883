"""What a projection is: a fold of one stream's events into read-model tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import asyncpg
from nats.aio.msg import Msg

from democratic_ai.contracts.partitions import PartitionScheme

__all__ = ["Projection"]


class Projection(Protocol):
    name: str  # also the name of its checkpoint and of its durable consumer ("projection-<name>")
    stream: str
    filter_subject: str
    # None: one checkpoint. Otherwise the stream's partitions (contracts/partitions.py): one
    # checkpoint each, and the projection may run as several workers (see .checkpoints).
    partitions: PartitionScheme | None
    # The read-model tables it owns, children first: a rebuild's swap empties them in this order
    # and fills them in reverse. Only these tables may be referenced by its SQL (see .shadow).
    tables: tuple[str, ...]

    async def apply(self, conn: asyncpg.Connection, events: Sequence[Msg]) -> None:
        """Fold ``events`` (in stream order) into the read model, inside the caller's transaction.

        Must be set-based: one statement per batch, not one per event.
        """
        ...
