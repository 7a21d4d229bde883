"""Usage read models: raw events by month, and aggregates per day, hour × capability, day × module.

A batch costs two round trips however large it is: the batch goes to Postgres as eleven
arrays (``unnest``), and one statement inserts the raw rows and, from the rows that insert
actually added (``RETURNING``), adds to the three aggregates. Exactly once holds twice over:
the runner commits rows and checkpoint together, and an event that arrives again anyway —
republished by recovery, or by hand — conflicts on its raw key and adds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import msgspec
from nats.aio.msg import Msg

from democratic_ai.contracts.usage_events import CallMetered, decode_usage_event

__all__ = ["UsageProjection"]

log = logging.getLogger(__name__)

PARTITION_SCHEMA = "usage_partitions"

_FOLD = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::bigint[], $6::text[],
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[])
        AS t(call_id, metric, at, tenant_id, value, outcome, capability, module_id, user_id, api_key_id, sequence)
), added AS (
    INSERT INTO usage_events (call_id, metric, at, tenant_id, value, outcome, capability, module_id, user_id,
                              api_key_id, sequence)
    SELECT * FROM input
    ON CONFLICT DO NOTHING
    RETURNING tenant_id, metric, at, value, outcome, capability, module_id
), daily AS (
    INSERT INTO usage_daily AS d (tenant_id, day, metric, outcome, value, events)
    SELECT tenant_id, (at AT TIME ZONE 'UTC')::date, metric, outcome, sum(value), count(*)
    FROM added GROUP BY 1, 2, 3, 4
    ON CONFLICT (tenant_id, day, metric, outcome)
    DO UPDATE SET value = d.value + excluded.value, events = d.events + excluded.events
), hourly AS (
    INSERT INTO usage_hourly_capability AS h (tenant_id, hour, capability, metric, outcome, value, events)
    SELECT tenant_id, date_trunc('hour', at, 'UTC'), capability, metric, outcome, sum(value), count(*)
    FROM added GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (tenant_id, hour, capability, metric, outcome)
    DO UPDATE SET value = h.value + excluded.value, events = h.events + excluded.events
), modules AS (
    INSERT INTO usage_daily_module AS m (tenant_id, day, module_id, metric, outcome, value, events)
    SELECT tenant_id, (at AT TIME ZONE 'UTC')::date, module_id, metric, outcome, sum(value), count(*)
    FROM added GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (tenant_id, day, module_id, metric, outcome)
    DO UPDATE SET value = m.value + excluded.value, events = m.events + excluded.events
)
SELECT count(*) FROM added
"""


def _partition(month: tuple[int, int]) -> tuple[str, str, str]:
    """The partition of ``(year, month)``: its name and its bounds (UTC)."""
    year, number = month
    after = (year + 1, 1) if number == 12 else (year, number + 1)
    return (f"usage_events_{year:04d}_{number:02d}", f"{year:04d}-{number:02d}-01 00:00:00+00",
            f"{after[0]:04d}-{after[1]:02d}-01 00:00:00+00")


class UsageProjection:
    name = "usage"
    stream = "USAGE"
    filter_subject = "usage.>"
    tables = ("usage_daily_module", "usage_hourly_capability", "usage_daily", "usage_events")

    async def apply(self, conn: asyncpg.Connection, events: Sequence[Msg]) -> None:
        columns: tuple[list[object], ...] = tuple([] for _ in range(11))
        (call_ids, metrics, stamps, tenants, values, outcomes, capabilities, modules, users, keys,
         sequences) = columns
        seen: set[tuple[str, str, datetime]] = set()
        months: set[tuple[int, int]] = set()
        for msg in events:
            try:
                event = decode_usage_event(msg.data)
            except msgspec.ValidationError as exc:
                log.error("skipped USAGE event %d: %s", msg.metadata.sequence.stream, exc)
                continue
            if isinstance(event, CallMetered):
                key, module = event.call_id, event.module_id
            else:
                key, module = event.operation_id, event.store
            identity = (key, event.metric, event.at)
            if identity in seen:
                continue
            seen.add(identity)
            utc = event.at.astimezone(UTC)
            months.add((utc.year, utc.month))
            call_ids.append(key)
            metrics.append(event.metric)
            stamps.append(event.at)
            tenants.append(event.tenant_id)
            values.append(event.value)
            outcomes.append(event.outcome)
            capabilities.append(event.capability)
            modules.append(module)
            users.append(event.user_id)
            keys.append(event.api_key_id)
            sequences.append(msg.metadata.sequence.stream)
        if not call_ids:
            return
        await self._ensure_partitions(conn, months)
        await conn.fetchval(_FOLD, *columns)

    async def _ensure_partitions(self, conn: asyncpg.Connection, months: set[tuple[int, int]]) -> None:
        """Create the partitions the batch needs. Checked in the catalog on every batch (one
        small query) rather than remembered: a partition created in a transaction that rolled
        back, or in another database, must not be taken for existing."""
        wanted = {_partition(m)[0]: m for m in months}
        existing = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relname = any($2::text[])", PARTITION_SCHEMA, list(wanted))
        for name in set(wanted) - {r["relname"] for r in existing}:
            _, start, end = _partition(wanted[name])
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS {PARTITION_SCHEMA}."{name}" PARTITION OF usage_events'
                f" FOR VALUES FROM ('{start}') TO ('{end}')"
            )
