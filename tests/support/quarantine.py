"""A quarantined event on demand: a small projection that cannot fold a value too big for its
column — until a "fix" (a migration) widens the column, after which a retry applies it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from democratic_ai.projections import PROJECTIONS, ProjectionRunner
from democratic_ai.projections.admin import ProjectionsAdmin

from support.names import unique
from support.projections import reached

__all__ = [
    "POISON_STREAM",
    "TOO_BIG",
    "PoisonValues",
    "fix_poison",
    "prepare_poison",
    "projections_admin",
    "quarantine_one",
]

POISON_STREAM = "OPSPOISON"
TOO_BIG = 2**40  # fits the event (an int) but not the column (integer) — until the fix
_TABLE = "ops_poison_values"


class _Value(msgspec.Struct):
    value: int


@dataclass
class PoisonValues:
    """A projection of ``{"value": n}`` events into ``ops_poison_values(value integer)``."""

    name: str = field(default_factory=lambda: unique("poison"))
    stream: str = POISON_STREAM
    filter_subject: str = field(default_factory=lambda: f"opspoison.{uuid.uuid4().hex[:10]}")
    partitions: None = None
    tables: tuple[str, ...] = (_TABLE,)

    async def apply(self, conn: asyncpg.Connection, events: Sequence[Msg]) -> None:
        rows = [(m.metadata.sequence.stream, msgspec.json.decode(m.data, type=_Value).value) for m in events]
        await conn.executemany(f"INSERT INTO {_TABLE} (sequence, value) VALUES ($1, $2) ON CONFLICT DO NOTHING", rows)


async def quarantine_one(nc: NATS, pool: asyncpg.Pool, projection: PoisonValues) -> int:
    """Publish a value the projection cannot fold, fold it, and return the quarantined event's sequence."""
    js = nc.jetstream()
    await prepare_poison(nc, pool)
    sequence = (await js.publish(projection.filter_subject, msgspec.json.encode({"value": TOO_BIG}))).seq
    stop = asyncio.Event()
    task = asyncio.create_task(ProjectionRunner(js, pool, projection, batch=16).run(stop))
    try:
        await reached(pool, projection.name, sequence)
    finally:
        stop.set()
        await task
    return sequence


async def prepare_poison(nc: NATS, pool: asyncpg.Pool) -> None:
    """The projection's stream (shared by the session's tests, as the platform's are) and table."""
    await nc.jetstream().add_stream(StreamConfig(name=POISON_STREAM, subjects=["opspoison.>"]))
    async with pool.acquire() as conn:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} (sequence bigint PRIMARY KEY, value integer NOT NULL)")


async def fix_poison(pool: asyncpg.Pool) -> None:
    """The fix: a migration widens the column, so the quarantined value now fits."""
    async with pool.acquire() as conn:
        await conn.execute(f"ALTER TABLE {_TABLE} ALTER COLUMN value TYPE bigint")


@asynccontextmanager
async def projections_admin(nc: NATS, pool: asyncpg.Pool, poison: PoisonValues) -> AsyncIterator[ProjectionsAdmin]:
    """The projections' operator desk (as `dai projections run` serves it), for the platform's
    projections and ``poison``, on the operator's connection and the owner's pool."""
    await prepare_poison(nc, pool)
    admin = ProjectionsAdmin(nc, pool, [*PROJECTIONS.values(), poison])
    await admin.start()
    try:
        yield admin
    finally:
        await admin.stop()
