"""Projections' progress: a projection's checkpoint, waiting until it has applied a sequence,
and killing a projection worker mid-batch."""

from __future__ import annotations

import signal
import subprocess
import sys

import asyncpg
from nats.aio.client import Client as NATS

from democratic_ai.projections import PROJECTIONS
from democratic_ai.projections.checkpoints import Checkpoints

from support.waiting import eventually


async def checkpoint(pool: asyncpg.Pool, name: str) -> int:
    """The last stream sequence projection ``name`` has applied in this test's database (a
    partitioned projection: the lowest of its partitions')."""
    if name not in PROJECTIONS:
        async with pool.acquire() as conn:
            return await conn.fetchval("SELECT last_sequence FROM projection_checkpoints WHERE name = $1", name) or 0
    async with pool.acquire() as conn:
        return min((await Checkpoints(PROJECTIONS[name]).read(conn)).values())


async def reached(pool: asyncpg.Pool, name: str, target: int, timeout: float = 30.0) -> None:
    """Wait until projection ``name`` has applied the stream up to sequence ``target``."""

    async def applied() -> bool:
        return await checkpoint(pool, name) >= target

    await eventually(applied, f"projection {name} to apply sequence {target}", timeout=timeout, interval=0.02)


async def caught_up(nc: NATS, pool: asyncpg.Pool, name: str, timeout: float = 10.0) -> None:
    """Wait until projection ``name`` has applied everything its stream holds now (each
    partition of a partitioned one: up to its last event)."""
    checkpoints = Checkpoints(PROJECTIONS[name])
    targets = await checkpoints.targets(nc.jetstream())

    async def applied() -> bool:
        async with pool.acquire() as conn:
            done = await checkpoints.read(conn)
        return all(done[n] >= target for n, target in targets.items())

    await eventually(applied, f"projection {name} to apply {targets}", timeout=timeout, interval=0.02)


async def kill_9_mid_batch(pool: asyncpg.Pool, name: str, env: dict[str, str], last: int) -> None:
    """Run ``dai projections run <name>`` as a process, kill -9 it once it has applied part of
    the stream (but not up to ``last``), start it again and wait until it has applied ``last``."""
    command = [sys.executable, "-m", "democratic_ai.ops.cli", "projections", "run", name]
    worker = subprocess.Popen(command, env=env)
    try:
        # Polled this often so that the kill lands mid-way, not after the last batch.
        applied = await eventually(
            lambda: checkpoint(pool, name), f"projection {name} to apply a first batch", timeout=30, interval=0.005
        )
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert 0 < applied < last, "the worker finished before it could be killed mid-way"
        worker = subprocess.Popen(command, env=env)
        await reached(pool, name, last, timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=15)
