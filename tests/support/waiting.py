"""Waiting on a condition instead of for a while: :func:`eventually` polls until it holds.

A fixed sleep is either too short on a busy machine (a flaky test) or too long everywhere (a
slow suite); a poll with a deadline is as quick as the system and fails with what it waited for.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    what: str | Callable[[], str],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``condition`` (a function or a coroutine function) until it returns something true,
    and return that. After ``timeout`` seconds, fail naming ``what`` it waited for (a text, or a
    function that describes the state then) and the last value (or ignored error) seen. Errors of
    the types in ``ignoring`` count as "not yet"; any other error fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            last: object = value
            if value:
                return value  # type: ignore[return-value]
        except ignoring as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {_describe(what)}; last saw {last!r}")
        await asyncio.sleep(interval)


def eventually_sync(
    condition: Callable[[], T],
    what: str | Callable[[], str],
    *,
    timeout: float = 5.0,
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """:func:`eventually` for tests that run without an event loop (processes, files)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: object = condition()
            if last:
                return last  # type: ignore[return-value]
        except ignoring as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {_describe(what)}; last saw {last!r}")
        time.sleep(interval)


def _describe(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()
