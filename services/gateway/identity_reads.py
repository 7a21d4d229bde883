"""Reads of the identity read models for the HTTP routes: tenant-scoped, and after a write, fresh."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from aiohttp import web

from democratic_ai.schemas import platform_transaction, tenant_transaction, wait_for_checkpoint

from .state import IDENTITY, POOL

__all__ = ["read_your_writes", "tenant_rows"]

log = logging.getLogger(__name__)


async def tenant_rows(request: web.Request, tenant_id: str | None, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run a read in a transaction scoped to ``tenant_id`` (``None``: platform-wide tenants only)."""
    pool = request.app[POOL]
    scope = platform_transaction(pool) if tenant_id is None else tenant_transaction(pool, tenant_id)
    async with scope as conn:
        return await conn.fetch(query, *args)


async def read_your_writes(request: web.Request, timeout: float = 2.0) -> None:
    """Wait (briefly) until the identity read model holds what this gateway has seen.

    Writes are events; reads come from a projection a moment behind. Waiting here after a
    command means a client that creates a user and then lists users sees it. If the projection
    worker is down the command has still happened: the wait gives up and the answer goes out.
    """
    target = request.app[IDENTITY].last_sequence
    if await wait_for_checkpoint(request.app[POOL], "identity", target, timeout) >= target:
        return
    log.warning("the identity read model lags behind the log; is the projection worker running?")
