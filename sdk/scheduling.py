"""Admission to a module's concurrency slots: in arrival order while there is room, by priority when full.

A module runs at most ``max_concurrency`` handlers at once. When every slot is busy, further
calls wait in a heap ordered by *aged priority*: a call ranks by its priority (0–9) plus one
level for every ``aging`` seconds it has waited. All waiting calls age at the same rate, so the
key ``enqueued_at - priority * aging`` (smallest first) orders them exactly as their aged
priorities do at every instant, and the heap never needs re-sorting. A priority-0 call thus
waits at most about ``9 * aging`` seconds longer than a priority-9 call that came at the same
time: higher first, lower never starved.

A waiting call whose deadline passes is dropped — its ``acquire`` answers False at the deadline
and it never takes a slot. The fast path, a free slot and nobody waiting, is one comparison.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable

__all__ = ["Scheduler"]

_Entry = tuple[float, int, "asyncio.Future[bool]", float | None]


class Scheduler:
    """At most ``limit`` holders at once; the rest wait by aged priority until their deadline."""

    def __init__(self, limit: int, aging: float, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1.")
        if aging <= 0:
            raise ValueError("aging must be a positive number of seconds per priority level.")
        self._limit = limit
        self._aging = aging
        self._clock = clock
        self._running = 0
        self._waiting = 0
        self._heap: list[_Entry] = []
        self._order = itertools.count()  # breaks ties first come, first served

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot right now (cancelled and expired ones no longer count)."""
        return self._waiting

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is ahead in the queue."""
        if self._running < self._limit and not self._waiting:
            self._running += 1
            return True
        return False

    async def acquire(self, priority: int, deadline: float | None) -> bool:
        """Wait for a slot; False means the deadline (``time.monotonic()`` scale) passed first."""
        if self.try_acquire():
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._waiting += 1
        future.add_done_callback(self._left)
        timer = None
        if deadline is not None:
            timer = loop.call_later(max(0.0, deadline - time.monotonic()), _expire, future)
        heapq.heappush(self._heap, (self._clock() - priority * self._aging, next(self._order), future, deadline))
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelled just after a slot was handed over: give it to the next in line.
            if future.done() and not future.cancelled() and future.result():
                self.release()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def release(self) -> None:
        """Give the slot to the best waiting call, or free it."""
        while self._heap:
            _, _, future, deadline = heapq.heappop(self._heap)
            if future.done():
                continue  # cancelled or expired while waiting
            if deadline is not None and time.monotonic() > deadline:
                future.set_result(False)
                continue
            future.set_result(True)  # the slot passes on: ``running`` stays the same
            return
        self._running -= 1

    def _left(self, future: asyncio.Future[bool]) -> None:
        self._waiting -= 1


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)
