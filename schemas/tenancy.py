"""The transaction every read-model query runs in: scoped to one tenant by row-level security.

The read-model tables that hold a tenant's rows have a policy ``tenant_isolation``
(``schemas/sql/*.sql``): the app role sees a row only when its ``tenant_id`` is the
transaction's ``dai.tenant_id``. :func:`tenant_transaction` opens the transaction and names the
tenant in it (``set_config(..., true)``: transaction-local, so the scope ends with the block and
a pooled connection carries nothing into its next use). :func:`platform_transaction` reads
across tenants: ``dai.scope = 'platform'``, which only the tables meant to be read so admit —
``tenants`` and ``modules`` (a super admin lists them platform-wide) and ``calls`` (a module's
author counts the calls of every tenant to the module, filtered on it: aggregates only).

Both refuse a connection that is already in a transaction: a setting made in a nested
transaction (a savepoint) would outlive the block, until the outer transaction ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from asyncpg.pool import PoolConnectionProxy

__all__ = ["platform_transaction", "tenant_transaction"]

Database = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy


@contextlib.asynccontextmanager
async def tenant_transaction(db: Database, tenant_id: str) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on ``db`` (a pool: one of its connections) that sees ``tenant_id``'s rows only."""
    if not isinstance(tenant_id, str) or not tenant_id or "\x00" in tenant_id:
        raise ValueError(f"a tenant-scoped transaction needs a tenant id, not {tenant_id!r}")
    async with _transaction(db, "dai.tenant_id", tenant_id) as conn:
        yield conn


@contextlib.asynccontextmanager
async def platform_transaction(db: Database) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on ``db`` that sees every tenant's rows of the tables listed platform-wide."""
    async with _transaction(db, "dai.scope", "platform") as conn:
        yield conn


@contextlib.asynccontextmanager
async def _transaction(db: Database, setting: str, value: str) -> AsyncIterator[asyncpg.Connection]:
    async with contextlib.AsyncExitStack() as stack:
        conn = await stack.enter_async_context(db.acquire()) if isinstance(db, asyncpg.Pool) else db
        if not isinstance(conn, (asyncpg.Connection, PoolConnectionProxy)):
            raise TypeError(f"a tenant-scoped transaction needs a pool or a connection, not {type(db).__name__}")
        if conn.is_in_transaction():
            raise ValueError("the connection is in a transaction already: its scope would outlive the block")
        async with conn.transaction():
            await conn.execute("SELECT set_config($1, $2, true)", setting, value)
            yield conn
