"""The seed's four rate-limit algorithms, each fitted to what it limits.

    SlidingLog     API calls     at most ``limit`` calls in any ``window`` seconds — exact
    TokenBucket    compute time  bursts up to ``capacity``, a sustained ``rate`` per second
    LeakyBucket    bandwidth     a level that drains at ``rate``: traffic is smoothed
    FixedWindow    storage       at most ``limit`` per calendar window (e.g. a UTC day)

Nothing here reads a clock: every method takes the time (``now``, epoch seconds) from its
caller, so the same code serves live decisions, replays of the log, and tests that pass time
in instead of sleeping. The buckets and the window are immutable values; the sliding log is
a mutable structure because it is updated on every lease and must stay cheap.

Compute and bytes out are known only after a call, so the buckets are *post-paid*: a call is
admitted while the bucket has room, and its cost is taken afterwards. A bucket may therefore
go into debt; the debt is capped (one capacity) so that any state is forgotten after a bounded
time, which bounds how much of the log a restarting gateway must replay
(:meth:`TokenBucket.horizon`, :meth:`LeakyBucket.horizon`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

__all__ = ["FixedWindow", "Grant", "LeakyBucket", "SlidingLog", "TokenBucket"]


class Grant:
    """A block of ``n`` calls a holder may use between ``start`` and ``end``.

    A single call is a grant of one with ``start == end``. Mutable in ``n`` — a grant's
    unused calls can be given back (:meth:`SlidingLog.give_back`) — and in its times, once the
    clock that decides them has stamped it (:meth:`SlidingLog.restamp`).
    """

    __slots__ = ("end", "n", "sequence", "start")

    def __init__(self, start: float, end: float, n: int, sequence: int = 0) -> None:
        self.start, self.end, self.n, self.sequence = start, end, n, sequence

    def __repr__(self) -> str:
        return f"Grant(start={self.start}, end={self.end}, n={self.n}, sequence={self.sequence})"


class SlidingLog:
    """A sliding window over grants: ``used(now)`` counts every call that may fall within
    the ``window`` seconds before ``now``.

    A grant occupies the window from its ``start`` until ``end + window``: its calls happen
    somewhere in ``[start, end]``, and the last of them could still be inside the window until
    then. Deciding a new grant against everything that still occupies the window therefore
    guarantees that no window of ``window`` seconds ever holds more than ``limit`` calls, for
    any placement of the calls inside their grants. For one-call grants this is the classic
    exact sliding log; longer grants make it slightly conservative (by the grant's length).
    """

    __slots__ = ("_grants", "_latest_end", "_used", "window")

    def __init__(self, window: float) -> None:
        if window <= 0:
            raise ValueError("a sliding window needs a positive length in seconds.")
        self.window = window
        self._grants: deque[Grant] = deque()
        self._used = 0
        self._latest_end = -math.inf

    def add(self, grant: Grant) -> None:
        self._grants.append(grant)
        self._used += grant.n
        self._latest_end = max(self._latest_end, grant.end)

    def give_back(self, sequence: int, n: int) -> None:
        """Reduce the grant with ``sequence`` by ``n`` unused calls (unknown grants: nothing)."""
        for grant in self._grants:
            if grant.sequence == sequence:
                taken = min(n, grant.n)
                grant.n -= taken
                self._used -= taken
                return

    def restamp(self, sequence: int, start: float, end: float) -> None:
        """Move the grant with ``sequence`` to ``[start, end]`` (unknown grants: nothing).

        A lease this replica appended is counted at once with times it estimated; its stamp
        from the log follows within milliseconds. Searched from the newest: it is near the end."""
        for grant in reversed(self._grants):
            if grant.sequence == sequence:
                grant.start, grant.end = start, end
                self._latest_end = max(self._latest_end, end)
                return

    def used(self, now: float) -> int:
        self._forget(now)
        return self._used

    def remaining(self, now: float, limit: int) -> int:
        return max(0, limit - self.used(now))

    def frees_all_in(self, now: float) -> float:
        """Seconds until every call now counted has left the window (0 when none is)."""
        return max(0.0, self._latest_end + self.window - now) if self.used(now) else 0.0

    def retry_after(self, now: float, limit: int, need: int = 1) -> float:
        """Seconds until ``need`` calls fit (``inf`` if they never can)."""
        if need > limit:
            return math.inf
        used = self.used(now)
        if used + need <= limit:
            return 0.0
        for leaves, n in sorted((g.end + self.window, g.n) for g in self._grants):
            used -= n
            if used + need <= limit:
                return max(0.0, leaves - now)
        return 0.0

    def __len__(self) -> int:
        return len(self._grants)

    def _forget(self, now: float) -> None:
        """Drop grants that have left the window. Grants are kept in log order; their times are
        the log's own stamps (``now`` is on that same clock, see ``admission``), so log order is
        time order but for grants of different lengths. One that ends late only delays
        forgetting those behind it, never counts less."""
        horizon = now - self.window
        grants = self._grants
        while grants and grants[0].end <= horizon:
            self._used -= grants.popleft().n


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """``tokens`` refill at ``rate`` per second up to ``capacity``; spending may go into debt
    down to ``-capacity``. Admits while there is at least one token."""

    capacity: float
    rate: float
    tokens: float
    at: float

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.rate <= 0:
            raise ValueError("a token bucket needs a positive capacity and refill rate.")

    @classmethod
    def full(cls, capacity: float, rate: float, now: float) -> TokenBucket:
        return cls(capacity, rate, capacity, now)

    def refilled(self, now: float) -> TokenBucket:
        if now <= self.at:
            return self
        return replace(self, tokens=min(self.capacity, self.tokens + (now - self.at) * self.rate), at=now)

    def spend(self, cost: float, when: float) -> TokenBucket:
        """Take ``cost`` at time ``when``. An event older than the bucket's time (events from
        several replicas arrive nearly, not exactly, in order) is taken without a refill."""
        bucket = self.refilled(when)
        return replace(bucket, tokens=max(-self.capacity, bucket.tokens - cost))

    def allows(self, now: float) -> bool:
        return self.refilled(now).tokens >= 1

    def available(self, now: float) -> float:
        return self.refilled(now).tokens

    def retry_after(self, now: float) -> float:
        return max(0.0, (1 - self.refilled(now).tokens) / self.rate)

    def horizon(self) -> float:
        """Seconds after which any state has refilled to full: how far back a replay must go."""
        return 2 * self.capacity / self.rate


@dataclass(frozen=True, slots=True)
class LeakyBucket:
    """A ``level`` that drains at ``rate`` per second. A request is admitted if its known size
    fits under ``capacity``; what is learnt afterwards (the answer's size) is added anyway, up
    to twice the capacity."""

    capacity: float
    rate: float
    level: float
    at: float

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.rate <= 0:
            raise ValueError("a leaky bucket needs a positive capacity and leak rate.")

    @classmethod
    def empty(cls, capacity: float, rate: float, now: float) -> LeakyBucket:
        return cls(capacity, rate, 0.0, now)

    def drained(self, now: float) -> LeakyBucket:
        if now <= self.at:
            return self
        return replace(self, level=max(0.0, self.level - (now - self.at) * self.rate), at=now)

    def add(self, amount: float, when: float) -> LeakyBucket:
        bucket = self.drained(when)
        return replace(bucket, level=min(2 * self.capacity, bucket.level + amount))

    def allows(self, amount: float, now: float) -> bool:
        return self.drained(now).level + amount <= self.capacity

    def retry_after(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` fits (``inf`` if it is larger than the bucket)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (self.drained(now).level + amount - self.capacity) / self.rate)

    def horizon(self) -> float:
        return 2 * self.capacity / self.rate


@dataclass(frozen=True, slots=True)
class FixedWindow:
    """At most ``limit`` per window of ``size`` seconds aligned to the epoch (86,400: UTC days).

    Simple and cheap; its known weakness (up to twice the limit across a window boundary) is
    harmless for storage, which is a slow quantity."""

    limit: int
    size: float
    start: float
    used: int = 0

    def __post_init__(self) -> None:
        if self.limit < 0 or self.size <= 0:
            raise ValueError("a fixed window needs a limit of at least 0 and a positive size.")

    @classmethod
    def starting(cls, limit: int, size: float, now: float) -> FixedWindow:
        return cls(limit, size, math.floor(now / size) * size)

    def current(self, now: float) -> FixedWindow:
        start = math.floor(now / self.size) * self.size
        return replace(self, start=start, used=0) if start > self.start else self

    def add(self, amount: int, when: float) -> FixedWindow:
        """Count ``amount`` written at ``when``; negative amounts (freed space) count nothing,
        and writes of an earlier window than the current one are already forgotten."""
        window = self.current(when)
        if when < window.start or amount <= 0:
            return window
        return replace(window, used=window.used + amount)

    def allows(self, amount: int, now: float) -> bool:
        return self.current(now).used + max(0, amount) <= self.limit

    def remaining(self, now: float) -> int:
        return max(0, self.limit - self.current(now).used)

    def resets_in(self, now: float) -> float:
        return self.current(now).start + self.size - now
