"""Quarantine: an event a projection cannot decode or apply is set aside, and the projection goes on.

The log is permanent, so a projection that stopped on an event would stop on it after every
restart. Instead, when a batch fails with an error *about an event* (:data:`EVENT_ERRORS`: it
cannot be decoded, or PostgreSQL refuses its values), :func:`fold` splits the batch in halves,
each in a savepoint, down to the single events that fail. Those go to the dead-letter table
``projection_dead_letters`` — in the caller's transaction, so together with the checkpoint that
moves past them — and are logged at ERROR; every other event of the batch is folded.

Errors about the database itself (the connection is gone, the server shuts down, a
serialization failure) are not in :data:`EVENT_ERRORS`: they propagate, the transaction rolls
back and the batch is applied again later, whole.

The table is named without a schema: a shadow build (:mod:`.shadow`) folds with a
``search_path`` that names only its shadow schema, so its dead letters land in the shadow's copy
of the table and are swapped in with the rest of the rebuilt model.

:func:`retry` applies a projection's dead letters again (after a fix of the code or of the
schema): those that now apply are folded and removed, the others stay with their new error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import msgspec
from nats.aio.msg import Msg

from .base import Projection
from .checkpoints import Checkpoints
from .errors import UnfoldableEvent

__all__ = [
    "EVENT_ERRORS",
    "TABLE",
    "DeadLetter",
    "QuarantinedRow",
    "RetryResult",
    "count_dead_letters",
    "dead_letters",
    "describe",
    "fold",
    "replace_live",
    "retry",
    "stored_message",
]

log = logging.getLogger(__name__)

TABLE = "projection_dead_letters"

EVENT_ERRORS: tuple[type[BaseException], ...] = (
    msgspec.DecodeError,  # not JSON, or not the event type (ValidationError is a subclass)
    asyncpg.DataError,  # class 22: out of range, NUL, bad encoding, too long; and asyncpg's own argument checks
    asyncpg.IntegrityConstraintViolationError,  # class 23: NOT NULL, CHECK, UNIQUE, foreign keys
    asyncpg.ProgramLimitExceededError,  # class 54: e.g. a key too long for its index
    UnfoldableEvent,  # a projection's own refusal
    OverflowError,  # a date that leaves Python's range when converted to UTC
    UnicodeError,  # a string that cannot be encoded for the database
)

_ERROR_LENGTH = 2000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    projection: str
    stream: str
    sequence: int
    subject: str
    error: str


@dataclass(frozen=True, slots=True)
class QuarantinedRow:
    """A dead letter as an operator reads it: where it is and why, not its payload."""

    projection: str
    stream: str
    sequence: int
    subject: str
    error: str
    attempts: int
    quarantined_at: datetime


@dataclass(frozen=True, slots=True)
class RetryResult:
    applied: int  # dead letters that applied this time, and were removed
    failed: int  # dead letters that failed again, and were kept


def describe(exc: BaseException) -> str:
    """An error as one storable line: its type and message, without NUL, at most 2,000 characters."""
    text = f"{type(exc).__name__}: {exc}"
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\\0")[:_ERROR_LENGTH]


async def fold(conn: asyncpg.Connection, projection: Projection, events: Sequence[Msg]) -> list[DeadLetter]:
    """Apply ``events`` inside the caller's transaction, quarantining those that fail; returns them."""
    failures: list[tuple[Msg, str]] = []
    await _fold(conn, projection, events, failures)
    quarantined = []
    for msg, error in failures:
        letter = DeadLetter(projection.name, projection.stream, msg.metadata.sequence.stream, msg.subject, error)
        quarantined.append(letter)
        await conn.execute(
            f"INSERT INTO {TABLE} (projection, stream, sequence, subject, error, payload)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (projection, sequence) DO NOTHING",
            letter.projection,
            letter.stream,
            letter.sequence,
            _storable(letter.subject),
            letter.error,
            msg.data,
        )
        log.error(
            "projection %s quarantined %s event %d on %s: %s -- the projection goes on; the event is in %s,"
            " and `dai projections retry %s` applies it again after a fix",
            letter.projection,
            letter.stream,
            letter.sequence,
            letter.subject,
            letter.error,
            TABLE,
            letter.projection,
        )
    return quarantined


async def _fold(
    conn: asyncpg.Connection, projection: Projection, events: Sequence[Msg], out: list[tuple[Msg, str]]
) -> None:
    """Apply ``events`` in a savepoint; if one of them is at fault, apply each half the same way.

    Halves are applied in stream order, and a projection folds any split of a batch as it
    folds the whole (batch boundaries are arbitrary anyway), so the result is the batch minus
    the bad events. A batch with one bad event costs about 2·log2(n) savepoints.
    """
    if not events:
        return
    try:
        async with conn.transaction():
            await projection.apply(conn, events)
        return
    except EVENT_ERRORS as exc:
        if len(events) == 1:
            out.append((events[0], describe(exc)))
            return
    middle = len(events) // 2
    await _fold(conn, projection, events[:middle], out)
    await _fold(conn, projection, events[middle:], out)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _storable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\\0")


