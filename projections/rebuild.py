"""Rebuild a read model from the log, rebuild it as of a past instant, or prove it equals a rebuild.

All three fold the stream into a shadow schema (:mod:`.shadow`) first, outside any lock, while
the live model keeps serving and the live runner keeps folding. Then:

* :func:`rebuild` locks the checkpoint row (the live runner waits), folds the events the live
  runner applied meanwhile, copies the shadow over the live tables and moves the checkpoint —
  one transaction, so readers see the old complete model until the commit and the new one after.
* :func:`verify` builds up to the live checkpoint, locks it, catches up, and compares the
  tables' checksums in that transaction, so both sides stand at the same sequence — and which
  events each side quarantined.
* :func:`rebuild_as_of` stops at the last event stored at or before the instant and leaves the
  result in ``dai_asof_<name>``, with a ``checkpoint`` table saying where it stopped. It never
  touches the live model or its checkpoint: a read model frozen in the past under the live
  name would be wrong for every reader, and the live runner would fold the future onto it.

One build per projection runs at a time (a PostgreSQL advisory lock); a second one fails at once
with :class:`RebuildInProgress` instead of dropping the first one's shadow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from . import quarantine, shadow
from .base import Projection
from .checkpoints import Checkpoints
from .errors import RebuildInProgress
from .log import LogRange, LogReader, sequence_at, stream_last_sequence

__all__ = ["AsOfResult", "TableComparison", "rebuild", "rebuild_as_of", "verify"]

_LOCK_SPACE = 0x646169  # "dai": first key of the two-key advisory locks of projection builds
CHUNK = 16_384  # events per shadow transaction: few round trips, and a batch folds to few rows


@dataclass(frozen=True, slots=True)
class TableComparison:
    table: str
    live: shadow.TableChecksum
    rebuilt: shadow.TableChecksum

    @property
    def equal(self) -> bool:
        return self.live == self.rebuilt


@dataclass(frozen=True, slots=True)
class AsOfResult:
    schema: str  # where the past state is, e.g. ``dai_asof_registry``
    as_of: datetime
    last_sequence: int  # the last stream sequence folded; 0 when the instant precedes the stream
    events: int


class _Builder:
    """Folds windows of the log into one shadow schema, committing every ``CHUNK`` events."""

    def __init__(self, js: JetStreamContext, conn: asyncpg.Connection, projection: Projection, schema: str) -> None:
        self._js = js
        self._conn = conn
        self._projection = projection
        self._schema = schema
        self.position = 0  # every matching event up to here is folded
        self.events = 0

    async def build(self, last: int, *, batch: int) -> None:
        """Fold up to ``last``, committing chunks; the DB write of one chunk overlaps the next fetch."""
        pending: asyncio.Task[None] | None = None
        chunk: list[Msg] = []
        try:
            async with self._reader(last, batch) as reader:
                async for messages in reader:
                    chunk += messages
                    if len(chunk) >= CHUNK:
                        if pending is not None:
                            await pending
                        pending = asyncio.create_task(self._commit(chunk))
                        chunk = []
            if pending is not None:
                await pending
                pending = None
            if chunk:
                await self._commit(chunk)
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
        self.position = max(self.position, last)

    async def catch_up(self, last: int, *, batch: int, keep: Callable[[Msg], bool] | None = None) -> None:
        """Fold up to ``last`` inside the caller's transaction (only what ``keep`` keeps, if given)."""
        async with self._reader(last, batch) as reader:
            async for messages in reader:
                kept = messages if keep is None else [m for m in messages if keep(m)]
                if kept:
                    await shadow.fold(self._conn, self._schema, self._projection, kept)
                self.events += len(kept)
        self.position = max(self.position, last)

    async def _commit(self, messages: list[Msg]) -> None:
        async with self._conn.transaction():
            await shadow.fold(self._conn, self._schema, self._projection, messages)
        self.events += len(messages)

    def _reader(self, last: int, batch: int) -> LogReader:
        """The events after ``position`` up to ``last`` (an empty window once ``last`` is reached)."""
        first = self.position + 1
        window = LogRange(
            self._projection.stream, self._projection.filter_subject, first_seq=first, last_seq=max(last, first - 1)
        )
        return LogReader(self._js, window, batch=batch)


