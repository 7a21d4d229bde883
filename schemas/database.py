"""Connections to the read-model database, with ``jsonb`` mapped to Python values."""

from __future__ import annotations

import asyncpg
import msgspec

__all__ = ["create_pool"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


async def _init(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: _encode(value).decode(),
        decoder=_decode,
        format="text",
    )


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init)
    if pool is None:  # only when asyncpg is given a closed loop; keeps the type exact
        raise RuntimeError("could not create a connection pool")
    return pool
