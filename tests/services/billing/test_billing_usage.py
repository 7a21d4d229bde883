"""Invoices read usage through :class:`PostgresUsageTotals`, which reads metering's read model
(issue 4: ``usage_daily`` per UTC day, ``usage_events`` per event). Here those two tables are
stand-ins with the same names and columns, in a schema of their own (``usage_standin``, first
on the search path) so they never meet the real ones; tests/services/billing/test_billing_usage_e2e.py runs
against the real projection.

A Tokyo month begins at 15:00 UTC, inside a UTC day: the whole days must come from the daily
table and the edges from the events, and the sum must equal a plain sum over the events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from democratic_ai.services.billing import PostgresUsageTotals, UsageUnavailable

GIB = 1024**3
JAN_START = datetime(2024, 12, 31, 15, 0, tzinfo=UTC)  # 2025-01-01 00:00 in Tokyo
JAN_END = datetime(2025, 1, 31, 15, 0, tzinfo=UTC)

_STANDIN = """
CREATE SCHEMA usage_standin;
CREATE TABLE usage_standin.usage_events (
    call_id text NOT NULL, metric text NOT NULL, at timestamptz NOT NULL, tenant_id text NOT NULL,
    value bigint NOT NULL, outcome text NOT NULL, capability text NOT NULL DEFAULT '',
    module_id text NOT NULL DEFAULT '', user_id text NOT NULL DEFAULT '', api_key_id text NOT NULL DEFAULT '',
    sequence bigint NOT NULL DEFAULT 0, PRIMARY KEY (call_id, metric, at));
CREATE TABLE usage_standin.usage_daily (
    tenant_id text NOT NULL, day date NOT NULL, metric text NOT NULL, outcome text NOT NULL,
    value bigint NOT NULL, events bigint NOT NULL, PRIMARY KEY (tenant_id, day, metric, outcome));
