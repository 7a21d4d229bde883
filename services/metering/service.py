"""``Metering``: what the gateway holds to meter calls and enforce limits.

One object per gateway process: the plans, the exact call-limit admission, the per-tenant
buckets, the usage publisher — started and stopped together — and the three things the edge
does with them: admit a call, record a finished call, record data a store wrote.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.aio.client import Client as NATS

from democratic_ai.contracts import MCPMessage, tracing
from democratic_ai.contracts.call_usage import usage_of
from democratic_ai.contracts.headers import NATS_MSG_ID, TRACEPARENT
from democratic_ai.contracts.server_clock import ServerClock
from democratic_ai.contracts.subjects import usage_subject
from democratic_ai.contracts.usage_events import (
    Metric,
    StorageMetered,
    encode_event,
    message_id,
)
from democratic_ai.services.identity import Principal
from democratic_ai.services.plans import PlanBook, load_plans

from .admission import STREAM as RATELIMIT, Admission, AdmissionConfig
from .errors import QuotaExceeded
from .limiter import Decision, PolicyState, RateLimiter
from .meters import Meters
from .publisher import PublisherConfig, UsagePublisher
from .subscriptions import SubscribedPlans

__all__ = ["Metering", "MeteringConfig"]


@dataclass(frozen=True, slots=True)
class MeteringConfig:
    plans: PlanBook = field(default_factory=load_plans)
    publisher: PublisherConfig = field(default_factory=PublisherConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)


class Metering:
    """Admits, meters and limits the calls of one gateway process.

    ``admit`` decides a call against the caller's plan (the exact call limits through leases on
    the RATELIMIT stream, the byte and compute buckets in memory, shared between gateways by
    their published consumption); ``record`` turns the message that ended a call into its usage
    events (one outcome for all of them) and publishes them to the USAGE stream in batches;
    ``policies`` is the state the edge reports in its rate-limit headers. Only the call gate
    uses ``admit`` and ``record`` (services/gateway/gate.py).
    """

    def __init__(self, nc: NATS, config: MeteringConfig | None = None) -> None:
        self.config = config or MeteringConfig()
        js = nc.jetstream()
        self._nc, self._js = nc, js
        self.plans = self.config.plans
        self.clock = ServerClock()  # the server's time, which call windows are measured on
        self._clock_watch: asyncio.Task[None] | None = None
        self.admission = Admission(js, self.config.admission, self.clock)
        self.meters = Meters(nc, self.plans, self.admission.replica)
        self.admission.on_meter = self.meters.apply_remote  # meter events arrive on RATELIMIT
        self.limiter = RateLimiter(self.plans, self.admission, self.meters)
        self.publisher = UsagePublisher(nc, self.config.publisher)
        self.subscriptions = SubscribedPlans(self.plans)

    async def start(self) -> None:
        """Rebuild limit state from the log, then follow it."""
        # First the server's time: the replay of leases counts back from it.
        await self.clock.refresh(self._nc, RATELIMIT)
        self._clock_watch = asyncio.create_task(self.clock.watch(self._nc, RATELIMIT), name="server-clock")
        await self.subscriptions.start(self._js)
        storage_window = max(
            (p.storage_bytes.window_seconds for p in self.plans.plans.values() if p.storage_bytes), default=86_400
        )
        await self.admission.start(self.plans.longest_call_window(), history=self.plans.horizon())
        await self.meters.start(storage_window)
        await self.publisher.start()

    async def stop(self) -> None:
        await self.publisher.stop()
        await self.meters.stop()
        await self.admission.stop()
        await self.subscriptions.stop()
        if self._clock_watch is not None:
            self._clock_watch.cancel()
            await asyncio.gather(self._clock_watch, return_exceptions=True)
            self._clock_watch = None

    async def admit(self, principal: Principal, bytes_in: int) -> Decision:
        return await self.limiter.admit(principal, bytes_in)

    def record(self, answer: MCPMessage) -> str:
        """Meter the call ``answer`` closes: buffer its usage events, count them at once; the
        call's outcome (every event of it carries the same one)."""
        events = usage_of(answer)
        self.meters.note(events)
        if tracing.tracing_enabled():
            # Each event continues the call's trace, from the span that made the answer.
            self.publisher.add(events, tracing.derived_context(answer.headers.get(TRACEPARENT)))
        else:
            self.publisher.add(events)
        return events[0].outcome

    def policies(self, principal: Principal, *, storage: bool = False) -> list[PolicyState]:
        return self.limiter.policies(principal, storage=storage)

    async def record_storage(
        self,
        tenant_id: str,
        value: int,
        *,
        store: str,
        operation_id: str,
        capability: str = "",
        user_id: str = "",
        api_key_id: str = "",
        at: datetime | None = None,
    ) -> StorageMetered:
        """Meter ``value`` bytes a store wrote for a tenant (negative: freed).

        Nothing in the platform stores tenant data yet; a store (a module keeping files, a
        vector index…) calls this when it writes. ``operation_id`` identifies the write: the
        same write recorded twice is counted once (pass the write's own time as ``at`` to keep
        that true for a retry later than the log's ten-minute duplicate window). A write that would pass the tenant's
        fixed-window storage limit raises :class:`QuotaExceeded` and is not recorded. Unlike
        call usage, this is published and acknowledged before it returns: a write is rare,
        and there is no other record to recover it from.
        """
        event = StorageMetered(
            tenant_id=tenant_id,
            metric=Metric.STORAGE_BYTES.value,
            value=value,
            at=at or datetime.now(UTC),
            operation_id=operation_id,
            store=store,
            capability=capability,
            user_id=user_id,
            api_key_id=api_key_id,
        )
        if value > 0 and not self.meters.applied(message_id(event)):  # a retry is never refused
            refusal = self.meters.check_storage(tenant_id, value, time.time())
            if refusal is not None:
                raise QuotaExceeded(refusal.message, policy=refusal.policy, retry_after=refusal.retry_after)
        ack = await self._js.publish(
            usage_subject(tenant_id, event.metric), encode_event(event), headers={NATS_MSG_ID: message_id(event)}
        )
        if not ack.duplicate:
            self.meters.note([event])
        return event
