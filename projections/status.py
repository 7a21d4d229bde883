"""How far each projection is behind its stream, in events and in seconds, and how many of its
events it has quarantined.

A partitioned projection's status sums up its partitions' (in ``partitions``, one per
checkpoint): ``applied`` is the lowest of their checkpoints (every event up to it is folded),
``lag_events`` their sum and ``lag_seconds`` the largest."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from democratic_ai.contracts.partitions import PartitionScheme
from democratic_ai.schemas.checkpoints import partition_checkpoint

from .base import Projection
from .checkpoints import read_checkpoints
from .quarantine import count_dead_letters

__all__ = ["ProjectionStatus", "projection_status"]


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    name: str
    stream: str
    applied: int  # the last stream sequence folded into the read model (its checkpoint)
    stream_last: int  # the stream's last sequence
    lag_events: int  # events of the projection's filter stored after ``applied``
    lag_seconds: float  # stream time between the last applied event and the stream's last event
    quarantined: int = 0  # its events in projection_dead_letters: skipped, waiting for `dai projections retry`
    partitions: tuple[ProjectionStatus, ...] = ()  # a partitioned projection's, named after their checkpoints


async def projection_status(
    js: JetStreamContext, pool: asyncpg.Pool, projections: Iterable[Projection]
) -> list[ProjectionStatus]:
    """The status of each projection, read without locking anything."""
    async with pool.acquire() as conn:
        checkpoints = await read_checkpoints(conn)
        quarantined = await count_dead_letters(conn)
    statuses = []
    for projection in projections:
        stream_last = (await js.stream_info(projection.stream)).state.last_seq
        count = quarantined.get(projection.name, 0)
        if projection.partitions is None:
            applied = checkpoints.get(projection.name, 0)
            status = await _status(js, projection, projection.name, [projection.filter_subject], applied, stream_last)
            statuses.append(replace(status, quarantined=count))
            continue
        # A partition's row is missing until a worker first runs: it stands where the projection did.
        before = checkpoints.get(projection.name, 0)
        parts = tuple(
            [
                await _status(js, projection, name, subjects, checkpoints.get(name, before), stream_last)
                for name, subjects in _partitions(projection, projection.partitions)
            ]
        )
        statuses.append(
            ProjectionStatus(
                projection.name,
                projection.stream,
                min(p.applied for p in parts),
                stream_last,
                sum(p.lag_events for p in parts),
                max(p.lag_seconds for p in parts),
                count,
                parts,
            )
        )
    return statuses


def _partitions(projection: Projection, scheme: PartitionScheme) -> list[tuple[str, list[str]]]:
    """Each partition's checkpoint name and filter subjects (the server counts its lag exactly)."""
    return [(partition_checkpoint(projection.name, p), scheme.subjects(p)) for p in range(scheme.count)]


async def _status(
    js: JetStreamContext, projection: Projection, name: str, subjects: Sequence[str], applied: int, stream_last: int
) -> ProjectionStatus:
    lag_events, first_pending = (
        await _pending(js, projection.stream, subjects, applied) if applied < stream_last else (0, None)
    )
    lag_seconds = 0.0
    if lag_events:
        # The stream's last message may be gone (a purge keeps last_seq): then there is no lag in seconds to tell.
        newest = await _stored_at(js, projection.stream, stream_last)
        reference = await _stored_at(js, projection.stream, applied) or first_pending
        if newest is not None and reference is not None:
            lag_seconds = max(0.0, (newest - reference).total_seconds())
    return ProjectionStatus(name, projection.stream, applied, stream_last, lag_events, lag_seconds)


async def _pending(
    js: JetStreamContext, stream: str, subjects: Sequence[str], applied: int
) -> tuple[int, datetime | None]:
    """How many matching events follow ``applied``, and when the first of them was stored.

    The server counts them for a consumer that starts just after the checkpoint — exact with
    any subject filter and any deleted messages, and without reading the events.
    """
    info = await js.add_consumer(
        stream,
        ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=applied + 1,
            filter_subjects=list(subjects),
            ack_policy=AckPolicy.NONE,
            inactive_threshold=10.0,
            mem_storage=True,
        ),
    )
    try:
        if not info.num_pending:
            return 0, None
        subscription = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
        try:
            first = (await subscription.fetch(1, timeout=2.0))[0]
        except TimeoutError:  # the events were removed in between (nats raises a subclass)
            return info.num_pending, None
        finally:
            await subscription.unsubscribe()
        return info.num_pending, first.metadata.timestamp
    finally:
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(stream, info.name)


async def _stored_at(js: JetStreamContext, stream: str, sequence: int) -> datetime | None:
    """When message ``sequence`` was stored; ``None`` before the first one or once it is gone."""
    if sequence < 1:
        return None
    try:
        return (await js.get_msg(stream, sequence)).time
    except NotFoundError:
        return None
