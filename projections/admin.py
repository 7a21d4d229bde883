"""The projections' operator desk on NATS: their status and quarantined events, and retrying one.

The gateway may read neither ``projection_dead_letters`` nor write a read model (it connects
as ``dai_app``), so the console's Operations page asks the projections worker, which connects
as the owner, over core NATS request/reply (:mod:`democratic_ai.contracts.ops`). What it
answers comes from the same functions ``dai projections status`` and ``dai projections retry``
use: :func:`~.status.projection_status` and :func:`~.quarantine.retry` (of one event here).

Requests of an unknown shape answer ``BAD_REQUEST``; an unknown projection or a sequence not in
quarantine ``NOT_FOUND``; the database or the stream not answering ``NOT_READY`` — never silence.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from democratic_ai.contracts import ErrorCode
from democratic_ai.contracts.ops import (
    PROJECTIONS_QUEUE,
    PROJECTIONS_RETRY,
    PROJECTIONS_STATUS,
    OpsAnswer,
    OpsError,
    ProjectionsReport,
    ProjectionState,
    QuarantinedEvent,
    RetryOutcome,
    RetryRequest,
)

from .base import Projection
from .quarantine import count_dead_letters, dead_letters, retry
from .status import projection_status

__all__ = ["ProjectionsAdmin"]

log = logging.getLogger(__name__)

QUARANTINE_SHOWN = 200  # quarantined events listed in one report (the total is counted apart)

_retry_request = msgspec.json.Decoder(RetryRequest).decode
_encode = msgspec.json.Encoder().encode


class _Refusal(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class ProjectionsAdmin:
    """Answers :data:`PROJECTIONS_STATUS` and :data:`PROJECTIONS_RETRY` for ``projections``."""

    def __init__(self, nc: NATS, pool: asyncpg.Pool, projections: Iterable[Projection]) -> None:
        self._nc, self._pool = nc, pool
        self._projections = {p.name: p for p in projections}
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        self._subscriptions = [
            await self._nc.subscribe(PROJECTIONS_STATUS, queue=PROJECTIONS_QUEUE, cb=self._on_status),
            await self._nc.subscribe(PROJECTIONS_RETRY, queue=PROJECTIONS_QUEUE, cb=self._on_retry),
        ]

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions.clear()

    async def report(self) -> ProjectionsReport:
        """Every projection's position and the oldest quarantined events."""
        statuses = await projection_status(self._nc.jetstream(), self._pool, self._projections.values())
        async with self._pool.acquire() as conn:
            rows = await dead_letters(conn, limit=QUARANTINE_SHOWN)
            total = sum((await count_dead_letters(conn)).values())
        return ProjectionsReport(
            projections=[
                ProjectionState(s.name, s.stream, s.applied, s.stream_last, s.lag_events, s.lag_seconds, s.quarantined)
                for s in statuses
            ],
            quarantined=[
                QuarantinedEvent(r.projection, r.stream, r.sequence, r.subject, r.error, r.attempts, r.quarantined_at)
                for r in rows
                if r.projection in self._projections
            ],
            quarantined_total=total,
        )

    async def retry_one(self, request: RetryRequest) -> RetryOutcome:
        """Apply one quarantined event again; it leaves the quarantine if it applies now."""
        projection = self._projections.get(request.projection)
        if projection is None:
            raise _Refusal(ErrorCode.NOT_FOUND, f"no projection {request.projection!r}")
        async with self._pool.acquire() as conn:
            if not await dead_letters(conn, projection.name, request.sequence, limit=1):
                raise _Refusal(
                    ErrorCode.NOT_FOUND,
                    f"projection {projection.name!r} has no quarantined event at sequence {request.sequence}",
                )
        result = await retry(self._pool, projection, [request.sequence])
        if result.applied:
            return RetryOutcome(projection.name, request.sequence, applied=True)
        async with self._pool.acquire() as conn:
            [row] = await dead_letters(conn, projection.name, request.sequence, limit=1)
        return RetryOutcome(projection.name, request.sequence, applied=False, error=row.error, attempts=row.attempts)

    async def _on_status(self, msg: Msg) -> None:
        await self._answer(msg, self._status)

    async def _on_retry(self, msg: Msg) -> None:
        await self._answer(msg, self._retried)

    async def _status(self, msg: Msg) -> OpsAnswer:
        return OpsAnswer(report=await self.report())

    async def _retried(self, msg: Msg) -> OpsAnswer:
        try:
            request = _retry_request(msg.data)
        except msgspec.DecodeError as exc:
            raise _Refusal(ErrorCode.BAD_REQUEST, f"not a retry request: {exc}") from None
        return OpsAnswer(retried=await self.retry_one(request))

    async def _answer(self, msg: Msg, handle: Callable[[Msg], Awaitable[OpsAnswer]]) -> None:
        try:
            answer = await handle(msg)
        except _Refusal as refusal:
            answer = OpsAnswer(error=OpsError(refusal.code.value, refusal.message))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, NatsError, TimeoutError) as exc:
            log.warning("projections admin could not answer %s: %s", msg.subject, exc)
            answer = OpsAnswer(error=OpsError(ErrorCode.NOT_READY.value, f"the projections cannot answer now: {exc}"))
        except Exception:  # a bug of ours: said to the asker, logged with its traceback
            log.exception("projections admin failed on %s", msg.subject)
            answer = OpsAnswer(error=OpsError(ErrorCode.INTERNAL.value, "the projections worker failed; see its log"))
        if msg.reply:
            await msg.respond(_encode(answer))
