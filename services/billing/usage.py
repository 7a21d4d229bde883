"""Where invoices read usage: the :class:`UsageTotals` port, and its Postgres adapter.

Billing never counts events itself: the usage read model (the ``usage`` projection of the
USAGE stream) does, exactly once. :class:`PostgresUsageTotals` reads its tables:

* ``usage_daily (tenant_id, day, metric, outcome, value)`` — sums per UTC day;
* ``usage_events (tenant_id, metric, at, outcome, value, …)`` — every event, partitioned by month.

A tenant's month starts at its own midnight, which is not a UTC day boundary in most time
zones, so the whole UTC days inside the window come from ``usage_daily`` and the two partial
days at its edges from ``usage_events`` (index ``(tenant_id, at)``): exact at any boundary,
and a month costs one small query. What is billable is the usage contract's rule
(``contracts/usage_events.BILLABLE``): every metric of a ``success``, and the ``compute_ms`` of a
``cancelled`` call (its caller asked for the work); nothing of a call that timed out, failed or
was refused.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from typing import Protocol

import asyncpg
from nats.js import JetStreamContext

from democratic_ai.contracts.partitions import USAGE_PARTITIONS, partition_targets
from democratic_ai.contracts.streams import USAGE_STREAM
from democratic_ai.contracts.usage_events import BILLABLE
from democratic_ai.schemas import partition_checkpoint, tenant_transaction, wait_for_checkpoint

from .errors import UsageUnavailable

__all__ = ["PostgresUsageTotals", "UsageTotals"]

FLOW_METRICS = ("api_calls", "compute_ms")
STOCK_METRICS = ("storage_bytes",)  # events are deltas (bytes written, or freed): bill the balance


class UsageTotals(Protocol):
    """Billable usage of a tenant, per metric, in metered units (calls, milliseconds, bytes)."""

    async def totals(self, tenant_id: str, start: datetime, end: datetime) -> dict[str, int]:
        """Billable usage in ``[start, end)`` for flow metrics (``api_calls``, ``compute_ms``);
        for ``storage_bytes``, the bytes held at ``end`` (every storage event before it, summed).
        Metrics with no usage may be left out."""
        ...


_QUERY = """
WITH billable (metric, outcome) AS (SELECT * FROM unnest($12::text[], $13::text[])),
parts AS (
    SELECT metric, value FROM usage_daily
     WHERE tenant_id = $1 AND metric = any($2::text[]) AND day >= $3 AND day < $4
       AND (metric, outcome) IN (SELECT metric, outcome FROM billable)
    UNION ALL
    SELECT metric, value FROM usage_events
     WHERE tenant_id = $1 AND metric = any($2::text[])
       AND ((at >= $5 AND at < $6) OR (at >= $7 AND at < $8))
       AND (metric, outcome) IN (SELECT metric, outcome FROM billable)
    UNION ALL
    SELECT metric, value FROM usage_daily
     WHERE tenant_id = $1 AND metric = any($9::text[]) AND day < $10
       AND (metric, outcome) IN (SELECT metric, outcome FROM billable)
    UNION ALL
    SELECT metric, value FROM usage_events
     WHERE tenant_id = $1 AND metric = any($9::text[]) AND at >= $11 AND at < $8
       AND (metric, outcome) IN (SELECT metric, outcome FROM billable)
)
SELECT metric, sum(value)::bigint AS total FROM parts GROUP BY metric
"""
# The billable (metric, outcome) pairs, as the two arrays the query unnests.
_BILLABLE_METRICS, _BILLABLE_OUTCOMES = (list(column) for column in zip(*sorted(BILLABLE), strict=True))


def _day_start(at: datetime) -> datetime:
    return datetime.combine(at.astimezone(UTC).date(), time(), tzinfo=UTC)


class PostgresUsageTotals:
    """:class:`UsageTotals` over the usage read model.

    With ``js`` it first waits until the ``usage`` projection has applied every event of the
    tenant the USAGE stream held when the read began — its partition's checkpoint, whichever
    worker folds it — so an invoice never misses an event that was already in the log.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext | None = None,
        *,
        catch_up_timeout: float = 60.0,
        projection: str = "usage",
        stream: str = USAGE_STREAM,
    ) -> None:
        self._pool = pool
        self._js = js
        self._timeout = catch_up_timeout
        self._projection = projection
        self._stream = stream

    async def totals(self, tenant_id: str, start: datetime, end: datetime) -> dict[str, int]:
        await self._caught_up(tenant_id)
        first_full = _day_start(start) if start == _day_start(start) else _day_start(start) + timedelta(days=1)
        last_full = max(_day_start(end), first_full)  # whole days are [first_full, last_full)
        head_end = min(first_full, end)
        tail_start = max(last_full, head_end)
        try:
            # The usage tables use row level security; naming the tenant lets the gateway's
            # read-only role run this too.
            async with tenant_transaction(self._pool, tenant_id) as conn:
                rows = await conn.fetch(
                    _QUERY,
                    tenant_id,
                    list(FLOW_METRICS),
                    first_full.date(),
                    last_full.date(),
                    start,
                    head_end,
                    tail_start,
                    end,
                    list(STOCK_METRICS),
                    _day_start(end).date(),
                    _day_start(end),
                    _BILLABLE_METRICS,
                    _BILLABLE_OUTCOMES,
                )
        except asyncpg.UndefinedTableError as exc:
            raise UsageUnavailable(f"the usage read model is not installed ({exc}); run the usage projection") from None
        return {row["metric"]: int(row["total"]) for row in rows}

    async def _caught_up(self, tenant_id: str) -> None:
        """Wait until the tenant's partition (and partition 0, for its events stored before
        partitions existed) holds every event of the tenant the stream holds now."""
        if self._js is None:
            return
        targets = await partition_targets(self._js, self._stream, USAGE_PARTITIONS, tenant_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        for partition, target in sorted(targets.items()):
            name = partition_checkpoint(self._projection, partition)
            done = await wait_for_checkpoint(self._pool, name, target, max(0.0, deadline - loop.time()))
            if done < target:
                raise UsageUnavailable(
                    f"the {self._projection} projection's partition {partition} is at {done} of {target}"
                    f" {self._stream} events; is the projection worker of that partition running?"
                )
