"""A tenant's subscription, folded from its events: the tenures it consisted of.

A *tenure* is a stretch of time on one plan and interval. ``subscription.started`` opens one,
``subscription.plan_changed`` closes the current one and opens the next at the same instant,
``subscription.cancelled`` closes it. Changes take effect when they are recorded: that is what
makes a mid-period change prorated (see :mod:`.invoicing`).

A yearly tenure counts its years from an *anchor* month: the month it began in, or — when a
yearly plan is changed for another yearly plan — the anchor of the tenure it replaces, so the
tenant's year does not restart on an upgrade.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from democratic_ai.contracts.billing_events import (
    BillingEvent,
    PlanChanged,
    PlanTerms,
    SubscriptionCancelled,
    SubscriptionStarted,
)

from .periods import Month, month_of

__all__ = ["Subscription", "Tenure", "fold_subscription"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tenure:
    terms: PlanTerms
    interval: str  # "month" or "year"
    time_zone: str
    start: datetime
    anchor: Month
    end: datetime | None = None  # None: still running


@dataclass(frozen=True, slots=True)
class Subscription:
    tenant_id: str
    tenures: tuple[Tenure, ...] = ()
    sequence: int = 0  # the last stream sequence on the subscription's subject (0: none)

    @property
    def current(self) -> Tenure | None:
        """The running tenure, if the tenant is subscribed."""
        if self.tenures and self.tenures[-1].end is None:
            return self.tenures[-1]
        return None

    @property
    def time_zone(self) -> str | None:
        """The tenant's billing time zone: set by its first subscription, then kept."""
        return self.tenures[0].time_zone if self.tenures else None


def fold_subscription(tenant_id: str, events: Iterable[tuple[int, BillingEvent]]) -> Subscription:
    """Fold ``(sequence, event)`` pairs of one tenant's subscription subject, in stream order."""
    tenures: list[Tenure] = []
    sequence = 0
    for sequence, event in events:  # noqa: B007 - the last one read is the fold's sequence
        at = event.meta.at
        running = tenures[-1] if tenures and tenures[-1].end is None else None
        match event:
            case SubscriptionStarted():
                if running is not None:
                    log.error("tenant %s: subscription.started while subscribed; ignored", tenant_id)
                    continue
                time_zone = tenures[0].time_zone if tenures else event.time_zone
                tenures.append(Tenure(event.terms, event.interval, time_zone, at, month_of(at, time_zone)))
            case PlanChanged():
                if running is None:
                    log.error("tenant %s: plan_changed while not subscribed; ignored", tenant_id)
                    continue
                tenures[-1] = replace(running, end=at)
                keeps_year = running.interval == event.interval == "year"
                anchor = running.anchor if keeps_year else month_of(at, running.time_zone)
                tenures.append(Tenure(event.terms, event.interval, running.time_zone, at, anchor))
            case SubscriptionCancelled():
                if running is not None:
                    tenures[-1] = replace(running, end=at)
    return Subscription(tenant_id, tuple(tenures), sequence)
