"""Billing commands: choose a plan, cancel, close a month into an invoice.

Nothing here writes a database row. A command loads its aggregate from the log, decides, and
appends one event with ``Nats-Expected-Last-Subject-Sequence``; the billing projection folds
it into the read models.

Closing a month is idempotent by construction: the invoice is appended with expected last
subject sequence 0 on ``billing.<tenant>.invoice.<YYYY-MM>`` and a ``Nats-Msg-Id`` of its
deterministic id, so of any number of concurrent closes exactly one appends, and every one of
them answers that invoice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
from nats.js import JetStreamContext

from democratic_ai.contracts.billing_events import (
    InvoiceIssued,
    PlanChanged,
    SubscriptionCancelled,
    SubscriptionStarted,
)
from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.subjects import InvalidSubjectToken, invoice_subject, subscription_subject, validate_token
from democratic_ai.services.plans import INTERVALS, PlanBook

from .config import BillingConfig
from .errors import Conflict, Invalid, NotFound
from .eventlog import STREAM, BillingLog
from .invoicing import build_invoice, compute_invoice, period_id, usage_window
from .periods import InvalidPeriod, InvalidTimeZone, Month, add_months, month_of, month_period, parse_month, zone
from .subscription import Subscription, fold_subscription
from .usage import UsageTotals

__all__ = ["DEFAULT_TIME_ZONE", "BillingService", "Closed", "PlanPreview"]

log = logging.getLogger(__name__)

DEFAULT_TIME_ZONE = "Asia/Tokyo"  # the seed's market; a tenant may choose another on its first subscription


@dataclass(frozen=True, slots=True)
class Closed:
    """The outcome of closing one month of one tenant."""

    tenant_id: str
    period: str
    invoice: InvoiceIssued | None  # None: nothing to bill that month
    created: bool  # False: the invoice already existed (or nothing was billed)


@dataclass(frozen=True, slots=True)
class PlanPreview:
    """This month's invoice with and without a change of plan made now, to the month's end."""

    tenant_id: str
    plan_id: str
    interval: str
    as_of: datetime  # the instant the change is supposed to be made
    changes: bool  # False: the tenant is already on that plan and interval
    unchanged: InvoiceIssued | None  # None: not subscribed this month
    changed: InvoiceIssued | None  # None only when the plan ends before the month (cannot happen for a choice)

    @property
    def difference(self) -> int:
        """How much more (negative: less) this month's invoice totals with the change."""
        return (self.changed.total if self.changed else 0) - (self.unchanged.total if self.unchanged else 0)


