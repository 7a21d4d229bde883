"""Compute, bandwidth and storage limits: per-tenant buckets folded from the USAGE stream.

Every gateway replica follows ``usage.*.compute_ms``, ``usage.*.bytes_in``,
``usage.*.bytes_out`` and ``usage.*.storage_bytes`` — from far enough back that no bucket
remembers anything older (:meth:`.plans.PlanBook.horizon`; storage from the start of its
current window) — so every replica holds the same buckets, fed by every replica's calls.

A replica applies its own calls at once (:meth:`Meters.note`) instead of waiting for them to
come back through the log, and skips them when they do (by their message id). What another
replica used reaches this one after that replica's publisher flushes it (``max_delay``, 1 s
by default) and the stream delivers it, so across N replicas these limits can be overshot by
at most what the other replicas admit in that time. They are post-paid by nature — compute and
the answer's size are known only after a call — so no scheme decides them exactly before the
call; the call limits, which can be, are exact (:mod:`.admission`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from democratic_ai.contracts.usage_events import Metric, UsageEvent, decode_usage_event, message_id

from .algorithms import FixedWindow, LeakyBucket, TokenBucket
from .plans import Plan, PlanResolver

__all__ = ["Meters", "Refusal", "TenantMeters"]

log = logging.getLogger(__name__)

_FORGET_OWN_AFTER = 300.0  # seconds; an own event not seen again by then is no longer awaited
_COMPUTE, _IN, _OUT, _STORAGE = (m.value for m in (Metric.COMPUTE_MS, Metric.BYTES_IN, Metric.BYTES_OUT,
                                                    Metric.STORAGE_BYTES))


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
            self.compute = TokenBucket(c.capacity, c.refill_per_second, max(-c.capacity, c.capacity - used),
                                       self.compute.at)
        if b is None:
            self.bandwidth = None
        elif self.bandwidth is None or (self.bandwidth.capacity, self.bandwidth.rate) != (b.capacity, b.leak_per_second):
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
        elif metric == _IN or metric == _OUT:
            if self.bandwidth is not None:
                self.bandwidth = self.bandwidth.add(value, at)
        elif metric == _STORAGE and self.storage is not None:
            self.storage = self.storage.add(value, at)


class Meters:
    """Every tenant's compute, bandwidth and storage buckets, shared by all replicas via the log."""

    def __init__(self, js: JetStreamContext, plans: PlanResolver) -> None:
        self._js = js
        self._plans = plans
        self._tenants: dict[str, TenantMeters] = {}
        self._own: OrderedDict[str, float] = OrderedDict()  # message ids applied before the log echoes them
        self._storage_seen: OrderedDict[str, None] = OrderedDict()  # storage writes already applied from the log
        self._subscriptions: list[JetStreamContext.PushSubscription] = []

    async def start(self, horizon: float, storage_window: float, timeout: float = 30.0) -> None:
        """Replay what the buckets still remember, then follow the stream live."""
        now = datetime.now(UTC)
        since = now - timedelta(seconds=horizon + 5)
        storage_since = datetime.fromtimestamp(math.floor(now.timestamp() / storage_window) * storage_window, UTC)
        pending = []
        for metric, start in ((_COMPUTE, since), (_IN, since), (_OUT, since), (_STORAGE, storage_since)):
            caught_up = asyncio.Event()

            async def on_message(msg: Msg, caught_up: asyncio.Event = caught_up) -> None:
                self._apply(msg)
                if msg.metadata.num_pending == 0:
                    caught_up.set()

            subscription = await self._js.subscribe(
                f"usage.*.{metric}", stream="USAGE", ordered_consumer=True, cb=on_message,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start),
            )
            self._subscriptions.append(subscription)
            if (await subscription.consumer_info()).num_pending:
                pending.append(caught_up.wait())
        if pending:
            await asyncio.wait_for(asyncio.gather(*pending), timeout)

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions.clear()

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
            return Refusal("compute", compute.retry_after(now),
                           f"the compute budget of {compute.capacity:g} ms is used up")
        if bandwidth is not None and not bandwidth.allows(bytes_in, now):
            return Refusal("bandwidth", bandwidth.retry_after(bytes_in, now),
                           f"the bandwidth bucket of {bandwidth.capacity:g} bytes is full")
        return None

    def check_storage(self, tenant_id: str, amount: int, now: float) -> Refusal | None:
        storage = self.tenant(tenant_id, now).storage
        if storage is not None and not storage.allows(amount, now):
            return Refusal("storage", storage.resets_in(now),
                           f"writing {amount} bytes would pass the storage limit of {storage.limit} bytes"
                           f" per {storage.size:g} s")
        return None

    def applied(self, key: str) -> bool:
        """Whether the storage write with message id ``key`` is already counted here."""
        return key in self._storage_seen or key in self._own

    def note(self, events: list[UsageEvent]) -> None:
        """Apply this replica's own events now; their echo from the log will be skipped."""
        now = time.monotonic()
        for event in events:
            metric = event.metric
            if metric == _COMPUTE or metric == _IN or metric == _OUT or metric == _STORAGE:
                key = message_id(event)
                if metric == _STORAGE and key in self._storage_seen:
                    continue  # a write recorded before, already applied from the log
                self._own[key] = now
                self.tenant(event.tenant_id, event.at.timestamp()).add(metric, event.value, event.at.timestamp())
        own = self._own
        while own and next(iter(own.values())) < now - _FORGET_OWN_AFTER:
            own.popitem(last=False)

    def _apply(self, msg: Msg) -> None:
        try:
            event = decode_usage_event(msg.data)
        except msgspec.ValidationError:
            log.error("skipped an unreadable USAGE event on %s", msg.subject)
            return
        key = message_id(event)
        if event.metric == _STORAGE:
            # Remembered even when it is our own, so that recording the same write again
            # (its retry is a duplicate the log drops) is not counted twice here either.
            self._storage_seen[key] = None
            if len(self._storage_seen) > 100_000:
                self._storage_seen.popitem(last=False)
        if self._own and self._own.pop(key, None) is not None:
            return
        at = event.at.timestamp()
        self.tenant(event.tenant_id, at).add(event.metric, event.value, at)
