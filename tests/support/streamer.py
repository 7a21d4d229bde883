"""A module of streaming capabilities that the streaming tests drive and observe from inside."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from democratic_ai.sdk import CallError, Chunk, Module, capability

_CHUNK = {"type": "object", "properties": {"i": {"type": "integer"}, "blob": {"type": "string"}}, "required": ["i"]}


class Streamer(Module):
    """Streams on demand, and records what its handlers saw: chunks produced, cancels, calls run."""

    module_id = "streamer-test"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.produced = 0
        self.cancelled_at: list[float] = []  # time.monotonic() when a handler saw CancelledError
        self.started = asyncio.Event()

    @capability("test.count", {"type": "object"}, _CHUNK)
    async def count(self, n: int = 3, delay: float = 0.0) -> AsyncIterator[Chunk]:
        for i in range(n):
            if delay:
                await asyncio.sleep(delay)  # paces the stream as the test asked
            yield Chunk({"i": i}, progress=(i + 1) / n, message=f"{i + 1} of {n}")

    @capability("test.hang", {"type": "object"}, _CHUNK)
    async def hang(self) -> AsyncIterator[Chunk]:
        """One chunk, then work that never ends unless cancelled."""
        yield Chunk({"i": 0}, progress=0.0, message="started")
        self.started.set()
        try:
            await asyncio.sleep(60)  # the work that only a cancel ends
        except asyncio.CancelledError:
            self.cancelled_at.append(time.monotonic())
            raise
        yield {"i": 1}

    @capability("test.flood", {"type": "object"}, _CHUNK)
    async def flood(self, n: int = 100, size: int = 65536) -> AsyncIterator[dict[str, Any]]:
        blob = "x" * size
        for i in range(n):
            self.produced += 1
            yield {"i": i, "blob": blob}

    @capability("test.broken", {"type": "object"}, _CHUNK)
    async def broken(self, fail_after: int = 1, how: str = "raise") -> AsyncIterator[dict[str, Any]]:
        for i in range(fail_after):
            yield {"i": i}
        if how == "schema":
            yield {"i": "not a number"}
        elif how == "call_error":
            raise CallError("RATE_LIMITED", "slow down", {"retry_after": 1})
        else:
            raise RuntimeError("boom")

    @capability("test.once", {"type": "object"})
    async def once(self, text: str = "") -> dict[str, Any]:
        return {"echo": text}
