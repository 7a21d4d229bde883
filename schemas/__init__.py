"""Read-model DDL (``sql/``) and the migrations that apply it, in file-name order, once each.

A migration's version is its file name without ``.sql``; each number prefix is used once.
"""

from __future__ import annotations

from importlib import resources

import asyncpg

from .checkpoints import partition_checkpoint, read_checkpoint, wait_for_checkpoint
from .database import create_pool
from .outage import DatabaseOutage, DatabaseUnreachable, is_unreachable, on_database
from .roles import APP_ROLE, UnsafeRole, app_dsn, check_app_role, ensure_app_role
from .tenancy import platform_transaction, tenant_transaction

__all__ = [
    "APP_ROLE",
    "RENAMED",
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
    "partition_checkpoint",
    "platform_transaction",
    "read_checkpoint",
    "tenant_transaction",
    "wait_for_checkpoint",
]

# Any fixed number works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 0x6461695F6D6967  # "dai_mig"


# Migrations renamed after they shipped (two were numbered 003): version → the version that
# databases migrated before the rename recorded. Either name in ``schema_migrations`` means
# applied, and :func:`migrate` records both, so a database migrated under the old names applies
# nothing again, and a process still running the old code finds its own names on a database
# the new code migrated. The order of the files is the order it always was.
RENAMED: dict[str, str] = {
    "004_registry_digest_v2": "003_registry_digest_v2",
    "005_usage": "004_usage",
}


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
            names = [version, RENAMED[version]] if version in RENAMED else [version]
            missing = [name for name in names if name not in done]
            if len(missing) < len(names):  # applied, under one of its names: record the others
                await conn.executemany("INSERT INTO schema_migrations (version) VALUES ($1)", [(n,) for n in missing])
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.executemany("INSERT INTO schema_migrations (version) VALUES ($1)", [(n,) for n in names])
            applied.append(version)
        await ensure_app_role(conn)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
