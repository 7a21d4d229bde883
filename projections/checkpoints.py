"""Where each projection stands in its stream: one row per projection in ``projection_checkpoints``
(and one for the usage recovery sweep, ``usage-recovery``: the last MCP sequence it handled).

The row is also the projection's write lock: whoever changes the read model (the live runner,
a rebuild's swap, a verification's comparison) first locks it with :func:`lock_checkpoint`, so
the model and its position only ever change together.
"""

from __future__ import annotations

import asyncpg

from democratic_ai.schemas.checkpoints import read_checkpoint

__all__ = ["advance_checkpoint", "lock_checkpoint", "read_checkpoint", "read_checkpoints"]


async def lock_checkpoint(conn: asyncpg.Connection, name: str) -> int:
    """Lock and return the projection's checkpoint (creating it at 0), inside the caller's transaction."""
    await conn.execute("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING", name)
    return await conn.fetchval("SELECT last_sequence FROM projection_checkpoints WHERE name = $1 FOR UPDATE", name)


async def advance_checkpoint(conn: asyncpg.Connection, name: str, sequence: int) -> None:
    await conn.execute(
        "UPDATE projection_checkpoints SET last_sequence = $2, updated_at = now() WHERE name = $1", name, sequence
    )


async def read_checkpoints(conn: asyncpg.Connection) -> dict[str, int]:
    """Every projection's last applied sequence, without locking."""
    rows = await conn.fetch("SELECT name, last_sequence FROM projection_checkpoints")
    return {row["name"]: row["last_sequence"] for row in rows}
