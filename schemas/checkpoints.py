"""Reading where a projection stands: ``projection_checkpoints``, one row per projection.

Writers (the projection runner, rebuilds) lock and advance the row (``projections/checkpoints.py``);
readers — a command waiting until its read model holds what it appended, a query refusing to
answer from a model that lags — only read it, through here.
"""

from __future__ import annotations

import asyncio

import asyncpg

__all__ = ["partition_checkpoint", "read_checkpoint", "wait_for_checkpoint"]

_POLL_SECONDS = 0.01


def partition_checkpoint(name: str, partition: int) -> str:
    """The checkpoint row of one partition of a partitioned projection: ``usage.p07``."""
    return f"{name}.p{partition:02d}"


async def read_checkpoint(conn: asyncpg.Connection, name: str) -> int:
    """Projection ``name``'s last applied stream sequence, without locking (0 when never written)."""
    return await conn.fetchval("SELECT last_sequence FROM projection_checkpoints WHERE name = $1", name) or 0


async def wait_for_checkpoint(pool: asyncpg.Pool, name: str, sequence: int, timeout: float) -> int:
    """Wait until projection ``name`` has applied stream ``sequence``, or ``timeout`` seconds pass;
    the last position seen (below ``sequence`` when it gave up)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with pool.acquire() as conn:
        # The row is written by another process: nothing here can be awaited but the next look.
        while (done := await read_checkpoint(conn, name)) < sequence and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_POLL_SECONDS)
    return done