@contextlib.asynccontextmanager
async def _build_slot(
    pool: asyncpg.Pool, projection: Projection, purpose: str, *, keep: bool = False
) -> AsyncIterator[tuple[asyncpg.Connection, str, list[shadow.Table]]]:
    """A connection holding the projection's build lock, and a fresh shadow schema (dropped unless ``keep``)."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", _LOCK_SPACE, projection.name):
            raise RebuildInProgress(f"another rebuild, verification or as-of build of {projection.name!r} is running")
        try:
            tables = await shadow.live_tables(conn, projection)
            schema = shadow.schema_name(purpose, projection.name)
            await shadow.create(conn, schema, tables)
            try:
                yield conn, schema, tables
            except BaseException:
                await shadow.drop(conn, schema)  # half a build is nobody's to read
                raise
            if not keep:
                await shadow.drop(conn, schema)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", _LOCK_SPACE, projection.name)


async def rebuild(js: JetStreamContext, pool: asyncpg.Pool, projection: Projection, *, batch: int = 1024) -> int:
    """Rebuild the read model from the whole stream and swap it in atomically; returns the events folded."""
    async with _build_slot(pool, projection, "shadow") as (conn, schema, tables):
        builder = _Builder(js, conn, projection, schema)
        target = await stream_last_sequence(js, projection.stream)
        await builder.build(target, batch=batch)
        checkpoints = Checkpoints(projection)  # every partition's: the swap replaces all of them
        async with conn.transaction():
            live = max((await checkpoints.lock(conn)).values())
            # The live runners may have folded events past our target while we built: the shadow
            # takes them too, or the swap would lose them (the runners have acknowledged them).
            await builder.catch_up(live, batch=batch)
            await shadow.replace_live(conn, schema, tables)
            await quarantine.replace_live(conn, schema, projection)
            # The shadow holds every event up to its position, whatever its partition.
            await checkpoints.advance(conn, builder.position)
    return builder.events


async def verify(
    js: JetStreamContext, pool: asyncpg.Pool, projection: Projection, *, batch: int = 1024
) -> list[TableComparison]:
    """Rebuild into a shadow at the live checkpoint and compare each table's checksum with the live one."""
    async with _build_slot(pool, projection, "verify") as (conn, schema, tables):
        builder = _Builder(js, conn, projection, schema)
        checkpoints = Checkpoints(projection)
        # Up to the lowest checkpoint every partition has folded; then, locked, each partition
        # up to its own (workers of a partitioned projection stand at different sequences).
        await builder.build(min((await checkpoints.read(conn)).values()), batch=batch)
        async with conn.transaction():
            locked = await checkpoints.lock(conn)
            await builder.catch_up(max(locked.values()), batch=batch, keep=checkpoints.keeper(locked))
            comparisons = [
                TableComparison(
                    table=table.qualified,
                    live=await shadow.checksum(conn, table.qualified),
                    rebuilt=await shadow.checksum(conn, table.in_schema(schema)),
                )
                for table in tables
            ]
            # The same events quarantined: a rebuild would set aside exactly what the live runner did.
            comparisons.append(
                TableComparison(
                    table=f"{quarantine.TABLE} of {projection.name}",
                    live=await shadow.dead_letters_checksum(conn, None, projection),
                    rebuilt=await shadow.dead_letters_checksum(conn, schema, projection),
                )
            )
            return comparisons


async def rebuild_as_of(
    js: JetStreamContext, pool: asyncpg.Pool, projection: Projection, as_of: datetime, *, batch: int = 1024
) -> AsOfResult:
    """Build the read model as it was at ``as_of`` into ``dai_asof_<name>``; the live model is left alone."""
    last = await sequence_at(js, projection.stream, as_of, after=True) - 1
    async with _build_slot(pool, projection, "asof", keep=True) as (conn, schema, _tables):
        builder = _Builder(js, conn, projection, schema)
        await builder.build(last, batch=batch)
        checkpoint = f"{shadow.ident(schema)}.checkpoint"
        async with conn.transaction():
            await conn.execute(
                f"CREATE TABLE {checkpoint} (projection text NOT NULL, stream text NOT NULL,"
                " as_of timestamptz NOT NULL, last_sequence bigint NOT NULL, events bigint NOT NULL,"
                " built_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.execute(
                f"INSERT INTO {checkpoint} (projection, stream, as_of, last_sequence, events)"
                " VALUES ($1, $2, $3, $4, $5)",
                projection.name,
                projection.stream,
                as_of,
                last,
                builder.events,
            )
    return AsOfResult(schema=schema, as_of=as_of, last_sequence=last, events=builder.events)
