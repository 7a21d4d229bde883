"""Exact call limits across gateway replicas: quota leases on the RATELIMIT stream.

A sliding-window call limit belongs to a *holder* (a tenant's plan, or one API key) and has
one subject, ``ratelimit.<tenant>.<holder>``. Every gateway replica follows the stream and
folds each holder's leases into a :class:`~.algorithms.SlidingLog`.

To admit calls a replica takes a **lease**: "replica R may use n calls between t and t+d"
(``QuotaLeased``). It appends the lease with ``Nats-Expected-Last-Subject-Sequence`` set to
the last sequence it has applied on that subject, so the append succeeds only if the replica
decided knowing *every* earlier lease of the holder. If another replica appended first, the
server refuses (wrong last sequence); the replica reads the winner's lease (a direct get of
the subject's last message), waits until its follower has applied it, decides again and
retries. Leases are therefore serialised per holder, each checked against all before it.

**The bound.** A lease occupies the window from ``t`` until ``t + d + window`` (its calls
happen in ``[t, t+d]``), and a lease is granted only if it fits the limit together with every
earlier lease still occupying the window. Take any window of ``window`` seconds and the latest
lease whose calls fall in it: every earlier such lease still occupied the window when it was
granted, so their sum is at most the limit. Hence **no window ever holds more than ``limit``
admitted calls, across any number of replicas** — the bound is exactly L, not L × (1 + ε).
The price is the other way: calls leased but unused until a lease
ends are given back (``QuotaReturned``); the replica that held them counts them free at once,
but until the return lands the others count them used, so near the limit a replica may refuse
a call another replica's idle lease is holding.

**Group commit.** One lease append per holder is in flight per replica. Requests that find
no local quota wait for it, and the next lease asks for all of them at once (plus, away from
the limit, what this replica used over the last lease period, so a busy replica leases about
once per lease period). While a replica holds quota, admitting a call is an in-memory
decrement — no round trip: the hot path stays in memory, and only a lease costs one
JetStream append (~0.3 ms), shared by every request waiting for it. Near the limit, leases
shrink to exactly the requests waiting, which keeps the limit exact.

**One clock.** No replica's own clock enters a window, so a replica whose clock is off cannot
widen or narrow it. A lease's window starts at the *server's* time of its append (JetStream
stamps each message as it stores it; the follower reads ``msg.metadata.timestamp``) and lasts
what the lease asked (``until - at``); every replica forgets it by its estimate of the server's
time (:class:`~democratic_ai.contracts.server_clock.ServerClock`: the newest stamp seen plus
the monotonic time since), which lags the server, never leads it — leases are forgotten late,
never early. The replica that holds a lease uses it until ``lease_seconds`` after it *sent* the
append, on its monotonic clock: that is before the server stamped it, so every call of the lease
falls inside ``[stamp, stamp + lease_seconds]`` whatever the replica's clock says. The ``at`` and
``until`` the lease carries are the leasing replica's estimate of the server's time, kept for
the record; only their difference is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError, NotFoundError

from democratic_ai.contracts.eventlog import AppendConflict, append
from democratic_ai.contracts.ordered import OrderedConsumer
from democratic_ai.contracts.server_clock import ServerClock
from democratic_ai.contracts.streams import RATELIMIT_STREAM
from democratic_ai.contracts.subjects import ALL_RATELIMIT, quota_subject
from democratic_ai.contracts.usage_events import (
    MeterConsumed,
    QuotaLeased,
    QuotaReturned,
    decode_ratelimit_event,
    encode_event,
)

from .algorithms import Grant, SlidingLog
from .errors import AdmissionUnavailable

__all__ = ["TENANT_HOLDER", "Admission", "AdmissionConfig", "HolderView", "key_holder"]

log = logging.getLogger(__name__)

STREAM = RATELIMIT_STREAM
TENANT_HOLDER = "tenant"


def key_holder(key_id: str) -> str:
    return f"key-{key_id}"


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    lease_seconds: float = 1.0  # how long a replica may use a lease; longer: fewer appends, more idle quota
    append_timeout: float = 2.0  # a lease append (or catching up after losing a race) taking longer fails closed
    replica: str = ""  # this replica's name in the log (default: random)

    def __post_init__(self) -> None:
        if self.lease_seconds <= 0 or self.append_timeout <= 0:
            raise ValueError("lease_seconds and append_timeout must be positive numbers of seconds.")


@dataclass(frozen=True, slots=True)
class HolderView:
    """A holder's state at one instant, for headers and ``GET /v1/usage/limits``."""

    used: int  # calls counted in the window, every replica's leases included
    remaining: int  # calls this replica could still admit now
    reset: float  # seconds until the whole quota is free again


