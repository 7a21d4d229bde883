"""Usage read models: raw events by month; aggregates per tenant × day × metric (billing) and per
tenant × hour × capability × module × metric (series, capabilities, modules).

A batch costs two round trips however large it is (one checks the month partitions): the batch
goes to Postgres as one JSON array, and one statement unpacks it, inserts the raw rows and, from
the rows that insert actually added (``RETURNING``), adds to both aggregates. Exactly once holds twice over:
the runner commits rows and checkpoint together, and an event that arrives again anyway —
republished by recovery, or by hand — conflicts on its raw key and adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import msgspec
from nats.aio.msg import Msg

from democratic_ai.contracts.partitions import USAGE_PARTITIONS
from democratic_ai.contracts.streams import USAGE_STREAM
from democratic_ai.contracts.subjects import ALL_USAGE
from democratic_ai.contracts.usage_events import UsageEvent

__all__ = ["UsageProjection"]

PARTITION_SCHEMA = "usage_partitions"

_FOLD = """
WITH input AS (
    SELECT coalesce(call_id, operation_id) AS call_id, metric, at, tenant_id, value, outcome, capability,
           coalesce(module_id, store) AS module_id, user_id, api_key_id
    FROM json_to_recordset(convert_from($1::bytea, 'UTF8')::json)
        AS t(call_id text, operation_id text, metric text, at timestamptz, tenant_id text, value bigint,
             outcome text, capability text, module_id text, store text, user_id text, api_key_id text)
), added AS (
    INSERT INTO usage_events (call_id, metric, at, tenant_id, value, outcome, capability, module_id, user_id,
                              api_key_id)
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
    INSERT INTO usage_hourly AS h (tenant_id, hour, capability, module_id, metric, outcome, value, events)
    SELECT tenant_id, date_trunc('hour', at, 'UTC'), capability, module_id, metric, outcome, sum(value), count(*)
    FROM added GROUP BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (tenant_id, hour, capability, module_id, metric, outcome)
    DO UPDATE SET value = h.value + excluded.value, events = h.events + excluded.events
)
SELECT count(*) FROM added
"""


_batch_decoder = msgspec.json.Decoder(list[UsageEvent])
_encode = msgspec.json.Encoder().encode


def _decode(events: Sequence[Msg]) -> tuple[bytes, list[UsageEvent]]:
    """The batch as one JSON array of the decoded events, and the events.

    The batch is decoded in one call with the typed decoder, which validates every event; a
    malformed one raises ``msgspec.DecodeError`` and the runner quarantines it. The array that
    goes to Postgres — one parameter that ``json_to_recordset`` unpacks in C — is encoded again
    from the decoded events, not the bytes as published: an event that omits a field with a
    default (``user_id``) must be stored with that default, not as NULL."""
    decoded = _batch_decoder.decode(b"[" + b",".join([m.data for m in events]) + b"]")
    return _encode(decoded), decoded


def _month(at: datetime) -> tuple[int, int]:
    utc = at if at.tzinfo is UTC else at.astimezone(UTC)
    return utc.year, utc.month


def _partition(month: tuple[int, int]) -> tuple[str, str, str]:
    """The partition of ``(year, month)``: its name and its bounds (UTC)."""
    year, number = month
    after = (year + 1, 1) if number == 12 else (year, number + 1)
    return (
        f"usage_events_{year:04d}_{number:02d}",
        f"{year:04d}-{number:02d}-01 00:00:00+00",
        f"{after[0]:04d}-{after[1]:02d}-01 00:00:00+00",
    )


class UsageProjection:
    name = "usage"
    stream = USAGE_STREAM
    filter_subject = ALL_USAGE
    partitions = USAGE_PARTITIONS  # a tenant's events are folded in order, by one worker of several
    tables = ("usage_hourly", "usage_daily", "usage_events")

    async def apply(self, conn: asyncpg.Connection, events: Sequence[Msg]) -> None:
        document, decoded = _decode(events)
        if not decoded:
            return
        await self._ensure_partitions(conn, {_month(e.at) for e in decoded})
        # A duplicate, in the batch or of an earlier one, conflicts on the raw key and is skipped.
        await conn.fetchval(_FOLD, document)

    async def _ensure_partitions(self, conn: asyncpg.Connection, months: set[tuple[int, int]]) -> None:
        """Create the partitions the batch needs. Checked in the catalog on every batch (one
        small query) rather than remembered: a partition created in a transaction that rolled
        back, or in another database, must not be taken for existing."""
        wanted = {_partition(m)[0]: m for m in months}
        # The partitions belong to the live, partitioned usage_events, also while a rebuild folds
        # into its shadow copy (projections/shadow.py: a plain table, on the search path then):
        # the rebuilt rows are copied into the live table, which must have their months by then.
        parent, existing = await conn.fetchrow(
            "SELECT (SELECT p.partrelid::regclass::text FROM pg_partitioned_table p"
            " JOIN pg_class c ON c.oid = p.partrelid WHERE c.relname = 'usage_events'),"
            " array(SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relname = any($2::text[]))",
            PARTITION_SCHEMA,
            list(wanted),
        )
        missing = set(wanted) - set(existing)
        if missing:
            # Workers of other partitions may be creating the same month: IF NOT EXISTS does not
            # cover a concurrent CREATE, so creations take turns (until the creator commits),
            # and the next in turn finds the table made.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('usage_events partitions'))")
        for name in sorted(missing):
            _, start, end = _partition(wanted[name])
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS {PARTITION_SCHEMA}."{name}" PARTITION OF {parent}'
                f" FOR VALUES FROM ('{start}') TO ('{end}')"
            )