"""

# (metric, at, value, outcome): calls around both edges of the month, compute, and storage deltas.
EVENTS = [
    ("api_calls", JAN_START - timedelta(microseconds=1), 1, "success"),  # December in Tokyo
    ("api_calls", JAN_START, 1, "success"),
    ("api_calls", JAN_START + timedelta(hours=8, minutes=59), 1, "success"),  # same UTC day as the start
    ("api_calls", JAN_START + timedelta(hours=9), 1, "success"),  # the first whole UTC day
    ("api_calls", JAN_START + timedelta(days=10), 1, "failed"),  # not billable
    ("api_calls", JAN_START + timedelta(days=10), 1, "rate_limited"),
    ("api_calls", JAN_END - timedelta(hours=15), 1, "success"),  # the UTC day the month ends in
    ("api_calls", JAN_END - timedelta(microseconds=1), 1, "success"),
    ("api_calls", JAN_END, 1, "success"),  # February in Tokyo
    ("compute_ms", JAN_START + timedelta(days=3), 1_500, "success"),
    ("compute_ms", JAN_END + timedelta(hours=1), 9_999, "success"),
    ("storage_bytes", datetime(2024, 11, 5, tzinfo=UTC), 60 * GIB, "success"),  # held since November
    ("storage_bytes", JAN_START + timedelta(days=20), -5 * GIB, "success"),  # freed in January
    ("storage_bytes", JAN_END - timedelta(hours=2), GIB, "success"),  # same UTC day as the end
    ("storage_bytes", JAN_END + timedelta(hours=2), 100 * GIB, "success"),  # after: not held at the end
]


@pytest.fixture
async def standin(database_url: str, pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """A pool whose ``usage_daily`` and ``usage_events`` are the stand-ins, filled as the
    usage projection would fill them."""
    async with pool.acquire() as conn:
        await conn.execute(_STANDIN)
        await conn.executemany(
            "INSERT INTO usage_standin.usage_events (call_id, metric, at, tenant_id, value, outcome)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            [
                (f"{tenant}-{n}", metric, at, tenant, value, outcome)
                for tenant in ("acme", "other")
                for n, (metric, at, value, outcome) in enumerate(EVENTS)
            ],
        )
        await conn.execute(
            "INSERT INTO usage_standin.usage_daily SELECT tenant_id, (at AT TIME ZONE 'UTC')::date, metric, outcome,"
            " sum(value), count(*) FROM usage_standin.usage_events GROUP BY 1, 2, 3, 4"
        )
    standin_pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=2, server_settings={"search_path": "usage_standin, public"}
    )
    yield standin_pool
    await standin_pool.close()


def expected(start: datetime, end: datetime) -> dict[str, int]:
    flows: dict[str, int] = {}
    for metric, at, value, outcome in EVENTS:
        if outcome != "success":
            continue
        if metric == "storage_bytes" and at < end:
            flows[metric] = flows.get(metric, 0) + value
        elif metric != "storage_bytes" and start <= at < end:
            flows[metric] = flows.get(metric, 0) + value
    return flows


async def test_a_tokyo_month_from_whole_utc_days_and_exact_edges(standin: asyncpg.Pool) -> None:
    totals = await PostgresUsageTotals(standin).totals("acme", JAN_START, JAN_END)
    assert totals == {"api_calls": 5, "compute_ms": 1_500, "storage_bytes": 56 * GIB}
    assert totals == expected(JAN_START, JAN_END)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (JAN_START, JAN_START + timedelta(hours=3)),  # inside one UTC day
        (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 31, tzinfo=UTC)),  # UTC midnights
        (JAN_START + timedelta(hours=9), JAN_END - timedelta(hours=15)),  # whole days only
        (JAN_START - timedelta(days=60), JAN_END + timedelta(days=1)),
    ],
)
async def test_any_window_equals_the_plain_sum_of_its_events(
    standin: asyncpg.Pool, start: datetime, end: datetime
) -> None:
    assert await PostgresUsageTotals(standin).totals("acme", start, end) == expected(start, end)


async def test_a_missing_usage_read_model_is_a_clear_error(database_url: str, pool: asyncpg.Pool) -> None:
    # A search path without the usage tables, whether or not this tree has metering.
    bare = await asyncpg.create_pool(database_url, min_size=1, max_size=1, server_settings={"search_path": "nowhere"})
    try:
        with pytest.raises(UsageUnavailable, match="usage read model is not installed"):
            await PostgresUsageTotals(bare).totals("acme", JAN_START, JAN_END)
    finally:
        await bare.close()


async def test_billed_usage_follows_the_outcome_rule_in_whole_days_and_at_the_edges(standin: asyncpg.Pool) -> None:
    """Every metric of a success; the compute_ms of a cancelled call and nothing else of it;
    nothing of a call that timed out, failed or was refused — from the daily sums (a whole UTC
    day) and from the events (the month's first, partial, UTC day) alike."""
    calls = {"success": 1_000, "cancelled": 200, "timeout": 30, "failed": 4, "rate_limited": 0}
    rows = []
    for day, at in (("whole", JAN_START + timedelta(days=5)), ("edge", JAN_START + timedelta(hours=1))):
        for outcome, compute in calls.items():
            rows.append((f"{day}-{outcome}", "api_calls", at, 1, outcome))
            if compute:
                rows += [
                    (f"{day}-{outcome}", "compute_ms", at, compute, outcome),
                    (f"{day}-{outcome}", "bytes_out", at, 7, outcome),
                ]
    async with standin.acquire() as conn:
        await conn.executemany(
            "INSERT INTO usage_events (call_id, metric, at, tenant_id, value, outcome)"
            " VALUES ($1, $2, $3, 'rule', $4, $5)",
            rows,
        )
        await conn.execute(
            "INSERT INTO usage_daily SELECT tenant_id, (at AT TIME ZONE 'UTC')::date, metric, outcome, sum(value),"
            " count(*) FROM usage_events WHERE tenant_id = 'rule' GROUP BY 1, 2, 3, 4"
        )
    totals = await PostgresUsageTotals(standin).totals("rule", JAN_START, JAN_END)
    assert totals == {"api_calls": 2, "compute_ms": 2 * (1_000 + 200)}
