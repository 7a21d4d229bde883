"""Waiting out a database outage: which errors mean "PostgreSQL is gone", and how to wait for it.

A worker that folds the log into Postgres must tell two failures apart. An error about *the
data* (a value out of range, a constraint) comes back every time the same statement runs, and
is the caller's to handle (projections quarantine the event). An error about *the database* —
the server was killed, is restarting or in crash recovery, refuses connections — goes away
by itself: the worker should wait, retry, and resume from what Postgres committed.
:func:`is_unreachable` says which is which; :class:`DatabaseOutage` does the waiting: backoff
from 0.2 s doubling to 5 s, one WARNING when the outage starts and one every 30 s while it
lasts (not one per retry), and one more when the database answers again (also at WARNING, so a
log filtered to warnings shows when the outage ended).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

import asyncpg

__all__ = ["UNREACHABLE", "DatabaseOutage", "DatabaseUnreachable", "backoff_delays", "is_unreachable", "on_database"]

UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, no socket file, a connect timeout (TimeoutError is an OSError)
    asyncpg.PostgresConnectionError,  # class 08, and asyncpg's "connection was closed in the middle of operation"
    asyncpg.CannotConnectNowError,  # 57P03: starting up, in crash recovery, shutting down
    asyncpg.AdminShutdownError,  # 57P01: the server is shutting down (pg_ctl stop, SIGTERM)
    asyncpg.CrashShutdownError,  # 57P02: another backend crashed and the postmaster resets them all
    asyncpg.TooManyConnectionsError,  # 53300: transient, and no fault of the data
)

_CLOSED = ("connection is closed", "released back to the pool")


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached now (rather than that a statement is wrong).

    Some of asyncpg's own errors also mean the server went away: ``InterfaceError``
    "connection is closed" (it went before the connection was used) and "connection has been
    released back to the pool" (asyncpg hands a connection that was lost back to its pool, and
    the caller's handle then refuses every call), and ``InternalClientError``
    "cannot switch to state …" (a backend that sees its postmaster die sends a FATAL error to
    its idle client; the connection then waits for a ReadyForQuery that never comes and
    refuses the next statement). Other interface errors (a closed pool, an operation already
    in progress) are bugs or shutdown, not outages.
    """
    if isinstance(exc, UNREACHABLE):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return any(text in str(exc) for text in _CLOSED)
    return isinstance(exc, asyncpg.InternalClientError) and "cannot switch to state" in str(exc)


class DatabaseUnreachable(Exception):
    """Raised by :func:`on_database` in place of an error that means the database is gone (its ``__cause__``)."""


@contextlib.contextmanager
def on_database() -> Iterator[None]:
    """Mark the statements in the block as the database's: an error of theirs that
    :func:`is_unreachable` becomes :class:`DatabaseUnreachable`, any other passes unchanged.

    Needed because :data:`UNREACHABLE` holds ``OSError``, and so ``TimeoutError``: a NATS
    timeout elsewhere in the same worker must not be taken for a database outage.
    """
    try:
        yield
    except (*UNREACHABLE, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        if is_unreachable(exc):
            raise DatabaseUnreachable(_brief(exc)) from exc
        raise


def backoff_delays(first: float = 0.2, ceiling: float = 5.0) -> Iterator[float]:
    """``first``, doubling up to ``ceiling``, then ``ceiling`` for ever."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, ceiling)


class DatabaseOutage:
    """The state of one worker's wait for the database: its backoff and when it last said so.

    ``await outage.pause(exc, stop)`` after each failed attempt; ``outage.over()`` after a
    success (it logs the recovery once, and resets the backoff).
    """

    def __init__(
        self,
        who: str,
        logger: logging.Logger,
        *,
        first: float = 0.2,
        ceiling: float = 5.0,
        log_every: float = 30.0,
    ) -> None:
        if not 0 < first <= ceiling or log_every <= 0:
            raise ValueError("The backoff needs 0 < first <= ceiling, and log_every must be positive.")
        self.who = who
        self._log = logger
        self._first, self._ceiling, self._log_every = first, ceiling, log_every
        self._delays = backoff_delays(first, ceiling)
        self._since: float | None = None  # monotonic start of the current outage
        self._logged = 0.0
        self.retries = 0  # failed attempts in the current outage

    @property
    def waiting(self) -> bool:
        return self._since is not None

    async def pause(self, exc: BaseException, stop: asyncio.Event | None = None) -> None:
        """Log if due, then sleep the next backoff delay (returning early when ``stop`` is set)."""
        now = time.monotonic()
        if self._since is None:
            self._since = now
            self._logged = now
            self._log.warning(
                "%s: the database is unreachable (%s); waiting for it, retrying with backoff"
                " -- nothing is acknowledged meanwhile",
                self.who,
                _brief(exc),
            )
        elif now - self._logged >= self._log_every:
            self._logged = now
            self._log.warning(
                "%s: the database is still unreachable after %.0f s (%s); still waiting",
                self.who,
                now - self._since,
                _brief(exc),
            )
        self.retries += 1
        delay = next(self._delays)
        if stop is None:
            await asyncio.sleep(delay)
            return
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
        except TimeoutError:
            pass

    async def keep_following(self, follow: Callable[[DatabaseOutage], Awaitable[None]], stop: asyncio.Event) -> None:
        """Run ``follow(self)`` until ``stop`` is set, waiting out every outage it raises
        (:class:`DatabaseUnreachable`) and starting it over from its checkpoint after one."""
        while not stop.is_set():
            try:
                await follow(self)
            except DatabaseUnreachable as exc:
                await self.pause(exc, stop)

    def over(self) -> None:
        """The database answered: say so once if it had been unreachable, and reset the backoff."""
        if self._since is None:
            return
        self._log.warning(
            "%s: the database is reachable again after %.1f s (%d retries); resuming",
            self.who,
            time.monotonic() - self._since,
            self.retries,
        )
        self._since = None
        self.retries = 0
        self._delays = backoff_delays(self._first, self._ceiling)


def _brief(exc: BaseException) -> str:
    if isinstance(exc, DatabaseUnreachable) and exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"
