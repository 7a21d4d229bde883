"""Migrations are numbered once; renaming two of them neither re-applies nor skips anything."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from importlib import resources

import asyncpg

from democratic_ai.ops.postgres_server import PostgresServer
from democratic_ai.schemas import RENAMED, migrate, migrations


def test_no_two_migration_files_share_a_number() -> None:
    names = [
        e.name for e in resources.files("democratic_ai.schemas").joinpath("sql").iterdir() if e.name.endswith(".sql")
    ]
    numbers = Counter()
    for name in names:
        match = re.fullmatch(r"(\d{3})_[a-z0-9_]+\.sql", name)
        assert match, f"{name}: a migration is named NNN_what.sql"
        numbers[match[1]] += 1
    assert [n for n, count in numbers.items() if count > 1] == []


def test_renamed_migrations_keep_their_order() -> None:
    """A fresh database applies the files in the order databases migrated before the rename did."""
    versions = [v for v, _ in migrations()]
    assert set(RENAMED) <= set(versions) and not set(RENAMED.values()) & set(versions)
    old_order = sorted(RENAMED.get(v, v) for v in versions)
    assert [RENAMED.get(v, v) for v in versions] == old_order


def _database(postgres_server: PostgresServer) -> str:
    return postgres_server.ensure_database(f"t_{uuid.uuid4().hex[:16]}")


async def _migrate_the_old_way(conn: asyncpg.Connection, *, upto: str | None = None) -> None:
    """What the migrator did before the rename: the files under their old names, in name order."""
    await conn.execute(
        "CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for old, sql in sorted((RENAMED.get(v, v), sql) for v, sql in migrations()):
        if upto is not None and old > upto:
            break
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", old)


async def _schema(conn: asyncpg.Connection) -> dict[str, list]:
    """The catalogue of the public schema: what a migration can have made, and which ran."""
    queries = {
        "relations": "SELECT c.relname, c.relkind::text, c.relispartition FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1",
        "columns": "SELECT table_name, column_name, data_type, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
        "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
        "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2",
        "functions": "SELECT proname, pg_get_functiondef(oid) FROM pg_proc"
        " WHERE pronamespace = 'public'::regnamespace ORDER BY 1",
        "triggers": "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2",
        "policies": "SELECT tablename, policyname, qual, with_check FROM pg_policies WHERE schemaname = 'public'"
        " ORDER BY 1, 2",
        "grants": "SELECT table_name, grantee, privilege_type FROM information_schema.role_table_grants"
        " WHERE table_schema = 'public' ORDER BY 1, 2, 3",
        "versions": "SELECT version FROM schema_migrations ORDER BY 1",
    }
    return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in queries.items()}


async def test_a_database_migrated_under_the_old_names_applies_nothing_again(postgres_server: PostgresServer) -> None:
    old = await asyncpg.connect(_database(postgres_server))
    fresh = await asyncpg.connect(_database(postgres_server))
    try:
        await _migrate_the_old_way(old)
        assert await migrate(old) == []  # nothing applied twice …
        assert await migrate(fresh) == [v for v, _ in migrations()]  # … and a new database gets everything once
        before, after = await _schema(old), await _schema(fresh)
        assert before["relations"] and before["columns"] and before["grants"]
        assert before == after
        # Both names are recorded, so a process still running the old code applies nothing either.
        recorded = {v for (v,) in after["versions"]}
        assert recorded == {v for v, _ in migrations()} | set(RENAMED.values())
        assert await migrate(old) == [] and await migrate(fresh) == []
    finally:
        await old.close()
        await fresh.close()


async def test_a_database_half_migrated_under_the_old_names_gets_the_rest_once(postgres_server: PostgresServer) -> None:
    conn = await asyncpg.connect(_database(postgres_server))
    try:
        await _migrate_the_old_way(conn, upto="003_registry_digest_v2")  # then the old code stopped
        applied = await migrate(conn)
        assert applied[0] == "005_usage" and "004_registry_digest_v2" not in applied
        assert applied == [v for v, _ in migrations() if v >= "005"]
        versions = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        assert {"003_registry_digest_v2", "004_registry_digest_v2", "004_usage", "005_usage"} <= versions
    finally:
        await conn.close()
