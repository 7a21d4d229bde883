"""What a projection is: a fold of one stream's events into read-model tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import asyncpg
from nats.aio.msg import Msg

__all__ = ["Projection"]


class Projection(Protocol):
    name: str  # also the name of its checkpoint and of its durable consumer ("projection-<name>")
    stream: str
    filter_subject: str
    tables: tuple[str, ...]  # the read-model tables it owns, children first (emptied on rebuild)

    async def apply(self, conn: asyncpg.Connection, events: Sequence[Msg]) -> None:
        """Fold ``events`` (in stream order) into the read model, inside the caller's transaction.

        Must be set-based: one statement per batch, not one per event.
        """
        ...
