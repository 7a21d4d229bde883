"""Compute, bandwidth and storage limits: per-tenant buckets every replica holds alike.

Compute and bandwidth are post-paid — their cost is known only after a call — so a call is
admitted while the tenant's bucket has room and its cost is taken afterwards. A replica takes
its own calls' cost at once (:meth:`Meters.note`) and, every ``interval`` (0.25 s), appends
what each tenant's calls took since the last time as one ``MeterConsumed`` event on
``ratelimit.<tenant>.meter``. Every replica follows RATELIMIT (with the call leases, in
:mod:`.admission`) and takes the other replicas' consumption into its buckets; a starting
replica replays as much of it as any bucket remembers (:meth:`.plans.PlanBook.horizon`).

Why not fold the USAGE events themselves: each replica would then process three events per call
*of every replica*, a cost that grows with the number of replicas (each would pay N × its own
traffic); a meter event per active tenant and interval stays small. The events sum exactly the
values the USAGE events carry; only limits read them, never billing.

Across N replicas these limits can therefore be overshot by what the other replicas admit
between two meter events plus the delivery (about ``interval``): no scheme can decide a post-paid
cost exactly before the call. The call limits, which can be exact, are (:mod:`.admission`).

The buckets are each replica's own and run on its clock (the limiter's ``now``). The times fed
into them come from other clocks — an answer's timestamp is the module's, a meter event's the
other replica's — so a time ahead of this replica's is taken as now (:func:`_not_after_now`):
a clock 30 s ahead would otherwise move a bucket 30 s into the future, where it would not
refill until this clock caught up. A time behind is harmless: it is taken without a refill.

Storage is rare and written through :meth:`.service.Metering.record_storage`; its fixed-window
state is folded from the USAGE stream's ``usage.*.storage_bytes`` events directly, from the
start of the current window.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, OutboundBufferLimitError

from democratic_ai.contracts.ordered import OrderedConsumer
from democratic_ai.contracts.streams import USAGE_STREAM
from democratic_ai.contracts.subjects import meter_subject, usage_subject
from democratic_ai.contracts.usage_events import (
    MeterConsumed,
    Metric,
    UsageEvent,
    decode_usage_event,
    encode_event,
    message_id,
)
from democratic_ai.services.plans import Plan, PlanResolver

from .algorithms import FixedWindow, LeakyBucket, TokenBucket

__all__ = ["Meters", "Refusal", "TenantMeters"]

log = logging.getLogger(__name__)

_FORGET_OWN_AFTER = 300.0  # seconds; an own event not seen again by then is no longer awaited
_API_CALLS, _COMPUTE, _IN, _OUT, _STORAGE = (m.value for m in Metric)


@dataclass(frozen=True, slots=True)
class Refusal:
    policy: str  # "compute", "bandwidth" or "storage"
    retry_after: float
    message: str


class TenantMeters:
    """One tenant's three buckets; each exists only if the tenant's plan sets that limit."""

    __slots__ = ("bandwidth", "compute", "storage")

    def __init__(self) -> None:
        self.compute: TokenBucket | None = None
        self.bandwidth: LeakyBucket | None = None
        self.storage: FixedWindow | None = None

    def fit(self, plan: Plan, now: float) -> TenantMeters:
        """Make the buckets match ``plan`` (a new tenant, or one whose plan changed), keeping
        what was used."""
        c, b, s = plan.compute_ms, plan.bandwidth_bytes, plan.storage_bytes
        if c is None:
            self.compute = None
        elif self.compute is None:
            self.compute = TokenBucket.full(c.capacity, c.refill_per_second, now)
        elif (self.compute.capacity, self.compute.rate) != (c.capacity, c.refill_per_second):
            used = self.compute.capacity - self.compute.tokens
            self.compute = TokenBucket(
                c.capacity, c.refill_per_second, max(-c.capacity, c.capacity - used), self.compute.at
            )
        if b is None:
            self.bandwidth = None
        elif self.bandwidth is None or (self.bandwidth.capacity, self.bandwidth.rate) != (
            b.capacity,
            b.leak_per_second,
        ):
            level = self.bandwidth.level if self.bandwidth else 0.0
            self.bandwidth = LeakyBucket(b.capacity, b.leak_per_second, min(level, 2 * b.capacity), now)
        if s is None:
            self.storage = None
        elif self.storage is None or (self.storage.limit, self.storage.size) != (s.limit, s.window_seconds):
            window = FixedWindow.starting(s.limit, s.window_seconds, now)
            if self.storage is not None and self.storage.size == s.window_seconds:
                window = FixedWindow(s.limit, s.window_seconds, self.storage.start, self.storage.used)
            self.storage = window
        return self

    def add(self, metric: str, value: int, at: float) -> None:
        if metric == _COMPUTE:
            if self.compute is not None:
                self.compute = self.compute.spend(value, at)
        elif metric in (_IN, _OUT):
            if self.bandwidth is not None:
                self.bandwidth = self.bandwidth.add(value, at)
        elif metric == _STORAGE and self.storage is not None:
            self.storage = self.storage.add(value, at)


class Meters:
    """Every tenant's compute, bandwidth and storage buckets, shared by all replicas via the log."""

    def __init__(self, nc: NATS, plans: PlanResolver, replica: str, interval: float = 0.25) -> None:
        self._nc = nc
        self._plans = plans
        self.replica = replica
        self.interval = interval
        self._tenants: dict[str, TenantMeters] = {}
        # tenant → [compute ms, bandwidth bytes, first, last]: this replica's calls not yet told
        self._pending: dict[str, list[float]] = {}
        self._own: OrderedDict[str, float] = OrderedDict()  # storage writes applied before the log echoes them
        self._storage_seen: OrderedDict[str, None] = OrderedDict()  # storage writes already applied from the log
        self._follower: OrderedConsumer | None = None
        self._teller: asyncio.Task[None] | None = None

    async def start(self, storage_window: float, timeout: float = 30.0) -> None:
        """Replay the current storage window, follow it, and start telling other replicas."""
        now = time.time()
        since = datetime.fromtimestamp(math.floor(now / storage_window) * storage_window, UTC)
        storage = usage_subject("*", _STORAGE)
        # Stored with the tenant's partition appended (contracts/partitions.py); the window may
        # still hold events stored before that, without it.
        self._follower = OrderedConsumer(
            self._nc.jetstream(), USAGE_STREAM, [f"{storage}.*", storage], self._on_storage, start=since
        )
        await self._follower.start(timeout)
        self._teller = asyncio.create_task(self._tell(), name="meter-events")

    async def stop(self) -> None:
        if self._teller is not None:
            self._teller.cancel()
            await asyncio.gather(self._teller, return_exceptions=True)
            self._teller = None
        if self._nc.is_connected:
            await self._flush()
        if self._follower is not None:
            await self._follower.stop()
            self._follower = None

    def tenant(self, tenant_id: str, now: float) -> TenantMeters:
        meters = self._tenants.get(tenant_id)
        if meters is None:
            meters = self._tenants[tenant_id] = TenantMeters()
        return meters.fit(self._plans.plan_of(tenant_id), now)

    def check(self, tenant_id: str, bytes_in: int, now: float) -> Refusal | None:
        """Whether a call of ``bytes_in`` bytes fits the tenant's compute and bandwidth now."""
        meters = self.tenant(tenant_id, now)
        compute, bandwidth = meters.compute, meters.bandwidth
        if compute is not None and not compute.allows(now):
            return Refusal(
                "compute", compute.retry_after(now), f"the compute budget of {compute.capacity:g} ms is used up"
            )
        if bandwidth is not None and not bandwidth.allows(bytes_in, now):
            return Refusal(
                "bandwidth",
                bandwidth.retry_after(bytes_in, now),
                f"the bandwidth bucket of {bandwidth.capacity:g} bytes is full",
            )
        return None

    def check_storage(self, tenant_id: str, amount: int, now: float) -> Refusal | None:
        storage = self.tenant(tenant_id, now).storage
        if storage is not None and not storage.allows(amount, now):
            return Refusal(
                "storage",
                storage.resets_in(now),
                f"writing {amount} bytes would pass the storage limit of {storage.limit} bytes per {storage.size:g} s",
            )
        return None

    def applied(self, key: str) -> bool:
        """Whether the storage write with message id ``key`` is already counted here."""
        return key in self._storage_seen or key in self._own

    def note(self, events: list[UsageEvent]) -> None:
        """Take this replica's own usage into the buckets now; what fills a compute or bandwidth
        bucket is told to the other replicas with the next meter event."""
        for event in events:
            metric = event.metric
            if metric == _API_CALLS:
                continue
            at = _not_after_now(event.at.timestamp())
            meters = self.tenant(event.tenant_id, at)
            if metric == _STORAGE:
                key = message_id(event)
                if key not in self._storage_seen:
                    self._own[key] = time.monotonic()
                    meters.add(metric, event.value, at)
                continue
            bucket = meters.compute if metric == _COMPUTE else meters.bandwidth
            if bucket is None:
                continue  # no such limit on the tenant's plan: nothing to keep or to tell
            meters.add(metric, event.value, at)
            pending = self._pending.get(event.tenant_id)
            if pending is None:
                pending = self._pending[event.tenant_id] = [0, 0, at, at]
            pending[0 if metric == _COMPUTE else 1] += event.value
            pending[2], pending[3] = min(pending[2], at), max(pending[3], at)
        own = self._own
        cutoff = time.monotonic() - _FORGET_OWN_AFTER
        while own and next(iter(own.values())) < cutoff:
            own.popitem(last=False)

    def apply_remote(self, event: MeterConsumed) -> None:
        """Take another replica's consumption into the buckets (our own is in them already)."""
        if event.replica == self.replica:
            return
        at = _not_after_now(event.until)
        meters = self.tenant(event.tenant_id, at)
        if event.compute_ms:
            meters.add(_COMPUTE, event.compute_ms, at)
        if event.bandwidth_bytes:
            meters.add(_IN, event.bandwidth_bytes, at)

    async def _tell(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._flush()

    async def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for tenant_id, (compute, bandwidth, since, until) in pending.items():
            event = MeterConsumed(
                tenant_id=tenant_id,
                replica=self.replica,
                compute_ms=int(compute),
                bandwidth_bytes=int(bandwidth),
                since=since,
                until=until,
            )
            try:
                # Plain publish: the stream stores it, nobody waits for an acknowledgement. A lost
                # meter event only makes the other replicas' buckets a little more lenient.
                await self._nc.publish(meter_subject(tenant_id), encode_event(event))
            except (ConnectionClosedError, OutboundBufferLimitError) as exc:
                log.warning("could not tell the other replicas what %s used: %r", tenant_id, exc)

    async def _on_storage(self, msg: Msg) -> None:
        self._apply_storage(msg)

    def _apply_storage(self, msg: Msg) -> None:
        try:
            event = decode_usage_event(msg.data)
        except msgspec.DecodeError:  # ValidationError too: a forged event may not even be JSON
            log.error("skipped an unreadable USAGE event on %s", msg.subject)
            return
        key = message_id(event)
        # Remembered even when it is our own, so that recording the same write again (its
        # retry is a duplicate the log drops) is not counted twice here either.
        self._storage_seen[key] = None
        if len(self._storage_seen) > 100_000:
            self._storage_seen.popitem(last=False)
        if self._own.pop(key, None) is not None:
            return
        at = _not_after_now(event.at.timestamp())
        self.tenant(event.tenant_id, at).add(event.metric, event.value, at)


def _not_after_now(at: float) -> float:
    """A time stamped by another clock, as this replica's buckets may take it (see the module docstring)."""
    return min(at, time.time())
