"""Calls and errors per minute, and latency and success rate per capability, of the calls that ended
in the last minutes: the window, its SQL and its answer, in one place.

Two endpoints read it: ``GET /v1/calls/stats`` (a tenant's calls, :mod:`.calls_routes`) and
``GET /v1/modules/{module}/stats`` (the calls one module answered, for every tenant that called it,
:mod:`.module_routes`). They differ only in the transaction they read in and the condition that
picks their rows; the counting, the percentiles and the answer's shape are these.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import msgspec
from aiohttp import web

from democratic_ai.contracts.usage_events import Outcome

from .calls_items import whole_number
from .openapi import Query

__all__ = [
    "DEFAULT_MINUTES",
    "MAX_MINUTES",
    "MINUTES_QUERY",
    "STATS_DESCRIPTION",
    "CapabilityStats",
    "MinuteStats",
    "WindowStats",
    "window_minutes",
    "window_stats",
]

DEFAULT_MINUTES, MAX_MINUTES = 60, 1440
MINUTES_QUERY = Query(
    "minutes",
    f"The window, 1 to {MAX_MINUTES} minutes (default {DEFAULT_MINUTES}).",
    {"type": "integer", "minimum": 1, "maximum": MAX_MINUTES},
)
STATS_DESCRIPTION = (
    "Counts calls that ended in the window (the current minute included), by the minute they ended."
    " An error is any outcome but success. p50_ms and p95_ms are exact (percentile_cont over every call"
    " with a known duration, not sampled); a refused call has none. A bad 'minutes' answers 400"
    " BAD_REQUEST with details.parameter."
)


class MinuteStats(msgspec.Struct):
    minute: datetime  # the UTC minute it starts
    calls: int  # calls that ended in it
    errors: int  # of them, those that did not succeed
    outcomes: dict[str, int]  # outcome → calls


class CapabilityStats(msgspec.Struct):
    capability: str
    calls: int
    errors: int
    success_rate: float | None  # successes / calls; null without calls
    p50_ms: float | None  # exact percentiles of duration_ms (percentile_cont); null without a known duration
    p95_ms: float | None
    outcomes: dict[str, int]


class WindowStats(msgspec.Struct):
    """What every stats answer holds; its subclasses add whose calls they are."""

    minutes: int
    from_: datetime = msgspec.field(name="from")  # the first minute of the window
    to: datetime
    per_minute: list[MinuteStats]  # every minute of the window, oldest first, zeros included
    capabilities: list[CapabilityStats]  # by capability name
    total: CapabilityStats  # every capability together (its ``capability`` is "*")


S = TypeVar("S", bound=WindowStats)


def window_minutes(request: web.Request) -> int:
    """The ``minutes`` of the query: 1 to :data:`MAX_MINUTES`, :data:`DEFAULT_MINUTES` when absent."""
    return whole_number("minutes", request.query.get("minutes"), DEFAULT_MINUTES, MAX_MINUTES)


def _capability_stats(name: str, row: Any, outcomes: dict[str, int]) -> CapabilityStats:
    calls, successes = row["calls"], row["successes"]
    return CapabilityStats(
        name,
        calls,
        calls - successes,
        successes / calls if calls else None,
        row["p50"],
        row["p95"],
        outcomes,
    )


async def window_stats(
    conn: asyncpg.Connection,
    answer: type[S],
    minutes: int,
    condition: str = "",
    args: Sequence[Any] = (),
    **whose: Any,
) -> S:
    """The ``calls`` rows ``conn`` sees that ended in the last ``minutes``, as an ``answer``.

    ``condition`` narrows the rows further (SQL; its parameters are ``args``, numbered from
    ``$3``: ``$1`` and ``$2`` are the window's ends). ``whose`` are the fields ``answer`` adds to
    :class:`WindowStats`. Only counts and percentiles leave the database, never a row.
    """
    now = datetime.now(UTC)
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    where = "ended_at IS NOT NULL AND ended_at >= $1 AND ended_at <= $2" + (f" AND {condition}" if condition else "")
    by_minute = await conn.fetch(
        f"SELECT date_trunc('minute', ended_at, 'UTC') AS minute, outcome, count(*) AS n FROM calls"
        f" WHERE {where} GROUP BY 1, 2",
        start,
        now,
        *args,
    )
    by_capability = await conn.fetch(
        f"SELECT capability, outcome, count(*) AS n FROM calls WHERE {where} GROUP BY 1, 2", start, now, *args
    )
    latency = await conn.fetch(
        "SELECT capability, count(*) AS calls, count(*) FILTER (WHERE outcome = 'success') AS successes,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50,"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95"
        f" FROM calls WHERE {where} GROUP BY GROUPING SETS ((capability), ())",
        start,
        now,
        *args,
    )
    minutes_seen: dict[datetime, dict[str, int]] = {}
    for row in by_minute:
        minutes_seen.setdefault(row["minute"], {})[row["outcome"]] = row["n"]
    per_minute = []
    for i in range(minutes):
        minute = start + timedelta(minutes=i)
        outcomes = minutes_seen.get(minute, {})
        calls = sum(outcomes.values())
        per_minute.append(MinuteStats(minute, calls, calls - outcomes.get(Outcome.SUCCESS.value, 0), outcomes))
    outcomes_of: dict[str, dict[str, int]] = {}
    everything: dict[str, int] = {}
    for row in by_capability:
        outcomes_of.setdefault(row["capability"], {})[row["outcome"]] = row["n"]
        everything[row["outcome"]] = everything.get(row["outcome"], 0) + row["n"]
    capabilities, total = [], None
    for row in latency:
        if row["capability"] is None:
            total = _capability_stats("*", row, everything)
        else:
            capabilities.append(_capability_stats(row["capability"], row, outcomes_of.get(row["capability"], {})))
    if total is None:  # no call in the window: the empty grouping set still answers, but be sure
        total = CapabilityStats("*", 0, 0, None, None, None, {})
    capabilities.sort(key=lambda c: c.capability)
    return answer(
        minutes=minutes,
        from_=start,
        to=now,
        per_minute=per_minute,
        capabilities=capabilities,
        total=total,
        **whose,
    )