def stored_message(stream: str, sequence: int, subject: str, payload: bytes) -> Msg:
    """A dead letter as the message a projection applies: subject, data and stream sequence."""
    metadata = Msg.Metadata(
        sequence=Msg.Metadata.SequencePair(consumer=0, stream=sequence),
        num_pending=0,
        num_delivered=1,
        timestamp=datetime.now(UTC),
        stream=stream,
        consumer="retry",
    )
    return Msg(_client=None, subject=subject, data=payload, _metadata=metadata)  # type: ignore[arg-type]


async def retry(pool: asyncpg.Pool, projection: Projection, sequences: Sequence[int] | None = None) -> RetryResult:
    """Apply ``projection``'s dead letters again (only those at ``sequences``, if given), in
    stream order, each in its own savepoint.

    Holds the projection's checkpoint lock, so the live runner waits meanwhile. A dead letter
    is applied on top of the current model: when later events changed the same rows, only
    ``dai projections rebuild NAME`` (which quarantines afresh) folds everything in order.
    """
    async with pool.acquire() as conn:
        # The fix is often a migration: statements this connection prepared before it would
        # still bind the old column types.
        await conn.reload_schema_state()
        async with conn.transaction():
            return await _retry(conn, projection, sequences)


async def _retry(conn: asyncpg.Connection, projection: Projection, sequences: Sequence[int] | None) -> RetryResult:
    """:func:`retry` inside the caller's transaction."""
    applied = failed = 0
    await Checkpoints(projection).lock(conn)  # every partition's: no runner folds meanwhile
    rows = await conn.fetch(
        f"SELECT stream, sequence, subject, payload FROM {TABLE}"
        " WHERE projection = $1 AND ($2::bigint[] IS NULL OR sequence = ANY($2)) ORDER BY sequence",
        projection.name,
        None if sequences is None else list(sequences),
    )
    for row in rows:
        msg = stored_message(row["stream"], row["sequence"], row["subject"], row["payload"])
        try:
            async with conn.transaction():
                await projection.apply(conn, [msg])
        except EVENT_ERRORS as exc:
            failed += 1
            await conn.execute(
                f"UPDATE {TABLE} SET error = $3, attempts = attempts + 1 WHERE projection = $1 AND sequence = $2",
                projection.name,
                row["sequence"],
                describe(exc),
            )
            log.error(
                "projection %s: %s event %d still fails: %s",
                projection.name,
                row["stream"],
                row["sequence"],
                describe(exc),
            )
            continue
        applied += 1
        await conn.execute(
            f"DELETE FROM {TABLE} WHERE projection = $1 AND sequence = $2", projection.name, row["sequence"]
        )
        log.info("projection %s: %s event %d applied on retry", projection.name, row["stream"], row["sequence"])
    return RetryResult(applied=applied, failed=failed)


async def count_dead_letters(conn: asyncpg.Connection) -> dict[str, int]:
    """How many events each projection has quarantined (projections without any are absent)."""
    rows = await conn.fetch(f"SELECT projection, count(*) AS n FROM {TABLE} GROUP BY projection")
    return {row["projection"]: row["n"] for row in rows}


async def dead_letters(
    conn: asyncpg.Connection, projection: str | None = None, sequence: int | None = None, limit: int = 100
) -> list[QuarantinedRow]:
    """The quarantined events (of ``projection``, at ``sequence``, if given), oldest first, at most ``limit``."""
    rows = await conn.fetch(
        f"SELECT projection, stream, sequence, subject, error, attempts, quarantined_at FROM {TABLE}"
        " WHERE ($1::text IS NULL OR projection = $1) AND ($2::bigint IS NULL OR sequence = $2)"
        " ORDER BY quarantined_at, projection, sequence LIMIT $3",
        projection,
        sequence,
        limit,
    )
    return [QuarantinedRow(**dict(row)) for row in rows]


async def replace_live(conn: asyncpg.Connection, schema: str, projection: Projection) -> None:
    """Make the live dead letters of ``projection`` those of the shadow in ``schema`` (a rebuild's
    swap, in its transaction): an event that now applies is no longer quarantined."""
    # Unqualified: the caller's search_path, the live one, resolves the live table.
    await conn.execute(f"DELETE FROM {TABLE} WHERE projection = $1", projection.name)
    await conn.execute(
        f"INSERT INTO {TABLE} SELECT * FROM {_ident(schema)}.{TABLE} WHERE projection = $1", projection.name
    )
