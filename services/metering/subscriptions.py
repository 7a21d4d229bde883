"""A tenant's limits follow the plan it pays for: the plan book, fed by the BILLING stream.

Billing records subscriptions (``billing.<tenant>.subscription.<tenant>``); every gateway
follows them and puts the tenant on the subscribed plan, so a plan change reaches the limits
of all replicas within milliseconds. A cancelled subscription returns the tenant to the plan
the plans file gives it (its assignment there, or the default plan).
"""

from __future__ import annotations

import logging

import msgspec
from nats.aio.msg import Msg

from democratic_ai.contracts.billing_events import PlanChanged, SubscriptionCancelled, SubscriptionStarted, decode_event
from democratic_ai.contracts.follower import StreamFollower
from democratic_ai.contracts.streams import BILLING_STREAM
from democratic_ai.contracts.subjects import subscription_subject
from democratic_ai.services.plans import InvalidPlans, PlanBook

__all__ = ["SubscribedPlans"]

log = logging.getLogger(__name__)


class SubscribedPlans(StreamFollower):
    stream = BILLING_STREAM
    filter_subject = subscription_subject("*")  # every tenant's

    def __init__(self, plans: PlanBook) -> None:
        super().__init__()
        self._plans = plans
        self._configured = dict(plans.assignments)  # what the plans file says, to return to

    def apply_message(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except msgspec.DecodeError:  # ValidationError too: a forged event may not even be JSON
            log.error("skipped an unreadable BILLING event on %s", msg.subject)
            return
        match event:
            case SubscriptionStarted() | PlanChanged():
                try:
                    self._plans.assign(event.tenant_id, event.terms.plan_id)
                except InvalidPlans:
                    log.error(
                        "tenant %s subscribed to plan %r, which has no limits; keeping its current plan",
                        event.tenant_id,
                        event.terms.plan_id,
                    )
            case SubscriptionCancelled():
                configured = self._configured.get(event.tenant_id)
                if configured is None:
                    self._plans.assignments.pop(event.tenant_id, None)
                else:
                    self._plans.assign(event.tenant_id, configured)