class BillingService:
    """The billing commands: a tenant's plan, its cancellation, and closing months into invoices.

    State comes from the BILLING stream (a subscription is folded from its events) and from the
    usage read model (what was used, billable by the one outcome rule); every decision is one
    append under the subject's expected sequence, so the billing projection and any number of
    gateways agree on it.
    """

    def __init__(
        self,
        js: JetStreamContext,
        plans: PlanBook,
        usage: UsageTotals,
        config: BillingConfig,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.log = BillingLog(js)
        self.plans = plans
        self.usage = usage
        self.config = config
        self.clock = clock

    # Subscriptions -------------------------------------------------------------------------------

    async def subscription(self, tenant_id: str) -> Subscription:
        _tenant(tenant_id)
        return fold_subscription(tenant_id, await self.log.read(subscription_subject(tenant_id)))

    async def set_plan(
        self, meta: Meta, tenant_id: str, plan_id: str, interval: str = "month", time_zone: str | None = None
    ) -> int:
        """Subscribe to ``plan_id``, or change to it (at once, prorated); returns the event's
        sequence, or 0 when the tenant is already on that plan and interval."""
        subscription, event = await self._plan_event(meta, tenant_id, plan_id, interval, time_zone)
        if event is None:
            return 0
        return await self.log.append(subscription_subject(tenant_id), event, expected=subscription.sequence)

    async def _plan_event(
        self, meta: Meta, tenant_id: str, plan_id: str, interval: str, time_zone: str | None
    ) -> tuple[Subscription, SubscriptionStarted | PlanChanged | None]:
        """The subscription and the event choosing ``plan_id`` would append (``None``: already on it)."""
        try:
            terms = self.plans.terms(plan_id)
        except KeyError:
            raise Invalid(f"there is no plan {plan_id!r}", field="plan", allowed=sorted(self.plans.prices)) from None
        if interval not in INTERVALS:
            raise Invalid(f"interval must be one of {', '.join(INTERVALS)}", field="interval")
        if time_zone is not None:
            _zone(time_zone)
        subscription = await self.subscription(tenant_id)
        if time_zone is not None and subscription.time_zone not in (None, time_zone):
            raise Invalid(
                f"the billing time zone is {subscription.time_zone}: it is set by the first subscription"
                " and kept, so that months never overlap",
                field="time_zone",
            )
        current = subscription.current
        if current is None:
            started = SubscriptionStarted(
                tenant_id=tenant_id,
                meta=meta,
                terms=terms,
                interval=interval,
                time_zone=subscription.time_zone or time_zone or DEFAULT_TIME_ZONE,
            )
            return subscription, started
        if current.terms.plan_id == plan_id and current.interval == interval:
            return subscription, None
        if current.terms.currency != terms.currency:
            raise Invalid(
                f"plan {plan_id!r} is priced in {terms.currency}, the subscription in"
                f" {current.terms.currency}; an invoice has one currency",
                field="plan",
            )
        return subscription, PlanChanged(tenant_id=tenant_id, meta=meta, terms=terms, interval=interval)

    async def preview_plan(
        self, meta: Meta, tenant_id: str, plan_id: str, interval: str = "month", time_zone: str | None = None
    ) -> PlanPreview:
        """What choosing ``plan_id`` now would do to this month's invoice; nothing is appended.

        The event :meth:`set_plan` would append is decided by the same code, stamped with the
        service's clock, and folded after the subscription's events; both the month with it and
        the month without it are then computed by :func:`compute_invoice` to the month's end —
        the fees as they will be billed if nothing else changes, the usage counted so far.
        """
        now = self.clock()
        stamped = msgspec.structs.replace(meta, at=now)  # as if set_plan were called at this instant
        _, event = await self._plan_event(stamped, tenant_id, plan_id, interval, time_zone)
        events = [(s, e) for s, e in await self.log.read(subscription_subject(tenant_id)) if e.meta.at <= now]
        unchanged = fold_subscription(tenant_id, events)
        changed = unchanged
        if event is not None:
            changed = fold_subscription(tenant_id, [*events, (unchanged.sequence + 1, event)])
        zone_name = changed.time_zone or DEFAULT_TIME_ZONE
        month = month_of(now, zone_name)
        at = Meta(at=now, actor=meta.actor)
        return PlanPreview(
            tenant_id=tenant_id,
            plan_id=plan_id,
            interval=interval,
            as_of=now,
            changes=event is not None,
            unchanged=await self._projected(unchanged, month, at),
            changed=await self._projected(changed, month, at),
        )

    async def _projected(self, subscription: Subscription, month: Month, meta: Meta) -> InvoiceIssued | None:
        """``month``'s whole invoice for ``subscription`` as it stands, with the usage so far."""
        if subscription.time_zone is None:
            return None
        window = usage_window(subscription, month_period(month, subscription.time_zone))
        if window is None:
            return None
        usage = await self.usage.totals(subscription.tenant_id, window.start, min(window.end, meta.at))
        return compute_invoice(subscription, month, usage, self.config.tax_rate, meta, seller=self.config.seller)

    async def cancel(self, meta: Meta, tenant_id: str, reason: str = "") -> int:
        """End the subscription now; its last pieces are billed, prorated, with this month."""
        subscription = await self.subscription(tenant_id)
        if subscription.current is None:
            raise Conflict(f"tenant {tenant_id!r} has no subscription to cancel")
        return await self.log.append(
            subscription_subject(tenant_id),
            SubscriptionCancelled(tenant_id=tenant_id, meta=meta, reason=reason),
            expected=subscription.sequence,
        )

    # Invoices ------------------------------------------------------------------------------------

    async def invoice(self, tenant_id: str, period: str) -> tuple[InvoiceIssued | None, int]:
        """The invoice of ``period`` and the last sequence on its subject (0: never closed)."""
        events = await self.log.read(invoice_subject(tenant_id, period))
        issued = next((e for _, e in events if isinstance(e, InvoiceIssued)), None)
        return issued, events[-1][0] if events else 0

    def closable_from(self, month: Month, time_zone: str) -> datetime:
        return month_period(month, time_zone).end + timedelta(seconds=self.config.close_grace_seconds)

    async def close_period(self, tenant_id: str, month: Month | str, actor: str = "system") -> Closed:
        """Issue the invoice of ``month`` (``YYYY-MM`` in the tenant's time zone), once."""
        if isinstance(month, str):
            month = _month(month)
        subscription = await self.subscription(tenant_id)
        time_zone = subscription.time_zone
        if time_zone is None:
            raise NotFound(f"tenant {tenant_id!r} has never subscribed to a plan")
        period, now = period_id(month), self.clock()
        if now < self.closable_from(month, time_zone):
            raise Invalid(
                f"{period} can be closed from {self.closable_from(month, time_zone).isoformat()}:"
                " a month is closed only after it has ended and its usage has settled",
                field="period",
            )
        existing, _ = await self.invoice(tenant_id, period)
        if existing is not None:
            return Closed(tenant_id, period, existing, created=False)
        bounds = month_period(month, time_zone)
        # Only what was recorded before the month ended decides its invoice: a later close,
        # or one after a rebuild, sees the same subscription.
        events = [(s, e) for s, e in await self.log.read(subscription_subject(tenant_id)) if e.meta.at < bounds.end]
        before_end = fold_subscription(tenant_id, events)
        window = usage_window(before_end, bounds)
        if window is None:
            return Closed(tenant_id, period, None, created=False)
        usage = await self.usage.totals(tenant_id, window.start, window.end)
        invoice = build_invoice(
            before_end, month, usage, self.config.tax_rate, Meta(at=now, actor=actor), seller=self.config.seller
        )
        if invoice is None:
            return Closed(tenant_id, period, None, created=False)
        try:
            sequence = await self.log.append(
                invoice_subject(tenant_id, period), invoice, expected=0, msg_id=invoice.invoice_id
            )
        except Conflict:
            sequence = 0  # a concurrent close won
        stored, _ = await self.invoice(tenant_id, period)
        if stored is None:
            raise Conflict(f"the invoice of {period} was appended but cannot be read back; retry")
        if msgspec.structs.replace(stored, meta=invoice.meta) != invoice:
            log.error(
                "tenant %s %s: the stored invoice differs from a recomputation; is usage still arriving?",
                tenant_id,
                period,
            )
        return Closed(tenant_id, period, stored, created=sequence != 0 and stored.meta == invoice.meta)

    async def upcoming(self, tenant_id: str, actor: str = "system") -> InvoiceIssued:
        """The invoice of the current month so far: what closing it would issue if the
        subscription ended now — the same :func:`compute_invoice`, cut at the service's clock.

        Its ``meta.at`` is the instant it was computed ("as of"); nothing is appended.
        """
        subscription = await self.subscription(tenant_id)
        time_zone = subscription.time_zone
        if time_zone is None:
            raise NotFound(f"tenant {tenant_id!r} has never subscribed to a plan")
        now = self.clock()
        month = month_of(now, time_zone)
        bounds = month_period(month, time_zone)
        events = [(s, e) for s, e in await self.log.read(subscription_subject(tenant_id)) if e.meta.at <= now]
        so_far = fold_subscription(tenant_id, events)
        window = usage_window(so_far, bounds, now)
        if window is None:
            raise NotFound(f"tenant {tenant_id!r} has no subscription in {period_id(month)}: nothing is accruing")
        usage = await self.usage.totals(tenant_id, window.start, window.end)
        invoice = compute_invoice(
            so_far, month, usage, self.config.tax_rate, Meta(at=now, actor=actor), seller=self.config.seller, until=now
        )
        if invoice is None:  # cannot happen: a usage window exists, so the month has an invoice
            raise NotFound(f"tenant {tenant_id!r} has nothing accruing in {period_id(month)}")
        return invoice

    async def subscribed_tenants(self) -> list[str]:
        info = await self.log.js.stream_info(STREAM, subjects_filter=subscription_subject("*"))
        return sorted({subject.split(".")[1] for subject in (info.state.subjects or {})})

    async def close_due(self, tenant_id: str | None = None, month: Month | str | None = None) -> list[Closed]:
        """Close ``month`` — or, without one, every ended month not yet invoiced — for ``tenant_id``
        or for every tenant that ever subscribed."""
        tenants = [tenant_id] if tenant_id else await self.subscribed_tenants()
        results = []
        for tenant in tenants:
            if month is not None:
                results.append(await self.close_period(tenant, month))
                continue
            subscription = await self.subscription(tenant)
            if subscription.time_zone is None:
                continue
            info = await self.log.js.stream_info(STREAM, subjects_filter=invoice_subject(tenant, "*"))
            invoiced = {subject.rsplit(".", 1)[1] for subject in (info.state.subjects or {})}
            cursor = month_of(subscription.tenures[0].start, subscription.time_zone)
            while self.clock() >= self.closable_from(cursor, subscription.time_zone):
                if period_id(cursor) not in invoiced:
                    results.append(await self.close_period(tenant, cursor))
                cursor = add_months(cursor, 1)
        return results


def _tenant(tenant_id: str) -> None:
    try:
        validate_token(tenant_id, "tenant")
    except InvalidSubjectToken as exc:
        raise Invalid(str(exc), field="tenant") from None


def _zone(time_zone: str) -> None:
    try:
        zone(time_zone)
    except InvalidTimeZone as exc:
        raise Invalid(str(exc), field="time_zone") from None


def _month(text: str) -> Month:
    try:
        return parse_month(text)
    except InvalidPeriod as exc:
        raise Invalid(str(exc), field="period") from None
