"""Read-model DDL (``sql/``) and the migrations that apply it, in file-name order, once each."""

from __future__ import annotations

from importlib import resources

import asyncpg

from .database import create_pool
from .outage import DatabaseOutage, DatabaseUnreachable, is_unreachable, on_database
from .roles import APP_ROLE, UnsafeRole, app_dsn, check_app_role, ensure_app_role

__all__ = [
    "APP_ROLE",
    "DatabaseOutage",
    "DatabaseUnreachable",
    "UnsafeRole",
    "app_dsn",
    "check_app_role",
    "create_pool",
    "ensure_app_role",
    "is_unreachable",
    "migrate",
    "migrations",
    "on_database",
]

# Any fixed number works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 0x6461695F6D6967  # "dai_mig"


def migrations() -> list[tuple[str, str]]:
    """``(version, sql)`` for every migration shipped with the package, in order."""
    folder = resources.files(__package__).joinpath("sql")
    return [
        (entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".sql")
    ]


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations this database lacks, then grant the app role its reads; returns
    the versions applied.

    An advisory lock serialises concurrent starters, and each migration commits together
    with its ``schema_migrations`` row, so a crash never leaves one half-applied.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
        await ensure_app_role(conn)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
