"""A tenant's rate limits follow the plan billing records for it, and return when it cancels."""

from __future__ import annotations

from datetime import UTC, datetime

from nats.aio.client import Client as NATS

from democratic_ai.contracts.billing_events import (
    PlanChanged,
    SubscriptionCancelled,
    SubscriptionStarted,
    encode_event,
)
from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.subjects import subscription_subject
from democratic_ai.services.metering import load_plans
from democratic_ai.services.metering.subscriptions import SubscribedPlans

from support.names import unique


async def test_subscriptions_move_the_tenant_between_plans(nc: NATS) -> None:
    js = nc.jetstream()
    plans = load_plans()
    follower = SubscribedPlans(plans)
    await follower.start(js)
    tenant = unique("subscriber")
    meta = Meta(at=datetime.now(UTC))

    async def append(event: object) -> None:
        ack = await js.publish(subscription_subject(tenant), encode_event(event))
        await follower.wait_for(ack.seq)

    try:
        assert plans.plan_of(tenant).name == plans.default_plan
        await append(
            SubscriptionStarted(
                tenant_id=tenant, meta=meta, terms=plans.terms("starter"), interval="month", time_zone="Asia/Tokyo"
            )
        )
        assert plans.plan_of(tenant).name == "starter"
        await append(PlanChanged(tenant_id=tenant, meta=meta, terms=plans.terms("pro"), interval="month"))
        assert plans.plan_of(tenant).name == "pro"
        await append(SubscriptionCancelled(tenant_id=tenant, meta=meta))
        assert plans.plan_of(tenant).name == plans.default_plan
        # The system tenant's assignment in the plans file survives a cancellation too.
        assert plans.plan_of("system").name == "unlimited"
    finally:
        await follower.stop()
