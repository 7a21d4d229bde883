"""The NATS server's clock, as one process can read it: the one clock for time shared by replicas.

Replicas' own clocks may disagree by seconds (no NTP, a bad VM clock). Anything several
processes measure against one another — a lease's window above all — is therefore measured on
the server's clock instead: JetStream stamps every message with the server's time when it stores
it (``msg.metadata.timestamp``), and the JetStream API stamps its answers (``ts``).

A stamp seen by this process is a *lower bound* of the server's time when it arrives, so
``now()`` is the best such bound carried forward on the monotonic clock:
``max over stamps (stamp + monotonic elapsed since it arrived)``. It lags the server by about
one delivery latency (milliseconds), never leads it — which is the safe side for forgetting
a lease late rather than early. An old stamp carried forward for hours would accumulate the
drift between the two machines' oscillators; each carried bound therefore decays by
``drift`` seconds per second (200 ppm by default, far above a real crystal's), and any live
stamp tightens it again.

``skew()`` is this process's wall clock minus the server's time; beyond
:data:`SKEW_WARNING_SECONDS` :meth:`ServerClock.check` logs a warning (once per change) and
:meth:`ServerClock.problem` says so, for readiness probes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from datetime import datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError, TimeoutError as NatsTimeoutError

__all__ = ["SKEW_WARNING_SECONDS", "ServerClock"]

log = logging.getLogger(__name__)

SKEW_WARNING_SECONDS = 2.0


class _InfoStamp(msgspec.Struct):
    ts: str = ""  # RFC 3339 with nanoseconds: when the server answered


class ServerClock:
    """Estimate the NATS server's current time (epoch seconds) from the stamps it hands out."""

    def __init__(
        self,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        drift: float = 2e-4,
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._drift = drift
        self._offset: float | None = None  # server time minus monotonic time, as of ``_offset_at``
        self._offset_at = 0.0
        self._warned = False

    @property
    def synced(self) -> bool:
        """Whether any stamp of the server's has been seen yet."""
        return self._offset is not None

    def observe(self, server_time: float, at: float | None = None) -> None:
        """Take a server stamp ``server_time`` (epoch seconds) that arrived at monotonic ``at``."""
        at = self._monotonic() if at is None else at
        offset = server_time - at
        current = self._carried(at)
        if current is None or offset > current:
            self._offset, self._offset_at = offset, at
        else:
            self._offset, self._offset_at = current, at

    def observe_message(self, msg: Msg) -> None:
        """Take the server's stamp of a JetStream message delivered just now."""
        self.observe(msg.metadata.timestamp.timestamp())

    def now(self) -> float:
        """The server's time now (a lower bound within about a delivery latency); this
        process's wall clock until a stamp has been seen."""
        at = self._monotonic()
        offset = self._carried(at)
        return self._wall() if offset is None else offset + at

    def skew(self) -> float | None:
        """This process's wall clock minus the server's time, in seconds (None until synced)."""
        return None if self._offset is None else self._wall() - self.now()

    def problem(self) -> str | None:
        """A sentence for a readiness probe when this clock is far from the server's, else None."""
        skew = self.skew()
        if skew is None or abs(skew) <= SKEW_WARNING_SECONDS:
            return None
        way = "ahead of" if skew > 0 else "behind"
        return (
            f"this process's clock is {abs(skew):.1f} s {way} the NATS server's; limits and deadlines use"
            " the server's time, but logs and tokens stamped here are off: fix NTP on this host"
        )

    def check(self) -> str | None:
        """:meth:`problem`, logged as a warning when it appears and as info when it is gone."""
        problem = self.problem()
        if problem is not None and not self._warned:
            log.warning("%s", problem)
        elif problem is None and self._warned:
            log.info("this process's clock agrees with the NATS server's again (skew %.3f s)", self.skew() or 0.0)
        self._warned = problem is not None
        return problem

    async def sync(self, nc: NATS, stream: str, timeout: float = 2.0) -> None:
        """Ask the JetStream API for the server's time (the ``ts`` of a stream's info) and take it."""
        answer = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=timeout)
        arrived = self._monotonic()
        try:
            stamp = _rfc3339(msgspec.json.decode(answer.data, type=_InfoStamp).ts)
        except (msgspec.DecodeError, ValueError):
            log.debug("the JetStream API's answer carried no time stamp: %r", answer.data[:200])
            return
        self.observe(stamp, arrived)

    async def refresh(self, nc: NATS, stream: str) -> None:
        """:meth:`sync` if the server answers, then :meth:`check` the skew."""
        try:
            await self.sync(nc, stream)
        except (NatsTimeoutError, NoRespondersError, ConnectionClosedError) as exc:
            log.debug("could not read the NATS server's time: %r", exc)
        self.check()

    async def watch(self, nc: NATS, stream: str, every: float = 30.0) -> None:
        """:meth:`refresh` every ``every`` seconds (an idle stream brings no stamps) until cancelled."""
        while True:
            await asyncio.sleep(every)
            await self.refresh(nc, stream)

    def _carried(self, at: float) -> float | None:
        if self._offset is None:
            return None
        return self._offset - self._drift * max(0.0, at - self._offset_at)


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


def _rfc3339(text: str) -> float:
    """Epoch seconds of the server's RFC 3339 stamp (nanoseconds cut to what a float keeps)."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    whole, fraction, zone = match.groups()
    seconds = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone)).timestamp()
    return seconds + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)
