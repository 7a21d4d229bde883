"""Shadow schemas: a private copy of a projection's tables, built from the log, then compared or swapped in.

A shadow is a PostgreSQL schema (``dai_shadow_<name>``, ``dai_verify_<name>``,
``dai_asof_<name>``) holding one empty table per live table, created ``LIKE`` it
(columns, defaults, checks, indexes). A projection folds into it unchanged: its SQL names
tables without a schema, and :func:`fold` points ``search_path`` at the shadow — and only at
it, so a statement that names a table the projection does not declare fails instead of
writing to the live model.

Swapping copies instead of renaming. :func:`replace_live` deletes the live rows and inserts
the shadow's, in the caller's transaction. Renaming tables would be O(1), but it is not
MVCC-safe — a REPEATABLE READ reader that began before the swap would find the new tables
empty, as PostgreSQL documents for TRUNCATE — and it would have to rebuild what ``LIKE`` does
not copy (foreign keys, grants, row-level security policies, dependent views, index names);
a missed policy would silently open a tenant's rows to every other tenant. The copy is set-based and
costs O(rows of the read model), not O(events): the expensive fold of the log happened
earlier, outside any lock. Readers are never blocked and see the old rows until the commit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from nats.aio.msg import Msg

from . import quarantine
from .base import Projection
from .errors import MissingReadModel, ReadModelChanged

__all__ = [
    "Table",
    "TableChecksum",
    "checksum",
    "create",
    "dead_letters_checksum",
    "drop",
    "fold",
    "ident",
    "live_tables",
    "replace_live",
    "schema_name",
]


@dataclass(frozen=True, slots=True)
class Table:
    """A live read-model table: its schema and name as PostgreSQL resolved them."""

    schema: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{ident(self.schema)}.{ident(self.name)}"

    def in_schema(self, schema: str) -> str:
        return f"{ident(schema)}.{ident(self.name)}"


@dataclass(frozen=True, slots=True)
class TableChecksum:
    rows: int
    md5: str


def ident(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def schema_name(purpose: str, projection: str) -> str:
    """``dai_<purpose>_<projection>``, folded to the characters an unquoted identifier allows."""
    return re.sub(r"[^a-z0-9_]", "_", f"dai_{purpose}_{projection}".lower())[:63]


async def live_tables(conn: asyncpg.Connection, projection: Projection) -> list[Table]:
    """Resolve the projection's tables through ``search_path``, in its order (children first)."""
    tables = []
    for name in projection.tables:
        row = await conn.fetchrow(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.oid = to_regclass($1)",
            ident(name),
        )
        if row is None:
            raise MissingReadModel(
                f"table {name!r} of projection {projection.name!r} does not exist; run the migrations"
            )
        tables.append(Table(schema=row["nspname"], name=row["relname"]))
    return tables


async def create(conn: asyncpg.Connection, schema: str, tables: Sequence[Table]) -> None:
    """(Re)create ``schema`` with one empty copy of each table; a leftover of a crashed build goes first."""
    async with conn.transaction():
        await conn.execute(f"DROP SCHEMA IF EXISTS {ident(schema)} CASCADE")
        await conn.execute(f"CREATE SCHEMA {ident(schema)}")
        for table in tables:
            await conn.execute(f"CREATE TABLE {table.in_schema(schema)} (LIKE {table.qualified} INCLUDING ALL)")
        # Where the fold quarantines (see .quarantine): the shadow's own dead letters.
        await conn.execute(f"CREATE TABLE {ident(schema)}.{quarantine.TABLE} (LIKE {quarantine.TABLE} INCLUDING ALL)")


async def drop(conn: asyncpg.Connection, schema: str) -> None:
    await conn.execute(f"DROP SCHEMA IF EXISTS {ident(schema)} CASCADE")


async def fold(conn: asyncpg.Connection, schema: str, projection: Projection, events: Sequence[Msg]) -> None:
    """Apply ``events`` to the shadow in ``schema``, inside the caller's transaction, quarantining
    the events that cannot be folded into the shadow's dead letters, as the live runner does."""
    previous = await conn.fetchval("SELECT current_setting('search_path')")
    # Transaction-local, and restored at once: the caller's next statements (the checkpoint,
    # the swap) must resolve to the live schema again.
    await conn.execute("SELECT set_config('search_path', $1, true)", ident(schema))
    await quarantine.fold(conn, projection, events)
    await conn.execute("SELECT set_config('search_path', $1, true)", previous)


async def _columns(conn: asyncpg.Connection, qualified: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
        " WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        qualified,
    )
    return [(row["attname"], row["type"]) for row in rows]


async def replace_live(conn: asyncpg.Connection, schema: str, tables: Sequence[Table]) -> None:
    """Make the live tables hold exactly the shadow's rows, inside the caller's transaction.

    Children are emptied first and parents filled first, so foreign keys between the
    projection's tables hold at every statement; they also check the rebuilt rows.
    """
    columns: dict[Table, str] = {}
    for table in tables:
        live = await _columns(conn, table.qualified)
        if live != await _columns(conn, table.in_schema(schema)):
            raise ReadModelChanged(
                f"the columns of {table.qualified} changed while its shadow was built (a migration ran?);"
                " nothing was swapped, run the command again"
            )
        columns[table] = ", ".join(ident(name) for name, _ in live)
    for table in tables:
        await conn.execute(f"DELETE FROM {table.qualified}")
    for table in reversed(tables):
        await conn.execute(
            f"INSERT INTO {table.qualified} ({columns[table]}) SELECT {columns[table]} FROM {table.in_schema(schema)}"
        )


async def dead_letters_checksum(conn: asyncpg.Connection, schema: str | None, projection: Projection) -> TableChecksum:
    """Which events ``projection`` quarantined (sequence, subject, payload: not the error text or
    time, which differ between a live batch and a rebuild's), live (``schema`` None) or in a shadow."""
    table = f"{ident(schema)}.{quarantine.TABLE}" if schema else quarantine.TABLE
    row = await conn.fetchrow(
        "SELECT count(*) AS rows, md5(coalesce(string_agg(md5(sequence::text || ' ' || subject || ' '"
        f" || encode(payload, 'hex')), '' ORDER BY sequence), '')) AS md5 FROM {table} WHERE projection = $1",
        projection.name,
    )
    return TableChecksum(rows=row["rows"], md5=row["md5"])


async def checksum(conn: asyncpg.Connection, qualified: str) -> TableChecksum:
    """Row count and the md5 of every row's md5, in primary-key order (whole-row order without one).

    Rows are compared as PostgreSQL prints them, so equal checksums mean equal values column
    by column — jsonb included, whose text form is canonical.
    """
    key = await conn.fetch(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
        qualified,
    )
    order = ", ".join(f"t.{ident(row['attname'])}" for row in key) or 't::text COLLATE "C"'
    row = await conn.fetchrow(
        f"SELECT count(*) AS rows, md5(coalesce(string_agg(md5(t::text), '' ORDER BY {order}), '')) AS md5"
        f" FROM {qualified} t"
    )
    return TableChecksum(rows=row["rows"], md5=row["md5"])
