"""Where each projection stands in its stream: rows of ``projection_checkpoints`` (and one for the
usage recovery sweep, ``usage-recovery``: the last MCP sequence it handled).

An unpartitioned projection has one row, named after it. A partitioned one (the usage
projection, see :mod:`democratic_ai.contracts.partitions`) has one row per partition,
``usage.p00`` … ``usage.p15``: the last stream sequence up to which that partition's events
are folded. A worker owns some partitions (:class:`Share`) and advances all of their rows to
its batch's last sequence in the batch's transaction — its consumer delivers every event of
those partitions, so none of them is left behind below that sequence. Because each partition
keeps its own position, the number of workers can change between runs with no migration: a
worker starts after the lowest checkpoint it owns and skips, per partition, what is at or
below that partition's checkpoint.

The rows are also the projection's write lock: whoever changes the read model (a live runner,
a rebuild's swap, a verification's comparison, a retry) first locks them with
:meth:`Checkpoints.lock`, always in name order (so a rebuild locking every partition and
workers locking theirs never deadlock), so the model and its positions only ever change together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from democratic_ai.contracts.partitions import partition_targets
from democratic_ai.schemas.checkpoints import partition_checkpoint, read_checkpoint

from .base import Projection

__all__ = [
    "Checkpoints",
    "Share",
    "advance_checkpoint",
    "lock_checkpoint",
    "read_checkpoint",
    "read_checkpoints",
]


@dataclass(frozen=True, slots=True)
class Share:
    """Which partitions of a partitioned projection one worker folds: those with ``p % workers == worker``."""

    workers: int = 1
    worker: int = 0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"the number of workers must be at least 1, not {self.workers}.")
        if not 0 <= self.worker < self.workers:
            raise ValueError(f"the worker index must be from 0 to {self.workers - 1}, not {self.worker}.")

    def suffix(self) -> str:
        """What tells this worker's consumer from the others': empty for a single worker."""
        return "" if self.workers == 1 else f"-{self.worker}of{self.workers}"


class Checkpoints:
    """The checkpoint rows one runner (or one rebuild, with every partition) locks and advances."""

    def __init__(self, projection: Projection, share: Share | None = None) -> None:
        share = share or Share()
        self._projection = projection
        scheme = projection.partitions
        if scheme is None:
            if share.workers != 1:
                raise ValueError(f"projection {projection.name!r} is not partitioned; run it in one worker.")
            self.partitions: tuple[int, ...] = ()
            self.names = [projection.name]
            self.subjects = [projection.filter_subject]
            self._all = self.names
            self._whole = True
            return
        if share.workers > scheme.count:
            raise ValueError(
                f"projection {projection.name!r} has {scheme.count} partitions: at most {scheme.count} workers."
            )
        self.partitions = tuple(p for p in range(scheme.count) if p % share.workers == share.worker)
        self.names = [partition_checkpoint(projection.name, p) for p in self.partitions]
        # Every worker follows the projection's one filter (``usage.>``) and keeps its own
        # partitions' events (:meth:`fresh`): nats-server spends ~2 µs per event delivering a
        # single full-wildcard filter, but ~85 µs with one filter per partition (``usage.*.*.7``
        # …; bench_partitions.py measured both), more than what a worker spends skipping the
        # others' events.
        self.subjects = [projection.filter_subject]
        self._whole = share.workers == 1
        self._all = [partition_checkpoint(projection.name, p) for p in range(scheme.count)]

    async def lock(self, conn: asyncpg.Connection) -> dict[str, int]:
        """Lock and return these checkpoints, inside the caller's transaction.

        Missing rows are created — every partition's at once, at the position of the row named
        after the projection if there is one: that is where a projection that ran before it was
        partitioned stands, and every partition has folded up to there."""
        await conn.execute(
            "INSERT INTO projection_checkpoints (name, last_sequence)"
            " SELECT n, coalesce((SELECT last_sequence FROM projection_checkpoints WHERE name = $2), 0)"
            " FROM unnest($1::text[]) AS n ON CONFLICT DO NOTHING",
            self._all,
            self._projection.name,
        )
        rows = await conn.fetch(
            "SELECT name, last_sequence FROM projection_checkpoints WHERE name = any($1::text[])"
            " ORDER BY name FOR UPDATE",
            self.names,
        )
        return {row["name"]: row["last_sequence"] for row in rows}

    def fresh(self, messages: Sequence[Msg], locked: dict[str, int]) -> Sequence[Msg]:
        """The messages of these partitions above their partition's checkpoint (for a runner of
        every partition: all of them, unless redelivered)."""
        if self._whole and messages[0].metadata.sequence.stream > max(locked.values()):
            return messages
        return [
            m for m in messages if m.metadata.sequence.stream > locked.get(self._name_of(m), m.metadata.sequence.stream)
        ]

    def keeper(self, locked: dict[str, int]) -> Callable[[Msg], bool]:
        """Whether a message is at or below its partition's checkpoint (folded into the live model)."""
        return lambda m: m.metadata.sequence.stream <= locked[self._name_of(m)]

    def _name_of(self, msg: Msg) -> str:
        scheme = self._projection.partitions
        if scheme is None:
            return self.names[0]
        return partition_checkpoint(self._projection.name, scheme.of_subject(msg.subject))

    async def advance(self, conn: asyncpg.Connection, sequence: int) -> None:
        """Every one of these checkpoints to at least ``sequence``, inside the caller's transaction."""
        await conn.execute(
            "UPDATE projection_checkpoints SET last_sequence = greatest(last_sequence, $2), updated_at = now()"
            " WHERE name = any($1::text[])",
            self.names,
            sequence,
        )

    async def targets(self, js: JetStreamContext) -> dict[str, int]:
        """What each of these checkpoints must reach to hold everything the stream holds now."""
        scheme = self._projection.partitions
        if scheme is None:
            return {self.names[0]: (await js.stream_info(self._projection.stream)).state.last_seq}
        last = await partition_targets(js, self._projection.stream, scheme)
        return {name: last[p] for name, p in zip(self.names, self.partitions, strict=True)}

    async def read(self, conn: asyncpg.Connection) -> dict[str, int]:
        """These checkpoints without locking; a row not written yet stands where :meth:`lock`
        would create it (the pre-partition row's position, else 0)."""
        known = await read_checkpoints(conn)
        fallback = known.get(self._projection.name, 0) if self.partitions else 0
        return {name: known.get(name, fallback) for name in self.names}


async def lock_checkpoint(conn: asyncpg.Connection, name: str) -> int:
    """Lock and return one checkpoint row (creating it at 0), inside the caller's transaction."""
    await conn.execute("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING", name)
    return await conn.fetchval("SELECT last_sequence FROM projection_checkpoints WHERE name = $1 FOR UPDATE", name)


async def advance_checkpoint(conn: asyncpg.Connection, name: str, sequence: int) -> None:
    await conn.execute(
        "UPDATE projection_checkpoints SET last_sequence = $2, updated_at = now() WHERE name = $1", name, sequence
    )


async def read_checkpoints(conn: asyncpg.Connection) -> dict[str, int]:
    """Every checkpoint row's last applied sequence, without locking."""
    rows = await conn.fetch("SELECT name, last_sequence FROM projection_checkpoints")
    return {row["name"]: row["last_sequence"] for row in rows}
