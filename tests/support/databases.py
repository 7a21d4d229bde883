"""Throwaway databases on the session's PostgreSQL, dropped when the test ends.

A database is a copy of ``template1`` (about 7.5 MB on disk, and as much again in WAL): a
thousand tests that kept theirs would need gigabytes, more than a CI machine may have free.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from democratic_ai.ops.postgres_server import PostgresServer

__all__ = ["keep_wal_small", "throwaway_database"]


def _run(coroutine: object) -> None:
    # asyncio.run on a worker thread: works whether or not the caller's thread runs a loop.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coroutine).result()  # type: ignore[arg-type]


async def _execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def throwaway_database(server: PostgresServer) -> Iterator[str]:
    """A new database's DSN; the database is dropped afterwards, whoever is still connected."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = server.ensure_database(name)
    try:
        yield url
    finally:
        _run(_execute(server.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def keep_wal_small(server: PostgresServer) -> None:
    """Checkpoint often enough that the WAL stays near 64 MB instead of PostgreSQL's 1 GB
    default: every CREATE DATABASE writes its whole copy there."""
    _run(
        _execute(
            server.url,
            "ALTER SYSTEM SET max_wal_size = '64MB'",
            "ALTER SYSTEM SET min_wal_size = '32MB'",
            "SELECT pg_reload_conf()",
        )
    )