class _LocalLease:
    """This replica's own lease: ``until`` is on the monotonic clock."""

    __slots__ = ("left", "sequence", "until")

    def __init__(self, sequence: int, until: float, left: int) -> None:
        self.sequence, self.until, self.left = sequence, until, left


class _Holder:
    __slots__ = (
        "committing",
        "last_sequence",
        "lease",
        "log",
        "name",
        "recent",
        "recent_since",
        "subject",
        "tenant_id",
        "waiting",
    )

    def __init__(self, tenant_id: str, name: str, window: float) -> None:
        self.tenant_id, self.name = tenant_id, name
        self.subject = quota_subject(tenant_id, name)
        self.log = SlidingLog(window)
        self.last_sequence = 0  # the last RATELIMIT sequence applied on this holder's subject
        self.lease: _LocalLease | None = None
        self.waiting: deque[asyncio.Future[int]] = deque()
        self.committing = False
        self.recent = 0  # calls this replica admitted since ``recent_since`` (monotonic)
        self.recent_since = 0.0


class Admission:
    """Decide sliding-window call limits exactly, shared by every replica through the log."""

    def __init__(
        self, js: JetStreamContext, config: AdmissionConfig | None = None, clock: ServerClock | None = None
    ) -> None:
        self._js = js
        self.config = config or AdmissionConfig()
        self.clock = clock or ServerClock()  # the server's time: what every window is measured on
        self.replica = self.config.replica or f"gw-{uuid.uuid4().hex[:12]}"
        self._holders: dict[str, _Holder] = {}
        self._default_window = 60.0
        self._follower: OrderedConsumer | None = None
        self._since = datetime.now(UTC)
        self._tasks: set[asyncio.Task[None]] = set()
        self._returner: asyncio.Task[None] | None = None
        self.appends = 0  # leases this replica appended (for tests and benchmarks)
        self.conflicts = 0  # appends lost to another replica
        # Where the follower hands the stream's meter events (the buckets of .meters).
        self.on_meter: Callable[[MeterConsumed], None] | None = None

    async def start(self, longest_window: float, history: float = 0.0, timeout: float = 30.0) -> None:
        """Replay the stream's last ``history`` seconds (at least enough for every lease that
        can still occupy a window), follow it live, and return once caught up. ``history`` is
        counted back from the server's time (sync :attr:`clock` first); the follower resumes by
        sequence after reconnects and server restarts."""
        self._default_window = longest_window
        history = max(history, longest_window + self.config.lease_seconds) + 5
        self._since = datetime.fromtimestamp(self.clock.now(), UTC) - timedelta(seconds=history)
        self._follower = OrderedConsumer(self._js, STREAM, ALL_RATELIMIT, self._apply, start=self._since)
        await self._follower.start(timeout)
        self._returner = asyncio.create_task(self._return_idle_leases(), name="quota-returns")

    @property
    def last_sequence(self) -> int:
        """The last RATELIMIT sequence the follower applied."""
        return 0 if self._follower is None else self._follower.last_sequence

    async def stop(self) -> None:
        tasks = [t for t in (self._returner, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for holder in self._holders.values():
            await self._return_lease(holder, time.monotonic(), force=True)
            _settle(holder)
        if self._follower is not None:
            await self._follower.stop()

    # Decisions -----------------------------------------------------------------------------

    def take_local(self, tenant_id: str, name: str) -> int:
        """Take one call from this replica's current lease: the in-memory hot path. Returns the
        lease's sequence, or 0 when this replica holds no usable quota."""
        holder = self._holders.get(quota_subject(tenant_id, name))
        if holder is None:
            return 0
        lease = holder.lease
        if lease is None or lease.left <= 0 or time.monotonic() > lease.until:
            return 0
        lease.left -= 1
        holder.recent += 1
        return lease.sequence

    def put_back(self, tenant_id: str, name: str, sequence: int) -> None:
        """Undo a take from lease ``sequence`` (another limit refused the call). Only into that
        same lease, while it lasts: a unit put into a later lease would grant one call too many."""
        holder = self._holders.get(quota_subject(tenant_id, name))
        lease = holder.lease if holder is not None else None
        if holder is not None and lease is not None and lease.sequence == sequence and time.monotonic() <= lease.until:
            lease.left += 1
            holder.recent -= 1

    async def take(self, tenant_id: str, name: str, limit: int, window: float) -> int:
        """Admit one call, leasing quota if this replica holds none. Returns the sequence of the
        lease it came from, or 0 when the limit is reached.

        Raises :class:`AdmissionUnavailable` when the log cannot be reached in time."""
        sequence = self.take_local(tenant_id, name)
        if sequence:
            return sequence
        holder = self._holder(tenant_id, name)
        holder.log.window = window
        lease = holder.lease
        unused = lease.left if lease is not None and time.monotonic() > lease.until else 0  # an ended lease of ours
        if not holder.waiting and holder.log.used(self.clock.now()) - unused >= limit:
            return 0  # refused from memory: a full window costs no round trip
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        holder.waiting.append(future)
        if not holder.committing:
            holder.committing = True
            task = asyncio.create_task(self._commit(holder, limit, window), name=f"lease {holder.subject}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    def view(self, tenant_id: str, name: str, limit: int, window: float) -> HolderView:
        """Cheap enough for every response: no sorting, no round trip."""
        holder = self._holders.get(quota_subject(tenant_id, name))
        if holder is None:
            return HolderView(used=0, remaining=limit, reset=0.0)
        holder.log.window = window
        now = self.clock.now()
        used = holder.log.used(now)
        lease = holder.lease
        own = lease.left if lease is not None and time.monotonic() <= lease.until else 0
        return HolderView(
            used=used, remaining=min(limit, max(0, limit - used) + own), reset=holder.log.frees_all_in(now)
        )

    def retry_after(self, tenant_id: str, name: str, limit: int) -> float:
        """Seconds until one more call fits the holder's window."""
        holder = self._holders.get(quota_subject(tenant_id, name))
        return 0.0 if holder is None else holder.log.retry_after(self.clock.now(), limit)

    async def _commit(self, holder: _Holder, limit: int, window: float) -> None:
        """Lease quota for every waiting request, one append at a time, until none waits.

        If this replica's previous lease ended with calls unused, they are free again for this
        decision (nobody can use an ended lease), and are given back to the log afterwards.

        The decision counts what occupies the window at ``now``, the server's time as known
        here — at most the server's time when it will stamp the lease, so nothing the window
        still holds then is left out."""
        ended: list[_LocalLease] = []
        period = self.config.lease_seconds
        try:
            while holder.waiting:
                now = self.clock.now()
                sent = time.monotonic()
                holder.log.window = window
                if holder.lease is not None and sent > holder.lease.until:
                    ended.append(holder.lease)  # ours to give back: the returner no longer sees it
                    holder.lease = None
                free = limit - holder.log.used(now) + sum(lease.left for lease in ended)
                want = sum(1 for f in holder.waiting if not f.done())
                if want == 0:
                    holder.waiting.clear()
                    break
                if free <= 0:
                    _settle(holder)
                    break
                n = min(free, want + self._expected_extra(holder, sent, free - want))
                lease = QuotaLeased(
                    tenant_id=holder.tenant_id,
                    holder=holder.name,
                    replica=self.replica,
                    n=n,
                    at=now,
                    until=now + period,
                )
                sequence = await self._append(holder, lease)
                if sequence is None:
                    continue  # another replica won the race: decide again with its lease applied
                if holder.last_sequence < sequence:
                    # Until the follower brings the server's stamp (it restamps the grant), the
                    # lease spans from before its append to the end of a lease from now.
                    holder.log.add(Grant(now, self.clock.now() + period, n, sequence))
                    holder.last_sequence = sequence
                holder.lease = _LocalLease(sequence, sent + period, n)  # before the stamp: inside its window
                holder.recent, holder.recent_since = 0, sent
                while holder.waiting and holder.lease.left > 0:
                    future = holder.waiting.popleft()
                    if not future.done():
                        holder.lease.left -= 1
                        holder.recent += 1
                        future.set_result(sequence)
        except AdmissionUnavailable as exc:
            for future in holder.waiting:
                if not future.done():
                    future.set_exception(exc)
            holder.waiting.clear()
        finally:
            holder.committing = False
        for lease in ended:
            if lease.left > 0:
                await self._give_back(holder, lease)

    def _expected_extra(self, holder: _Holder, now: float, spare: int) -> int:
        """Calls beyond those waiting worth leasing now (``now`` monotonic): what this replica
        admitted over the last lease period, capped at half the spare quota so other replicas
        keep room."""
        if spare <= 0 or not holder.recent_since:
            return 0
        period = self.config.lease_seconds
        rate = holder.recent / max(now - holder.recent_since, period)
        return min(int(rate * period), spare // 2)

    async def _append(self, holder: _Holder, lease: QuotaLeased) -> int | None:
        """Append ``lease`` if nobody else did first; returns its sequence, or ``None`` after
        catching up with the winner."""
        try:
            sequence = await append(
                self._js,
                holder.subject,
                encode_event(lease),
                expected=holder.last_sequence,
                timeout=self.config.append_timeout,
            )
        except AppendConflict:
            self.conflicts += 1
            await self._catch_up(holder)
            return None
        except BadRequestError as exc:
            raise AdmissionUnavailable(f"the RATELIMIT stream refused a lease: {exc.description}") from None
        except (NatsTimeoutError, TimeoutError, NoStreamResponseError, APIError) as exc:
            raise AdmissionUnavailable(f"no lease could be recorded: {exc!r}") from None
        self.appends += 1
        return sequence

    async def _catch_up(self, holder: _Holder) -> None:
        """Apply everything up to the subject's last message, as read with a direct get."""
        try:
            last = await self._js.get_last_msg(STREAM, holder.subject, direct=True)
        except NotFoundError:
            holder.last_sequence = 0  # the subject's messages have aged out of the stream
            return
        except (NatsTimeoutError, TimeoutError, APIError) as exc:
            raise AdmissionUnavailable(f"could not read the winning lease: {exc!r}") from None
        sequence = last.seq or 0
        if last.time is not None and last.time < self._since:
            # Older than anything the follower replays: it cannot occupy any window any more.
            holder.last_sequence = max(holder.last_sequence, sequence)
            return
        try:
            await self.wait_for(sequence, self.config.append_timeout)
        except TimeoutError:
            raise AdmissionUnavailable("the RATELIMIT follower lags behind the stream") from None

    async def wait_for(self, sequence: int, timeout: float) -> None:
        if self._follower is None:
            raise AdmissionUnavailable("the RATELIMIT follower is not started")
        await self._follower.wait_for(sequence, timeout)

    # Leases that end unused -------------------------------------------------------------------

    async def _return_idle_leases(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_seconds)
            now = time.monotonic()
            for holder in list(self._holders.values()):
                await self._return_lease(holder, now)

    async def _return_lease(self, holder: _Holder, now: float, *, force: bool = False) -> None:
        """Give back what is left of this replica's lease once it has ended at monotonic ``now``
        (or, ``force``, at shutdown), so other replicas need not wait for the window to forget it."""
        lease = holder.lease
        if lease is None or (now <= lease.until and not force):
            return
        holder.lease = None
        if lease.left > 0:
            await self._give_back(holder, lease)

    async def _give_back(self, holder: _Holder, lease: _LocalLease) -> None:
        """Append ``QuotaReturned``. The follower applies it, not this method: other leases may
        precede it on the subject, and they must be applied first."""
        event = QuotaReturned(
            tenant_id=holder.tenant_id,
            holder=holder.name,
            replica=self.replica,
            lease_sequence=lease.sequence,
            n=lease.left,
        )
        try:
            await self._js.publish(holder.subject, encode_event(event), timeout=self.config.append_timeout)
        except (NatsTimeoutError, TimeoutError, APIError) as exc:
            log.warning(
                "could not return %d unused calls of %s (they free up with the window): %r",
                lease.left,
                holder.subject,
                exc,
            )

    # Following the stream ----------------------------------------------------------------------

    def _holder(self, tenant_id: str, name: str) -> _Holder:
        subject = quota_subject(tenant_id, name)
        holder = self._holders.get(subject)
        if holder is None:
            holder = self._holders[subject] = _Holder(tenant_id, name, self._default_window)
        return holder

    async def _apply(self, msg: Msg) -> None:
        sequence = msg.metadata.sequence.stream
        stamp = msg.metadata.timestamp.timestamp()
        self.clock.observe(stamp)
        try:
            event = decode_ratelimit_event(msg.data)
        except msgspec.ValidationError:
            log.error("skipped an unreadable RATELIMIT event on %s", msg.subject)
        else:
            if isinstance(event, MeterConsumed):
                if self.on_meter is not None:
                    self.on_meter(event)
            else:
                self._apply_quota(event, sequence, stamp)

    def _apply_quota(self, event: QuotaLeased | QuotaReturned, sequence: int, stamp: float) -> None:
        """Fold a lease or a return stored at server time ``stamp``."""
        holder = self._holder(event.tenant_id, event.holder)
        lasts = max(0.0, event.until - event.at) if isinstance(event, QuotaLeased) else 0.0
        if sequence <= holder.last_sequence:
            # A lease of ours, applied when its append was acknowledged: now its window is known.
            if lasts:
                holder.log.restamp(sequence, stamp, stamp + lasts)
            return
        if isinstance(event, QuotaLeased):
            holder.log.add(Grant(stamp, stamp + lasts, event.n, sequence))
        else:
            holder.log.give_back(event.lease_sequence, event.n)
        holder.last_sequence = sequence


def _settle(holder: _Holder) -> None:
    """Refuse every request still waiting for quota."""
    for future in holder.waiting:
        if not future.done():
            future.set_result(0)
    holder.waiting.clear()
